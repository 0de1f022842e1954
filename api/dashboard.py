"""The dashboard: a static single-page app served by the API itself at ``/``.

``index.html``, ``app.js`` and ``style.css`` live in ``api/static`` next to the vendored Chart.js and
js-yaml (``api/static/vendor``), all packaged with the wheel, so the dashboard needs no separate
server and no CDN. The page talks to the same ``/v1`` REST API as every other client.

Static files are served by a route rather than a ``StaticFiles`` mount because an ``APIRouter``'s
mounts are not carried over by ``include_router``; the route resolves the path inside the static
folder and refuses anything that escapes it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)

# The page is small and changes with each release; revalidating keeps an upgraded server's dashboard fresh.
_NO_STALE = {"Cache-Control": "no-cache"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_STALE)


@router.get("/static/{path:path}")
def static_file(path: str) -> FileResponse:
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise HTTPException(status_code=404, detail=f"no static file {path!r}")
    return FileResponse(target, headers=_NO_STALE)
