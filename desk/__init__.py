"""The patrol desk (SPEC §8): the JSON API, the live alarm stream and the page.

    app.py       make_app(settings, paths), run_desk(settings, should_stop, on_ready)
    http.py      sessions required under /api/, viewers read only, JSON errors, headers
    auth.py      /api/login, /api/logout, /api/me
    api.py       alarms, subjects, tracks, the map layer, the event stream endpoints
    events.py    one shared follower of the alarm change log, fanned out to SSE clients
    locate_api.py     立即定位: POST /api/subjects/{id}/locate, reading requests
    locate_events.py  follows locate.sqlite's changes: `locate` events on the stream
    scope.py     who sees what: office subtrees, alarm and subject visibility
    users.py     users (scrypt, role, disabled), sessions, failed-login limits: desk.sqlite
    audit.py     the append-only audit log (in desk.sqlite) and `record` for handlers
    audit_api.py GET /api/audit, cut to the user's subtree
    revocation.py  ends the streams of sessions ended by `geofence user disable`
    stores.py    the SQLite connections, all on one thread off the event loop
    tracks.py    a subject's fixes (and handset status reports) from the fixes store
    mapdata.py   the map's GeoJSON (townships, dissolved counties, zones)
    metrics.py   Prometheus text: alarm metrics plus the desk's counters
    static.py    the page's files

Importing this package does not import aiohttp: `geofence user` uses `users` alone.
"""

__all__ = ["make_app", "run_desk"]


def __getattr__(name: str):
    if name in __all__:
        from desk import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
