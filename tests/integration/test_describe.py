"""Describe a running pipeline: the engine's /pipelines, the proxy's describe, the renderers."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow.describe import render_dot, render_text
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.proxy.client import ClientError, ControlClient
from tests.integration.harness import (
    REPO,
    Proxy,
    create_topics,
    engine,
    free_port,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka

CHAIN = REPO / "compose" / "pipelines" / "samples" / "chain.yaml"


def chain_spec(tmp_path: Path, name: str) -> Path:
    """The chain sample under a name and namespace of its own."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        CHAIN.read_text().replace("  name: tfsimples", f"  name: {name}\n  namespace: {name}")
    )
    return spec


def chain_topics(name: str) -> tuple[str, str]:
    """The pipeline's inputs and tfsimple1's outputs."""
    return f"seldon.{name}.pipeline.{name}.inputs", f"seldon.{name}.model.tfsimple1.outputs"


def request(rid: str) -> bytes:
    tensor = ModelInferRequestInferInputTensor(
        name="INPUT0",
        datatype="INT32",
        shape=[1, 2],
        contents=InferTensorContents(int_contents=[1, 2]),
    )
    return bytes(ModelInferRequest(id=rid, inputs=[tensor]))


def response(rid: str) -> bytes:
    outputs = [
        ModelInferResponseInferOutputTensor(
            name=n,
            datatype="INT32",
            shape=[1, 2],
            contents=InferTensorContents(int_contents=[3, 4]),
        )
        for n in ("OUTPUT0", "OUTPUT1")
    ]
    return bytes(ModelInferResponse(model_name="tfsimple1", id=rid, outputs=outputs))


async def send(bootstrap: str, name: str, count: int, start: int = 0) -> None:
    """`count` requests to the pipeline and `count` tfsimple1 responses, and one bad record."""
    inputs, outputs = chain_topics(name)
    headers = [("pipeline", name.encode())]
    ids = [f"r-{i}" for i in range(start, start + count)]
    await produce(bootstrap, inputs, [(None, request(i), headers) for i in ids])
    await produce(bootstrap, outputs, [(None, response(i), headers) for i in ids])


@pytest.fixture
def running(tmp_path: Path, bootstrap: str, unique: str) -> Iterator[tuple[Proxy, int, str]]:
    """A proxy and one engine (health server on a known port) running the chain sample."""
    name = f"desc-{unique}"
    health = free_port()
    asyncio.run(create_topics(bootstrap, *chain_topics(name)))
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy, health_server_port=str(health))
    try:
        proxy.load(chain_spec(tmp_path, name))
        proxy.wait_state(name, "Ready", timeout=60)
        yield proxy, health, name
    finally:
        eng.stop()
        proxy.stop()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def step(d: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in d["steps"] if s["name"] == name]
    assert found, [s["name"] for s in d["steps"]]
    return found[0]


async def test_engine_and_proxy_describe_the_chain_with_live_figures(
    running: tuple[Proxy, int, str], bootstrap: str
) -> None:
    proxy, health, name = running
    own = await asyncio.to_thread(get_json, f"http://127.0.0.1:{health}/pipelines")
    assert own["engine"] == "engine-a"
    assert [p["name"] for p in own["pipelines"]] == [name]
    assert own["pipelines"][0]["state"] == "Ready"

    client = ControlClient(proxy.url)
    d = client.describe(name)
    assert [s["name"] for s in d["steps"]] == [
        "tfsimple1",
        "tfsimple2",
        f"{name}.errors",
        f"{name}.outputs",
    ]
    second = step(d, "tfsimple2")
    assert second["sources"][0]["topic"] == f"seldon.{name}.model.tfsimple1.outputs"
    assert second["sources"][0]["renames"] == {"OUTPUT0": "INPUT0", "OUTPUT1": "INPUT1"}
    assert second["sink"] == f"seldon.{name}.model.tfsimple2.inputs"
    assert second["consumer_group"]  # only the engine knows it
    assert d["engines"]["engine-a"]["state"] == "Ready"
    assert d["engines"]["engine-a"]["url"].startswith("http://127.0.0.1:")

    await send(bootstrap, name, 30)

    def counted() -> dict[str, Any] | None:
        now = client.describe(name)
        live = step(now, "tfsimple2")["live"]
        return (
            now if live["totals"]["records_out"] >= 30 and live["rates"]["records_in"] > 0 else None
        )

    d = wait_until(counted, 30, "30 records through tfsimple2 with a rate")
    first = step(d, "tfsimple1")["live"]
    assert first["totals"]["records_in"] == 30 and first["totals"]["errors"] == 0
    assert set(first["lag"]) == {f"seldon.{name}.pipeline.{name}.inputs/0"}

    # A record that cannot be converted: an error with its reason.
    outputs = chain_topics(name)[1]
    await produce(
        bootstrap, outputs, [(None, b"\xff\xff not protobuf", [("pipeline", name.encode())])]
    )
    d = wait_until(lambda: (x := client.describe(name))["last_errors"] and x, 30, "an error")
    assert d["last_errors"][0]["step"] == "tfsimple2"
    assert step(d, "tfsimple2")["live"]["totals"]["errors"] == 1

    text = render_text(d)
    assert "\nstep tfsimple1 (#0)\n" in text and "(OUTPUT0->INPUT0, OUTPUT1->INPUT1)" in text
    dot = render_dot(d)
    assert f'"t:{outputs}" -> "s:1"' in dot
    if shutil.which("dot"):
        rendered = await asyncio.to_thread(
            subprocess.run, ["dot", "-Tsvg"], input=dot, capture_output=True, text=True
        )
        assert rendered.returncode == 0 and "tfsimple2" in rendered.stdout, rendered.stderr


def test_an_unknown_pipeline_is_one_line(running: tuple[Proxy, int, str]) -> None:
    proxy, _, _ = running
    with pytest.raises(ClientError, match=r"^unknown pipeline 'nope'$"):
        ControlClient(proxy.url).describe("nope")


SAMPLES = REPO / "compose" / "pipelines" / "samples"


def sample_spec(tmp_path: Path, sample: str, name: str) -> Path:
    """A Seldon Pipeline sample under a name and namespace of its own."""
    text = (SAMPLES / sample).read_text()
    old = text.split("metadata:\n  name: ", 1)[1].split("\n", 1)[0]
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        text.replace(f"  name: {old}\n", f"  name: {name}\n  namespace: {name}\n", 1).replace(
            f"{old}.inputs", f"{name}.inputs"
        )
    )
    return spec


def tensor_response(rid: str, *names: str) -> bytes:
    outputs = [
        ModelInferResponseInferOutputTensor(
            name=n, datatype="INT32", shape=[1, 1], contents=InferTensorContents(int_contents=[1])
        )
        for n in names
    ]
    return bytes(ModelInferResponse(id=rid, outputs=outputs))


def tensor_request(rid: str, *names: str) -> bytes:
    inputs = [
        ModelInferRequestInferInputTensor(
            name=n, datatype="INT32", shape=[1, 1], contents=InferTensorContents(int_contents=[1])
        )
        for n in names
    ]
    return bytes(ModelInferRequest(id=rid, inputs=inputs))


async def test_describe_the_join_and_trigger_samples_with_live_figures(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    join, trig = f"dj-{unique}", f"dt-{unique}"
    one, two = f"seldon.{join}.model.tfsimple1.outputs", f"seldon.{join}.model.tfsimple2.outputs"
    trig_inputs = f"seldon.{trig}.pipeline.{trig}.inputs"
    await create_topics(bootstrap, f"seldon.{join}.pipeline.{join}.inputs", one, two, trig_inputs)
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        proxy.load(sample_spec(tmp_path, "join.yaml", join))
        proxy.load(sample_spec(tmp_path, "trigger.yaml", trig))
        proxy.wait_state(join, "Ready", timeout=60)
        proxy.wait_state(trig, "Ready", timeout=60)
        client = ControlClient(proxy.url)

        joined = step(client.describe(join), "tfsimple3")
        assert joined["join"] == "inner" and joined["window_ms"] == 1000
        assert [s["topic"] for s in joined["sources"]] == [one, two]
        assert joined["state_topic"].endswith("-changelog")
        gated = step(client.describe(trig), "mul10")
        assert [t["topic"] for t in gated["triggers"]] == [trig_inputs]  # ok1, ok2: one topic
        assert "ok1" in str(gated["triggers"][0]["tensors"])
        assert gated["triggers_join"] == "any"

        headers = [("pipeline", join.encode())]
        keys = [f"k{i}".encode() for i in range(10)]
        await produce(bootstrap, one, [(k, tensor_response("a", "OUTPUT0"), headers) for k in keys])
        await produce(bootstrap, two, [(k, tensor_response("b", "OUTPUT1"), headers) for k in keys])
        await produce(
            bootstrap,
            trig_inputs,
            [(k, tensor_request("t", "INPUT", "ok1"), [("pipeline", trig.encode())]) for k in keys],
        )

        def through(name: str, step_name: str) -> dict[str, Any] | None:
            d = client.describe(name)
            live = step(d, step_name)["live"]
            return d if live["totals"]["records_out"] >= 10 else None

        d = wait_until(lambda: through(join, "tfsimple3"), 30, "10 joined records")
        assert step(d, "tfsimple3")["live"]["totals"]["records_in"] == 20
        d = wait_until(lambda: through(trig, "mul10"), 30, "10 gated records")
        assert "trigger" in render_text(d)
    finally:
        eng.stop()
        proxy.stop()
