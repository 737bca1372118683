"""The console's web pages: HTML from Jinja2 templates over the JSON API, their script and
style served from the package (nothing is fetched from the internet; no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).resolve().parent
CSP = "default-src 'self'; img-src 'self' data:"
"""Every page: nothing but its own origin (no inline script, nothing from the internet)."""
_TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def add_pages(app: FastAPI, *, show_phi: bool, actions: bool = False) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def static(name: str) -> str:
        return f"/static/{name}"

    def page(template: str) -> HTMLResponse:
        html = _TEMPLATES.get_template(template).render(static=static, show_phi=show_phi, actions=actions)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def board(_request: Request) -> HTMLResponse:
        return page("board.html")

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    async def jobs(_request: Request) -> HTMLResponse:
        return page("jobs.html")
