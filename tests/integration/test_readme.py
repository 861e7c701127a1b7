"""The README's "Running it yourself" block runs as written (on free ports, a private broker)
and leaves nothing it started running."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.harness import REPO, free_broker_port, free_port

pytestmark = pytest.mark.kafka


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running it yourself", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_walkthrough_ends_with_everything_stopped(tmp_path: Path) -> None:
    block = walkthrough()
    assert block.startswith("scripts/kafka start") and block.rstrip().endswith("scripts/kafka stop")
    kafka, proxy, control = free_broker_port(), free_port(), free_port()
    bootstrap = f"127.0.0.1:{kafka}"
    script = block.replace("--upstream-port=10101", f"--upstream-port={proxy}")
    script = re.sub(r"(dataflow (model|infer)) ", rf"\1 --bootstrap-servers {bootstrap} ", script)
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELDON_", "KAFKA_"))}
    env.update(
        KAFKA_DIR=str(tmp_path / "kafka"),
        KAFKA_PORT=str(kafka),
        KAFKA_HEAP="256m",
        SELDON_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SELDON_HEALTH_SERVER_PORT="0",
        SELDON_PROXY_PORT=str(proxy),
        SELDON_PROXY_CONTROL_PORT=str(control),
        SELDON_PROXY_URL=f"http://127.0.0.1:{control}",
        SELDON_PROXY_STATE_DIR=str(tmp_path / "state"),
        README_TEST=marker,
        NO_COLOR="1",
    )
    # A reader types the lines one at a time: wait for the proxy before `load`, and for the
    # pipeline before `infer` (the only changes to the block besides ports).
    script = script.replace(
        "dataflow load ",
        "until dataflow status >/dev/null 2>&1; do sleep 0.2; done\ndataflow load --wait 60 ",
    )
    result = subprocess.run(
        ["bash", "-c", "set -e\n" + script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if f"README_TEST={marker}".encode() in (proc / "environ").read_bytes():
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "INPUT0 FP32[1,4]=[2.0, 3.0, 4.0, 5.0]" in result.stdout, (
        result.stdout
    )  # +1 of tfsimple2
    assert not left, left
