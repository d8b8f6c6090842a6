"""Logging in and out (`POST /api/login`, `POST /api/logout`) and `GET /api/me`.

The session cookie `geofence_session` holds a random 32-byte token: HttpOnly,
SameSite=Strict, Path=/, and Secure when `[desk] cookie_secure` (set it whenever the
desk is reached over HTTPS). Unknown user and wrong password get the same answer in the
same time; a disabled user who gives the right password gets 403. Too many failures of
a name from one client address, or from one address in all
(`users.UserStore.begin_login`), get 429 with Retry-After, even for the right password.
The client address is the peer's, or with `[desk] trust_forwarded_for` the last
`X-Forwarded-For` entry (the one the reverse proxy added). Logging in and out are
audited (`desk.audit`).
"""

import asyncio

from aiohttp import web

from desk import audit
from desk.context import SESSION, ApiError, desk_of
from desk.http import COOKIE, client_address, json_response
from desk.jsonbody import json_body
from desk.users import MAX_NAME_CHARS, MAX_PASSWORD_CHARS, verify_password

BAD_CREDENTIALS = "wrong user name or password"


async def login(request: web.Request) -> web.Response:
    desk = desk_of(request)
    body = await json_body(request)
    name, password = body.get("user"), body.get("password")
    if not (isinstance(name, str) and isinstance(password, str)) or not name:
        raise ApiError(400, "user and password are required strings")
    if len(name) > MAX_NAME_CHARS or len(password) > MAX_PASSWORD_CHARS:
        desk.metrics.logins.labels("failed").inc()
        raise ApiError(401, BAD_CREDENTIALS)
    users = desk.stores.users
    address = client_address(request, desk.settings.desk.trust_forwarded_for)
    wait_s, stored = await desk.stores.run(users.begin_login, name, address,
                                           desk.settings.desk.login_attempts, desk.now_ms())
    if wait_s:
        desk.metrics.logins.labels("limited").inc()
        raise ApiError(429, "too many failed logins; try again later",
                       {"Retry-After": str(wait_s)})
    async with desk.login_checks:
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password,
                                                              password, stored)
    if not ok:
        desk.metrics.logins.labels("failed").inc()
        raise ApiError(401, BAD_CREDENTIALS)
    opened = await desk.stores.run(users.login_succeeded, name, address,
                                   desk.settings.desk.session_hours, desk.now_ms())
    if opened is None:
        desk.metrics.logins.labels("failed").inc()
        raise ApiError(403, "this user is disabled")
    token, session = opened
    await audit.record(request, "user.login", session=session)
    office_name = await desk.stores.run(lambda: desk.stores.scope().office_name(session.office))
    desk.metrics.logins.labels("ok").inc()
    response = json_response({"user": session.user, "office": session.office,
                              "office_name": office_name, "role": session.role})
    response.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Strict",
                        secure=desk.settings.desk.cookie_secure)
    return response


async def logout(request: web.Request) -> web.Response:
    desk = desk_of(request)
    session = request[SESSION]
    await desk.stores.run(desk.stores.users.end_session, session.token_hash)
    desk.feed.end_session(session.token_hash)
    await audit.record(request, "user.logout")
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/", secure=desk.settings.desk.cookie_secure,
                        httponly=True, samesite="Strict")
    return response


async def me(request: web.Request) -> web.Response:
    desk = desk_of(request)
    session = request[SESSION]

    def read():
        scope = desk.stores.scope()
        return scope.office_name(session.office), scope.offices_under(session.office)

    office_name, offices = await desk.stores.run(read)
    return json_response({"user": session.user, "office": session.office,
                          "office_name": office_name, "role": session.role,
                          "offices": offices})
