"""The supervisor without processes: a worker's settings, restart delays, merged metrics, and
what it forwards to its workers and answers the scheduler."""

from __future__ import annotations

import asyncio

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from dataflow.metrics import merge_metrics
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)
from dataflow.settings import Settings
from dataflow.worker_process import restart_delay, worker_env
from dataflow.workers import Supervisor

Op = PipelineUpdateMessagePipelineOperation
READY = "pipeline data streams: ready"


def test_a_worker_gets_every_setting_but_its_identity_and_the_local_scheduler() -> None:
    parent = Settings(
        dataflow_replica_id="engine-a",
        num_cores=2,
        upstream_host="scheduler",
        upstream_port=9008,
        health_server_port=8000,
        kafka_bootstrap_servers="broker:9092",
        kafka_sasl_password=SecretStr("s3cret"),
        shutdown_timeout_seconds=7.5,
        pod_namespace="ns",
    )
    env = worker_env(
        parent,
        1,
        upstream_port=4321,
        health_port=5555,
        instance="engine-a",
        environ={"PATH": "/bin", "SELDON_UPSTREAM_HOST": "stale", "seldon_num_cores": "9"},
    )
    assert env["PATH"] == "/bin"
    assert "seldon_num_cores" not in env
    assert env["SELDON_NUM_CORES"] == "1"
    assert env["SELDON_DATAFLOW_REPLICA_ID"] == "engine-a-w1"
    assert env["SELDON_KAFKA_GROUP_INSTANCE_ID"] == "engine-a-w1"
    assert (env["SELDON_UPSTREAM_HOST"], env["SELDON_UPSTREAM_PORT"]) == ("127.0.0.1", "4321")
    assert env["SELDON_UPSTREAM_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert (env["SELDON_HEALTH_SERVER_HOST"], env["SELDON_HEALTH_SERVER_PORT"]) == (
        "127.0.0.1",
        "5555",
    )
    assert env["SELDON_KAFKA_BOOTSTRAP_SERVERS"] == "broker:9092"
    assert env["SELDON_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert env["SELDON_SHUTDOWN_TIMEOUT_SECONDS"] == "7.5"
    assert env["SELDON_POD_NAMESPACE"] == "ns"
    assert "SELDON_CORES_COUNT" not in env  # unset stays unset
    # What the worker makes of it: the parent's settings, but who it is and where it listens.
    worker = Settings(
        **{k.removeprefix("SELDON_").lower(): v for k, v in env.items() if k.startswith("SELDON_")}
    )
    same = {"health_server_port", "health_server_host", "upstream_host", "upstream_port"}
    same |= {"dataflow_replica_id", "kafka_group_instance_id", "num_cores"}
    for name in Settings.model_fields:
        if name not in same:
            assert getattr(worker, name) == getattr(parent, name), name


def test_restart_delays_double_up_to_a_cap_and_reset_after_a_long_run() -> None:
    delays = []
    delay = None
    for _ in range(6):
        delay = restart_delay(delay, ran=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert restart_delay(5.0, ran=31.0) == 0.5


def test_metrics_of_the_workers_are_merged_with_a_worker_label() -> None:
    worker_text = (
        "# HELP dataflow_step_records_in_total records consumed\n"
        "# TYPE dataflow_step_records_in_total counter\n"
        'dataflow_step_records_in_total{{pipeline="p",step="m",step_index="0",version="1"}} {n}\n'
        "# HELP dataflow_scheduler_connected 1 when the scheduler stream is up\n"
        "# TYPE dataflow_scheduler_connected gauge\n"
        "dataflow_scheduler_connected 1.0\n"
    )
    own = GaugeMetricFamily("dataflow_scheduler_connected", "1 when the scheduler stream is up")
    own.add_metric([], 0)
    text = merge_metrics(
        {"0": worker_text.format(n=5), "1": worker_text.format(n=7)}, [own]
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    records = families["dataflow_step_records_in"].samples
    assert sorted((s.labels["worker"], s.value) for s in records) == [("0", 5.0), ("1", 7.0)]
    # Only the supervisor's scheduler stream: the workers' local ones are left out.
    assert [(s.labels, s.value) for s in families["dataflow_scheduler_connected"].samples] == [
        ({}, 0.0)
    ]
    assert text.count("# TYPE dataflow_step_records_in_total counter") == 1


def _status(worker: str, op: Op, ts: int, reason: str = READY) -> PipelineUpdateStatusMessage:
    update = PipelineUpdateMessage(op=op, pipeline="p", uid="u", timestamp=ts, stream=worker)
    return PipelineUpdateStatusMessage(update=update, success=True, reason=reason)


async def test_the_supervisor_forwards_replays_and_answers_once() -> None:
    settings = Settings(dataflow_replica_id="e", num_cores=2, kafka_bootstrap_servers="127.0.0.1:1")
    supervisor = Supervisor(settings, environ={})
    sent: list[tuple[str, str, int, bool, str]] = []

    async def ack(update: PipelineUpdateMessage, op: Op, success: bool, reason: str) -> bool:
        sent.append((op.name, update.uid, update.timestamp, success, reason))
        return True

    supervisor.subscriber.ack = ack  # type: ignore[method-assign]

    async def settle() -> None:
        while supervisor._acks:
            await asyncio.gather(*supervisor._acks)

    create = PipelineUpdateMessage(op=Op.Create, pipeline="p", uid="u", timestamp=1)
    supervisor._on_update(create)  # before any worker subscribed: kept for them
    w0 = supervisor.subscription("e-w0")
    w1 = supervisor.subscription("e-w1")
    assert await anext(w0) == create
    assert await anext(w1) == create
    supervisor.worker_ack(_status("e-w0", Op.Create, 1))
    await settle()
    assert sent == []  # e-w1 has not answered
    supervisor.worker_ack(_status("e-w1", Op.Create, 1))
    supervisor.worker_ack(_status("x-w9", Op.Create, 1))  # not a connected worker: ignored
    await settle()
    assert sent == [("Create", "u", 1, True, READY)]

    # A Delete goes to both; one worker's stream ends: the other's answer is the engine's.
    delete = PipelineUpdateMessage(op=Op.Delete, pipeline="p", uid="u", timestamp=2)
    supervisor._on_update(delete)
    assert await anext(w0) == delete
    assert await anext(w1) == delete
    await w1.aclose()
    supervisor.worker_ack(_status("e-w0", Op.Delete, 2, "pipeline removed"))
    await settle()
    assert sent[1:] == [("Delete", "u", 2, True, "pipeline removed")]

    # An update that does not decode is refused here, never forwarded.
    identity = PipelineUpdateMessage(op=Op.Create, pipeline="q", uid="v", timestamp=5)
    supervisor._on_malformed(identity, "malformed PipelineUpdateMessage: x")
    await settle()
    assert sent[2:] == [("Create", "v", 5, False, "malformed PipelineUpdateMessage: x")]
    await w0.aclose()
    supervisor.subscriber.close()


def test_pipelines_of_the_workers_are_summed_per_step() -> None:
    from dataflow.describe import describe_topology, figures, merge_pipelines
    from dataflow.stats import StepStats
    from dataflow.topology import Source, StepSpec, Topology
    from dataflow.wire import ChainType

    source = Source("seldon.n.model.a.outputs", "p", None, {}, ChainType.OUTPUT_INPUT)
    spec = StepSpec(0, (source,), (), "seldon.n.model.b.inputs", "inner", "inner", 0)
    topology = Topology("p", 1, "u1", (spec,))

    def worker(n: int, state: str, partition: int) -> dict[str, object]:
        live = figures(StepStats(records_in=n), {("seldon.n.model.a.outputs", partition): n}, {})
        return describe_topology(topology, state=state, live=lambda i: live)

    merged = merge_pipelines({"0": [worker(3, "Ready", 0)], "1": [worker(4, "Rebalancing", 1)]})
    assert len(merged) == 1
    (one,) = merged
    assert one["state"] == "Rebalancing"
    live = one["steps"][0]["live"]
    assert live["totals"]["records_in"] == 7 and live["lag_total"] == 7
    assert sorted(one["engines"]) == ["0", "1"]
