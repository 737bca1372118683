"""Every setting, read from ``OXIDICOM_*`` environment variables and validated once at start-up.

Names follow the reference receiver; unlike it, every variable takes effect, and a bad
value stops start-up with one line naming the variable and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    db_connection: str | None = None
    db_pool: int = 10
    db_batch_size: int = 100
    db_linger_ms: int = 20
    db_max_pending: int = 100_000
    state_dir: Path = Path("oxidicom-data")
    files_root: Path = Path("oxidicom-data/files")
    storage_fsync: bool = True
    scp_aet: str = "ChRIS"
    scp_strict: bool = False
    scp_uncompressed_only: bool = False
    scp_promiscuous: bool = False
    scp_max_pdu_length: int = 131072
    scp_artim_timeout: float = 30.0
    scp_implementation: str = "asyncio"
    scp_allowed_aets: frozenset[str] | None = None
    scp_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    scp_check_called_aet: bool = False
    scp_idle_timeout: float = 600.0
    scp_pdu_timeout: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    pacs_address: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    cfind_connect_timeout: float = 5.0
    cfind_timeout: float = 30.0
    series_quiescence: float = 60.0
    listener_threads: int = 64
    listener_processes: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    listener_port: int = 11111
    listener_address: str = "0.0.0.0"
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    verbose: bool = False
    log_level: str = "INFO"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def embedded_db(self) -> bool:
        return self.db_connection is None

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"


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


def _tls(e: Mapping[str, str]) -> tuple[Path | None, Path | None, Path | None]:
    cert = _get(e, "OXIDICOM_TLS_CERT", _readable_file, None)
    key = _get(e, "OXIDICOM_TLS_KEY", _readable_file, None)
    ca = _get(e, "OXIDICOM_TLS_CLIENT_CA", _readable_file, None)
    if cert is None and (key is not None or ca is not None):
        raise SettingsError("OXIDICOM_TLS_CERT: required when OXIDICOM_TLS_KEY or OXIDICOM_TLS_CLIENT_CA is set")
    return cert, key, ca


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


def _get(env: Mapping[str, str], name: str, parse: Callable[[str, str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None:
        return default
    return parse(name, raw)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``OXIDICOM_*`` variable."""
    e = os.environ if env is None else env
    d = Settings()
    tls_cert, tls_key, tls_client_ca = _tls(e)
    verbose = _get(e, "OXIDICOM_VERBOSE", parse_bool, d.verbose)
    state_dir = _get(e, "OXIDICOM_STATE_DIR", _path, d.state_dir)
    db = e.get("OXIDICOM_DB_CONNECTION")
    return Settings(
        db_connection=_non_empty("OXIDICOM_DB_CONNECTION", db) if db is not None else None,
        db_pool=_get(e, "OXIDICOM_DB_POOL", _int(1, 1000), d.db_pool),
        db_batch_size=_get(e, "OXIDICOM_DB_BATCH_SIZE", _int(1, 100_000), d.db_batch_size),
        db_linger_ms=_get(e, "OXIDICOM_DB_LINGER_MS", _int(0, 60_000), d.db_linger_ms),
        db_max_pending=_get(e, "OXIDICOM_DB_MAX_PENDING", _int(0), d.db_max_pending),
        state_dir=state_dir,
        files_root=_get(e, "OXIDICOM_FILES_ROOT", _path, state_dir / "files"),
        storage_fsync=_get(e, "OXIDICOM_STORAGE_FSYNC", parse_bool, d.storage_fsync),
        scp_aet=_get(e, "OXIDICOM_SCP_AET", parse_ae_title, d.scp_aet),
        scp_strict=_get(e, "OXIDICOM_SCP_STRICT", parse_bool, d.scp_strict),
        scp_uncompressed_only=_get(e, "OXIDICOM_SCP_UNCOMPRESSED_ONLY", parse_bool, d.scp_uncompressed_only),
        scp_promiscuous=_get(e, "OXIDICOM_SCP_PROMISCUOUS", parse_bool, d.scp_promiscuous),
        scp_max_pdu_length=_get(e, "OXIDICOM_SCP_MAX_PDU_LENGTH", _max_pdu, d.scp_max_pdu_length),
        scp_artim_timeout=_get(e, "OXIDICOM_SCP_ARTIM_TIMEOUT", _positive_float, d.scp_artim_timeout),
        scp_implementation=_get(e, "OXIDICOM_SCP_IMPLEMENTATION", _implementation, d.scp_implementation),
        scp_allowed_aets=_get(e, "OXIDICOM_SCP_ALLOWED_AETS", _ae_list, None),
        scp_allowed_networks=_get(e, "OXIDICOM_SCP_ALLOWED_NETWORKS", _networks, None),
        scp_check_called_aet=_get(e, "OXIDICOM_SCP_CHECK_CALLED_AET", parse_bool, d.scp_check_called_aet),
        scp_idle_timeout=_get(e, "OXIDICOM_SCP_IDLE_TIMEOUT", _non_negative_float, d.scp_idle_timeout),
        scp_pdu_timeout=_get(e, "OXIDICOM_SCP_PDU_TIMEOUT", _non_negative_float, d.scp_pdu_timeout),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        pacs_address=_get(e, "OXIDICOM_PACS_ADDRESS", parse_pacs_address, {}),
        cfind_connect_timeout=_get(e, "OXIDICOM_CFIND_CONNECT_TIMEOUT", _positive_float, d.cfind_connect_timeout),
        cfind_timeout=_get(e, "OXIDICOM_CFIND_TIMEOUT", _positive_float, d.cfind_timeout),
        series_quiescence=_get(e, "OXIDICOM_SERIES_QUIESCENCE", _positive_float, d.series_quiescence),
        listener_threads=_get(e, "OXIDICOM_LISTENER_THREADS", _int(1, 100_000), d.listener_threads),
        listener_processes=_get(e, "OXIDICOM_LISTENER_PROCESSES", _int(1, 256), d.listener_processes),
        listener_port=_get(e, "OXIDICOM_LISTENER_PORT", _int(1, 65535), d.listener_port),
        listener_address=_get(e, "OXIDICOM_LISTENER_ADDRESS", _non_empty, d.listener_address),
        metrics_port=_get(e, "OXIDICOM_METRICS_PORT", _int(0, 65535), None),
        metrics_address=_get(e, "OXIDICOM_METRICS_ADDRESS", _non_empty, d.metrics_address),
        verbose=verbose,
        log_level=_get(e, "OXIDICOM_LOG_LEVEL", _log_level, "DEBUG" if verbose else d.log_level),
    )


DOCUMENTED = (
    "OXIDICOM_DB_CONNECTION",
    "OXIDICOM_DB_POOL",
    "OXIDICOM_DB_BATCH_SIZE",
    "OXIDICOM_DB_LINGER_MS",
    "OXIDICOM_DB_MAX_PENDING",
    "OXIDICOM_STATE_DIR",
    "OXIDICOM_FILES_ROOT",
    "OXIDICOM_STORAGE_FSYNC",
    "OXIDICOM_SCP_AET",
    "OXIDICOM_SCP_STRICT",
    "OXIDICOM_SCP_UNCOMPRESSED_ONLY",
    "OXIDICOM_SCP_PROMISCUOUS",
    "OXIDICOM_SCP_MAX_PDU_LENGTH",
    "OXIDICOM_SCP_ARTIM_TIMEOUT",
    "OXIDICOM_SCP_IMPLEMENTATION",
    "OXIDICOM_SCP_ALLOWED_AETS",
    "OXIDICOM_SCP_ALLOWED_NETWORKS",
    "OXIDICOM_SCP_CHECK_CALLED_AET",
    "OXIDICOM_SCP_IDLE_TIMEOUT",
    "OXIDICOM_SCP_PDU_TIMEOUT",
    "OXIDICOM_TLS_CERT",
    "OXIDICOM_TLS_KEY",
    "OXIDICOM_TLS_CLIENT_CA",
    "OXIDICOM_PACS_ADDRESS",
    "OXIDICOM_CFIND_CONNECT_TIMEOUT",
    "OXIDICOM_CFIND_TIMEOUT",
    "OXIDICOM_SERIES_QUIESCENCE",
    "OXIDICOM_LISTENER_THREADS",
    "OXIDICOM_LISTENER_PROCESSES",
    "OXIDICOM_LISTENER_PORT",
    "OXIDICOM_LISTENER_ADDRESS",
    "OXIDICOM_METRICS_PORT",
    "OXIDICOM_METRICS_ADDRESS",
    "OXIDICOM_VERBOSE",
    "OXIDICOM_LOG_LEVEL",
)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``OXIDICOM_*`` variables that no setting reads (likely typos), for a start-up warning."""
    e = os.environ if env is None else env
    return sorted(k for k in e if k.startswith("OXIDICOM_") and k not in DOCUMENTED)
