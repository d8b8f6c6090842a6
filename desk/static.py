"""The page: `desk/static/` served at `/` (index.html) and `/static/`.

Files are looked up on each request, so a page installed after the desk started is
served; paths that would leave the directory answer 404. Without an index.html a small
placeholder page says so.
"""

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
PLACEHOLDER = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>geofence desk</title></head>
<body><h1>geofence desk</h1>
<p>The desk's API is running; its page is not installed
(<code>desk/static/index.html</code>).</p></body></html>
"""


def _file(relative: str) -> Path:
    if any(part.startswith(".") for part in relative.split("/")):
        raise web.HTTPNotFound()   # no hidden files, no "..": only the page's own files
    root = STATIC_DIR.resolve()
    try:
        path = (root / relative).resolve()
        path.relative_to(root)
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if not path.is_file():
        raise web.HTTPNotFound()
    return path


def _send(path: Path) -> web.FileResponse:
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def index(_request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if page.is_file():
        return _send(page)
    return web.Response(text=PLACEHOLDER, content_type="text/html")


async def static_file(request: web.Request) -> web.StreamResponse:
    return _send(_file(request.match_info["path"]))


def add_routes(app: web.Application) -> None:
    """Register after every other route: `/{path}` only takes single names."""
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static_file)
    app.router.add_get("/{path}", static_file)
