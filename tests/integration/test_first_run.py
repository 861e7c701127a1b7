"""The README's first command on a machine as bare as allowed: Python 3.11+ and Java 17+, no
kcat, no Maven, an empty jar cache (the jars come from Maven Central, checked against
scripts/kafka-jars-4.1.1.txt); without Java it stops at once with one line."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import REPO, free_broker_port, free_port

HIDDEN = {"kcat", "kafkacat", "mvn"}


def bare_path(tmp: Path, hide: set[str]) -> str:
    """PATH with the same commands as now but those of `hide`: each folder of PATH holding one
    of them is replaced by a folder of links to its other commands."""
    folders = []
    for i, folder in enumerate(p for p in os.environ["PATH"].split(os.pathsep) if p):
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        if not any(entry.name in hide for entry in entries):
            folders.append(folder)
            continue
        mirror = tmp / f"path{i}"
        mirror.mkdir(parents=True)
        for entry in entries:
            if entry.name not in hide and os.access(entry, os.X_OK) and not entry.is_dir():
                (mirror / entry.name).symlink_to(entry.resolve())
        folders.append(str(mirror))
    return os.pathsep.join(folders)


def demo_env(tmp_path: Path, hide: set[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELDON_", "KAFKA_"))}
    env.update(
        PATH=bare_path(tmp_path / "bin", hide),
        KAFKA_PORT=str(free_broker_port()),
        KAFKA_DIR=str(tmp_path / "kafka"),
        KAFKA_CACHE=str(tmp_path / "jars"),
        KAFKA_MAVEN_REPO=str(tmp_path / "no-m2"),
        KAFKA_HEAP="256m",
        SELDON_PROXY_PORT=str(free_port()),
        SELDON_PROXY_CONTROL_PORT=str(free_port()),
        SELDON_HEALTH_SERVER_PORT="0",
        NO_COLOR="1",
    )
    return env


@pytest.mark.kafka
def test_the_demo_runs_without_kcat_or_maven_from_an_empty_jar_cache(tmp_path: Path) -> None:
    env = demo_env(tmp_path, HIDDEN)
    t0 = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts" / "demo")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    took = time.monotonic() - t0
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "demo OK" in out
    assert "command not found" not in out
    assert "kafka: cached 46 jars" in out and "46 downloaded" in out
    assert (tmp_path / "jars" / ".complete").exists()
    assert len(list((tmp_path / "jars" / "libs").glob("*.jar"))) == 46
    assert "kafka: stopped" in out  # the broker it started, stopped again
    print(f"demo from an empty jar cache without kcat and mvn: {took:.1f}s")


def test_without_java_the_demo_says_so_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    env = demo_env(tmp_path, HIDDEN | {"java"})
    env.pop("JAVA_HOME", None)
    result = subprocess.run(
        [str(REPO / "scripts" / "demo")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "kafka: error: no java on PATH: install a Java 17+ runtime"
        " (Debian: apt-get install openjdk-17-jre-headless)"
    ]
    assert not (tmp_path / "kafka").exists() and not (tmp_path / "jars").exists()
