"""A Celery app standing in for CUBE's worker in the tests (``celery -A cube_celery_app worker``):
one task, named and shaped as CUBE's ``pacsfiles.tasks.register_pacs_series`` (the same
parameters, no others: an argument CUBE would not accept fails the task), that appends what
it received to ``$CUBE_TEST_RECORD`` as a JSON line instead of registering the series."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from celery import Celery

app = Celery("cube_stand_in", broker=os.environ["CUBE_TEST_BROKER"])
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_hijack_root_logger=False,
)


@app.task(name="pacsfiles.tasks.register_pacs_series", bind=True)
def register_pacs_series(
    self: Any,
    # CUBE's parameter names and defaults
    PatientID: str,
    StudyDate: str,
    StudyInstanceUID: str,
    SeriesInstanceUID: str,
    pacs_name: str,
    path: str,
    ndicom: int,
    PatientName: str | None = None,
    PatientBirthDate: str | None = None,
    PatientAge: int | None = None,
    PatientSex: str | None = None,
    AccessionNumber: str | None = None,
    Modality: str | None = None,
    ProtocolName: str | None = None,
    StudyDescription: str | None = None,
    SeriesDescription: str | None = None,
) -> None:
    record = {
        "id": self.request.id,
        "args": list(self.request.args or ()),
        "kwargs": dict(self.request.kwargs or {}),
        "routing_key": (self.request.delivery_info or {}).get("routing_key"),
    }
    with open(os.environ["CUBE_TEST_RECORD"], "a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(json.dumps(record) + "\n")
