"""A Seldon pipeline of three stand-in models, from pipeline inputs to pipeline outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Process, Proxy, engine, wait_until

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
