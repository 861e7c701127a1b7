"""Tracing: the OTEL_* configuration, traceparent handling, and the spans of records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dataflow import tracing
from dataflow.otlp import SpanEncoder
from dataflow.tracing import (
    Tracer,
    TracingConfig,
    TracingConfigError,
    config_from_env,
    parse_traceparent,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7
SAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def make_tracer(exporter: InMemorySpanExporter, ratio: float = 0.0) -> Tracer:
    config = TracingConfig(exporters=("otlp",), input_ratio=ratio)
    return Tracer(config, SimpleSpanProcessor(exporter))


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


# -- configuration ------------------------------------------------------------------------------


def test_off_unless_an_exporter_is_named() -> None:
    assert not config_from_env({}).enabled
    assert not config_from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not config_from_env(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    ).enabled
    assert not config_from_env(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_off"}
    ).enabled
    on = config_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "eng"})
    assert on.enabled and on.exporters == ("otlp",) and on.service_name == "eng"
    assert on.protocol == "grpc" and on.input_ratio == 0.0


def test_ratio_sampler_starts_traces_at_the_inputs() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    assert config_from_env({**env, "OTEL_TRACES_SAMPLER_ARG": "0.01"}).input_ratio == 0.01
    assert config_from_env(env).input_ratio == 1.0  # the OpenTelemetry default argument
    assert config_from_env({**env, "OTEL_TRACES_SAMPLER": "always_on"}).input_ratio == 1.0
    proto = {**env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert config_from_env(proto).protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigError) as error:
        config_from_env({"OTEL_TRACES_EXPORTER": "otlp", **env})
    assert named in str(error.value) and "\n" not in str(error.value)


# -- traceparent --------------------------------------------------------------------------------


def test_traceparent_parsing() -> None:
    assert parse_traceparent(SAMPLED) == (TRACE, PARENT, True)
    assert parse_traceparent(UNSAMPLED) == (TRACE, PARENT, False)
    assert parse_traceparent(b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01") is None
    assert parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01") is None
    assert parse_traceparent(b"ff" + SAMPLED[2:]) is None
    assert parse_traceparent(SAMPLED + b"-extra") is None  # version 00 has exactly 4 fields
    assert parse_traceparent(b"01" + SAMPLED[2:] + b"-future") == (TRACE, PARENT, True)
    assert parse_traceparent(b"garbage") is None
    assert parse_traceparent(SAMPLED.replace(b"4bf9", b"xyzw")) is None
    assert tracing.traceparent(TRACE, PARENT) == SAMPLED


# -- record spans -------------------------------------------------------------------------------


def test_a_sampled_record_gets_a_child_span_and_passes_its_context_on(
    spans: InMemorySpanExporter,
) -> None:
    tracer = make_tracer(spans)
    headers = [("pipeline", b"p"), ("traceparent", SAMPLED), ("tracestate", b"k=v")]
    out = list(headers)
    received = time.perf_counter() - 0.05
    span = tracer.record_span("p.step", {"a": 1}, headers, out, received, at_input=False)
    assert span is not None
    span.end()
    [made] = finished(spans)
    assert made.name == "p.step"
    assert made.context.trace_id == TRACE
    assert made.parent is not None and made.parent.span_id == PARENT
    assert made.attributes is not None and made.attributes["a"] == 1
    assert made.end_time is not None and made.start_time is not None
    assert made.end_time - made.start_time >= 50_000_000  # it starts when the record was read
    assert out[0] == ("pipeline", b"p") and out[2] == ("tracestate", b"k=v")
    assert out[1] == ("traceparent", tracing.traceparent(TRACE, made.context.span_id))


def test_records_without_a_sampled_context_make_no_span(spans: InMemorySpanExporter) -> None:
    tracer = make_tracer(spans, ratio=0.0)
    for headers in ([("traceparent", UNSAMPLED)], [], [("traceparent", b"bad")]):
        out = list(headers)
        assert tracer.record_span("s", {}, headers, out, time.perf_counter(), True) is None
        assert out == headers
    assert finished(spans) == []


def test_the_input_ratio_starts_new_traces_only_at_inputs(spans: InMemorySpanExporter) -> None:
    tracer = make_tracer(spans, ratio=1.0)
    out: list[tuple[str, bytes]] = []
    assert tracer.record_span("s", {}, [], out, time.perf_counter(), at_input=False) is None
    span = tracer.record_span("s", {}, [], out, time.perf_counter(), at_input=True)
    assert span is not None
    span.end()
    [made] = finished(spans)
    assert made.parent is None
    assert out == [
        ("traceparent", tracing.traceparent(made.context.trace_id, made.context.span_id))
    ]
    with tracer.span("dataflow.pipeline.create", pipeline="p"):  # engine spans are roots
        span = tracer.record_span("s", {}, [], [], time.perf_counter(), at_input=True)
        assert span is not None
        span.end()
    assert finished(spans)[-2].parent is None


def test_a_join_output_links_every_part_with_its_wait(spans: InMemorySpanExporter) -> None:
    tracer = make_tracer(spans)
    other = b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
    now = time.perf_counter()
    parts = [
        ([("traceparent", SAMPLED)], now - 0.5, False),  # waited half a second in the window
        ([("traceparent", other)], now, False),  # completed the join
        ([], now - 0.1, False),  # not traced: no link, but its wait is listed
    ]
    out: list[tuple[str, bytes]] = [("traceparent", other)]
    span = tracer.output_span("p.join", {}, parts, 1, out)
    assert span is not None
    span.end()
    [made] = finished(spans)
    assert made.parent is not None and made.parent.span_id == 0x1111111111111111
    assert [link.context.span_id for link in made.links] == [PARENT, 0x1111111111111111]
    waits = [link.attributes["dataflow.wait_ms"] for link in made.links if link.attributes]
    assert waits[0] >= 500 and waits[1] < 100
    assert made.attributes is not None
    listed = made.attributes["dataflow.parts.wait_ms"]
    assert isinstance(listed, tuple) and len(listed) == 3 and listed[2] >= 100
    assert made.start_time is not None and made.end_time is not None
    assert made.end_time - made.start_time >= 500_000_000  # from the first part's arrival
    assert out == [("traceparent", tracing.traceparent(TRACE, made.context.span_id))]


def test_an_error_output_is_an_error_span(spans: InMemorySpanExporter) -> None:
    tracer = make_tracer(spans)
    parts = [([("traceparent", SAMPLED)], time.perf_counter(), False)]
    span = tracer.output_span("p.s", {}, parts, 0, [], error="malformed protobuf")
    assert span is not None
    span.end()
    [made] = finished(spans)
    assert made.status.status_code is StatusCode.ERROR
    assert made.status.description == "malformed protobuf"
    assert tracer.output_span("p.s", {}, [([], 0.0, False)], 0, []) is None


def test_span_helper_is_nothing_without_a_tracer(spans: InMemorySpanExporter) -> None:
    with tracing.span(None, "x", a=1):
        pass
    tracer = make_tracer(spans)
    with pytest.raises(RuntimeError), tracing.span(tracer, "dataflow.engine.start"):
        raise RuntimeError("broker down")
    [made] = finished(spans)
    assert made.name == "dataflow.engine.start"
    assert made.status.status_code is StatusCode.ERROR
    tracer.shutdown()


# -- a step's spans ---------------------------------------------------------------------------


def step_trace(tracer: Tracer) -> tracing.StepTrace:
    from dataflow.stages import StepStages
    from dataflow.topology import Source, StepSpec, Topology
    from dataflow.wire import ChainType

    ns = "seldon.ns"
    source = Source(f"{ns}.pipeline.p.inputs", "p", None, {}, ChainType.INPUT_INPUT)
    spec = StepSpec(0, (source,), (), f"{ns}.model.m.inputs", "inner", "inner", 0)
    topology = Topology("p", 2, "uid", (spec,), output_topic=f"{ns}.pipeline.p.outputs")
    return tracing.StepTrace(tracer, topology, spec, StepStages(spec, topology.output_topic, None))


class _Record:
    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.headers, self.offset, self.timestamp = headers, 12, int(time.time() * 1000) - 250


def test_a_step_span_is_named_for_pipeline_and_step(spans: InMemorySpanExporter) -> None:
    from aiokafka import TopicPartition

    trace = step_trace(make_tracer(spans))
    assert trace.inputs == {"seldon.ns.pipeline.p.inputs"}
    tp = TopicPartition("seldon.ns.pipeline.p.inputs", 3)
    for flags in (b"00", b"02", b"10"):  # not sampled: no span, headers untouched
        headers = [("traceparent", SAMPLED[:-2] + flags)]
        out = list(headers)
        assert trace.record(tp, _Record(headers), out, time.perf_counter()) is None
        assert out == headers
    assert trace.record(tp, _Record([]), [], time.perf_counter()) is None  # no root sampling
    for flags in (b"01", b"03", b"ff"):
        span = trace.record(tp, _Record([("traceparent", SAMPLED[:-2] + flags)]), [], 0.0)
        assert span is not None
        span.end()
    made = finished(spans)
    assert [s.name for s in made] == ["p.m"] * 3
    attributes = made[0].attributes
    assert attributes is not None
    assert attributes["seldon.pipeline"] == "p" and attributes["seldon.step"] == "m"
    assert attributes["messaging.kafka.message.offset"] == 12
    assert attributes["messaging.kafka.source.partition"] == 3
    assert 250 <= attributes["dataflow.queue_ms"] < 60_000  # type: ignore[operator]
    rooted = step_trace(make_tracer(spans, ratio=1.0))
    assert rooted.record(tp, _Record([]), [], time.perf_counter()) is not None


# -- the OTLP encoding --------------------------------------------------------------------------


def test_the_span_encoder_makes_the_sdks_request(spans: InMemorySpanExporter) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    tracer = make_tracer(spans, ratio=1.0)
    now = time.perf_counter()
    other = b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
    attributes = {"s": "x", "i": 7, "neg": -3, "f": 0.25, "b": True, "t": (1.5, 2.0), "u": "é"}
    tracer.record_span("p.a", attributes, [("traceparent", SAMPLED)], [], now, False).end()  # type: ignore[union-attr]
    tracer.record_span("p.root", {}, [], [], now, True).end()  # type: ignore[union-attr]
    parts = [([("traceparent", SAMPLED)], now - 0.5, False), ([("traceparent", other)], now, False),
             ([], now - 0.1, True)]  # fmt: skip
    tracer.output_span("p.join", {"k": "v"}, parts, 1, []).end()  # type: ignore[union-attr]
    tracer.output_span("p.e", {}, parts[:1], 0, [], error="bad").end()  # type: ignore[union-attr]
    with tracer.span("dataflow.pipeline.create", pipeline="p"):  # the SDK's own span
        pass
    with pytest.raises(RuntimeError), tracer.span("dataflow.start"):  # with an event
        raise RuntimeError("boom")
    made = finished(spans)
    assert len(made) == 6
    encoder = SpanEncoder()
    # The span with an event is left to the SDK's encoder, in a ResourceSpans of its own.
    for batch, same in ((made[:4], True), (made[:1] * 3, True), (made, False), (made[4:], False)):
        ours, sdk = encoder(batch), encode_spans(batch)
        assert _flat(ours) == _flat(sdk)
        assert (ours == sdk) is same
    assert encoder([]) == encode_spans([])


def _flat(request: Any) -> list[tuple[bytes, bytes, bytes]]:
    """(resource, scope, span) of every span of an OTLP request, serialized, in order."""
    return [
        (rs.resource.SerializeToString(deterministic=True),
         ss.scope.SerializeToString(deterministic=True), span.SerializeToString(deterministic=True))
        for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
    ]  # fmt: skip
