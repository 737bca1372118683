"""Settings for current ChRIS (CUBE 6 and later), as oxidicom v3/v4 names them: where series are
registered (rows in CUBE v5's tables, or a Celery task CUBE's worker runs), and LONK progress
over NATS for ChRIS_ui."""

from __future__ import annotations

from dataclasses import dataclass

from oxidicom_py.cluster_settings import ClusterSettings
from oxidicom_py.setting_fields import setting
from oxidicom_py.setting_parsers import (
    broker_url,
    choice,
    duration,
    integer,
    nats_address,
    non_empty,
    positive_float,
    schema_name,
)

REGISTRATION_TARGETS = ("postgres", "celery", "both")


@dataclass(frozen=True, slots=True)
class CubeSettings(ClusterSettings):
    """The receiving half, several instances, and the two ways of telling CUBE."""

    registration: str = setting(
        "OXIDICOM_REGISTRATION",
        choice(*REGISTRATION_TARGETS),
        default="postgres",
        shown="`postgres`",
        doc=(
            "`postgres`: a row per file in CUBE v5's `pacsfiles_pacsfile` (oxidicom v2's way). `celery`: one "
            "`pacsfiles.tasks.register_pacs_series` task per series and association on CUBE's queue (oxidicom "
            "v3/v4's way, CUBE 6 and later); CUBE's tables are then not written, and our own tables (a private "
            "copy of the file rows, progress, jobs, deliveries) live in `OXIDICOM_DB_SCHEMA`. `both`: rows and tasks."
        ),
        ours=True,
    )
    celery_broker: str | None = setting(
        "OXIDICOM_CELERY_BROKER",
        broker_url,
        default=None,
        shown="*(required with `celery`)*",
        doc=(
            "CUBE's Celery broker, `amqp://user:password@host:5672` or `redis://host:6379/0`. oxidicom's older "
            "releases call it `OXIDICOM_AMQP_ADDRESS`, which is read too."
        ),
        aliases=("OXIDICOM_AMQP_ADDRESS",),
    )
    queue_name: str = setting(
        "OXIDICOM_QUEUE_NAME",
        non_empty,
        default="main2",
        shown="`main2`",
        doc="The Celery queue CUBE's worker takes `register_pacs_series` from (CUBE's own routing says `main2`).",
    )
    celery_max_pending: int = setting(
        "OXIDICOM_CELERY_MAX_PENDING",
        integer(1),
        default=10_000,
        shown="`10000`",
        doc=(
            "Registration tasks a worker process holds while the broker is unreachable (they are retried, "
            "with backoff up to 30 s). Beyond it, and past `OXIDICOM_CELERY_GIVE_UP_AFTER`, a task is logged "
            '(series, path, count) and counted in `oxidicom_celery_tasks_total{outcome="dropped"}`; the '
            "series stays in `oxidicom_series_progress` and its files in storage."
        ),
        ours=True,
    )
    celery_give_up_after: float = setting(
        "OXIDICOM_CELERY_GIVE_UP_AFTER",
        positive_float,
        default=3600.0,
        shown="`3600`",
        doc="Seconds a registration task is retried before it is dropped (logged and counted).",
        ours=True,
    )
    nats_address: str | None = setting(
        "OXIDICOM_NATS_ADDRESS",
        nats_address,
        default=None,
        shown="*(no LONK)*",
        doc=(
            "NATS server for LONK progress messages (`nats:4222`, as oxidicom takes it), which CUBE relays to "
            "ChRIS_ui: subject `{OXIDICOM_ROOT_SUBJECT}.{pacs_name}.{SeriesInstanceUID}`. An unreachable server "
            "never holds up reception (messages are dropped and counted)."
        ),
    )
    progress_interval: float = setting(
        "OXIDICOM_PROGRESS_INTERVAL",
        duration,
        default=0.5,
        shown="`500ms`",
        doc=(
            "LONK progress messages per series at most once per this interval (humantime: `500ms`, `2s`); "
            "the first and last counts, done and errors are always sent."
        ),
    )
    root_subject: str = setting(
        "OXIDICOM_ROOT_SUBJECT",
        non_empty,
        default="oxidicom",
        shown="`oxidicom`",
        doc="First part of every LONK subject (CUBE subscribes to `oxidicom.…`).",
    )
    dev_sleep: float | None = setting(
        "OXIDICOM_DEV_SLEEP",
        duration,
        default=None,
        shown="*(off)*",
        doc="Debugging LONK clients only: pause this long after each LONK message (slows them down, never reception).",
    )
    db_schema: str = setting(
        "OXIDICOM_DB_SCHEMA",
        schema_name,
        default="public",
        shown="`public` (`oxidicom` with `OXIDICOM_REGISTRATION=celery`)",
        doc=(
            "The PostgreSQL schema our tables live in (its `search_path`); with `celery` it keeps our private "
            "copy of the file rows away from CUBE's own `public.pacsfiles_pacsfile`, if the database is CUBE's."
        ),
        ours=True,
        derive=lambda v: "oxidicom" if v["registration"] == "celery" else "public",
    )

    @property
    def celery(self) -> bool:
        """Registration tasks are sent to CUBE's Celery worker."""
        return self.registration in ("celery", "both")
