"""The replication note the engine logs for a pipeline's topics (dataflow.kafka.Replication)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dataflow.kafka import CLUSTER_DEFAULT, Replication, TopicError, replication, replication_of
from dataflow.settings import Settings


def test_replication_comes_from_the_cluster_unless_set() -> None:
    assert replication_of(Settings()) == CLUSTER_DEFAULT == -1
    assert replication_of(Settings(kafka_replication_factor=3)) == 3


def test_three_in_sync_with_min_two_survive_a_broker_loss() -> None:
    level, text = Replication(3, 3, 2, 3, "t").note()
    assert level == "INFO"
    assert text == "replication 3 (3 in sync), min.insync.replicas 2, 3 brokers"


def test_one_replica_on_a_cluster_warns_naming_the_topic() -> None:
    level, text = Replication(1, 1, 1, 3, "seldon.default.model.a.outputs").note()
    assert level == "WARNING"
    assert "losing one broker stops writes to seldon.default.model.a.outputs" in text
    assert "SELDON_KAFKA_REPLICATION_FACTOR" in text


def test_in_sync_replicas_at_the_minimum_warn() -> None:
    # Two in sync with min.insync.replicas 2: one more loss and acks=all writes stop.
    assert Replication(3, 2, 2, 3, "t").note()[0] == "WARNING"


def test_a_single_broker_has_no_broker_to_lose() -> None:
    level, text = Replication(1, 1, 1, 1, "t").note()
    assert level == "INFO"
    assert text.endswith("1 broker")


class _Admin:
    """An admin client's two answers, as aiokafka returns them."""

    def __init__(self, topic_error: int = 0, config_error: int = 0) -> None:
        self.topic_error, self.config_error = topic_error, config_error
        self._client = SimpleNamespace(cluster=SimpleNamespace(brokers=lambda: {1, 2, 3}))

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        if self.topic_error:  # a broker whose metadata lags the controller's
            return [{"topic": t, "error_code": self.topic_error, "partitions": []} for t in topics]
        part = {"replicas": [1, 2, 3], "isr": [1, 2, 3]}
        return [{"topic": t, "error_code": 0, "partitions": [part]} for t in topics]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        entries = [] if self.config_error else [("min.insync.replicas", "2")]
        rows = [(self.config_error, None, 2, r.name, entries) for r in resources]
        return [SimpleNamespace(resources=rows)]


async def test_replication_is_asked_of_the_cluster() -> None:
    found = await replication(_Admin(), ["t"])  # type: ignore[arg-type]
    assert found == Replication(3, 3, 2, 3, "t")


async def test_a_topic_a_broker_does_not_know_yet_is_an_error_not_a_figure() -> None:
    # Before: the lagging broker's empty answer read as replication 2147483648 and min 1.
    with pytest.raises(TopicError, match="t: error 3"):
        await replication(_Admin(topic_error=3), ["t"])  # type: ignore[arg-type]
    with pytest.raises(TopicError, match="t: error 3 describing its configs"):
        await replication(_Admin(config_error=3), ["t"])  # type: ignore[arg-type]
