"""How each kind of setting value is read and checked: every parser takes the variable's name
(for the one-line error) and its raw text."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

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


def integer(lo: int, hi: int | None = None) -> Callable[[str, str], int]:
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


def max_pdu(name: str, raw: str) -> int:
    v = integer(0, 0xFFFFFFFF)(name, raw)
    if 0 < v < 4096:
        raise SettingsError(f"{name}: must be 0 (unlimited) or at least 4096, got {v}")
    return v


def positive_float(name: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not v > 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return v


def ae_list(name: str, raw: str) -> frozenset[str] | None:
    items = [item for item in (part.strip() for part in raw.split(",")) if item]
    return frozenset(parse_ae_title(name, item) for item in items) if items else None


def networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: not an IP network (e.g. 10.0.0.0/8 or 192.0.2.7): {item!r}") from None
    return tuple(out) if out else None


def non_negative_float(name: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not v >= 0:
        raise SettingsError(f"{name}: must be 0 or more, got {raw!r}")
    return v


def choice(*allowed: str) -> Callable[[str, str], str]:
    """One of ``allowed`` (case-insensitive)."""

    def parse(name: str, raw: str) -> str:
        v = raw.strip().lower()
        if v not in allowed:
            raise SettingsError(f"{name}: expected {' or '.join(allowed)}, got {raw!r}")
        return v

    return parse


implementation = choice("asyncio", "pynetdicom")


def parse_ae_title(name: str, raw: str) -> str:
    v = raw.strip()
    if not _AE_RE.match(v):
        raise SettingsError(f"{name}: not a valid AE title (1 to 16 printable characters, no backslash): {raw!r}")
    return v


def non_empty(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name}: must not be empty")
    return raw.strip()


def path(name: str, raw: str) -> Path:
    return Path(non_empty(name, raw)).expanduser()


def readable_file(name: str, raw: str) -> Path:
    p = path(name, raw)
    if not p.is_file():
        raise SettingsError(f"{name}: no such file: {str(p)!r}")
    return p


def log_level(name: str, raw: str) -> str:
    v = raw.strip().upper()
    if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(f"{name}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return v


def host_port(name: str, aet: str, value: str) -> tuple[str, int]:
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
        out[aet] = host_port(name, aet, m.group(2) if m.group(2) is not None else m.group(3))
        pos = m.end()
    return out


def queue_list(name: str, raw: str) -> tuple[str, ...] | None:
    """Comma-separated queue names (letters, digits, ``_.-``); empty: every queue."""
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for queue in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", queue):
            raise SettingsError(f"{name}: {queue!r} is not a queue name (letters, digits, '_', '.', '-')")
    return names or None


_DURATION_PART = re.compile(r"\s*(\d+)\s*([A-Za-z]+)")
_DURATION_UNITS = {
    **dict.fromkeys(("nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us"), 1e-6),
    **dict.fromkeys(("msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "sec", "s"), 1.0),
    **dict.fromkeys(("minutes", "minute", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
}


def duration(name: str, raw: str) -> float:
    """Seconds, from oxidicom's humantime syntax: ``500ms``, ``2s``, ``1m 30s``, ``1h30m``."""
    text = raw.strip()
    total, pos = 0.0, 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        unit = _DURATION_UNITS.get(m.group(2)) if m else None
        if m is None or unit is None:
            raise SettingsError(f"{name}: expected a duration such as 500ms, 2s or 1m 30s, got {raw!r}")
        total += int(m.group(1)) * unit
        pos = m.end()
    if not text:
        raise SettingsError(f"{name}: expected a duration such as 500ms, 2s or 1m 30s, got {raw!r}")
    return total


def broker_url(name: str, raw: str) -> str:
    """A Celery broker URL: ``amqp://``, ``amqps://``, ``redis://`` or ``rediss://``."""
    value = raw.strip()
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in ("amqp", "amqps", "pyamqp", "redis", "rediss"):
        raise SettingsError(f"{name}: expected an amqp:// or redis:// URL, got {raw!r}")
    return value


def nats_address(name: str, raw: str) -> str:
    """A NATS server: ``host:port`` as oxidicom takes it, or a ``nats://`` / ``tls://`` URL."""
    value = raw.strip()
    if "://" not in value:
        value = f"nats://{value}"
    scheme, rest = value.split("://", 1)
    if scheme not in ("nats", "tls") or not rest or rest.startswith(":"):
        raise SettingsError(f"{name}: expected host:port or nats://host:port, got {raw!r}")
    return value


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def schema_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not _SCHEMA_NAME.fullmatch(value):
        raise SettingsError(f"{name}: expected a lower-case PostgreSQL schema name, got {raw!r}")
    return value
