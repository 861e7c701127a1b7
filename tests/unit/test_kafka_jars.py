"""scripts/kafka_jars.py: the pinned broker jars, fetched and checked, all or nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "kafka_jars.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_jars", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_jars"] = module
    spec.loader.exec_module(module)
    return module


jars = load()


def test_the_pinned_list_is_the_whole_broker() -> None:
    listed = jars.read_list(REPO / "scripts" / "kafka-jars-4.1.1.txt")
    names = {j.name for j in listed}
    assert len(listed) == 46 == len(names)
    assert {"kafka_2.13-4.1.1.jar", "kafka-server-4.1.1.jar", "log4j-core-2.25.3.jar"} <= names
    assert all(len(j.sha256) == 64 and j.size > 0 for j in listed)
    assert jars.Jar("org.apache.kafka", "kafka_2.13", "4.1.1", "", 0).path == (
        "org/apache/kafka/kafka_2.13/4.1.1/kafka_2.13-4.1.1.jar"
    )


def repository(tmp: Path, content: dict[str, bytes]) -> tuple[Path, list[object]]:
    """A Maven repository folder with one jar per (artifact, content), and their list."""
    listed = []
    for artifact, data in content.items():
        jar = jars.Jar("org.example", artifact, "1.0", hashlib.sha256(data).hexdigest(), len(data))
        path = tmp / "repo" / jar.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        listed.append(jar)
    return tmp / "repo", listed


def test_downloaded_and_checked_into_the_cache(tmp_path: Path) -> None:
    repo, listed = repository(tmp_path, {"a": b"A" * 1000, "b": b"B" * 10})
    cache = tmp_path / "cache"
    copied, downloaded = jars.fetch(listed, cache, tmp_path / "no-m2", repo.as_uri())
    assert (copied, downloaded) == (0, 2)
    assert sorted(p.name for p in (cache / "libs").iterdir()) == ["a-1.0.jar", "b-1.0.jar"]
    assert (cache / ".complete").exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".libs-")] == []


def test_a_local_maven_repository_is_used_first(tmp_path: Path) -> None:
    repo, listed = repository(tmp_path, {"a": b"A"})
    copied, downloaded = jars.fetch(listed, tmp_path / "cache", repo, "http://127.0.0.1:1/none")
    assert (copied, downloaded) == (1, 0)


def test_a_wrong_checksum_leaves_no_libs(tmp_path: Path) -> None:
    repo, listed = repository(tmp_path, {"a": b"A", "b": b"B"})
    (repo / listed[1].path).write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(jars.FetchError, match="SHA-256"):
        jars.fetch(listed, cache, tmp_path / "no-m2", repo.as_uri())
    assert not (cache / "libs").exists() and not (cache / ".complete").exists()
    assert list(cache.iterdir()) == []


def test_an_unreachable_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "4.1.1", str(tmp_path / "cache")],
        env={"KAFKA_MAVEN_URL": "http://127.0.0.1:1/m2", "KAFKA_MAVEN_REPO": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("kafka: error: cannot download http://127.0.0.1:1/m2/")
    assert "KAFKA_MAVEN_URL" in result.stderr
    assert not (tmp_path / "cache" / "libs").exists()
