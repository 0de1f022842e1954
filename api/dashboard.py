"""The dashboard: a static single-page app served by the API itself at ``/``.

``index.html``, ``app.js`` and ``style.css`` live in ``api/static`` next to the vendored Chart.js and
js-yaml (``api/static/vendor``), all packaged with the wheel, so the dashboard needs no separate
server and no CDN. The page talks to the same ``/v1`` REST API as every other client.

The interactive API docs at ``/docs`` (Swagger UI) are served the same way, from the
``swagger-ui-py`` package (Swagger UI 5, which reads the OpenAPI 3.1 schema FastAPI writes) under
``/docs-assets``: FastAPI's default page loads them from a CDN, and on a machine without a network it
stays blank.

Static files are served by a route rather than a ``StaticFiles`` mount because an ``APIRouter``'s
mounts are not carried over by ``include_router``; the route resolves the path inside the static
folder and refuses anything that escapes it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
SWAGGER_DIR = Path(str(resources.files("swagger_ui") / "static")).resolve()

router = APIRouter(include_in_schema=False)

# The page is small and changes with each release; revalidating keeps an upgraded server's dashboard fresh.
_NO_STALE = {"Cache-Control": "no-cache"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_STALE)


@router.get("/static/{path:path}")
def static_file(path: str) -> FileResponse:
    return _file_in(STATIC_DIR, path)


@router.get("/docs")
def api_docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="revtune API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


@router.get("/docs-assets/{path:path}")
def api_docs_asset(path: str) -> FileResponse:
    return _file_in(SWAGGER_DIR, path)


def _file_in(folder: Path, path: str) -> FileResponse:
    target = (folder / path).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise HTTPException(status_code=404, detail=f"no static file {path!r}")
    return FileResponse(target, headers=_NO_STALE)
