"""Shared fixtures: one real broker per test run, found or started once."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dataflow.probe import answers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """The broker for integration tests.

    `SELDON_KAFKA_BOOTSTRAP_SERVERS` when set (scripts/test sets it), else the broker of
    `scripts/kafka`, started here if it does not answer and stopped again at the end.
    """
    servers = os.environ.get("SELDON_KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers
        return
    port = os.environ.get("KAFKA_PORT", "9092")
    servers = f"127.0.0.1:{port}"
    started = False
    if not answers(servers):
        subprocess.run([str(REPO / "scripts" / "kafka"), "start"], check=True)
        started = True
    yield servers
    if started:
        subprocess.run([str(REPO / "scripts" / "kafka"), "stop"], check=True)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and pipeline names of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def admin(bootstrap: str) -> AsyncIterator[object]:
    from aiokafka.admin import AIOKafkaAdminClient

    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    yield client
    await client.close()
