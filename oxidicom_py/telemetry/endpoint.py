"""The HTTP endpoint on ``OXIDICOM_METRICS_PORT``: ``/metrics``, ``/livez``, ``/readyz``.

Served by the supervisor (or the single process) from a thread, so it answers even while
the event loop is busy. ``/metrics`` sums the values every process wrote to the
multiprocess folder; ``/livez`` and ``/readyz`` answer JSON with 200 or 503.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from oxidicom_py.telemetry import multiproc
from oxidicom_py.telemetry.health import Health, report

log = logging.getLogger("oxidicom_py.telemetry")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _registry() -> CollectorRegistry:
    if multiproc.folder() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class Endpoint:
    def __init__(self, health: Health, host: str, port: int) -> None:
        self.health = health
        self.registry = _registry()
        self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="oxidicom-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        log.info("metrics and health endpoint listening", extra={"address": f"http://{host}:{port}"})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        try:
            if path == "/metrics":
                body = generate_latest(self.registry)
                return _answer(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
            if path == "/livez":
                check = self.health.alive()
                status = "200 OK" if check.ok else "503 Service Unavailable"
                return _json(start_response, status, {"alive": check.ok, "detail": check.detail})
            if path == "/readyz":
                answer = report(self.health.ready())
                return _json(start_response, "200 OK" if answer["ready"] else "503 Service Unavailable", answer)
        except Exception as e:  # never let a scrape take the thread down
            log.error("metrics endpoint failed on %s: %s", path, e, exc_info=True)
            return _answer(start_response, "500 Internal Server Error", b"internal error\n", "text/plain")
        return _answer(start_response, "404 Not Found", b"try /metrics, /livez or /readyz\n", "text/plain")


def _json(start_response: StartResponse, status: str, payload: Any) -> list[bytes]:
    return _answer(start_response, status, orjson.dumps(payload) + b"\n", "application/json")


def _answer(start_response: StartResponse, status: str, body: bytes, content_type: str) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
