"""Prometheus metrics of the engine, refreshed from the steps' counters on each scrape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

if TYPE_CHECKING:
    from dataflow.engine import Engine

REGISTRY = CollectorRegistry()
_LABELS = ("pipeline", "step")

RECORDS_IN = Gauge("dataflow_step_records_in", "records consumed", _LABELS, registry=REGISTRY)
FILTERED = Gauge(
    "dataflow_step_records_filtered", "records of other pipelines", _LABELS, registry=REGISTRY
)
RECORDS_OUT = Gauge("dataflow_step_records_out", "records acknowledged", _LABELS, registry=REGISTRY)
ERRORS = Gauge(
    "dataflow_step_records_error", "records to the error topic", _LABELS, registry=REGISTRY
)
SCHEDULER = Gauge(
    "dataflow_scheduler_connected", "1 when the scheduler stream is up", registry=REGISTRY
)
PIPELINES = Gauge("dataflow_pipelines", "pipelines running", registry=REGISTRY)


def refresh(engine: Engine) -> None:
    """Copy the engine's counters into the gauges."""
    SCHEDULER.set(1 if engine.subscriber.connected else 0)
    PIPELINES.set(len(engine.pipelines))
    for gauge in (RECORDS_IN, FILTERED, RECORDS_OUT, ERRORS):
        gauge.clear()
    for pipeline in engine.pipelines.values():
        for step in pipeline.steps:
            labels = (pipeline.topology.name, str(step.spec.index))
            RECORDS_IN.labels(*labels).set(step.stats.records_in)
            FILTERED.labels(*labels).set(step.stats.filtered)
            RECORDS_OUT.labels(*labels).set(step.stats.acked)
            ERRORS.labels(*labels).set(step.stats.errors)
