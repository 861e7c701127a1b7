"""RevisitGuard: revisit counting, error texts, clearing at the outputs topic, TTL expiry."""

from __future__ import annotations

import pytest

from dataflow.cycles import DEFAULT_TTL_MS, ERROR_PREFIX, RevisitGuard

SINK = "seldon.default.model.counter.inputs"
OTHER = "seldon.default.model.identity.inputs"
OUTPUTS = "seldon.default.pipeline.loop.outputs"
T0 = 1_000_000


def test_max_revisits_plus_one_visits_pass_then_error() -> None:
    guard = RevisitGuard(2)
    assert [guard.visit("req", SINK, False, T0) for _ in range(3)] == [None, None, None]
    assert guard.count("req", SINK) == 3
    assert guard.visit("req", SINK, False, T0) == (
        f"ERROR: Max step revisits (2) exceeded for request req in topic {SINK}"
    )
    # counting goes on: later visits keep failing
    assert guard.visit("req", SINK, False, T0) is not None
    assert guard.count("req", SINK) == 5


def test_zero_revisits_allows_one_visit() -> None:
    guard = RevisitGuard(0)
    assert guard.visit("r", SINK, False, T0) is None
    error = guard.visit("r", SINK, False, T0)
    assert error == f"ERROR: Max step revisits (0) exceeded for request r in topic {SINK}"
    assert error.startswith(ERROR_PREFIX)


def test_sinks_and_keys_counted_separately() -> None:
    guard = RevisitGuard(1)
    for _ in range(2):
        assert guard.visit("a", SINK, False, T0) is None
        assert guard.visit("a", OTHER, False, T0) is None
        assert guard.visit("b", SINK, False, T0) is None
    assert guard.visit("a", SINK, False, T0) is not None
    assert guard.visit("a", OTHER, False, T0) is not None
    assert guard.visit("b", SINK, False, T0) is not None
    assert guard.visit("c", SINK, False, T0) is None
    assert len(guard) == 4


def test_reaching_outputs_clears_every_entry_of_the_key_only() -> None:
    guard = RevisitGuard(1)
    for key in ("1", "10", "1:x"):
        guard.visit(key, SINK, False, T0)
        guard.visit(key, SINK, False, T0)
    guard.visit("1", OTHER, False, T0)
    assert guard.visit("1", OUTPUTS, True, T0) is None  # forwarded, not counted
    assert guard.count("1", SINK) == 0
    assert guard.count("1", OTHER) == 0
    assert guard.count("1", OUTPUTS) == 0
    # the reference's prefix match would also have reset these
    assert guard.count("10", SINK) == 2
    assert guard.count("1:x", SINK) == 2
    assert len(guard) == 2
    # a fresh cycle for the finished request starts from zero
    assert guard.visit("1", SINK, False, T0) is None
    assert guard.visit("1", SINK, False, T0) is None
    assert guard.visit("1", SINK, False, T0) is not None


def test_outputs_for_unknown_key_is_forwarded() -> None:
    guard = RevisitGuard(1)
    assert guard.visit("never", OUTPUTS, True, T0) is None
    assert guard.visit("never", OUTPUTS, True, T0) is None
    assert len(guard) == 0


def test_entries_untouched_for_ttl_are_dropped() -> None:
    guard = RevisitGuard(1, ttl_ms=1000)
    guard.visit("old", SINK, False, T0)
    guard.visit("old", SINK, False, T0)
    guard.visit("new", SINK, False, T0 + 500)
    assert guard.next_deadline() == T0 + 1000
    assert guard.expire(T0 + 999) == 0
    assert guard.expire(T0 + 1000) == 1
    assert guard.count("old", SINK) == 0
    assert guard.next_deadline() == T0 + 1500
    # touching refreshes the entry
    guard.visit("new", SINK, False, T0 + 1400)
    assert guard.expire(T0 + 2000) == 0
    assert guard.next_deadline() == T0 + 2400
    assert guard.expire(T0 + 2400) == 1
    assert len(guard) == 0
    assert guard.next_deadline() is None


def test_visit_expires_first_so_a_stale_count_does_not_fail() -> None:
    guard = RevisitGuard(0, ttl_ms=1000)
    guard.visit("r", SINK, False, T0)
    assert guard.visit("r", SINK, False, T0 + 999) is not None
    assert guard.visit("r", SINK, False, T0 + 999 + 1000) is None
    assert guard.count("r", SINK) == 1


def test_expiry_keeps_key_index_consistent() -> None:
    guard = RevisitGuard(3, ttl_ms=100)
    guard.visit("k", SINK, False, T0)
    guard.visit("k", OTHER, False, T0 + 50)
    guard.expire(T0 + 100)  # SINK entry gone, OTHER kept
    assert guard.count("k", OTHER) == 1
    guard.visit("k", OUTPUTS, True, T0 + 120)
    assert len(guard) == 0
    assert guard.expire(T0 + 10_000) == 0


def test_default_ttl_is_ten_minutes() -> None:
    assert DEFAULT_TTL_MS == 600_000
    guard = RevisitGuard(2)
    guard.visit("r", SINK, False, T0)
    assert guard.next_deadline() == T0 + 600_000


def test_guard_arguments_validated() -> None:
    with pytest.raises(ValueError):
        RevisitGuard(-1)
    with pytest.raises(ValueError):
        RevisitGuard(1, ttl_ms=0)
