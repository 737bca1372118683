"""The console's web pages: HTML from Jinja2 templates (one layout, a block per page) over the
JSON API, each with a small script of its own; script and style are served from the package
(nothing is fetched from the internet; no build step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).resolve().parent
CSP = "default-src 'self'; img-src 'self' data:"
"""Every page: nothing but its own origin (no inline script, nothing from the internet)."""
_TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
_BIGINT_MAX = 2**63 - 1


def add_pages(app: FastAPI, *, show_phi: bool, actions: bool = False) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def static(name: str) -> str:
        return f"/static/{name}"

    def page(name: str, section: str, title: str, *, live: bool = False, **data: Any) -> HTMLResponse:
        html = _TEMPLATES.get_template(f"{name}.html").render(
            static=static,
            show_phi=show_phi,
            actions=actions,
            section=section,
            title=title,
            script=f"{name}.js",
            live=live,
            data=data,
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def board() -> HTMLResponse:
        return page("board", "Series", "series", live=True)

    @app.get("/series/{series_uid}", response_class=HTMLResponse, include_in_schema=False)
    async def series(series_uid: str) -> HTMLResponse:
        return page("series", "Series", f"series {series_uid}", live=True, uid=series_uid)

    @app.get("/associations", response_class=HTMLResponse, include_in_schema=False)
    async def associations() -> HTMLResponse:
        return page("associations", "Associations", "associations")

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    async def jobs() -> HTMLResponse:
        return page("jobs", "Jobs", "jobs", live=True)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job(job_id: int = PathParam(ge=1, le=_BIGINT_MAX)) -> HTMLResponse:
        return page("job", "Jobs", f"job {job_id}", live=True, job=job_id)

    @app.get("/deliveries", response_class=HTMLResponse, include_in_schema=False)
    async def deliveries() -> HTMLResponse:
        return page("deliveries", "Failed deliveries", "failed deliveries")

    @app.get("/health", response_class=HTMLResponse, include_in_schema=False)
    async def health() -> HTMLResponse:
        return page("health", "Health", "health")
