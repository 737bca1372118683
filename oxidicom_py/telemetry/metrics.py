"""Prometheus metrics, one set per process, aggregated across worker processes at scrape time.

With ``OXIDICOM_METRICS_PORT`` set, :func:`oxidicom_py.telemetry.multiproc.enable` runs before anything imports
``prometheus_client``: every process (supervisor and workers) then keeps its values in
memory-mapped files in one folder, and the endpoint sums them (prometheus-client's
multiprocess mode). Without it the same objects count in plain memory and nobody reads
them: an increment costs well under a microsecond, so instrumented code needs no switch.

Calling AE titles come from the network; label values are capped so that a peer sending
random titles cannot grow the metric set without bound.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

MAX_AE_LABELS: Final = 64
OTHER_AE: Final = "(other)"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)

INSTANCES_RECEIVED = Counter(
    "oxidicom_instances_received", "C-STORE requests whose dataset began to arrive.", ["calling_ae"]
)
INSTANCES_STORED = Counter(
    "oxidicom_instances_stored", "Instances stored and acknowledged with Success.", ["calling_ae"]
)
INSTANCES_REJECTED = Counter(
    "oxidicom_instances_rejected",
    "Instances answered with a failure status (unreadable or incomplete header, storage failure).",
    ["calling_ae"],
)
INSTANCES_DUPLICATE = Counter(
    "oxidicom_instances_duplicate",
    "Stored instances whose path was already registered (a re-send): the file was replaced, no new row.",
    ["calling_ae"],
)
RECEIVED_BYTES = Counter(
    "oxidicom_received_bytes", "Dataset bytes of instances that arrived whole (stored or not).", ["calling_ae"]
)

ASSOCIATIONS = Counter("oxidicom_associations", "Associations accepted.", ["calling_ae"])
ASSOCIATIONS_ACTIVE = Gauge("oxidicom_associations_active", "Associations open now.", multiprocess_mode="livesum")
ASSOCIATION_DURATION = Histogram(
    "oxidicom_association_duration_seconds",
    "Time from A-ASSOCIATE-AC to the end of the association.",
    buckets=_DURATION_BUCKETS,
)
ASSOCIATIONS_REJECTED = Counter(
    "oxidicom_associations_rejected",
    "Connections or association requests refused, by reason.",
    ["reason"],
)

REGISTRATION_BATCH_SECONDS = Histogram(
    "oxidicom_registration_batch_seconds",
    "Time to commit one registration batch, retries included.",
    buckets=_LATENCY_BUCKETS,
)
REGISTRATION_ROWS = Counter(
    "oxidicom_registration_rows",
    "Rows handled by the registrar (inserted, already_registered, rejected); marker rows included.",
    ["result"],
)
REGISTRATION_QUEUE_DEPTH = Gauge(
    "oxidicom_registration_queue_depth",
    "Rows waiting for their batch to commit (sampled).",
    multiprocess_mode="livesum",
)

CFIND = Counter("oxidicom_cfind", "C-FIND queries for a series' instance count, by result.", ["result"])
CFIND_SECONDS = Histogram("oxidicom_cfind_seconds", "Duration of those C-FIND queries.", buckets=_LATENCY_BUCKETS)

RULES_RELOAD_ERRORS = Counter(
    "oxidicom_rules_reload_errors",
    "Changed OXIDICOM_RULES files that were invalid (the previous rules stayed in force).",
)
SERIES_ENDED = Counter(
    "oxidicom_series_ended", "Series whose last open association ended (or went quiet), by state.", ["state"]
)

WORKERS_ALIVE = Gauge("oxidicom_workers_alive", "Listener processes running.", multiprocess_mode="max")
WORKER_RESTARTS = Counter("oxidicom_worker_restarts", "Listener processes that died and were replaced.")
INSTANCES_REAPED = Counter(
    "oxidicom_instances_reaped",
    "Staging folders of other receiver instances (sharing the files root) removed after their heartbeat went stale.",
)

JOBS = Counter(
    "oxidicom_jobs",
    "Processing jobs reaching a state (queued when created, then running, succeeded, failed, cancelled), by rule.",
    ["rule", "state"],
)
JOB_SECONDS = Histogram(
    "oxidicom_job_seconds", "Duration of module runs (one per attempt), by rule.", ["rule"], buckets=_DURATION_BUCKETS
)
JOBS_QUEUED = Gauge(
    "oxidicom_jobs_queued",
    "Jobs waiting to run (queued, including retries), sampled by processing workers.",
    multiprocess_mode="max",
)
JOBS_LATE = Counter(
    "oxidicom_jobs_late", "Series or studies that received more after their job ran (on_late: log).", ["rule"]
)
JOBS_TRIGGER_ERRORS = Counter(
    "oxidicom_jobs_trigger_errors",
    "Series ends whose rules could not be evaluated or whose job could not be deferred (logged; the end stands).",
)
DELIVERED = Counter(
    "oxidicom_delivered",
    "Instances delivered to destinations (sent: acknowledged; failed: out of attempts), by destination.",
    ["destination", "result"],
)

CELERY_TASKS = Counter(
    "oxidicom_celery_tasks",
    "Registration tasks for CUBE's Celery worker, by outcome (sent; retried: an attempt failed; dropped: not sent).",
    ["outcome"],
)
CELERY_PENDING = Gauge(
    "oxidicom_celery_pending",
    "Registration tasks waiting for the broker.",
    multiprocess_mode="livesum",
)
LONK_MESSAGES = Counter(
    "oxidicom_lonk_messages",
    "LONK messages to NATS, by kind (progress, error, done) and outcome (sent, limited, dropped, failed).",
    ["kind", "outcome"],
)

for _outcome in ("sent", "retried", "dropped"):  # exported at 0 before the first task, like the rest
    CELERY_TASKS.labels(_outcome)
for _kind in ("progress", "error", "done"):
    for _outcome in ("sent", "limited", "dropped", "failed"):
        LONK_MESSAGES.labels(_kind, _outcome)

NAMES: Final = (
    "oxidicom_instances_received",
    "oxidicom_instances_stored",
    "oxidicom_instances_rejected",
    "oxidicom_instances_duplicate",
    "oxidicom_received_bytes",
    "oxidicom_associations",
    "oxidicom_associations_active",
    "oxidicom_association_duration_seconds",
    "oxidicom_associations_rejected",
    "oxidicom_registration_batch_seconds",
    "oxidicom_registration_rows",
    "oxidicom_registration_queue_depth",
    "oxidicom_cfind",
    "oxidicom_cfind_seconds",
    "oxidicom_series_ended",
    "oxidicom_workers_alive",
    "oxidicom_worker_restarts",
    "oxidicom_instances_reaped",
    "oxidicom_celery_tasks",
    "oxidicom_celery_pending",
    "oxidicom_lonk_messages",
    "oxidicom_rules_reload_errors",
    "oxidicom_jobs",
    "oxidicom_job_seconds",
    "oxidicom_jobs_queued",
    "oxidicom_jobs_late",
    "oxidicom_jobs_trigger_errors",
    "oxidicom_delivered",
)

_ae_labels: set[str] = set()


def ae_label(calling_ae: str) -> str:
    """``calling_ae`` as a label value, or ``(other)`` once :data:`MAX_AE_LABELS` titles were seen."""
    if calling_ae in _ae_labels:
        return calling_ae
    if len(_ae_labels) >= MAX_AE_LABELS:
        return OTHER_AE
    _ae_labels.add(calling_ae)
    return calling_ae
