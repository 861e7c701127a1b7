"""Operations: probes, metrics, SASL, JSON logs; on a private broker that this module runs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.integration.harness import (
    REPO,
    Proxy,
    consume,
    create_topics,
    engine,
    free_broker_port,
    free_port,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka


def make_certs(folder: Path) -> None:
    """A CA, a broker and a client certificate for 127.0.0.1 (PEM, PKCS#8 keys)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=dataflow-test-ca")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("broker", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.raw.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", "san.cnf")  # fmt: skip
        openssl("pkcs8", "-topk8", "-nocrypt", "-in", f"{name}.raw.key", "-out", f"{name}.key")
    (folder / "broker.pem").write_text(
        (folder / "broker.key").read_text() + (folder / "broker.crt").read_text()
    )


class Broker:
    """A second broker of `scripts/kafka`, with SASL_PLAINTEXT (user alice) and mTLS listeners."""

    def __init__(self, folder: Path) -> None:
        self.port, self.sasl_port, self.ssl_port = free_broker_port(), free_port(), free_port()
        self.certs = folder / "certs"
        self.certs.mkdir()
        make_certs(self.certs)
        self.env = dict(
            os.environ,
            KAFKA_DIR=str(folder / "kafka"),
            KAFKA_PORT=str(self.port),
            KAFKA_SASL_PORT=str(self.sasl_port),
            KAFKA_SSL_PORT=str(self.ssl_port),
            KAFKA_SSL_KEYSTORE=str(self.certs / "broker.pem"),
            KAFKA_SSL_TRUSTSTORE=str(self.certs / "ca.pem"),
            KAFKA_HEAP="256m",
        )

    @property
    def plain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def run(self, command: str) -> None:
        subprocess.run(
            [str(REPO / "scripts" / "kafka"), command], env=self.env, check=True, timeout=120
        )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("broker"))
    while b.port + 1 in (b.sasl_port, b.ssl_port):  # the controller listens on port + 1
        b.port = free_broker_port()
        b.env["KAFKA_PORT"] = str(b.port)
    b.run("start")
    yield b
    b.run("stop")


def response(rid: str) -> bytes:
    tensor = ModelInferResponseInferOutputTensor(
        name="t", datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[1])
    )
    return bytes(ModelInferResponse(id=rid, outputs=[tensor]))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def pipeline(tmp_path: Path, name: str, src: str, sink: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"kind: PipelineUpdate\nname: {name}\nsteps:\n  - sources: [{src}]\n    sink: {sink}\n"
    )
    return path


async def test_sasl_plain_pipeline_and_json_logs(
    tmp_path: Path, broker: Broker, unique: str
) -> None:
    name, src, sink = (
        f"sasl-{unique}",
        f"seldon.s{unique}.model.a.outputs",
        f"seldon.s{unique}.model.b.inputs",
    )
    await create_topics(broker.plain, src)
    proxy = Proxy(tmp_path).start(pipeline(tmp_path, name, src, sink))
    eng = engine(
        tmp_path,
        broker.sasl,
        proxy,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="alice",
        kafka_sasl_password="alice-secret",
        log_format="json",
    )
    try:
        proxy.wait_state(name, "Ready", timeout=60)
        headers = [("pipeline", name.encode()), ("x-request-id", b"rid-42")]
        await produce(
            broker.plain, src, [(b"k", b"\x0a\xff", headers), (b"k", response("ok"), headers)]
        )
        out = await consume(broker.plain, sink, 1, timeout=30)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert len(out) == 1
    lines = [json.loads(line) for line in eng.output().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "message"} <= set(line) for line in lines)
    errors = [line for line in lines if "to error topic" in line["message"]]
    assert len(errors) == 1
    assert (errors[0]["pipeline"], errors[0]["step"], errors[0]["request_id"]) == (
        name,
        0,
        "rid-42",
    )


async def test_mutual_tls(tmp_path: Path, broker: Broker, unique: str) -> None:
    name, src, sink = (
        f"tls-{unique}",
        f"seldon.t{unique}.model.a.outputs",
        f"seldon.t{unique}.model.b.inputs",
    )
    await create_topics(broker.plain, src)
    await produce(broker.plain, src, [(b"k", response("tls"), [("pipeline", name.encode())])])
    proxy = Proxy(tmp_path).start(pipeline(tmp_path, name, src, sink))
    eng = engine(
        tmp_path,
        f"127.0.0.1:{broker.ssl_port}",
        proxy,
        kafka_security_protocol="SSL",
        kafka_tls_client_ca_path=str(broker.certs / "ca.pem"),
        kafka_tls_client_cert_path=str(broker.certs / "client.crt"),
        kafka_tls_client_key_path=str(broker.certs / "client.key"),
        kafka_tls_endpoint_identification_algorithm="https",
    )
    try:
        out = await consume(broker.plain, sink, 1, timeout=60)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert [r.key for r in out] == [b"k"]


def test_wrong_sasl_password_is_one_clear_line(tmp_path: Path, broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    env.update(
        SELDON_KAFKA_BOOTSTRAP_SERVERS=broker.sasl,
        SELDON_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SELDON_KAFKA_SASL_USERNAME="alice",
        SELDON_KAFKA_SASL_PASSWORD="not-her-password",
        SELDON_HEALTH_SERVER_PORT="0",
        SELDON_LOG_LEVEL_KAFKA="CRITICAL",
    )
    result = subprocess.run(
        ["python", "-m", "dataflow"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dataflow: cannot connect to Kafka at {broker.sasl} (SASL_PLAINTEXT):")
    assert "Authentication failed" in last


async def test_delivery_failure_is_reported_then_the_pipeline_heals(
    tmp_path: Path, broker: Broker, unique: str
) -> None:
    """The sink disappears: sends fail, the pipeline is reported Failed (not silently stuck),
    then it is rebuilt (the sink recreated) and the unsent records are delivered."""
    name = f"heal-{unique}"
    src, sink = f"seldon.f{unique}.model.a.outputs", f"seldon.f{unique}.model.b.inputs"
    await create_topics(broker.plain, src)
    proxy = Proxy(tmp_path).start(pipeline(tmp_path, name, src, sink))
    eng = engine(tmp_path, broker.plain, proxy, kafka_producer_timeout_ms="1500")
    mine = [("pipeline", name.encode())]
    try:
        proxy.wait_state(name, "Ready", timeout=60)
        await produce(broker.plain, src, [(None, response("before"), mine)])
        assert len(await consume(broker.plain, sink, 1, timeout=30)) == 1

        admin = AIOKafkaAdminClient(bootstrap_servers=broker.plain)
        await admin.start()
        try:
            await admin.delete_topics([sink])
        finally:
            await admin.close()
        await asyncio.sleep(1.0)
        await produce(broker.plain, src, [(None, response(f"r{i}"), mine) for i in range(5)])

        failed = await asyncio.to_thread(proxy.wait_state, name, "Failed", 60)
        assert "pipeline data streams error" in failed["reason"], failed
        await asyncio.to_thread(proxy.wait_state, name, "Ready", 60)
        out = await consume(broker.plain, sink, 5, timeout=60)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    ids = {ModelInferRequest().parse(r.value).id for r in out}
    assert {f"r{i}" for i in range(5)} <= ids


async def test_probes_and_metrics_then_liveness_without_broker(
    tmp_path: Path, broker: Broker, unique: str
) -> None:
    """Runs last in this module: it stops the module's broker."""
    name, src, sink = (
        f"hp-{unique}",
        f"seldon.h{unique}.model.a.outputs",
        f"seldon.h{unique}.model.b.inputs",
    )
    await create_topics(broker.plain, src)
    port = free_port()
    proxy = Proxy(tmp_path)  # not started: the scheduler is down at first
    eng = engine(tmp_path, broker.plain, proxy, health_server_port=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(base + "/live")[0] == 200, 20, "the health server")
        # The health server answers before the engine has started: /startup says when it has.
        wait_until(lambda: get(base + "/startup")[0] == 200, 20, "/startup 200")
        status, body = get(base + "/ready")
        assert status == 503 and json.loads(body)["status"] == "DOWN"

        proxy.start(pipeline(tmp_path, name, src, sink))
        proxy.wait_state(name, "Ready", timeout=60)
        wait_until(lambda: get(base + "/ready")[0] == 200, 10, "/ready 200")
        assert json.loads(get(base + "/ready")[1])["status"] == "UP"

        mine = [("pipeline", name.encode())]
        other = [("pipeline", b"someone-else")]
        await produce(broker.plain, src, [(None, response(str(i)), mine) for i in range(20)])
        await produce(broker.plain, src, [(None, response("x"), other) for _ in range(7)])
        await consume(broker.plain, sink, 20, timeout=30)

        def sample(metric: str) -> float | None:
            for line in get(base + "/metrics")[1].splitlines():
                if line.startswith(metric + "{") and f'pipeline="{name}"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return None

        wait_until(lambda: sample("dataflow_step_records_in_total") == 27, 10, "27 records in")
        assert sample("dataflow_step_records_filtered_total") == 7
        wait_until(lambda: sample("dataflow_step_records_out_total") == 20, 10, "20 out")
        assert sample("dataflow_step_records_error_total") == 0
        assert sample("dataflow_step_latency_seconds_count") == 20
        assert sample("dataflow_consumer_lag") == 0
        # Steps are labelled by name (the sink's model) and index.
        lines = get(base + "/metrics")[1].splitlines()
        assert any(
            line.startswith("dataflow_step_records_in_total{")
            and f'pipeline="{name}"' in line
            and 'step="b",step_index="0"' in line
            for line in lines
        ), [line for line in lines if line.startswith("dataflow_step_records_in_total")]
        assert "dataflow_scheduler_connected 1.0" in get(base + "/metrics")[1]

        before = len(eng.output().splitlines())
        broker.run("stop")
        stopped = time.monotonic()
        for _ in range(6):
            assert get(base + "/live")[0] == 200
            await asyncio.sleep(0.5)
        # Not ready once the broker was out of reach for SELDON_BROKER_READY_TIMEOUT_MS (5 s).
        wait_until(lambda: get(base + "/ready")[0] == 503, 20, "/ready 503 without the broker")
        kafka = json.loads(get(base + "/ready")[1])["checks"]["kafka"]
        assert "kafka unreachable" in kafka["message"], kafka
        assert get(base + "/live")[0] == 200
        await asyncio.sleep(3)
        down_lines = eng.output().splitlines()[before:]
        down_for = time.monotonic() - stopped
        broker.run("start")
        wait_until(lambda: get(base + "/ready")[0] == 200, 60, "/ready 200 with the broker back")
        wait_until(lambda: "reconnected" in eng.output(), 10, "the reconnect line")
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0, eng.output()[-2000:]
    assert len(down_lines) / down_for < 5, "\n".join(down_lines[-40:])
    assert re.search(r"kafka unreachable for \d+ s; reconnected", eng.output())
