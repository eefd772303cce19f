"""Optional OpenTelemetry traces of inference: gateway -> agent proxy -> inference server.

Off by default. On with ``--otel-endpoint URL`` (an OTLP/HTTP traces endpoint, such as
``http://127.0.0.1:4318/v1/traces``; or ``MODELPLANE_OTEL_ENDPOINT``) on the gateway and on the agent, with the
extra installed (``pip install 'modelplane[otel]'``). The exporter's own settings (headers, timeouts, the batch
delay) are OpenTelemetry's standard ``OTEL_*`` variables. When off, opentelemetry is never imported, and a hop pays
one test of a module global.

Each hop continues the W3C trace context its caller sent (``traceparent``, ``tracestate``), records its own span as
a child of it, and sends its own ``traceparent`` on: the gateway's span (its calls to a model's replicas) is the
parent of the agent proxy's (its call to the server), whose ``traceparent`` the server gets (MLServer continues it
when its own tracing is on). A caller without a trace context starts a new trace at the gateway.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["TracingUnavailableError", "add_tracing_flag", "configure", "end_hop", "start_hop"]

TRACE_HEADERS: Final = ("traceparent", "tracestate")
MAX_ENDPOINT_CHARS: Final = 2048

# The tracer once configure() turned tracing on; None while it is off (the default). With it, the modules the hops
# use, kept so a hop imports nothing.
_tracer: Any = None
_propagator: Any = None
_trace: Any = None


class TracingUnavailableError(RuntimeError):
    """Tracing was asked for, and the OpenTelemetry packages are not installed."""


def endpoint(text: str) -> str:
    """An ``--otel-endpoint``: an http(s) URL with a host."""
    parts = urlsplit(text)
    if len(text) > MAX_ENDPOINT_CHARS or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text[:100]!r} is not an http(s) URL of an OTLP/HTTP traces endpoint (such as "
            "http://127.0.0.1:4318/v1/traces)"
        )
    return text


def add_tracing_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otel-endpoint",
        type=endpoint,
        metavar="URL",
        help="send OpenTelemetry traces of inference requests to this OTLP/HTTP endpoint (such as "
        "http://127.0.0.1:4318/v1/traces); default: no tracing. Needs the otel extra: pip install 'modelplane[otel]'",
    )


def configure(service: str, otlp_endpoint: str | None, *, exporter: Any = None) -> None:
    """Turn tracing on for this process: spans of ``modelplane-SERVICE`` to ``otlp_endpoint``, batched; or to
    ``exporter`` (an OpenTelemetry SpanExporter, such as the SDK's in-memory one), each as it ends. With neither,
    tracing stays off and nothing of OpenTelemetry is imported. Raises TracingUnavailableError without the packages."""
    global _tracer, _propagator, _trace  # noqa: PLW0603 - one tracer per process, set once at start-up
    if otlp_endpoint is None and exporter is None:
        return
    try:
        # Imported here only: a process that traces nothing never loads them.
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

            processor: Any = BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint))
        else:
            processor = SimpleSpanProcessor(exporter)
    except ImportError as error:
        raise TracingUnavailableError(
            f"tracing needs the OpenTelemetry packages ({error.name} is missing): pip install 'modelplane[otel]'"
        ) from None
    # Its own provider, not the global one: what else in the process may trace is not ours to configure. It flushes
    # what is batched when the process exits.
    provider = TracerProvider(resource=Resource.create({"service.name": f"modelplane-{service}"}))
    provider.add_span_processor(processor)
    # A caller's malformed tracestate is dropped with a warning per request: a caller must not fill our logs.
    logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
    _tracer = provider.get_tracer("modelplane")
    _propagator = TraceContextTextMapPropagator()
    _trace = trace


def start_hop(hop: str, method: str, path: str, headers: MutableMapping[str, str]) -> Any:
    """None while tracing is off (nothing else is done then: no name is formatted). Otherwise a started span named
    ``HOP METHOD PATH``, the child of the trace context the caller sent in ``headers`` (any letter case); ``headers``
    then carry this span's context instead, for the next hop. End it with :func:`end_hop`."""
    if _tracer is None:
        return None
    return _start(f"{hop} {method} {path}", headers, {"http.request.method": method, "url.path": path})


def _start(name: str, headers: MutableMapping[str, str], attributes: dict[str, str]) -> Any:
    carrier: dict[str, str] = {}
    for key in [key for key in headers if key.lower() in TRACE_HEADERS]:
        carrier[key.lower()] = headers.pop(key)
    parent = _propagator.extract(carrier)
    span = _tracer.start_span(name, context=parent, kind=_trace.SpanKind.SERVER, attributes=attributes)
    _propagator.inject(headers, context=_trace.set_span_in_context(span))
    return span


def end_hop(span: Any, status: int | None) -> None:
    """End a span from :func:`start_hop` (None: nothing to do) with the HTTP status the hop answered (None: it
    did not answer, e.g. it was cancelled); a 5xx or no answer marks the span an error."""
    if span is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if status is None or status >= 500:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
    span.end()
