"""The broker watch: /ready's Kafka check and the outage's two log lines."""

from __future__ import annotations

from dataflow.reachability import BrokerWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_not_ready_after_the_timeout_and_ready_with_the_next_probe() -> None:
    clock = Clock()
    up = True

    async def probe() -> None:
        if not up:
            raise ConnectionError("no broker")

    watch = BrokerWatch(probe, ready_timeout=5, clock=clock)
    assert await watch.probe_once() and watch.check() == (True, "kafka reachable")
    up = False
    clock.now += 3
    assert not await watch.probe_once()
    assert watch.reachable, "a short outage does not make the engine unready"
    clock.now += 3
    ok, message = watch.check()
    assert not ok and message == "kafka unreachable for 6s: ConnectionError: no broker"
    up = True
    assert await watch.probe_once()
    assert watch.check() == (True, "kafka reachable")
    assert watch.down_since is None


def test_leaderless_names_partitions_and_topics_no_broker_leads() -> None:
    from dataflow.reachability import leaderless

    topics = [
        (0, "a", False, [(0, 0, 1, [1, 2, 3], [1, 2]), (0, 1, -1, [2, 3, 1], [])]),
        (3, "gone", False, []),  # UNKNOWN_TOPIC_OR_PARTITION
        (0, "b", [(0, 0, 2, [2], [2])]),  # a version-0 response: no is_internal field
    ]
    assert leaderless(topics) == ["a[1]", "gone (error 3)"]
    assert leaderless([]) == []
