"""`dataflow` against a running proxy and engine: load, status (all, one pipeline, --json,
--watch), unload, describe, and the broker script's verbs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Process, Proxy, engine, sigint_default, wait_until

pytestmark = pytest.mark.kafka

CHAIN = REPO / "compose" / "pipelines" / "samples" / "chain.yaml"


def dataflow(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    return subprocess.run(
        [sys.executable, "-m", "dataflow", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "NO_COLOR": "1"},
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def running(tmp_path: Path, bootstrap: str, unique: str) -> Iterator[tuple[Proxy, str, Path]]:
    """A proxy and one engine (`engine-a`), and a chain spec of a name of its own."""
    name = f"cli-{unique}"
    spec = tmp_path / "chain.yaml"
    spec.write_text(
        CHAIN.read_text().replace("  name: tfsimples", f"  name: {name}\n  namespace: {name}")
    )
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        wait_until(lambda: proxy_has(proxy), 30, "the engine's subscription")
        yield proxy, name, spec
    finally:
        eng.stop()
        proxy.stop()


def proxy_has(proxy: Proxy) -> bool:
    import urllib.request

    with urllib.request.urlopen(proxy.url + "/subscribers", timeout=5) as response:
        return bool(json.loads(response.read())["subscribers"])


def test_load_status_one_pipeline_watch_and_unload(running: tuple[Proxy, str, Path]) -> None:
    proxy, name, spec = running
    url = ("--url", proxy.url)
    loaded = dataflow("load", str(spec), "--wait", "60", *url)
    assert loaded.returncode == 0, loaded.stderr
    assert f"{spec}: created: {name} v1 (uid " in loaded.stdout
    assert f"{name} v1 (uid " in loaded.stdout and ": Ready - " in loaded.stdout

    table = dataflow("status", *url)
    assert table.returncode == 0 and f"{name}  v1  Ready  " in table.stdout

    one = dataflow("status", name, *url)
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].startswith(f"{name} v1 (uid ")
    assert lines[1].startswith("  state:    Ready - ")
    assert lines[2] == "  engines:  1/1 ready, 0/1 creating, 0/1 failed"
    assert any(line.startswith("  engine-a  Ready (Create ok)") for line in lines), lines

    as_json = dataflow("status", name, "--json", *url)
    record = json.loads(as_json.stdout)
    assert (record["name"], record["state"]) == (name, "Ready")
    assert list(record["streams"]) == ["engine-a"]

    missing = dataflow("status", "nope", *url)
    assert (missing.returncode, missing.stderr) == (1, "error: unknown pipeline 'nope'\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "dataflow", "status", name, "--watch", "--interval", "0.2", *url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},
        preexec_fn=sigint_default,
    )
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().startswith(f"{name} v1 (uid ")
        unloaded = dataflow("unload", name, "--wait", "60", *url)
        assert unloaded.returncode == 0, unloaded.stderr
        assert unloaded.stdout.startswith(f"terminating: {name} v1")
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            seen.append(line)
            if line.startswith("  state:    Terminated"):
                break
        assert seen[-1].startswith("  state:    Terminated"), seen
        assert any(line.startswith("-- ") for line in seen), seen  # a new look, time-stamped
    finally:
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    assert watch.returncode == 130 and "Traceback" not in err, err


def test_describe_text_json_and_dot(running: tuple[Proxy, str, Path]) -> None:
    """Runs once `ControlClient.describe` and `dataflow.describe` exist (built separately)."""
    renderers = pytest.importorskip("dataflow.describe")
    from dataflow.proxy.client import ControlClient

    if not hasattr(ControlClient, "describe") or not hasattr(renderers, "render_dot"):
        pytest.skip("ControlClient.describe / dataflow.describe.render_dot not there yet")
    proxy, name, spec = running
    url = ("--url", proxy.url)
    assert dataflow("load", str(spec), "--wait", "60", *url).returncode == 0
    client = ControlClient(proxy.url)
    text = dataflow("describe", name, *url)
    assert text.returncode == 0, text.stderr
    assert "tfsimple1" in text.stdout and "tfsimple2" in text.stdout
    as_json = dataflow("describe", name, "--json", *url)
    assert as_json.returncode == 0, as_json.stderr
    described = json.loads(as_json.stdout)
    assert isinstance(described, dict) and described.keys() == client.describe(name).keys()
    dot = dataflow("describe", name, "--dot", *url)
    assert dot.returncode == 0 and "digraph" in dot.stdout
    assert dot.stdout.strip() == renderers.render_dot(client.describe(name)).strip()
    both = dataflow("describe", name, "--json", "--dot", *url)
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1


def test_kafka_runs_the_broker_script_of_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    result = subprocess.run(
        [sys.executable, "-m", "dataflow", "kafka", "status"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not needed: the script is found from the package
        env={**env, "KAFKA_DIR": str(tmp_path / "kafka"), "KAFKA_PORT": "1"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr  # nothing answers on port 1
    assert result.stdout.startswith("kafka: stopped"), result.stdout


def test_proxy_and_engine_run_as_subcommands(tmp_path: Path, bootstrap: str) -> None:
    """`dataflow proxy` and `dataflow engine` are the same programs as the modules."""
    proxy = Proxy(tmp_path)
    args = [sys.executable, "-m", "dataflow", "proxy", "--host", "127.0.0.1"]
    args += ["--port", str(proxy.port), "--control-port", str(proxy.control_port)]
    args += ["--state-dir", str(tmp_path / "state"), "--pipelines", str(CHAIN)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    env["PYTHONUNBUFFERED"] = "1"
    proxy_process = Process("proxy", args, env, tmp_path / "proxy.log").start()
    eng_args = [sys.executable, "-m", "dataflow", "engine", "--upstream-host=127.0.0.1"]
    eng_args += [f"--upstream-port={proxy.port}", "--health-server-port=0"]
    eng_args += [f"--kafka-bootstrap-servers={bootstrap}", "--dataflow-replica-id=cli-engine"]
    eng = Process("engine", eng_args, env, tmp_path / "engine.log").start()
    try:
        wait_until(
            lambda: "cli-engine" in dataflow("status", "--url", proxy.url).stdout,
            60,
            "the engine's ack",
        )
    finally:
        assert eng.stop() == 0, eng.output()[-2000:]
        assert proxy_process.stop() == 0, proxy_process.output()[-2000:]
