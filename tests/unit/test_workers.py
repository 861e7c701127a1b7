"""The supervisor's pure parts: a worker's settings, its restart delays, merged metrics."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from dataflow.settings import Settings
from dataflow.workers import merge_metrics, restart_delay, worker_env


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
        'dataflow_step_records_in_total{{pipeline="p",step="0",version="1"}} {n}\n'
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
