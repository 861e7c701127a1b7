"""The image builds offline from a locked, hashed dependency set and carries the tools; the
compose file states the Compose version it needs and passes no whole .env to containers."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO

DOCKERFILE = (REPO / "compose" / "Dockerfile").read_text()
COMPOSE = (REPO / "compose" / "docker-compose.yaml").read_text()


def test_no_frontend_pull() -> None:
    assert "# syntax=" not in DOCKERFILE  # BuildKit would pull a frontend image


def test_the_image_carries_the_tools() -> None:
    for tool in ("producer.py", "consumer.py", "model.py", "infer.py"):
        assert re.search(rf"^COPY .*scripts/{tool}.* /app/scripts/$", DOCKERFILE, re.M), tool


def test_dependencies_are_installed_from_the_lock_with_hashes() -> None:
    assert "pip install --require-hashes --no-deps -r requirements.lock" in DOCKERFILE
    assert "pip install --no-deps /wheels/" in DOCKERFILE
    lock = (REPO / "compose" / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)
    assert {"aiokafka", "grpclib", "pydantic", "uvloop"} <= {p.lower() for p in pins}
    blocks = re.split(r"\n(?=[A-Za-z])", lock.split("\n\n", 1)[1].strip())
    assert all("--hash=sha256:" in b for b in blocks)


def test_an_offline_build_reads_only_the_wheelhouse() -> None:
    # With wheels in compose/wheelhouse/ pip uses no index, for the lock and the build backend.
    assert "COPY compose/wheelhouse/ ./wheelhouse/" in DOCKERFILE
    offline = "export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/wheelhouse"
    assert DOCKERFILE.count(offline) == 2
    wheelhouse = REPO / "compose" / "wheelhouse" / ".gitignore"
    assert wheelhouse.read_text().splitlines()[1:] == ["*", "!.gitignore"]


def test_compose_works_with_v2_and_1_29_and_passes_no_whole_env() -> None:
    assert "Docker Compose v2" in COMPOSE and "docker-compose 1.29" in COMPOSE
    data = yaml.safe_load(COMPOSE)
    assert "name" not in data  # docker-compose 1.29 refuses a top-level name
    for name, service in data["services"].items():
        for entry in service.get("env_file", []):
            assert isinstance(entry, str), name  # 1.29 has no {path, required} form
            assert not entry.endswith("/.env") and entry != ".env", name


def test_the_local_broker_reads_the_apache_kafka_environment() -> None:
    run = (REPO / "compose" / "kafka-local" / "run").read_text()
    for fragment in ('key="${key//_/.}"', "StorageTool format", "kafka.Kafka"):
        assert fragment in run
    dockerfile = (REPO / "compose" / "kafka-local" / "Dockerfile").read_text()
    assert "/opt/kafka/bin/" in dockerfile and "USER 1000:1000" in dockerfile
    probe = yaml.safe_load(COMPOSE)["services"]["kafka"]["healthcheck"]["test"][1]
    assert probe.startswith("/opt/kafka/bin/kafka-broker-api-versions.sh ")
