"""Every setting, read from ``OXIDICOM_*`` environment variables and validated once at start-up.

Names follow the reference receiver; unlike it, every variable takes effect, and a bad
value stops start-up with one line naming the variable and what is wrong with it.

Each variable is declared once, as a field of :class:`Settings` made by :func:`setting`: its
name, parser, default and documentation. :func:`load`, the unknown-variable check and the
README's configuration table (:func:`readme_table`, checked by a test) all come from there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oxidicom_py.console_settings import ConsoleSettings
from oxidicom_py.receive_settings import ReceiveSettings
from oxidicom_py.setting_fields import markdown_table, read_fields, setting
from oxidicom_py.setting_parsers import (
    SettingsError,
    integer,
    non_empty,
    non_negative_float,
    parse_bool,
    path,
    positive_float,
    queue_list,
    readable_file,
)

__all__ = ["ReceiveSettings", "Settings", "SettingsError", "load", "readme_table", "unknown_variables"]


@dataclass(frozen=True, slots=True)
class Settings(ConsoleSettings):
    """Every setting: the receiving half's, several instances', CUBE's, the console's, then processing's."""

    rules: Path | None = setting(
        "OXIDICOM_RULES",
        readable_file,
        default=None,
        shown="*(no processing)*",
        doc=(
            "The processing rules file (YAML; `oxidicom-py rules check FILE` validates it, "
            "`oxidicom-py rules test FILE --series UID` tries it on received series). An invalid file "
            "stops start-up with one line naming the file and the line; a changed file is read again "
            "within a second, and an invalid new version keeps the old rules (logged, and counted in "
            "`oxidicom_rules_reload_errors_total`). Jobs are created in the transaction that ends "
            "a series, run by processing workers (PROCESSING.md)."
        ),
        ours=True,
    )
    process_in_serve: bool = setting(
        "OXIDICOM_PROCESS_IN_SERVE",
        parse_bool,
        default=False,
        shown="`true` when `OXIDICOM_RULES` is set",
        doc=(
            "Run a processing worker inside `serve` (the one-machine default). `false`: jobs wait for "
            "`oxidicom-py process` workers, on this or other machines."
        ),
        ours=True,
        derive=lambda v: v["rules"] is not None,
    )
    jobs_root: Path = setting(
        "OXIDICOM_JOBS_ROOT",
        path,
        default=Path("oxidicom-data/files/.oxidicom-jobs"),
        shown="`$OXIDICOM_FILES_ROOT/.oxidicom-jobs`",
        doc=(
            "Where job folders (`job-<id>/input`, `output`, `task.json`) are made. On the files root's "
            "filesystem, inputs are hard links to the stored files; elsewhere, copies."
        ),
        ours=True,
        derive=lambda v: v["files_root"] / ".oxidicom-jobs",
    )
    process_concurrency: int = setting(
        "OXIDICOM_PROCESS_CONCURRENCY",
        integer(1, 256),
        default=1,
        shown="`1`",
        doc="Jobs one processing worker runs at once (`oxidicom-py process --concurrency` overrides it).",
        ours=True,
    )
    process_queues: tuple[str, ...] | None = setting(
        "OXIDICOM_PROCESS_QUEUES",
        queue_list,
        default=None,
        shown="*(every queue)*",
        doc=(
            "Comma-separated queues a processing worker takes jobs from (a rule's `run.queue`, default "
            "`oxidicom`); `--queues` overrides it."
        ),
        ours=True,
    )
    jobs_stalled_after: float = setting(
        "OXIDICOM_JOBS_STALLED_AFTER",
        positive_float,
        default=30.0,
        shown="`30`",
        doc=(
            "Seconds without a heartbeat after which a worker counts as dead: its running job goes back "
            "to the queue (counted as an attempt) within this time plus half of it. Heartbeats are sent "
            "every third of it."
        ),
        ours=True,
    )
    process_grace: float = setting(
        "OXIDICOM_PROCESS_GRACE",
        non_negative_float,
        default=60.0,
        shown="`60`",
        doc=(
            "On SIGTERM a processing worker takes no new job and lets running ones finish for this many "
            "seconds; then their modules are killed and the jobs return to the queue (not counted)."
        ),
        ours=True,
    )
    container_runtime: str | None = setting(
        "OXIDICOM_CONTAINER_RUNTIME",
        non_empty,
        default=None,
        shown="*(docker, else podman)*",
        doc="The container engine command for `run: {container: ...}` rules.",
        ours=True,
    )


VARIABLES: tuple[dataclasses.Field[Any], ...] = tuple(dataclasses.fields(Settings))
DOCUMENTED = tuple(f.metadata["env"] for f in VARIABLES) + tuple(a for f in VARIABLES for a in f.metadata["aliases"])


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``OXIDICOM_*`` variable."""
    values = read_fields(VARIABLES, os.environ if env is None else env)
    if values.get("tls_cert") is None and (values.get("tls_key") or values.get("tls_client_ca")):
        raise SettingsError("OXIDICOM_TLS_CERT: required when OXIDICOM_TLS_KEY or OXIDICOM_TLS_CLIENT_CA is set")
    if values.get("proxy_protocol") and values.get("proxy_networks") is None:
        raise SettingsError(
            "OXIDICOM_PROXY_NETWORKS: required when OXIDICOM_PROXY_PROTOCOL=true (the balancers' networks: "
            "anyone else could claim any address)"
        )
    if values.get("proxy_protocol") and values.get("scp_implementation") == "pynetdicom":
        raise SettingsError("OXIDICOM_PROXY_PROTOCOL: not available with OXIDICOM_SCP_IMPLEMENTATION=pynetdicom")
    if values.get("registration") in ("celery", "both") and values.get("celery_broker") is None:
        raise SettingsError(
            f"OXIDICOM_CELERY_BROKER: required when OXIDICOM_REGISTRATION={values['registration']} "
            "(CUBE's broker, amqp://... or redis://...)"
        )
    return Settings(**values)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``OXIDICOM_*`` variables that no setting reads (likely typos), for a start-up warning."""
    e = os.environ if env is None else env
    return sorted(k for k in e if k.startswith("OXIDICOM_") and k not in DOCUMENTED)


def readme_table() -> str:
    """The README's configuration section, made from the declarations."""
    return markdown_table(VARIABLES)
