"""The replication note the engine logs for a pipeline's topics (dataflow.kafka.Replication)."""

from __future__ import annotations

from dataflow.kafka import CLUSTER_DEFAULT, Replication, replication_of
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
