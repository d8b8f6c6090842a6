"""The desk's request plumbing: sessions, JSON errors, security headers, metrics, logs.

- Every path under /api/ except /api/login needs a live session cookie: 401 otherwise.
- A `viewer` (desk.users.ROLES) only reads: any method but GET and HEAD under /api/,
  except logging in and out, is 403 for it, whatever the endpoint (one middleware, so
  every endpoint added later is covered).
- Against cross-site requests (CSRF), under /api/: a request whose `Origin` is not the
  desk's own scheme://host, or whose `Sec-Fetch-Site` is neither same-origin nor none,
  is refused with 403; a POST (any method but GET and HEAD) must be `Content-Type:
  application/json` (else 415), which a cross-site form or no-preflight fetch cannot send.
- Under /api/, every error is `{"error": "one line"}`; an unexpected exception is a 500
  whose log line names the route and the exception type, never its message (which may
  hold an alarm or subject id).
- Access log lines name the route template (``/api/subjects/{id}/track``), never the
  path: subject and alarm ids are personal data.
"""

import json
import logging
import traceback

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from desk.context import SESSION, ApiError, desk_of

log = logging.getLogger("geofence.desk")

COOKIE = "geofence_session"
PUBLIC_API = frozenset({"/api/login"})
READ_METHODS = frozenset({"GET", "HEAD"})
VIEWER_WRITES = frozenset({"/api/login", "/api/logout"})   # the writes a viewer may make
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # The page works offline: everything from this origin, nothing from the internet.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; "
                                "media-src 'self' data: blob:; style-src 'self' "
                                "'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                                "form-action 'self'"),
}


def route_of(request: web.Request) -> str:
    """The route template that matched (no ids), or "unmatched"."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


def json_dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(obj, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(obj, status=status, headers=headers, dumps=json_dumps)


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


@web.middleware
async def outer_middleware(request: web.Request, handler) -> web.StreamResponse:
    """JSON errors under /api/, security headers everywhere, requests counted."""
    api = request.path.startswith("/api/") or request.path == "/api"
    try:
        response = await handler(request)
    except ApiError as e:
        response = error_response(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if not api or e.status < 400:
            _count(request, e.status)
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        response = error_response(e.status, e.reason or "error", headers)
    except Exception as e:
        frames = "".join(traceback.format_tb(e.__traceback__))
        log.error("unhandled %s in %s %s\n%s", type(e).__name__, request.method,
                  route_of(request), frames)
        response = error_response(500, "internal error")
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
        if api:
            response.headers.setdefault("Cache-Control", "no-store")
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    desk_of(request).metrics.requests.labels(route_of(request), str(status)).inc()


def last_entry(request: web.Request, header: str) -> str:
    """The last comma-separated entry of the last `header` line ("" if none)."""
    lines = request.headers.getall(header, [])
    return lines[-1].rsplit(",", 1)[-1].strip() if lines else ""


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """The client's address: the peer, or when the desk sits behind a reverse proxy
    (`trust_forwarded_for`) the last X-Forwarded-For entry, the one the proxy added."""
    forwarded = last_entry(request, "X-Forwarded-For") if trust_forwarded_for else ""
    return forwarded or request.remote or ""


def own_origin(request: web.Request, trust_forwarded_for: bool) -> str:
    """The desk's scheme://host as the browser sees it (lower case)."""
    scheme, host = request.scheme, request.host
    if trust_forwarded_for:
        scheme = last_entry(request, "X-Forwarded-Proto") or scheme
        host = last_entry(request, "X-Forwarded-Host") or host
    return f"{scheme}://{host}".lower()


@web.middleware
async def same_origin_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Under /api/: 403 for a cross-site request, 415 for a POST that is not JSON."""
    if request.path.startswith("/api/") or request.path == "/api":
        trust = desk_of(request).settings.desk.trust_forwarded_for
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        if (origin is not None and origin.lower() != own_origin(request, trust)) or \
                (site is not None and site not in ("same-origin", "none")):
            raise ApiError(403, "cross-site request refused")
        if request.method not in ("GET", "HEAD") and \
                request.content_type != "application/json":
            raise ApiError(415, "the body must be application/json")
    return await handler(request)


@web.middleware
async def session_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Attach the live session, or answer 401 for anything private under /api/."""
    if (request.path.startswith("/api/") or request.path == "/api") and \
            request.path not in PUBLIC_API:
        desk = desk_of(request)
        token = request.cookies.get(COOKIE, "")
        session = None
        if token:
            session = await desk.stores.run(desk.stores.users.session, token,
                                            desk.settings.desk.session_hours, desk.now_ms())
        if session is None:
            raise ApiError(401, "not logged in")
        request[SESSION] = session
    return await handler(request)


@web.middleware
async def viewer_middleware(request: web.Request, handler) -> web.StreamResponse:
    """403 for a viewer's write under /api/ (after `session_middleware`); only an
    officer writes, so a role added later reads only until this says otherwise."""
    session = request.get(SESSION)
    if session is not None and session.role != "officer" and \
            request.method not in READ_METHODS and request.path not in VIEWER_WRITES:
        raise ApiError(403, "a viewer may read but not change anything")
    return await handler(request)


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request with the route template instead of the path."""

    def log(self, request, response, time):
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method,
                         route_of(request), response.status, time)
