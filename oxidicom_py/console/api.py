"""The console's HTTP JSON API (FastAPI; its OpenAPI document at ``/openapi.json``): series,
jobs and deliveries with filters and paging, one series or job in full, and health. Every
answer is read from the database; PatientIDs are hashed unless ``OXIDICOM_CONSOLE_SHOW_PHI``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from oxidicom_py.console import guard, queries
from oxidicom_py.console.events import Broadcaster
from oxidicom_py.console.models import (
    AssociationsPage,
    DeliveriesPage,
    DeliveryState,
    Done,
    Health,
    JobDetail,
    JobsPage,
    JobState,
    SeriesDetail,
    SeriesPage,
    SeriesState,
)
from oxidicom_py.console.pages import add_pages
from oxidicom_py.processing import actions

log = logging.getLogger("oxidicom_py.console")

BIGINT_MAX = 2**63 - 1
Limit = Query(50, ge=1, le=queries.MAX_PAGE, description="items per page")
Offset = Query(0, ge=0, le=BIGINT_MAX, description="items to skip")


def make_app(db_uri: str, *, show_phi: bool = False, token: str | None = None, pool_size: int = 4) -> FastAPI:
    """The API over the database at ``db_uri`` (its connections opened at start-up); actions only
    with ``token`` (:mod:`oxidicom_py.console.guard`)."""
    pool = AsyncConnectionPool(db_uri, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True})

    broadcaster = Broadcaster(db_uri, show_phi)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        broadcaster.start()
        try:
            await asyncio.wait_for(broadcaster.listening.wait(), 30)
            yield
        finally:
            await broadcaster.close()
            await pool.close()

    app = FastAPI(
        title="oxidicom_py console",
        version="1",
        description="What arrived, what ran, what was delivered: read from the receiver's database.",
        lifespan=lifespan,
        docs_url=None,  # its page would load assets from the internet
        redoc_url=None,
    )
    add_pages(app, show_phi=show_phi, actions=token is not None)
    app.middleware("http")(guard.middleware(token))

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_away(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)

    @app.exception_handler(psycopg.errors.UndefinedTable)
    async def no_schema(_request: Request, exc: Exception) -> JSONResponse:
        detail = "the database has no oxidicom_py tables yet: start oxidicom-py serve or run oxidicom-py migrate"
        return JSONResponse({"detail": detail}, status_code=503)

    def shown(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "patient_id": queries.mask_patient(row.get("patient_id"), show_phi)}

    @app.get("/api/series", response_model=SeriesPage, summary="Series, most recently updated first")
    async def list_series(
        state: SeriesState | None = None, pacs: str | None = None, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        async with pool.connection() as conn:
            total, rows = await queries.series_page(conn, state=state, pacs=pacs, limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset, "items": [shown(r) for r in rows]}

    @app.get(
        "/api/series/{series_uid}",
        response_model=list[SeriesDetail],
        summary="One series, per PACS that sent it",
        responses={404: {"description": "no such series"}},
    )
    async def get_series(series_uid: str) -> list[dict[str, Any]]:
        async with pool.connection() as conn:
            rows = await queries.series_detail(conn, series_uid)
        if not rows:
            raise HTTPException(404, "no such series")
        return [shown(r) for r in rows]

    @app.get("/api/jobs", response_model=JobsPage, summary="Processing jobs, newest first")
    async def list_jobs(
        state: JobState | None = None, rule: str | None = None, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        async with pool.connection() as conn:
            total, rows = await queries.jobs_page(conn, state=state, rule=rule, limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    @app.get(
        "/api/jobs/{job_id}",
        response_model=JobDetail,
        summary="One job, its history and its deliveries",
        responses={404: {"description": "no such job"}},
    )
    async def get_job(job_id: int = PathParam(ge=1, le=BIGINT_MAX)) -> dict[str, Any]:
        async with pool.connection() as conn:
            row = await queries.job(conn, job_id)
        if row is None:
            raise HTTPException(404, "no such job")
        return row

    @app.get("/api/deliveries", response_model=DeliveriesPage, summary="Deliveries of job outputs, newest first")
    async def list_deliveries(
        state: DeliveryState | None = None,
        job_id: int | None = Query(None, ge=1, le=BIGINT_MAX),
        limit: int = Limit,
        offset: int = Offset,
    ) -> dict[str, Any]:
        async with pool.connection() as conn:
            total, rows = await queries.deliveries_page(conn, state=state, job_id=job_id, limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    @app.get("/api/associations", response_model=AssociationsPage, summary="Associations received, newest first")
    async def list_associations(
        calling_ae: str | None = Query(None, description="the sender's AE title"),
        series_uid: str | None = Query(None, description="associations that sent this series"),
        problems: bool = Query(False, description="only those that refused or lost instances, or were not released"),
        limit: int = Limit,
        offset: int = Offset,
    ) -> dict[str, Any]:
        async with pool.connection() as conn:
            total, rows = await queries.associations_page(
                conn, calling_ae=calling_ae, series_uid=series_uid, problems=problems, limit=limit, offset=offset
            )
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    async def act(request: Request, what: str, action: Any) -> dict[str, str]:
        client = request.client.host if request.client else "?"
        try:
            async with pool.connection() as conn:
                done = await action(conn)
        except actions.NotFound as e:
            raise HTTPException(404, str(e)) from None
        except actions.ActionRefused as e:
            log.info("console action not applicable", extra={"action": what, "client": client, "reason": str(e)})
            raise HTTPException(409, str(e)) from None
        log.warning("console action", extra={"action": what, "client": client, "result": done})
        return {"detail": done}

    refused = {401: {"description": "no token"}, 403: {"description": "read-only, wrong token or another origin"}}
    missing = {404: {"description": "no such job or delivery"}, 409: {"description": "the action does not apply"}}

    @app.post(
        "/api/jobs/{job_id}/retry",
        response_model=Done,
        summary="Queue a failed or cancelled job again",
        responses={**refused, **missing},
    )
    async def retry_job(request: Request, job_id: int = PathParam(ge=1, le=BIGINT_MAX)) -> dict[str, str]:
        return await act(request, f"retry job {job_id}", lambda conn: actions.retry_job(conn, job_id))

    @app.post(
        "/api/jobs/{job_id}/cancel",
        response_model=Done,
        summary="Cancel a queued or running job",
        responses={**refused, **missing},
    )
    async def cancel_job(request: Request, job_id: int = PathParam(ge=1, le=BIGINT_MAX)) -> dict[str, str]:
        who = f"the console ({request.client.host if request.client else '?'})"
        return await act(request, f"cancel job {job_id}", lambda conn: actions.cancel_job(conn, job_id, who))

    @app.post(
        "/api/deliveries/{delivery_id}/retry",
        response_model=Done,
        summary="Queue the failed deliveries of this delivery's job again",
        responses={**refused, **missing},
    )
    async def retry_delivery(request: Request, delivery_id: int = PathParam(ge=1, le=BIGINT_MAX)) -> dict[str, str]:
        async def again(conn: Any) -> str:
            return await actions.retry_deliveries(conn, await actions.job_of_delivery(conn, delivery_id))

        return await act(request, f"retry delivery {delivery_id}", again)

    @app.get("/api/events", include_in_schema=False)
    async def events() -> StreamingResponse:
        """Server-sent events: ``series`` (a progress row changed) and ``job`` (a job's state)."""
        return StreamingResponse(
            broadcaster.stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get("/api/health", response_model=Health, summary="The database, the queues and the receivers' heartbeats")
    async def get_health() -> dict[str, Any]:
        async with pool.connection() as conn:
            return {"database": "ok", **await queries.health(conn)}

    return app
