"""OpenTelemetry traces, configured by the standard ``OTEL_*`` variables; off when none asks for them.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, or
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``); ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` keeps it off. The OTLP protocol is ``http/protobuf`` unless
``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` says ``grpc`` (which needs the
``opentelemetry-exporter-otlp-proto-grpc`` package). Endpoint, headers, timeout, sampler and
resource attributes are read by the SDK itself.

Spans: one per association, one per C-FIND (a child of its association's span) and one per
registration batch. When tracing is off, :func:`start_span` returns ``None`` without touching
the SDK, so the instrumented code pays one global lookup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger("oxidicom_py.telemetry")

ENABLED = False
_provider: TracerProvider | None = None
_tracer: Any = None

ASSOCIATION = "dicom.association"
CFIND = "dicom.c-find series count"
REGISTRATION_BATCH = "registration batch"


def wanted(env: Mapping[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = e.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(attributes: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider exporting in batches when the environment asks for traces."""
    global ENABLED, _provider, _tracer
    e = os.environ if env is None else env
    if not wanted(e):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    base: dict[str, Any] = dict(attributes or {})
    if not e.get("OTEL_SERVICE_NAME"):
        base["service.name"] = "oxidicom_py"
    provider = TracerProvider(resource=Resource.create(base))
    for name in (e.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        exporter = _exporter(name.strip(), e)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = trace.get_tracer("oxidicom_py")
    ENABLED = True
    log.info("tracing on", extra={"exporters": e.get("OTEL_TRACES_EXPORTER") or "otlp"})
    return True


def _exporter(name: str, e: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
        return None
    protocol = (
        e.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or e.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            log.error("OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; using http/protobuf")
        else:
            return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def start_span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    parent: Span | None = None,
    kind: str = "INTERNAL",
) -> Span | None:
    """A started span (end it yourself), or None when tracing is off. ``kind``: a SpanKind name."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    return _tracer.start_span(  # type: ignore[no-any-return]
        name, context=context, attributes=dict(attributes), kind=trace.SpanKind[kind]
    )


def set_error(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def shutdown(timeout_millis: int = 10_000) -> None:
    """Export every finished span (at drain); a no-op when tracing is off."""
    global ENABLED, _provider
    ENABLED = False
    provider, _provider = _provider, None  # once: a worker drains, then its process exits
    if provider is not None:
        provider.force_flush(timeout_millis)
        provider.shutdown()
