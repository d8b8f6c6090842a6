"""A desk user over HTTP, for the demo and the benchmarks: log in once, then JSON calls
with the session cookie, as the page makes them."""

import http.cookiejar
import json
import urllib.request


class DeskClient:
    """One logged-in desk user (its own cookie jar)."""

    def __init__(self, url: str, user: str, password: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.post("/api/login", {"user": user, "password": password})

    def post(self, path: str, body: dict) -> dict:
        """POST a JSON body; the JSON answer (an HTTP error raises urllib's HTTPError)."""
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def get(self, path: str) -> dict:
        with self._opener.open(self.url + path, timeout=self.timeout_s) as response:
            return json.loads(response.read())
