"""Prometheus metrics of the engine, collected from the steps' own counters on each scrape.

Per pipeline and step: records in, filtered out (another pipeline's), out (acknowledged by the
broker), to the error topic, conversion and consume-to-ack latency histograms, consumer lag per
partition; and the scheduler connection state. Steps are labelled by name (`step`) and index
(`step_index`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from dataflow.describe import step_names

if TYPE_CHECKING:
    from dataflow.engine import Engine

#: `step` is the step's name (`dataflow.describe.step_names`), `step_index` its index.
_LABELS = ["pipeline", "version", "step", "step_index"]


class EngineCollector(Collector):
    """Reads one engine's state when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the engine."""
        engine = self.engine
        connected = GaugeMetricFamily(
            "dataflow_scheduler_connected", "1 when the scheduler stream is up"
        )
        connected.add_metric([], 1 if engine.subscriber.connected else 0)
        yield connected
        pipelines = GaugeMetricFamily("dataflow_pipelines", "pipelines created on this engine")
        pipelines.add_metric([], len(engine.pipelines))
        yield pipelines
        loop_lag = HistogramMetricFamily(
            "dataflow_event_loop_lag_seconds",
            "how much later than asked the engine's event loop ran a 0.1 s timer",
        )
        hist = engine.watchdog.lag.histogram
        loop_lag.add_metric([], hist.cumulative(), hist.total)
        yield loop_lag
        gc_full = CounterMetricFamily(
            "dataflow_gc_full_seconds", "time in full (oldest generation) garbage collections"
        )
        gc_full.add_metric([], engine.watchdog.lag.gc_seconds)
        yield gc_full

        counters = {
            "records_in": CounterMetricFamily(
                "dataflow_step_records_in", "records consumed", labels=_LABELS
            ),
            "filtered": CounterMetricFamily(
                "dataflow_step_records_filtered",
                "records dropped because their pipeline header names another pipeline",
                labels=_LABELS,
            ),
            "acked": CounterMetricFamily(
                "dataflow_step_records_out", "records sent and acknowledged", labels=_LABELS
            ),
            "errors": CounterMetricFamily(
                "dataflow_step_records_error", "records sent to the error topic", labels=_LABELS
            ),
            "send_failures": CounterMetricFamily(
                "dataflow_step_send_failures", "failed send attempts (retried)", labels=_LABELS
            ),
            "empty": CounterMetricFamily(
                "dataflow_step_records_empty",
                "records that converted to nothing (no tensor left, an empty message)",
                labels=_LABELS,
            ),
            "late": CounterMetricFamily(
                "dataflow_step_records_late",
                "records behind the step's stream time by more than the window",
                labels=_LABELS,
            ),
            "restored": CounterMetricFamily(
                "dataflow_step_state_restored",
                "state entries read back from the changelog",
                labels=_LABELS,
            ),
            "state_writes": CounterMetricFamily(
                "dataflow_step_state_writes",
                "state entries written to the changelog",
                labels=_LABELS,
            ),
            "state_unwritten": CounterMetricFamily(
                "dataflow_step_state_unwritten",
                "state entries that left the state before a changelog flush had to write them",
                labels=_LABELS,
            ),
            "state_full": CounterMetricFamily(
                "dataflow_step_state_full",
                "times the step's state reached its bound",
                labels=_LABELS,
            ),
        }
        gauges = {
            "state_records": GaugeMetricFamily(
                "dataflow_step_state_records", "entries in the step's state", labels=_LABELS
            ),
            "state_bytes": GaugeMetricFamily(
                "dataflow_step_state_bytes",
                "key and value bytes in the step's state",
                labels=_LABELS,
            ),
        }
        convert = HistogramMetricFamily(
            "dataflow_step_convert_seconds", "wire conversion time per record", labels=_LABELS
        )
        latency = HistogramMetricFamily(
            "dataflow_step_latency_seconds",
            "from consuming a record to the broker's ack of its output",
            labels=_LABELS,
        )
        lag = GaugeMetricFamily(
            "dataflow_consumer_lag",
            "records behind the partition's high watermark",
            labels=[*_LABELS, "topic", "partition"],
        )
        for pipeline in list(engine.pipelines.values()):
            topology = pipeline.topology
            names = step_names(topology)
            for step in pipeline.steps:
                index = step.spec.index
                labels = [topology.name, str(topology.version), names[index], str(index)]
                for attr, counter in counters.items():
                    counter.add_metric(labels, getattr(step.stats, attr))
                for attr, gauge in gauges.items():
                    gauge.add_metric(labels, getattr(step.stats, attr))
                for family, hist in (
                    (convert, step.stats.convert_seconds),
                    (latency, step.stats.latency_seconds),
                ):
                    family.add_metric(labels, hist.cumulative(), hist.total)
                for tp, behind in step.lag().items():
                    lag.add_metric([*labels, tp.topic, str(tp.partition)], behind)
        yield from counters.values()
        yield from gauges.values()
        yield convert
        yield latency
        yield lag


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding the collector of `engine` (one registry per engine)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


class _Families(Collector):
    """Yields metric families collected beforehand (one scrape)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_metrics(texts: Mapping[str, str], own: list[Metric]) -> bytes:
    """One exposition of the workers' metrics (`texts` by worker label) and `own`.

    Every worker sample gets a `worker` label; families of the same name are merged. The
    workers' `dataflow_scheduler_connected` (their local stream) is left out: `own` has the
    supervisor's, the scheduler's stream.
    """
    families: dict[str, Metric] = {}
    for metric in own:
        families[metric.name] = metric
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text):
            if family.name == "dataflow_scheduler_connected":
                continue
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples.extend(
                Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
