"""Who may act through the console: with ``OXIDICOM_CONSOLE_TOKEN`` set, a request that changes
something must carry ``Authorization: Bearer {token}`` and come from the console's own origin
(a page elsewhere cannot make a browser send it); without a token nothing may change. Checked
before routing, so no other answer (not even a 404 or 422) tells anything to a stranger."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

log = logging.getLogger("oxidicom_py.console")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refusal(request: Request, token: str | None) -> JSONResponse | None:
    """The answer that stops ``request`` (a change without the right to it), or None."""
    if request.method in SAFE_METHODS:
        return None
    if token is None:
        return JSONResponse({"detail": "read-only console: set OXIDICOM_CONSOLE_TOKEN to allow actions"}, 403)
    given = request.headers.get("authorization", "")
    if not given.lower().startswith("bearer "):
        return JSONResponse(
            {"detail": "an action needs Authorization: Bearer <OXIDICOM_CONSOLE_TOKEN>"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given[7:].strip().encode(), token.encode()):
        return JSONResponse({"detail": "wrong token"}, 403)
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        return JSONResponse({"detail": f"actions are taken only from {own}, not {origin}"}, 403)
    return None


def middleware(token: str | None) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refused = refusal(request, token)
        if refused is not None:
            client = request.client.host if request.client else "?"
            log.warning(
                "console action refused",
                extra={"path": request.url.path, "client": client, "status": refused.status_code},
            )
            return refused
        return await call_next(request)

    return guard
