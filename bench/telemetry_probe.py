"""What a monitoring stack does to a receiver, done by the bench itself on 127.0.0.1.

- :class:`OtlpSink`: an OTLP/HTTP trace endpoint (``POST /v1/traces``). It reads each request
  body, keeps it with its arrival time and answers ``200`` with an empty
  ``ExportTraceServiceResponse`` (an empty body, ``application/x-protobuf``). Bodies are only
  decoded afterwards (:func:`decode_spans`), so that decoding costs nothing during a measurement.
- :class:`Scraper`: fetches ``/metrics`` every ``interval`` seconds, like Prometheus, keeping the
  fetch times and sizes (and, when asked, the texts).
- :func:`parse_metrics`: Prometheus text format → ``{(sample name, labels): value}``.
"""

from __future__ import annotations

import gzip
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
MAX_BODY = 64 * 2**20  # a bigger OTLP request is answered but not kept
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- OTLP sink ---------------------------------------------------------------------------------


@dataclass
class Post:
    t: float  # time.perf_counter() when the body had been read
    path: str
    encoding: str
    body: bytes


class OtlpSink:
    """A minimal OTLP/HTTP receiver on 127.0.0.1 (a ThreadingHTTPServer in a thread)."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a collector
            timeout = 60  # an idle kept-alive connection ends after this

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length > 0 else b""
                sink._add(
                    Post(time.perf_counter(), self.path, self.headers.get("Content-Encoding", ""), body[:MAX_BODY])
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def _add(self, post: Post) -> None:
        with self._lock:
            self.posts.append(post)

    def snapshot(self) -> list[Post]:
        with self._lock:
            return list(self.posts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def decode_spans(posts: list[Post]) -> tuple[list[Span], int]:
    """Every span in the ``/v1/traces`` posts, and how many posts could not be decoded."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list[Span] = []
    bad = 0
    for post in posts:
        if post.path.rstrip("/") != "/v1/traces":
            bad += 1
            continue
        try:
            body = post.body
            if post.encoding == "gzip":
                body = gzip.decompress(body)
            elif post.encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception:
            bad += 1
            continue
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            status_code=s.status.code,
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            resource=resource,
                        )
                    )
    return spans, bad


# -- /metrics ----------------------------------------------------------------------------------


def fetch(url: str, timeout: float = 5.0) -> bytes:
    with _NO_PROXY.open(url, timeout=timeout) as r:
        return bytes(r.read())


@dataclass
class Scrape:
    t: float  # time.perf_counter() when the answer had been read
    wall: float  # time.time() at the same moment
    seconds: float  # how long the fetch took
    size: int
    text: str | None = None
    error: str | None = None


class Scraper:
    """GET ``url`` every ``interval`` s (the first at once) from a thread, until :meth:`stop` or
    ``max_scrapes``; each fetch is bounded by ``timeout``."""

    def __init__(
        self, url: str, interval: float, *, keep_text: bool = False, max_scrapes: int = 20_000, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.interval = interval
        self.keep_text = keep_text
        self.max_scrapes = max_scrapes
        self.timeout = timeout
        self.scrapes: list[Scrape] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.perf_counter()
        for _ in range(self.max_scrapes):
            if self._stop.wait(max(0.0, next_at - time.perf_counter())):
                return
            next_at += self.interval
            t0 = time.perf_counter()
            try:
                body = fetch(self.url, self.timeout)
                t1 = time.perf_counter()
                text = body.decode() if self.keep_text else None
                self.scrapes.append(Scrape(t1, time.time(), t1 - t0, len(body), text))
            except Exception as e:  # counted; the next scrape tries again
                t1 = time.perf_counter()
                self.scrapes.append(Scrape(t1, time.time(), t1 - t0, 0, None, repr(e)))
            next_at = max(next_at, time.perf_counter())  # a slow fetch does not cause a burst

    def stop(self) -> list[Scrape]:
        self._stop.set()
        self._thread.join(self.timeout + 1)
        return self.scrapes


Labels = tuple[tuple[str, str], ...]


def parse_metrics(text: str) -> dict[tuple[str, Labels], float]:
    """Samples of a Prometheus text exposition: ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def sample_sum(samples: dict[tuple[str, Labels], float], name: str, **match: str) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``match``; None if there is none."""
    values = [v for (n, labels), v in samples.items() if n == name and all((k, m) in labels for k, m in match.items())]
    return sum(values) if values else None
