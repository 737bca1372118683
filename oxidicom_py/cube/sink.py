"""What oxidicom v3/v4 tells CUBE, made from the series bookkeeping of each association
(:class:`oxidicom_py.completion.tracker.SeriesSink`): LONK progress as files are stored, an error
for each refused instance, the last count and done when the association ends, and then one
registration task per series of the association."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from oxidicom_py.cube.celery_sender import CelerySender
from oxidicom_py.cube.lonk_publisher import LonkPublisher
from oxidicom_py.cube.registration_task import pacs_name_problem, path_problem, task_kwargs
from oxidicom_py.cube_settings import CubeSettings
from oxidicom_py.dicom.events import AssociationInfo
from oxidicom_py.record import PacsFileRow
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.cube")

CELERY_CLOSE_TIMEOUT = 10.0
"""At shutdown: how long queued registration tasks may still take to reach the broker."""


class CubeSink:
    def __init__(self, celery: CelerySender | None, lonk: LonkPublisher | None) -> None:
        self.celery = celery
        self.lonk = lonk

    def start(self) -> None:
        if self.celery is not None:
            self.celery.start()
        if self.lonk is not None:
            self.lonk.start()

    def stored(self, info: AssociationInfo, first: PacsFileRow, count: int) -> None:
        if self.lonk is not None:
            self.lonk.progress(first.pacs_identifier, first.SeriesInstanceUID, count, required=count == 1)

    def refused(self, info: AssociationInfo, series_uid: str, problem: str) -> None:
        if self.lonk is not None:
            self.lonk.error(info.calling_ae, series_uid, problem)

    def finished(self, info: AssociationInfo, first: PacsFileRow, folder: str, count: int) -> None:
        if self.lonk is not None:
            self.lonk.done(first.pacs_identifier, first.SeriesInstanceUID, count)
        if self.celery is None:
            return
        where = {"association": info.ulid, "SeriesInstanceUID": first.SeriesInstanceUID, "ndicom": count}
        if count < 1:
            log.warning("no file of the series was stored in this association: no registration task", extra=where)
            return
        problem = path_problem(folder, first.pacs_identifier)
        if problem is not None:  # the AE title check at association time keeps this from happening
            metrics.CELERY_TASKS.labels("dropped").inc()
            log.error("registration task not sent: %s", problem, extra=where)
            return
        self.celery.submit(task_kwargs(first, folder, count), info.ulid)

    async def close(self) -> None:
        if self.lonk is not None:
            await self.lonk.close()
        if self.celery is not None:
            await asyncio.to_thread(self.celery.close, CELERY_CLOSE_TIMEOUT)


def make_sink(settings: CubeSettings) -> CubeSink | None:
    """The sink the settings ask for (a broker with ``celery``/``both``, NATS with an address), or None."""
    celery = (
        CelerySender(
            settings.celery_broker or "",
            settings.queue_name,
            max_pending=settings.celery_max_pending,
            give_up_after=settings.celery_give_up_after,
        )
        if settings.celery
        else None
    )
    lonk = (
        LonkPublisher(settings.nats_address, settings.root_subject, settings.progress_interval, settings.dev_sleep)
        if settings.nats_address is not None
        else None
    )
    return CubeSink(celery, lonk) if celery is not None or lonk is not None else None


def calling_ae_check(settings: CubeSettings) -> Callable[[str], str | None] | None:
    """With registration tasks: why a calling AE title cannot be CUBE's pacs_name (its associations
    are refused, rather than stored where CUBE will not register them), or None."""
    return pacs_name_problem if settings.celery else None
