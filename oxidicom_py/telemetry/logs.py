"""Structured logs: one JSON object per line (orjson), carrying the ``extra`` fields of each record."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key if key not in out else f"extra_{key}"] = value  # never hide ts, level, logger, msg
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _StaticFields(logging.Filter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure(level: str = "INFO", stream: IO[str] | None = None, static: dict[str, Any] | None = None) -> None:
    """Send every ``oxidicom_py`` log line to ``stream`` (stderr by default) as JSON, with
    ``static`` fields (e.g. the worker index) on every line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    if static:
        handler.addFilter(_StaticFields(static))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("oxidicom_py").setLevel(level)
    # pynetdicom (C-FIND client, fallback acceptor) logs unstructured lines for what we already
    # report with context; keep them for debugging only.
    logging.getLogger("pynetdicom").setLevel("WARNING" if level == "DEBUG" else "CRITICAL")


class ContextLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that adds fixed fields (e.g. the association id) to every line, merged with ``extra``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def redact(uri: str) -> str:
    """A connection string without its password, for logs."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri
