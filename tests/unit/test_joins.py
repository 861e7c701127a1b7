"""Joiner and TriggerGate: window semantics, fold order and token release accounting."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.gates import TriggerGate
from dataflow.joins import Joiner
from dataflow.offsets import OffsetTracker
from dataflow.windows import JoinType, Output, Result

W = 1_000
T0 = 1_000_000  # wall clock and record timestamps start here

K = TypeVar("K", bound=Hashable)


def bar(left: bytes, right: bytes) -> bytes:
    return left + b"|" + right


def paren(left: bytes, right: bytes) -> bytes:
    """Not associative: shows the fold order."""
    return b"(" + left + b"+" + right + b")"


class Ledger(Generic[K]):
    """Applies steps like the step runner would and checks the release contract."""

    def __init__(self) -> None:
        self.added: list[K] = []
        self.released: Counter[K] = Counter()
        self.outputs: list[Output[K]] = []

    def apply(self, step: Result[K]) -> Result[K]:
        for output in step.outputs:
            assert output.origin in output.contributors
            for token in output.contributors:
                assert self.released[token] == 0, f"{token} released before its output"
        self.outputs.extend(step.outputs)
        for token in step.released:
            self.released[token] += 1
            assert self.released[token] == 1, f"{token} released twice"
        return step

    def all_released(self) -> bool:
        return self.released == Counter(self.added)


class Harness:
    """A joiner, a fake clock and a ledger."""

    def __init__(
        self,
        n: int,
        join_type: JoinType,
        merge: Callable[[bytes, bytes], bytes] = bar,
    ) -> None:
        self.now = T0
        self.joiner: Joiner[str] = Joiner(n, join_type, W, merge)
        self.ledger: Ledger[str] = Ledger()

    def add(
        self, source: int, token: str, key: bytes | None = b"k", ts: int | None = None
    ) -> Result[str]:
        self.ledger.added.append(token)
        value = token.encode()
        step = self.joiner.add(source, key, value, self.now if ts is None else ts, token, self.now)
        return self.ledger.apply(step)

    def at(self, now: int) -> Result[str]:
        self.now = now
        return self.ledger.apply(self.joiner.expire(now))

    def finish(self) -> None:
        self.at(self.now + 100 * W)
        assert self.joiner.held() == 0
        assert self.joiner.next_deadline() is None
        assert not self.joiner._by_key
        assert not getattr(self.joiner, "_near", None)
        assert self.ledger.all_released()


# -- inner -------------------------------------------------------------------------------


def test_inner_join_inside_window_emits_once_in_source_order() -> None:
    h = Harness(2, "inner")
    assert h.add(1, "b") == Result()
    h.now += 300
    step = h.add(0, "a")
    assert step.outputs == [Output(b"k", b"a|b", T0 + 300, "a", ("a", "b"))]
    assert step.released == []
    assert h.joiner.held() == 2
    # both stay in their windows (a duplicate could still match them), then are released
    # once stream time passes their timestamp + W
    assert h.joiner.next_deadline() == T0 + W + 1
    assert h.at(T0 + W) == Result()
    assert h.at(T0 + W + 1) == Result([], ["b"])
    assert h.at(T0 + 300 + W + 1) == Result([], ["a"])
    h.finish()
    assert len(h.ledger.outputs) == 1


def test_inner_join_outside_window_emits_nothing() -> None:
    h = Harness(2, "inner")
    h.add(0, "a", ts=T0)
    h.now = T0 + 500
    step = h.add(1, "b", ts=T0 + W + 1)  # timestamps too far apart, both still held
    assert step == Result()
    assert h.joiner.held() == 2
    h.finish()
    assert h.ledger.outputs == []


def test_inner_join_window_edge_is_inclusive() -> None:
    h = Harness(2, "inner")
    h.add(0, "a", ts=T0)
    h.now = T0 + W - 1
    step = h.add(1, "b", ts=T0 + W)
    assert [o.contributors for o in step.outputs] == [("a", "b")]
    h.finish()


def test_inner_join_after_the_window_closed_on_stream_time_emits_nothing() -> None:
    h = Harness(2, "inner")
    h.add(0, "a")
    h.now = T0 + W + 1  # a's window closed: released by the add's own expiry
    step = h.add(1, "b")
    assert step == Result([], ["a"])
    h.finish()
    assert h.ledger.outputs == []


def test_inner_join_different_keys_do_not_match() -> None:
    h = Harness(2, "inner")
    h.add(0, "a", key=b"k1")
    assert h.add(1, "b", key=b"k2") == Result()
    step = h.add(1, "c", key=b"k1")
    assert [(o.key, o.value) for o in step.outputs] == [(b"k1", b"a|c")]
    h.finish()


def test_inner_join_duplicates_emit_one_output_per_new_combination() -> None:
    h = Harness(2, "inner")
    h.add(0, "a1")
    assert [o.value for o in h.add(1, "b1").outputs] == [b"a1|b1"]
    assert [o.value for o in h.add(0, "a2").outputs] == [b"a2|b1"]
    step = h.add(1, "b2")
    assert [o.value for o in step.outputs] == [b"a1|b2", b"a2|b2"]
    assert all(o.origin == "b2" for o in step.outputs)
    h.finish()
    assert len(h.ledger.outputs) == 4


def test_three_sources_fold_left_to_right_in_source_order() -> None:
    for order in itertools.permutations(range(3)):
        h = Harness(3, "inner", merge=paren)
        outputs: list[Output[str]] = []
        for source in order:
            outputs += h.add(source, f"v{source}").outputs
        assert len(outputs) == 1
        assert outputs[0].value == b"((v0+v1)+v2)"
        assert outputs[0].contributors == ("v0", "v1", "v2")
        assert outputs[0].origin == f"v{order[-1]}"
        h.finish()


def test_three_sources_need_all_within_one_window() -> None:
    h = Harness(3, "inner")
    h.now = T0 + 2 * W - 10
    h.add(0, "a", ts=T0 + W - 5)
    h.add(1, "b", ts=T0 + 2 * W - 5)
    # c is within W of b but not of a: span too large
    assert h.add(2, "c", ts=T0 + 2 * W + 100).outputs == []
    # d is within W of both
    step = h.add(2, "d", ts=T0 + 2 * W - 100)
    assert [o.value for o in step.outputs] == [b"a|b|d"]
    h.finish()


# -- outer -------------------------------------------------------------------------------


def test_outer_join_emits_lone_record_at_window_close_without_traffic() -> None:
    h = Harness(2, "outer")
    assert h.add(0, "a", ts=T0 - 200) == Result()
    assert h.joiner.next_deadline() == T0 - 200 + W + 1
    assert h.at(T0 - 200 + W) == Result()
    step = h.at(T0 - 200 + W + 1)
    assert step == Result([Output(b"k", b"a", T0 - 200, "a", ("a",))], ["a"])
    h.finish()


def test_outer_join_matched_pair_emits_immediately_and_only_once() -> None:
    h = Harness(2, "outer")
    h.add(1, "b")
    step = h.add(0, "a")
    assert [o.value for o in step.outputs] == [b"a|b"]
    h.finish()
    assert len(h.ledger.outputs) == 1


def test_outer_join_duplicate_matches_existing_record() -> None:
    h = Harness(2, "outer")
    h.add(0, "a1")
    h.add(1, "b1")
    assert [o.value for o in h.add(0, "a2").outputs] == [b"a2|b1"]
    h.finish()
    assert [o.value for o in h.ledger.outputs] == [b"a1|b1", b"a2|b1"]


def test_outer_join_unmatched_duplicate_emitted_alone() -> None:
    h = Harness(2, "outer")
    h.add(0, "a1")
    h.add(1, "b1")
    h.now += 2 * W // 3
    h.add(1, "b2", ts=T0 + W + 100)  # too far from a1: stays unmatched
    h.finish()
    assert [o.value for o in h.ledger.outputs] == [b"a1|b1", b"b2"]


def test_outer_three_sources_emit_partial_set_in_source_order() -> None:
    h = Harness(3, "outer", merge=paren)
    h.add(2, "c")
    h.now += 10
    h.add(0, "a")
    step = h.at(T0 + W + 1)
    assert step == Result([Output(b"k", b"(a+c)", T0 + 10, "c", ("a", "c"))], ["c"])
    assert h.at(T0 + 10 + W + 1) == Result([], ["a"])  # a was in the partial output
    h.finish()
    assert len(h.ledger.outputs) == 1


def test_outer_three_sources_complete_set_emits_no_partials() -> None:
    h = Harness(3, "outer")
    h.add(0, "a")
    h.add(1, "b")
    assert [o.value for o in h.add(2, "c").outputs] == [b"a|b|c"]
    h.finish()
    assert len(h.ledger.outputs) == 1


def test_outer_keys_emitted_independently() -> None:
    h = Harness(2, "outer")
    h.add(0, "a", key=b"x")
    h.add(1, "b", key=b"y")
    step = h.at(T0 + W + 1)
    assert [(o.key, o.value) for o in step.outputs] == [(b"x", b"a"), (b"y", b"b")]
    h.finish()


# -- any ---------------------------------------------------------------------------------


def test_any_forwards_records_more_than_1ms_apart_alone_and_releases_at_once() -> None:
    """The any join's window is 1 ms (the reference's `JoinWindows.of(1 ms)`), whatever W."""
    h = Harness(3, "any")
    for source, token, ts in ((0, "a", T0), (1, "b", T0 + 2), (0, "c", T0 + 4), (2, "d", T0 + 6)):
        h.now = ts
        step = h.add(source, token, ts=ts)
        assert step.outputs == [Output(b"k", token.encode(), ts, token, (token,))]
        assert step.released == [token]
        assert step.stored == [] and step.removed == []
    # old timestamps are forwarded too
    assert h.add(1, "e", ts=T0 - 10 * W).outputs[0].value == b"e"
    h.finish()


def test_any_pair_within_1ms_first_alone_second_joined_in_source_order() -> None:
    """Seldon's outerJoin with `JoinWindows.of(1 ms)`: the first record goes out alone at
    once, the second (another source, same key, |t1 - t2| <= 1 ms) joined with it."""
    h = Harness(2, "any")
    first = h.add(1, "b", ts=T0)
    assert first == Result([Output(b"k", b"b", T0, "b", ("b",))], ["b"])
    h.now = T0 + 1
    second = h.add(0, "a", ts=T0 + 1)
    # merged in source order; the earlier record was released already: only the arrival
    # is a contributor (its offset is the one still held)
    assert second == Result([Output(b"k", b"a|b", T0 + 1, "a", ("a",))], ["a"])
    assert second.stored == [] and second.removed == []
    h.finish()
    assert [o.value for o in h.ledger.outputs] == [b"b", b"a|b"]


def test_any_same_source_or_other_key_never_joins() -> None:
    h = Harness(2, "any")
    h.add(0, "a1")
    assert [o.value for o in h.add(0, "a2").outputs] == [b"a2"]
    assert [o.value for o in h.add(1, "b", key=b"other").outputs] == [b"b"]
    h.finish()


def test_any_joins_every_near_record_of_the_other_source() -> None:
    h = Harness(2, "any")
    h.add(0, "a1", ts=T0 - 1)
    h.add(0, "a2", ts=T0 + 1)
    h.add(0, "far", ts=T0 + 2)
    step = h.add(1, "b", ts=T0)
    assert [(o.value, o.origin, o.contributors) for o in step.outputs] == [
        (b"a1|b", "b", ("b",)),
        (b"a2|b", "b", ("b",)),
    ]
    assert [o.timestamp_ms for o in step.outputs] == [T0, T0 + 1]
    h.finish()


def test_any_three_sources_join_one_of_each_source_that_has_a_near_record() -> None:
    h = Harness(3, "any", merge=paren)
    assert [o.value for o in h.add(2, "c", ts=T0).outputs] == [b"c"]
    assert [o.value for o in h.add(0, "a", ts=T0 + 1).outputs] == [b"(a+c)"]
    # b is near a and c: one output with the three, folded in source order
    assert [o.value for o in h.add(1, "b", ts=T0 + 1).outputs] == [b"((a+b)+c)"]
    h.finish()


def test_any_holds_records_1ms_on_stream_time_and_on_the_wall_clock() -> None:
    wall = 7_000_000
    j: Joiner[str] = Joiner(2, "any", W, bar)
    step = j.add(0, b"k", b"a", T0, "a", T0, wall_ms=wall, ident=b"ia")
    assert step.released == ["a"] and step.stored == []
    assert j.held() == 1
    assert j.next_deadline() == T0 + 2  # open while stream time <= T0 + 1
    assert j.next_wall_deadline() == wall + 1
    assert j.expire(T0 + 1) == Result()
    assert j.held() == 1
    assert [o.value for o in j.add(1, b"k", b"b", T0 + 1, "b", T0 + 1).outputs] == [b"a|b"]
    # expiry releases nothing again and lists nothing for the changelog
    step = j.expire(T0 + 3)
    assert step == Result() and step.removed == []
    assert j.held() == 0 and j.next_deadline() is None
    # on the wall clock (sources caught up)
    j.add(0, b"k", b"c", T0 + 5, "c", T0 + 5, wall_ms=wall + 10)
    assert j.expire(T0 + 5, wall + 10) == Result()
    assert j.held() == 1
    assert j.expire(T0 + 5, wall + 11) == Result() and j.held() == 0
    assert [o.value for o in j.add(1, b"k", b"d", T0 + 5, "d", T0 + 5).outputs] == [b"d"]


def test_any_record_behind_stream_time_is_emitted_and_joined_but_not_kept() -> None:
    j: Joiner[str] = Joiner(2, "any", W, bar)
    j.add(0, b"k", b"a", T0, "a", T0)
    step = j.add(1, b"k", b"b", T0 - 1, "b", T0 + 1)  # behind stream time by more than 1 ms
    assert step == Result([Output(b"k", b"a|b", T0, "b", ("b",))], ["b"])
    assert j.held() == 1  # only a
    assert j.late == 0  # emitted as live: not a late drop
    assert [o.value for o in j.add(0, b"k", b"c", T0 - 1, "c", T0 + 1).outputs] == [b"c"]


def test_any_discard_and_reconsumed_records_release_nothing_twice() -> None:
    j: Joiner[str] = Joiner(2, "any", W, bar)
    j.add(0, b"k", b"a", T0, "p0-a", T0, ident=b"a")
    j.add(0, b"k", b"a", T0, "p0-a-again", T0, ident=b"a")  # the same record read again
    assert j.held() == 1
    assert [o.contributors for o in j.add(1, b"k", b"b", T0, "p1-b", T0).outputs] == [("p1-b",)]
    assert j.discard(lambda t: t.startswith("p0-")) == []  # released when emitted
    assert j.held() == 1
    assert [o.value for o in j.add(1, b"k", b"c", T0, "p1-c", T0).outputs] == [b"c"]


# -- late, null keys, arrival clock, discard ---------------------------------------------


def test_null_key_never_matches() -> None:
    inner = Harness(2, "inner")
    assert inner.add(0, "a", key=None) == Result([], ["a"])
    assert inner.add(1, "b", key=None) == Result([], ["b"])
    inner.finish()
    outer = Harness(2, "outer")
    assert outer.add(0, "a", key=None) == Result([Output(None, b"a", T0, "a", ("a",))], ["a"])
    outer.finish()
    anyj = Harness(2, "any")
    assert anyj.add(0, "a", key=None).outputs[0].key is None
    anyj.finish()


def test_discard_releases_selected_records_without_output() -> None:
    h = Harness(2, "outer")
    h.add(0, "p0-a", key=b"x")
    h.add(0, "p1-a", key=b"y")
    h.add(1, "p0-b", key=b"z")
    released = h.joiner.discard(lambda token: token.startswith("p0-"))
    assert sorted(released) == ["p0-a", "p0-b"]
    h.ledger.apply(Result([], released))
    assert h.joiner.held() == 1
    # discarded records no longer match
    assert h.add(1, "p1-b", key=b"x").outputs == []
    h.finish()
    assert [o.value for o in h.ledger.outputs] == [b"p1-a", b"p1-b"]


def test_discard_everything_resets() -> None:
    h = Harness(3, "inner")
    for i in range(3):
        h.add(i % 2, f"t{i}")
    h.ledger.apply(Result([], h.joiner.discard(lambda token: True)))
    assert h.joiner.held() == 0
    assert h.joiner.next_deadline() is None
    h.finish()


def test_joiner_arguments_validated() -> None:
    with pytest.raises(ValueError):
        Joiner(1, "inner", W, bar)
    with pytest.raises(ValueError):
        Joiner(2, "left", W, bar)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Joiner(2, "inner", 0, bar)
    joiner: Joiner[str] = Joiner(2, "inner", W, bar)
    assert joiner.window_ms == W
    with pytest.raises(IndexError):
        joiner.add(2, b"k", b"v", T0, "t", T0)
    with pytest.raises(IndexError):
        joiner.add(-1, b"k", b"v", T0, "t", T0)


# -- property: exactly-once release, and outputs match a brute force ----------------------


@dataclass(frozen=True)
class Rec:
    """A test token that remembers what the joiner was told."""

    id: int
    source: int
    key: bytes
    ts: int
    arrival: int
    late: bool


events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # source
        st.sampled_from([b"x", b"y"]),  # key
        st.integers(min_value=-3 * W // 2, max_value=W // 2),  # timestamp - now
        st.integers(min_value=0, max_value=W // 2),  # clock advance before the record
    ),
    max_size=30,
)


def _run(
    join_type: JoinType, n: int, script: list[tuple[int, bytes, int, int]]
) -> tuple[list[Rec], list[Output[Rec]]]:
    joiner: Joiner[Rec] = Joiner(n, join_type, W, bar)
    ledger: Ledger[Rec] = Ledger()
    now = T0
    recs: list[Rec] = []
    for i, (source, key, dts, advance) in enumerate(script):
        now += advance
        ledger.apply(joiner.expire(now))
        deadline = joiner.next_deadline()
        assert deadline is None or deadline > now
        rec = Rec(i, source % n, key, now + dts, now, now + dts + W + 1 <= now)
        recs.append(rec)
        ledger.added.append(rec)
        ledger.apply(joiner.add(rec.source, key, f"{i}".encode(), rec.ts, rec, now))
    ledger.apply(joiner.expire(now + 10 * W))
    assert joiner.held() == 0
    assert not joiner._by_key
    assert ledger.all_released()
    for output in ledger.outputs:
        if output.error:  # a late record of an inner join that matched nothing
            assert join_type == "inner" and output.contributors[0].late
            assert output.error.startswith("late for the join")
            continue
        sources = [c.source for c in output.contributors]
        assert sources == sorted(set(sources))
        assert {c.key for c in output.contributors} == {output.key}
        stamps = [c.ts for c in output.contributors]
        assert max(stamps) - min(stamps) <= W
        assert output.timestamp_ms == max(stamps)
        assert output.value == b"|".join(f"{c.id}".encode() for c in output.contributors)
    return recs, ledger.outputs


def _expected_inner(recs: list[Rec], n: int) -> Counter[tuple[int, ...]]:
    """Complete sets whose members were all held when the last one arrived (the last one may
    be late: it matches what is held, but is not kept)."""
    expected: Counter[tuple[int, ...]] = Counter()
    by_source = [[r for r in recs if r.source == s] for s in range(n)]
    for combo in itertools.product(*by_source):
        if len({r.key for r in combo}) != 1:
            continue
        if max(r.ts for r in combo) - min(r.ts for r in combo) > W:
            continue
        last = max(combo, key=lambda r: r.id)
        if all(not r.late and r.ts + W + 1 > last.arrival for r in combo if r is not last):
            expected[tuple(r.id for r in combo)] += 1
    return expected


@settings(max_examples=150, deadline=None)
@given(events, st.integers(min_value=2, max_value=3))
def test_inner_property(script: list[tuple[int, bytes, int, int]], n: int) -> None:
    recs, outputs = _run("inner", n, script)
    got = Counter(tuple(c.id for c in o.contributors) for o in outputs if not o.error)
    assert got == _expected_inner(recs, n)
    assert all(len(o.contributors) == n for o in outputs if not o.error)


@settings(max_examples=150, deadline=None)
@given(events, st.integers(min_value=2, max_value=3))
def test_outer_property(script: list[tuple[int, bytes, int, int]], n: int) -> None:
    recs, outputs = _run("outer", n, script)
    complete = [o for o in outputs if len(o.contributors) == n]
    got = Counter(tuple(c.id for c in o.contributors) for o in complete)
    assert got == _expected_inner(recs, n)
    contributed = {c.id for o in outputs for c in o.contributors}
    # no record is lost: every record is in at least one output (a late one: joined or alone)
    assert contributed == {r.id for r in recs}
    # partial sets only carry records that were in no earlier output
    seen: set[int] = set()
    for o in outputs:
        ids = {c.id for c in o.contributors}
        if len(ids) < n:
            assert not ids & seen
        seen |= ids


any_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # source
        st.sampled_from([b"x", b"y"]),  # key
        st.integers(min_value=-2, max_value=1),  # timestamp - now
        st.integers(min_value=0, max_value=2),  # clock advance before the record
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(any_events, st.integers(min_value=2, max_value=3))
def test_any_property(script: list[tuple[int, bytes, int, int]], n: int) -> None:
    """Every record gives at once one output per combination of near held records of the
    other sources (alone if none), and is released at once."""
    joiner: Joiner[Rec] = Joiner(n, "any", W, bar)
    ledger: Ledger[Rec] = Ledger()
    now = T0

    def deadline(ts: int, arrival: int) -> int:  # held while the clock is below it
        return ts + 2

    recs: list[Rec] = []
    for i, (source, key, dts, advance) in enumerate(script):
        now += advance
        ledger.apply(joiner.expire(now))
        rec = Rec(i, source % n, key, now + dts, now, deadline(now + dts, now) <= now)
        held = [
            r
            for r in recs
            if not r.late and deadline(r.ts, r.arrival) > now and r.key == key
            if r.source != rec.source and abs(r.ts - rec.ts) <= 1
        ]
        sides = [[r for r in held if r.source == s] for s in range(n)]
        sides[rec.source] = [rec]
        combos = list(itertools.product(*(side for side in sides if side)))
        recs.append(rec)
        ledger.added.append(rec)
        step = ledger.apply(joiner.add(rec.source, key, f"{i}".encode(), rec.ts, rec, now))
        assert step.released == [rec] and step.stored == [] and step.removed == []
        expected = [
            (b"|".join(b"%d" % r.id for r in combo), max(r.ts for r in combo)) for combo in combos
        ]
        assert sorted((o.value, o.timestamp_ms) for o in step.outputs) == sorted(expected)
        assert all(o.origin == rec and o.contributors == (rec,) for o in step.outputs)
    ledger.apply(joiner.expire(now + 10 * W))
    assert joiner.held() == 0
    assert ledger.all_released()


# -- trigger gate ------------------------------------------------------------------------


class Gate:
    """A trigger gate, a fake clock and a ledger."""

    def __init__(self, n: int = 1, join_type: JoinType = "inner") -> None:
        self.now = T0
        self.gate: TriggerGate[str] = TriggerGate(n, join_type, W)
        self.ledger: Ledger[str] = Ledger()

    def data(self, token: str, key: bytes | None = b"k", ts: int | None = None) -> Result[str]:
        self.ledger.added.append(token)
        ts = self.now if ts is None else ts
        return self.ledger.apply(self.gate.add_data(key, token.encode(), ts, token, self.now))

    def trigger(
        self, token: str, index: int = 0, key: bytes | None = b"k", ts: int | None = None
    ) -> Result[str]:
        self.ledger.added.append(token)
        ts = self.now if ts is None else ts
        return self.ledger.apply(self.gate.add_trigger(index, key, ts, token, self.now))

    def at(self, now: int) -> Result[str]:
        self.now = now
        return self.ledger.apply(self.gate.expire(now))

    def finish(self) -> None:
        step = self.at(self.now + 100 * W)
        assert step.outputs == []
        assert self.gate.held() == 0
        assert self.gate.next_deadline() is None
        assert not self.gate._triggers
        assert not self.gate._waiting
        assert self.ledger.all_released()


def test_gate_without_trigger_passes_nothing_and_releases_data_at_expiry() -> None:
    g = Gate()
    assert g.data("d") == Result()
    assert g.gate.held() == 1
    assert g.gate.next_deadline() == T0 + W + 1
    assert g.at(T0 + W) == Result()
    assert g.at(T0 + W + 1) == Result([], ["d"])
    g.finish()
    assert g.ledger.outputs == []


def test_gate_trigger_first_data_passes_without_trigger_payload() -> None:
    g = Gate()
    assert g.trigger("t") == Result()
    g.now += 100
    step = g.data("d")
    assert step == Result([Output(b"k", b"d", T0 + 100, "d", ("d", "t"))], ["d"])
    assert g.gate.held() == 1  # the trigger stays for later data
    g.now += 100
    assert [o.value for o in g.data("d2").outputs] == [b"d2"]
    assert g.at(T0 + W + 1) == Result([], ["t"])
    g.finish()


def test_gate_data_first_passes_when_trigger_arrives() -> None:
    g = Gate()
    g.data("d1")
    g.data("d2", ts=T0 - 10)
    g.data("other", key=b"j")
    g.now += 300
    step = g.trigger("t")
    assert step.outputs == [
        Output(b"k", b"d1", T0 + 300, "d1", ("d1", "t")),
        Output(b"k", b"d2", T0 + 300, "d2", ("d2", "t")),
    ]
    assert step.released == ["d1", "d2"]
    assert g.gate.held() == 2  # "other" and the trigger
    g.finish()
    assert len(g.ledger.outputs) == 2


def test_gate_trigger_outside_window_does_not_match() -> None:
    g = Gate()
    g.trigger("t", ts=T0 + W + 1)
    assert g.data("d", ts=T0).outputs == []
    g.finish()
    assert g.ledger.outputs == []


def test_gate_data_passes_once_with_several_triggers() -> None:
    g = Gate()
    g.data("d")
    assert len(g.trigger("t1").outputs) == 1
    assert g.trigger("t2").outputs == []
    g.finish()
    assert len(g.ledger.outputs) == 1


def test_gate_inner_triggers_need_every_trigger_source() -> None:
    g = Gate(2, "inner")
    g.data("d")
    assert g.trigger("t1", index=1).outputs == []
    assert g.trigger("t1b", index=1).outputs == []
    step = g.trigger("t0", index=0)
    assert step.outputs == [Output(b"k", b"d", T0, "d", ("d", "t0", "t1"))]
    g.finish()


def test_gate_inner_triggers_must_fit_one_window_with_data() -> None:
    g = Gate(2, "inner")
    g.now = T0 + W // 2
    g.trigger("t0", index=0, ts=T0)
    g.data("d", ts=T0 + W // 2)
    assert g.trigger("t1", index=1, ts=T0 + W + 1).outputs == []  # span t0..t1 > W
    assert len(g.trigger("t1b", index=1, ts=T0 + W).outputs) == 1
    g.finish()


@pytest.mark.parametrize("join_type", ["outer", "any"])
def test_gate_outer_or_any_triggers_one_suffices(join_type: JoinType) -> None:
    g = Gate(3, join_type)
    g.data("d")
    step = g.trigger("t2", index=2)
    assert step.outputs == [Output(b"k", b"d", T0, "d", ("d", "t2"))]
    g.finish()


def test_gate_null_key_records_released_at_once() -> None:
    g = Gate()
    assert g.trigger("null-t", key=None) == Result([], ["null-t"])
    assert g.data("null-d", key=None) == Result([], ["null-d"])
    assert g.gate.held() == 0
    g.finish()


def test_gate_expiry_of_trigger_then_data_waits_again() -> None:
    g = Gate()
    g.trigger("t")
    g.now = T0 + W + 1
    step = g.data("d")  # the trigger's window closed first
    assert step == Result([], ["t"])
    g.finish()
    assert g.ledger.outputs == []


def test_gate_discard_waiting_data_by_contributor() -> None:
    g = Gate()
    g.ledger.added += ["a", "b"]
    out = Output(b"k", b"ab", T0, "a", ("a", "b"))
    assert g.gate.add_output(out, g.now) == Result()
    g.trigger("t", key=b"other")
    released = g.gate.discard(lambda token: token == "b")
    assert released == ["a", "b"]
    g.ledger.apply(Result([], released))
    g.finish()


def test_gate_arguments_validated() -> None:
    with pytest.raises(ValueError):
        TriggerGate(0, "inner", W)
    with pytest.raises(ValueError):
        TriggerGate(1, "both", W)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TriggerGate(1, "inner", -1)
    gate: TriggerGate[str] = TriggerGate(2, "inner", W)
    assert gate.window_ms == W
    with pytest.raises(IndexError):
        gate.add_trigger(2, b"k", T0, "t", T0)


trigger_events = st.lists(
    st.tuples(
        st.booleans(),  # trigger?
        st.integers(min_value=0, max_value=1),  # trigger index
        st.sampled_from([b"x", b"y"]),
        st.integers(min_value=-3 * W // 2, max_value=W // 2),
        st.integers(min_value=0, max_value=W // 2),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(trigger_events)
def test_gate_outer_property(script: list[tuple[bool, int, bytes, int, int]]) -> None:
    gate: TriggerGate[Rec] = TriggerGate(2, "outer", W)
    ledger: Ledger[Rec] = Ledger()
    now = T0
    data: list[Rec] = []
    triggers: list[Rec] = []
    for i, (is_trigger, index, key, dts, advance) in enumerate(script):
        now += advance
        rec = Rec(i, index if is_trigger else -1, key, now + dts, now, now + dts + W + 1 <= now)
        ledger.added.append(rec)
        if is_trigger:
            triggers.append(rec)
            ledger.apply(gate.add_trigger(index, key, rec.ts, rec, now))
        else:
            data.append(rec)
            ledger.apply(gate.add_data(key, b"%d" % i, rec.ts, rec, now))
    ledger.apply(gate.expire(now + 10 * W))
    assert ledger.all_released()
    assert gate.held() == 0
    assert not gate._triggers
    assert not gate._waiting

    def held_at(r: Rec, now: int) -> bool:
        return not r.late and r.ts + W + 1 > now

    errors = [o for o in ledger.outputs if o.error]
    assert all(o.origin.late and o.error.startswith("late for the") for o in errors)
    outputs = [o for o in ledger.outputs if not o.error]
    passed = {o.origin.id for o in outputs}
    assert len(passed) == len(outputs)  # each data record passes at most once
    expected = set()
    for d in data:
        for t in triggers:
            if d.key != t.key or abs(d.ts - t.ts) > W:
                continue
            first, second = (t, d) if t.id < d.id else (d, t)
            if held_at(first, second.arrival):  # the second may be late: it matches the first
                expected.add(d.id)
    assert passed == expected
    for o in outputs:
        assert o.value == b"%d" % o.origin.id
        assert o.contributors[0] == o.origin
        assert len(o.contributors) == 2


# -- a joiner chained into a gate, with the offset tracker as the step would use it ---------


def test_joiner_into_gate_commits_only_after_everything_is_delivered() -> None:
    """Tokens are (partition, offset); the step holds per pending output, releases per step."""
    Tok = tuple[str, int]
    tracker: OffsetTracker[str] = OffsetTracker()
    joiner: Joiner[Tok] = Joiner(2, "inner", W, bar)
    gate: TriggerGate[Tok] = TriggerGate(1, "inner", W)
    sent: list[Output[Tok]] = []

    def release(tokens: list[Tok]) -> None:
        for p, offset in tokens:
            assert tracker.release(p, offset)

    def hold(tokens: tuple[Tok, ...]) -> None:
        for p, offset in tokens:
            tracker.hold(p, offset)

    def on_gate(step: Result[Tok]) -> None:
        for output in step.outputs:
            hold(output.contributors)  # pending send
            sent.append(output)
        release(step.released)

    def on_join(step: Result[Tok], now: int) -> None:
        for output in step.outputs:
            hold(output.contributors)  # pending in the gate
            on_gate(gate.add_output(output, now))
        release(step.released)

    now = T0
    tracker.hold("a", 0)  # consumed
    on_join(joiner.add(0, b"k", b"A", now, ("a", 0), now), now)
    tracker.hold("b", 0)
    on_join(joiner.add(1, b"k", b"B", now, ("b", 0), now), now)
    assert sent == []  # waiting for the trigger
    assert tracker.committable() == {}
    tracker.hold("t", 0)
    on_gate(gate.add_trigger(0, b"k", now, ("t", 0), now))
    assert [(o.value, o.origin, o.contributors) for o in sent] == [
        (b"A|B", ("b", 0), (("a", 0), ("b", 0), ("t", 0)))
    ]
    # the joiner and the gate still hold a, b and t: nothing committable
    assert tracker.committable() == {}
    now += W + 1  # stream time passes every window
    on_join(joiner.expire(now), now)
    on_gate(gate.expire(now))
    assert tracker.committable() == {}  # the send is not acknowledged yet
    release(list(sent[0].contributors))  # broker ack
    assert tracker.committable() == {"a": 1, "b": 1, "t": 1}
    assert tracker.pending_count() == 0


def test_a_set_that_cannot_be_merged_becomes_an_error_output() -> None:
    def failing(left: bytes, right: bytes) -> bytes:
        raise ValueError("raw and non-raw cannot mix")

    j: Joiner[str] = Joiner(2, "inner", 1000, failing)
    j.add(0, b"k", b"a", 0, "left", 0)
    step = j.add(1, b"k", b"b", 10, "right", 10)
    assert [(o.value, o.error, o.contributors) for o in step.outputs] == [
        (b"", "cannot join: raw and non-raw cannot mix", ("left", "right"))
    ]
    released = j.expire(2000).released
    assert sorted(released) == ["left", "right"] and j.held() == 0


def test_gate_data_read_again_after_a_restart_replaces_its_restored_entry() -> None:
    # Data restored from the changelog, then the same record read again (its offset was not
    # committed): one entry, so one trigger lets it through once (before: twice).
    from dataflow.windows import Entry, EntryKind

    g: TriggerGate[str] = TriggerGate(1, "inner", W)
    restored = Entry(EntryKind.GATE_DATA, -1, b"k", b"v", 100, "d0", b"d/0/a/0/7")
    g.load(restored)
    again = g.add_data(b"k", b"v", 100, "d0'", 100, ident=b"d/0/a/0/7")
    assert again.outputs == [] and g.held() == 1
    assert [e.ident for e in again.stored] == [b"d/0/a/0/7"] and again.removed == []
    passed = g.add_trigger(0, b"k", 100, "t0", 100)
    assert [o.value for o in passed.outputs] == [b"v"]


def test_gate_data_read_again_that_passes_at_once_removes_its_restored_entry() -> None:
    from dataflow.windows import Entry, EntryKind

    g: TriggerGate[str] = TriggerGate(1, "inner", W)
    g.add_trigger(0, b"k", 100, "t0", 100)
    restored = Entry(EntryKind.GATE_DATA, -1, b"k", b"v", 100, "d0", b"d/0/a/0/7")
    g.load(restored)
    again = g.add_data(b"k", b"v", 100, "d0'", 100, ident=b"d/0/a/0/7")
    assert [o.value for o in again.outputs] == [b"v"]
    assert again.removed == [restored] and g.held() == 1, "the trigger stays for its window"
