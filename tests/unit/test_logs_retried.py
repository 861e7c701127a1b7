"""aiokafka lines of paths it retries by itself are not ERRORs; real errors stay."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from loguru import logger

from dataflow import logs


@pytest.fixture
def lines() -> Iterator[list[str]]:
    logs.setup("INFO", "WARNING")
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(f"{m.record['level'].name} {m.record['message']}"))
    yield seen
    logger.remove(sink)


@pytest.mark.parametrize(
    ("name", "level", "message"),
    [
        ("aiokafka.producer.sender", logging.WARNING,
         "Got error produce response: [Error 6] NotLeaderForPartitionError"),
        ("aiokafka.consumer.group_coordinator", logging.ERROR,
         "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError"),
        ("aiokafka.consumer.group_coordinator", logging.WARNING,
         "Marking the coordinator dead (node 1)for group g."),
    ],
)  # fmt: skip
def test_retried_paths_are_not_errors(
    lines: list[str], name: str, level: int, message: str
) -> None:
    logs._Budget.suppressed = 0
    logging.getLogger(name).log(level, message)
    assert not [line for line in lines if message in line]


def test_other_aiokafka_errors_stay(lines: list[str]) -> None:
    logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from 1: boom")
    assert "ERROR Failed fetch messages from 1: boom" in lines
