"""Stream time over a step's partitions, and which partitions to pause."""

from __future__ import annotations

from dataflow.streamtime import StreamTime


def clock(*tps: str) -> StreamTime[str]:
    st: StreamTime[str] = StreamTime()
    st.assign(tps)
    return st


def test_unknown_until_every_lagging_partition_was_read() -> None:
    st = clock("a", "b")
    st.observe("a", 5_000)
    assert st.now(lagging={"a", "b"}) is None
    st.observe("b", 1_000)
    assert st.now(lagging={"a", "b"}) == 1_000


def test_lowest_lagging_partition_holds_stream_time_back() -> None:
    st = clock("a", "b")
    st.observe("a", 9_000)  # a's backlog was read first
    st.observe("b", 2_000)
    assert st.now(lagging={"b"}) == 2_000, "b still lags: nothing younger than it may close"
    st.observe("b", 8_000)
    assert st.now(lagging={"b"}) == 8_000


def test_caught_up_partitions_do_not_hold_it_back() -> None:
    st = clock("a", "b")
    st.observe("a", 100)  # an idle source, read to its end
    st.observe("b", 7_000)
    assert st.now(lagging={"b"}) == 7_000


def test_when_nothing_lags_the_highest_partition_time() -> None:
    st = clock("a", "b")
    st.observe("a", 3_000)
    st.observe("b", 4_000)
    assert st.now(lagging=()) == 4_000


def test_never_goes_back() -> None:
    st = clock("a", "b")
    st.observe("a", 3_000)
    st.observe("b", 4_000)
    assert st.now(lagging=()) == 4_000
    assert st.now(lagging={"a"}) == 4_000


def test_partitions_ahead_by_more_than_the_slack_are_paused() -> None:
    st = clock("a", "b")
    st.observe("a", 10_000)
    st.observe("b", 1_000)
    assert st.ahead(lagging={"a", "b"}, slack_ms=1_000) == {"a"}
    assert st.ahead(lagging={"a", "b"}, slack_ms=20_000) == set()
    st.observe("b", 9_500)
    assert st.ahead(lagging={"a", "b"}, slack_ms=1_000) == set()


def test_an_unread_lagging_partition_pauses_the_others() -> None:
    st = clock("a", "b")
    st.observe("a", 10_000)
    assert st.ahead(lagging={"b"}, slack_ms=1_000) == {"a"}


def test_nothing_paused_when_nothing_lags() -> None:
    st = clock("a", "b")
    st.observe("a", 10_000)
    st.observe("b", 1_000)
    assert st.ahead(lagging=(), slack_ms=0) == set()


def test_reassignment_keeps_the_times_of_kept_partitions() -> None:
    st = clock("a", "b")
    st.observe("a", 5_000)
    st.assign(["a", "c"])
    assert st.time_of("a") == 5_000
    assert st.time_of("b") is None


def _recomputed(
    times: dict[str, int | None], lagging: set[str], previous: int | None
) -> int | None:
    """Stream time as defined in the module docstring, computed from scratch."""
    if lagging:
        lag = [times[tp] for tp in lagging]
        if any(t is None for t in lag):
            return previous
        candidate = min(t for t in lag if t is not None)
    else:
        known = [t for t in times.values() if t is not None]
        candidate = max(known) if known else None
    if candidate is None or (previous is not None and candidate <= previous):
        return previous
    return candidate


def test_incremental_lagging_matches_recomputing_every_record() -> None:
    """The step tells which partitions lag once per batch and then only which one caught up:
    stream time must be what recomputing it over every partition at each record gives."""
    import random

    rng = random.Random(19)
    for _ in range(200):
        tps = [f"p{i}" for i in range(rng.randint(1, 8))]
        st = clock(*tps)
        times: dict[str, int | None] = dict.fromkeys(tps)
        expected: int | None = None
        for _batch in range(rng.randint(1, 6)):
            lagging = {tp for tp in tps if rng.random() < 0.7}
            st.lagging(lagging)
            for _record in range(rng.randint(0, 60)):
                tp = rng.choice(tps)
                ts = rng.randint(0, 10_000)
                st.observe(tp, ts)
                current = times[tp]
                times[tp] = ts if current is None else max(current, ts)
                if tp in lagging and rng.random() < 0.1:
                    st.caught_up(tp)
                    lagging.discard(tp)
                expected = _recomputed(times, lagging, expected)
                assert st.now() == expected
                holder = st.holder()
                if lagging:
                    assert holder in lagging
                    unread = [t for t in lagging if times[t] is None]
                    if unread:
                        assert times[holder] is None
                    else:
                        assert times[holder] == min(times[t] or 0 for t in lagging)
                else:
                    assert holder is None
