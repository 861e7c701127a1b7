"""A Seldon pipeline of three stand-in models, from pipeline inputs to pipeline outputs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow.proto.inference import ModelInferResponse
from tests.integration.harness import REPO, Process, Proxy, consume, engine, produce, wait_until

pytestmark = pytest.mark.kafka


def test_chain_then_join_of_two_branches(tmp_path: Path, bootstrap: str, unique: str) -> None:
    ns, name = f"tri{unique}", f"tri-{unique}"
    spec = tmp_path / "tri.yaml"
    spec.write_text(
        f"""apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: {name}
  namespace: {ns}
spec:
  steps:
    - name: m1
    - name: m2
      inputs: [m1]
    - name: m3
      inputs: [m1.outputs.INPUT0]
  output:
    steps: [m2, m3]
"""
    )
    models = {
        "m1": ["--fn", "add", "--add", "1"],
        "m2": ["--fn", "add", "--add", "10"],
        "m3": ["--fn", "rename", "--rename", "INPUT0=OUT3"],
    }
    procs = [
        Process(
            m,
            [sys.executable, "scripts/model.py", "--name", m, "--namespace", ns,
             "--bootstrap-servers", bootstrap, *args],
            {"PATH": "/usr/bin:/bin"},
            tmp_path / f"model-{m}.log",
        ).start()
        for m, args in models.items()
    ]  # fmt: skip
    proxy = Proxy(tmp_path).start(spec)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        for p in procs:
            wait_until(lambda p=p: "ready" in p.output(), 60, f"model {p.name}")
        proxy.wait_state(name, "Ready", timeout=60)
        answer = subprocess.run(
            [sys.executable, "scripts/infer.py", name, "--namespace", ns,
             "--bootstrap-servers", bootstrap, "--tensor", "INPUT0:FP32:1,4:1,2,3,4",
             "--id", "req-1", "--json", "--timeout", "60"],
            capture_output=True, text=True, timeout=90, cwd=REPO,
        )  # fmt: skip
    finally:
        code = eng.stop()
        proxy.stop()
        for p in procs:
            p.stop()
    assert answer.returncode == 0, answer.stderr + eng.output()[-2000:]
    response = json.loads(answer.stdout)
    assert response["id"] == "req-1"
    assert [(o["name"], o["shape"], o["data"]) for o in response["outputs"]] == [
        ("INPUT0", [1, 4], [12.0, 13.0, 14.0, 15.0]),
        ("OUT3", [1, 4], [2.0, 3.0, 4.0, 5.0]),
    ]
    assert code == 0


def test_pipeline_fed_by_another_and_errors_reach_the_outputs(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    ns, first, second = f"ext{unique}", f"first-{unique}", f"second-{unique}"
    spec_first = tmp_path / "first.yaml"
    spec_first.write_text(
        f"""apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {{name: {first}, namespace: {ns}}}
spec:
  steps: [{{name: e1}}]
  output: {{steps: [e1]}}
"""
    )
    spec_second = tmp_path / "second.yaml"
    spec_second.write_text(
        f"""apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {{name: {second}, namespace: {ns}}}
spec:
  input: {{externalInputs: [{first}.outputs]}}
  steps: [{{name: e2}}]
  output: {{steps: [e2]}}
"""
    )
    procs = [
        Process(
            m,
            [sys.executable, "scripts/model.py", "--name", m, "--namespace", ns,
             "--bootstrap-servers", bootstrap, "--fn", "add", "--add", add],
            {"PATH": "/usr/bin:/bin"},
            tmp_path / f"model-{m}.log",
        ).start()
        for m, add in (("e1", "1"), ("e2", "100"))
    ]  # fmt: skip
    proxy = Proxy(tmp_path).start(spec_first, spec_second)
    eng = engine(tmp_path, bootstrap, proxy)

    def infer(pipeline: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "scripts/infer.py", pipeline, "--namespace", ns,
             "--bootstrap-servers", bootstrap, "--json", "--timeout", "60", *extra],
            capture_output=True, text=True, timeout=90, cwd=REPO,
        )  # fmt: skip

    try:
        for p in procs:
            wait_until(lambda p=p: "ready" in p.output(), 60, f"model {p.name}")
        proxy.wait_state(first, "Ready", timeout=60)
        proxy.wait_state(second, "Ready", timeout=60)
        # A request to the first pipeline comes out of the second one, through both models.
        chained = infer(first, "--tensor", "INPUT0:FP32:1,2:1,2", "--id", "via-first")
        out = asyncio.run(consume(bootstrap, f"seldon.{ns}.pipeline.{second}.outputs", 1, 60))
        # A request the first pipeline cannot parse: its error step answers on its outputs.
        asyncio.run(
            produce(
                bootstrap,
                f"seldon.{ns}.pipeline.{first}.inputs",
                [(b"0.bad", b"\x0a\xff\xff", [("pipeline", first.encode())])],
            )
        )
        errors = asyncio.run(consume(bootstrap, f"seldon.{ns}.pipeline.{first}.outputs", 2, 60))
    finally:
        code = eng.stop()
        proxy.stop()
        for p in procs:
            p.stop()
    assert chained.returncode == 0, chained.stderr
    assert json.loads(chained.stdout)["outputs"][0]["data"] == [2.0, 3.0]
    answer = ModelInferResponse().parse(out[0].value)
    assert answer.id == "via-first"
    assert list(answer.outputs[0].contents.fp32_contents) == [102.0, 103.0]
    assert dict(out[0].headers)["pipeline"] == second.encode()
    bad = [r for r in errors if r.key == b"0.bad"]
    assert len(bad) == 1 and "malformed" in dict(bad[0].headers)["seldon-pipeline-errors"].decode()
    assert code == 0
