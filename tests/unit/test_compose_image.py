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


def test_compose_states_its_version_and_passes_no_whole_env() -> None:
    assert "Compose v2.24 or newer" in COMPOSE
    services = yaml.safe_load(COMPOSE)["services"]
    for name, service in services.items():
        for entry in service.get("env_file", []):
            path = entry["path"] if isinstance(entry, dict) else entry
            assert not path.endswith("/.env") and path != ".env", name
