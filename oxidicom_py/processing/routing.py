"""Where a finished job's files go: its rule's ``send_to`` turned into delivery rows, deferred
in the transaction that records the job's success.

``sender`` is the AE title the series came from, at its ``OXIDICOM_PACS_ADDRESS`` entry (none:
the rows are made ``failed`` with that reason, visibly). A forward (a rule with ``send_to`` and
no ``run``) never sends an instance back to the AE title it came from, unless the rule says
``send_to_origin: true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import procrastinate
import psycopg

from oxidicom_py.delivery import records
from oxidicom_py.processing import queue
from oxidicom_py.processing.rules import SENDER

log = logging.getLogger("oxidicom_py.delivery")


@dataclass(frozen=True, slots=True)
class Deliverable:
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    """Absolute."""
    origin_ae: str | None
    """The AE title it came from (forwards), None for our own outputs."""


def resolve(
    target: Mapping[str, Any], origin: str | None, pacs_address: Mapping[str, tuple[str, int]]
) -> dict[str, Any]:
    """A destination's settings, ``sender`` looked up; ``error`` set when it cannot be reached."""
    if target["name"] != SENDER:
        return dict(target)
    resolved = dict(target)
    if origin is None or origin not in pacs_address:
        resolved["error"] = f"sender {origin!r} has no OXIDICOM_PACS_ADDRESS entry: nowhere to send"
        return resolved
    resolved["ae_title"] = origin
    resolved["host"], resolved["port"] = pacs_address[origin]
    return resolved


async def plan(
    conn: psycopg.AsyncConnection,
    app: procrastinate.App,
    job_id: int,
    targets: Sequence[Mapping[str, Any]],
    files: Sequence[Deliverable],
    sender: str | None,
    pacs_address: Mapping[str, tuple[str, int]],
) -> int:
    """Delivery rows for every (target, file), and a delivery task per target; rows made."""
    made = 0
    for target in targets:
        destination = resolve(target, sender, pacs_address)
        chosen = [
            f
            for f in files
            if target.get("send_to_origin") or f.origin_ae is None or f.origin_ae != destination.get("ae_title")
        ]
        skipped = len(files) - len(chosen)
        if skipped:
            log.info(
                "not sent back to the AE title it came from (send_to_origin: false)",
                extra={"job": job_id, "destination": target["name"], "instances": skipped},
            )
        made += await records.create(
            conn, job_id, destination, [(f.sop_instance_uid, f.sop_class_uid, f.path) for f in chosen]
        )
        if chosen and "error" not in destination:
            await queue.defer_delivery(app, conn, job_id, target["name"])
        elif chosen:
            log.error(
                "delivery impossible",
                extra={"job": job_id, "destination": target["name"], "error": destination["error"]},
            )
    return made
