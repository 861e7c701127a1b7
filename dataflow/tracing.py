"""OpenTelemetry traces: one span per traced record and step, and the engine's own spans.

Off unless the standard environment asks for it (`OTEL_TRACES_EXPORTER=otlp`, or `console`);
`config_from_env` reads it once at start-up (the CLI passes `os.environ`) and `Tracer` is built
from that. With tracing off the engine holds no `Tracer` (None): the steps test for None
and take the path they take without tracing, and the SDK is never imported.

Sampling is parent-based, decided by whoever started the trace (the gateway): a record gets a
span only when it carries a `traceparent` header whose sampled flag is set. Records without a
trace context get one at the pipeline's input topic with the probability of the ratio sampler
(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`); without a
sampler setting the engine starts no trace of its own. The decision is taken here, before the
SDK is called, so that a record that is not traced costs one scan of its headers.

A step's span is a child of its input's context and the output carries the span's
`traceparent`. It starts when the (first) input was consumed and ends when the output is
handed to the producer: for a join or a batch it covers the wait in the window or batch, and
its links name every part with how long each waited (`dataflow.wait_ms`). Spans go to the
SDK's batch span processor, which exports them (OTLP) from its own thread.

A record's span is kept cheap: it is not an SDK `Span` but a `RecordSpan` that hands one
finished SDK `ReadableSpan` to the processors when it ends, and the OTLP/gRPC exporter's
request is written by `otlp.SpanEncoder` (the same message as the SDK's encoder makes, several
times faster). The engine's own spans are the SDK's.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span

TRACEPARENT = "traceparent"
#: The service name when OTEL_SERVICE_NAME is not set.
DEFAULT_SERVICE = "seldon-dataflow-engine"
#: Longest the shutdown waits for the last spans to be exported (s).
SHUTDOWN_TIMEOUT = 5.0

_EXPORTERS = frozenset({"otlp", "console"})
# Hex digits of a sampled `traceparent` flags byte's low half (bit 0 set).
_ODD = frozenset(b"13579bdfBDF")
_PROTOCOLS = frozenset({"grpc", "http/protobuf"})
# OTEL_TRACES_SAMPLER value -> the ratio of traces started at the inputs (None: from the ARG).
_SAMPLERS: dict[str, float | None] = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
    "traceidratio": None,
    "parentbased_traceidratio": None,
}


class TracingConfigError(ValueError):
    """A bad OTEL_* value; str() is the one line to print."""


@dataclass(frozen=True)
class TracingConfig:
    """What the OTEL_* environment asks for.

    Attributes:
        exporters: `otlp` and/or `console`; empty: tracing is off.
        protocol: the OTLP protocol, `grpc` or `http/protobuf`.
        service_name: the resource's `service.name`.
        input_ratio: probability that a record without trace context starts a trace at the
            pipeline's input topic (0: never).
    """

    exporters: tuple[str, ...] = ()
    protocol: str = "grpc"
    service_name: str = DEFAULT_SERVICE
    input_ratio: float = 0.0

    @property
    def enabled(self) -> bool:
        """True when spans are made and exported."""
        return bool(self.exporters)


def config_from_env(env: Mapping[str, str]) -> TracingConfig:
    """The tracing configuration from the standard OTEL_* variables of `env`.

    Raises:
        TracingConfigError: a value this engine does not support, named in one line.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig()
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    exporters = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    if exporters == ("none",):
        exporters = ()
    unknown = [e for e in exporters if e not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"bad value {raw!r} for OTEL_TRACES_EXPORTER: supported are otlp, console, none"
        )
    names = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol, protocol_name = "grpc", ""
    for name in names:
        if env.get(name, "").strip():
            protocol, protocol_name = env[name].strip().lower(), name
            break
    if protocol not in _PROTOCOLS:
        raise TracingConfigError(
            f"bad value {protocol!r} for {protocol_name}: supported are grpc, http/protobuf"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = env.get(name, "").strip()
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise TracingConfigError(
                f"bad value {endpoint!r} for {name}: an http:// or https:// URL is expected"
            )
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    ratio = 0.0
    if sampler:
        if sampler not in _SAMPLERS:
            raise TracingConfigError(
                f"bad value {sampler!r} for OTEL_TRACES_SAMPLER: supported are "
                + ", ".join(_SAMPLERS)
            )
        fixed = _SAMPLERS[sampler]
        ratio = fixed if fixed is not None else _ratio(env.get("OTEL_TRACES_SAMPLER_ARG", ""))
        if sampler == "always_off":
            exporters = ()  # no span at all, whatever the parents say
    service = env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE
    return TracingConfig(exporters, protocol, service, ratio)


def _ratio(text: str) -> float:
    if not text.strip():
        return 1.0  # the OpenTelemetry default of the ratio samplers
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise TracingConfigError(
            f"bad value {text!r} for OTEL_TRACES_SAMPLER_ARG: a ratio from 0 to 1 is expected"
        )
    return value


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a W3C `traceparent` header value, or None if invalid."""
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    try:
        version = int(value[0:2], 16)
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if version == 255 or not trace_id or not span_id or (version == 0 and len(value) != 55):
        return None
    return trace_id, span_id, bool(flags & 1)


def traceparent(trace_id: int, span_id: int) -> bytes:
    """The `traceparent` value naming a sampled span."""
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


def sampled_parent(headers: Sequence[tuple[str, bytes]]) -> tuple[int, int, bool] | None:
    """The parsed `traceparent` of `headers` (the first one), or None when there is none."""
    for key, value in headers:
        if key == TRACEPARENT:
            return parse_traceparent(value)
    return None


def _set_traceparent(headers: MutableSequence[tuple[str, bytes]], value: bytes) -> None:
    for n, (key, _) in enumerate(headers):
        if key == TRACEPARENT:
            headers[n] = (TRACEPARENT, value)
            return
    headers.append((TRACEPARENT, value))


#: `Tracer._parent` of a record that starts a trace of its own (no parent).
ROOT: Any = False


class RecordSpan:
    """The span of a record through a step, made without the SDK's `Span`.

    A traced record is handled in the step's hot loop: the SDK's span (a lock, its attributes
    checked one by one, the sampler, the context API, the processors' `on_start`) cost about
    as much as the rest of the step's work on a hundred records. This keeps the span's data
    until `end`, which hands one finished SDK `ReadableSpan` to the span processors (the
    batch processor exports it as it would an SDK span); sampling was decided before
    (parent-based, see the module's docstring). The content is the same as an SDK span's.
    """

    __slots__ = ("_tracer", "attributes", "context", "links", "name", "parent", "start_time",
                 "status")  # fmt: skip

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        context: Any,
        parent: Any,
        attributes: dict[str, Any],
        links: Sequence[Any],
        start_time: int,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.links = links
        self.start_time = start_time
        self.status: Any = None

    def get_span_context(self) -> Any:
        """The span's `SpanContext` (as the SDK span's)."""
        return self.context

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute before the span ends."""
        self.attributes[key] = value

    def end(self, end_time: int | None = None) -> None:
        """End the span (now, or at `end_time` ns) and hand it to the span processors."""
        self._tracer._finish(self, time.time_ns() if end_time is None else end_time)


class Tracer:
    """Makes the engine's spans; one per engine process.

    Args:
        config: what the environment asked for (must be enabled).
        processor: the span processor; default: the SDK's batch processor with the exporters
            of `config` (tests pass a simple processor with an in-memory exporter).
    """

    def __init__(self, config: TracingConfig, processor: SpanProcessor | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Status, StatusCode

        from dataflow import __version__

        self.config = config
        resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        # Sampling is decided before the SDK is called (see the module's docstring).
        self.provider: TracerProvider = TracerProvider(
            resource=resource, sampler=ALWAYS_ON, shutdown_on_exit=False
        )  # shut down by the engine (`shutdown`), bounded
        processors = [processor] if processor is not None else _processors(config)
        for p in processors:
            self.provider.add_span_processor(p)
        self._tracer = self.provider.get_tracer("dataflow", __version__)
        self._trace = trace
        # Record spans skip the SDK's `Span` (see `RecordSpan`): what it would add is built
        # once here and the finished spans go straight to the processors.
        self._processors = tuple(processors)
        self._resource = self.provider.resource
        self._scope = InstrumentationScope("dataflow", __version__)
        self._readable = ReadableSpan
        self._consumer = trace.SpanKind.CONSUMER
        self._unset = Status(StatusCode.UNSET)
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._span_context = trace.SpanContext
        self._status = Status
        self._error_code = StatusCode.ERROR
        self._link = trace.Link
        self._ratio = config.input_ratio
        self._random = random.random
        self._bits = random.getrandbits

    # -- the engine's own spans ---------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A span around a piece of the engine's own work (start-up, pipeline creation,
        rebalance); an exception marks it as an error and goes on."""
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    # -- records ----------------------------------------------------------------------------

    def _parent(self, headers: Sequence[tuple[str, bytes]], at_input: bool) -> Any:
        """The (remote) span context of a sampled `traceparent` in `headers`; `ROOT` when a
        new trace starts at the input; None when the record is not traced.

        Record spans never take the task's current context (a step task started inside the
        `pipeline.create` span would otherwise hang every trace under it)."""
        parsed = sampled_parent(headers)
        if parsed is None:
            if at_input and self._ratio > 0.0 and self._random() < self._ratio:
                return ROOT
            return None
        trace_id, span_id, sampled = parsed
        if not sampled:
            return None
        return self._span_context(trace_id, span_id, True, self._sampled)

    def _start(
        self,
        name: str,
        parent: Any,
        attributes: dict[str, Any],
        start: float,
        out_headers: MutableSequence[tuple[str, bytes]],
        links: Sequence[Any] = (),
    ) -> RecordSpan:
        """A record span, child of `parent` (or the root of a new trace: `ROOT`), started at
        perf_counter() `start`; `out_headers` get its `traceparent`."""
        span_id = self._bits(64) or 1
        trace_id = parent.trace_id if parent is not ROOT else self._bits(128) or 1
        span = RecordSpan(
            self, name, self._span_context(trace_id, span_id, False, self._sampled),
            None if parent is ROOT else parent, attributes, links,
            time.time_ns() - int((time.perf_counter() - start) * 1e9),
        )  # fmt: skip
        _set_traceparent(out_headers, traceparent(trace_id, span_id))
        return span

    def _finish(self, span: RecordSpan, end_time: int) -> None:
        finished = self._readable(
            span.name,
            context=span.context,
            parent=span.parent,
            resource=self._resource,
            attributes=span.attributes,
            links=span.links,
            kind=self._consumer,
            status=span.status or self._unset,
            start_time=span.start_time,
            end_time=end_time,
            instrumentation_scope=self._scope,
        )
        for processor in self._processors:
            processor.on_end(finished)

    def record_span(
        self,
        name: str,
        attributes: dict[str, Any],
        headers: Sequence[tuple[str, bytes]],
        out_headers: MutableSequence[tuple[str, bytes]],
        received: float,
        at_input: bool,
        more: dict[str, Any] | None = None,
    ) -> RecordSpan | None:
        """The span of one record through a stateless step, or None if it is not traced.

        `out_headers` (the output's) get the span's `traceparent`; `more` adds attributes of
        the record. The caller ends the span.
        """
        parent = self._parent(headers, at_input)
        if parent is None:
            return None
        attributes = {**attributes, **more} if more is not None else dict(attributes)
        return self._start(name, parent, attributes, received, out_headers)

    def output_span(
        self,
        name: str,
        attributes: dict[str, Any],
        parts: Sequence[tuple[Sequence[tuple[str, bytes]], float, bool]],
        origin: int,
        out_headers: MutableSequence[tuple[str, bytes]],
        error: str | None = None,
    ) -> RecordSpan | None:
        """The span of an output made from `parts` (each: headers, perf_counter() when
        consumed, read from an input topic), or None when no part is traced.

        The parent is the context of part `origin` (the record that completed the output) if
        it is traced, else of the first traced part. With more than one part the span links
        every traced part's context with how long it waited (`dataflow.wait_ms`), and lists
        the waits of all parts in `dataflow.parts.wait_ms`. `error` marks the span as an
        error with that reason. `out_headers` get the span's `traceparent`.
        """
        now_perf = time.perf_counter()
        contexts = [self._parent(headers, at_input) for headers, _, at_input in parts]
        traced = [n for n, c in enumerate(contexts) if c is not None]
        if not traced:
            return None
        parent = contexts[origin if contexts[origin] is not None else traced[0]]
        waits = tuple(round((now_perf - received) * 1000, 3) for _, received, _ in parts)
        links = []
        if len(parts) > 1:
            for n in traced:
                context = contexts[n]
                if context is ROOT:
                    continue  # a part starting a trace of its own has nothing to link
                links.append(self._link(context, {"dataflow.wait_ms": waits[n], "part": n}))
            attributes = {**attributes, "dataflow.parts": len(parts),
                          "dataflow.parts.wait_ms": waits}  # fmt: skip
        else:
            attributes = {**attributes, "dataflow.wait_ms": waits[0]}
        start = min(received for _, received, _ in parts)
        span = self._start(name, parent, attributes, start, out_headers, links)
        if error is not None:
            span.status = self._status(self._error_code, error)
            attributes["error.type"] = "dataflow.error_topic"
        return span

    # -- lifecycle --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Export what is left (bounded) and stop the processor's thread; blocking."""
        self.provider.force_flush(int(SHUTDOWN_TIMEOUT * 1000))
        self.provider.shutdown()


def _processors(config: TracingConfig) -> list[SpanProcessor]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors: list[SpanProcessor] = []
    for name in config.exporters:
        if name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
            continue
        # Endpoint, headers, TLS, timeout and the processor's queue sizes come from the
        # standard OTEL_EXPORTER_OTLP_* and OTEL_BSP_* variables, read by the SDK.
        if config.protocol == "grpc":
            from dataflow.otlp import grpc_exporter

            processors.append(BatchSpanProcessor(grpc_exporter()))
            continue
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    return processors


@contextlib.contextmanager
def span(tracer: Tracer | None, name: str, **attributes: Any) -> Iterator[None]:
    """`tracer.span(...)`, or nothing when tracing is off."""
    if tracer is None:
        yield
        return
    with tracer.span(name, **attributes):
        yield


class StepTrace:
    """What one step's spans are named and tagged with, and where its traces may start.

    Args:
        tracer: the engine's tracer.
        topology: the step's pipeline.
        spec: the step.
        stages: the step's stages (`dataflow.stages.StepStages`): names the span's stage.
    """

    __slots__ = ("attributes", "inputs", "name", "roots", "tracer")

    def __init__(self, tracer: Tracer, topology: Any, spec: Any, stages: Any) -> None:
        from dataflow.describe import step_names

        step = step_names(topology)[spec.index]
        self.tracer = tracer
        self.roots = tracer.config.input_ratio > 0.0  # traces may start at the inputs
        self.name = step if step.startswith(f"{topology.name}.") else f"{topology.name}.{step}"
        stage = "step"
        if stages.joiner is not None:
            stage = "join"
        elif stages.batcher is not None:
            stage = "batch"
        if stages.gate is not None:
            stage = f"{stage}+trigger" if stage != "step" else "trigger"
        self.attributes: dict[str, Any] = {
            "seldon.pipeline": topology.name,
            "seldon.pipeline.version": topology.version,
            "seldon.step": step,
            "dataflow.stage": stage,
            "messaging.system": "kafka",
            "messaging.destination.name": spec.sink,
        }
        # A pipeline's inputs: source topics no step of the pipeline writes to, of requests.
        sinks = {s.sink for s in topology.steps}
        self.inputs = frozenset(
            t for t in spec.topics if t not in sinks and t.rsplit(".", 1)[-1] == "inputs"
        )

    def record(
        self,
        tp: Any,
        record: Any,
        out_headers: MutableSequence[tuple[str, bytes]],
        received: float,
    ) -> RecordSpan | None:
        """The span of `record` through a stateless step (None: not traced).

        Called for every record of a stateless step while tracing is on: a record whose
        `traceparent` is not sampled (or that has none and cannot start a trace) costs one scan
        of its headers and one look at the flag's last hex digit."""
        for key, value in record.headers:  # `_may_trace` inline: this runs for every record
            if key == TRACEPARENT:
                if len(value) < 55 or value[54] not in _ODD:
                    return None
                break
        else:
            if not self.roots or tp.topic not in self.inputs:
                return None
        attributes = {
            "messaging.source.name": tp.topic,
            "messaging.kafka.source.partition": tp.partition,
            "messaging.kafka.message.offset": record.offset,
        }
        if record.timestamp >= 0:
            # Since the record was written: the time it waited in the step's topic.
            attributes["dataflow.queue_ms"] = time.time_ns() // 1_000_000 - record.timestamp
        return self.tracer.record_span(
            self.name, self.attributes, record.headers, out_headers, received,
            tp.topic in self.inputs, attributes,
        )  # fmt: skip

    def _may_trace(self, headers: Sequence[tuple[str, bytes]], topic: str) -> bool:
        """False when a record surely gets no span: its `traceparent` is not sampled, or it
        has none and cannot start a trace (a cheap look, before any parsing)."""
        for key, value in headers:
            if key == TRACEPARENT:
                return len(value) >= 55 and value[54] in _ODD
        return self.roots and topic in self.inputs

    def output(
        self,
        output: Any,
        out_headers: Any,
        topic: str,
        to_errors: bool,
        extra: Sequence[tuple[str, bytes]],
    ) -> RecordSpan | None:
        """The span of an output of a join, batch, trigger gate or per-record step (None: no
        part of it is traced); an output to the error topic is an error span."""
        refs = output.contributors or (output.origin,)
        if not any(self._may_trace(r.headers, r.tp.topic) for r in refs):
            return None
        parts = [(r.headers, r.received, r.tp.topic in self.inputs) for r in refs]
        origin = next((n for n, r in enumerate(refs) if r is output.origin), 0)
        error = None
        if to_errors:
            error = next((v.decode(errors="replace") for k, v in extra
                          if k == "seldon-pipeline-errors"), "error")  # fmt: skip
        attributes = self.attributes
        if topic != attributes["messaging.destination.name"]:
            attributes = {**attributes, "messaging.destination.name": topic}
        span = self.tracer.output_span(self.name, attributes, parts, origin, out_headers, error)
        if span is not None:
            span.set_attribute("messaging.source.name", output.origin.tp.topic)
            span.set_attribute("messaging.kafka.message.offset", output.origin.offset)
            if output.origin.timestamp >= 0:
                span.set_attribute("dataflow.queue_ms", time.time_ns() // 1_000_000
                                   - output.origin.timestamp)  # fmt: skip
        return span


def rebalance_attributes(step: Any, partitions: Any) -> dict[str, Any]:
    """The attributes of a step's rebalance span."""
    if step._tracer is None:
        return {}
    names = sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
    return {
        "seldon.pipeline": step.topology.name,
        "seldon.pipeline.version": step.topology.version,
        "seldon.step.index": step.spec.index,
        "messaging.kafka.partitions": names,
    }
