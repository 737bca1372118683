"""What one committed batch tells the metrics and its trace span: rows inserted, already
registered or rejected, duplicates by sending PACS."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.telemetry import metrics, tracing

INSERTED, ALREADY, REJECTED = 1, 2, 3
_RESULTS = {INSERTED: "inserted", ALREADY: "already_registered", REJECTED: "rejected"}


def observe_batch(items: Sequence[Any], seconds: float, span: Any) -> None:
    """Metrics (and the span, when tracing) of one committed batch: a few calls per batch."""
    counts = collections.Counter(item.outcome for item in items)
    metrics.REGISTRATION_BATCH_SECONDS.observe(seconds)
    for outcome, n in counts.items():
        if outcome in _RESULTS:
            metrics.REGISTRATION_ROWS.labels(_RESULTS[outcome]).inc(n)
    if counts[ALREADY]:
        duplicates = collections.Counter(
            item.row.pacs_identifier
            for item in items
            if item.outcome == ALREADY and item.row.pacs_identifier != MARKER_PACS
        )
        for pacs, n in duplicates.items():
            metrics.INSTANCES_DUPLICATE.labels(metrics.ae_label(pacs)).inc(n)
    if span is not None:
        span.set_attributes(
            {
                "oxidicom.batch.inserted": counts[INSERTED],
                "oxidicom.batch.already_registered": counts[ALREADY],
                "oxidicom.batch.rejected": counts[REJECTED],
                "oxidicom.batch.associations": sorted({item.row.association for item in items if item.row.association}),
            }
        )
        if counts[REJECTED]:
            tracing.set_error(span, f"{counts[REJECTED]} rows rejected by the database")
        span.end()
