"""Changelog records of a step's state: names and the entry encoding."""

from __future__ import annotations

import pytest

from dataflow import changelog


def test_round_trip_keeps_every_field() -> None:
    value = changelog.encode(
        "j", 1, b"k1", b"\x0a\x01x", 1_700_000_000_123, True,
        [("pipeline", b"p"), ("x-request-id", b"r1")], "seldon.ns.model.a.outputs", 3, 42,
    )  # fmt: skip
    restored = changelog.decode(value)
    assert restored == changelog.Restored(
        kind="j",
        index=1,
        key=b"k1",
        value=b"\x0a\x01x",
        timestamp_ms=1_700_000_000_123,
        matched=True,
        headers=(("pipeline", b"p"), ("x-request-id", b"r1")),
        topic="seldon.ns.model.a.outputs",
        partition=3,
        offset=42,
    )


def test_a_missing_key_stays_missing_and_an_empty_one_empty() -> None:
    none = changelog.decode(changelog.encode("b", -1, None, b"v", 0, False, [], "t", 0, 0))
    empty = changelog.decode(changelog.encode("b", -1, b"", b"v", 0, False, [], "t", 0, 0))
    assert (none.key, none.index, empty.key) == (None, -1, b"")


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x02" + b"\x00" * 30])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        changelog.decode(data)


def test_truncated_entry_is_refused() -> None:
    value = changelog.encode("t", 0, b"k", b"value", 5, False, [("h", b"v")], "topic", 0, 1)
    with pytest.raises(ValueError):
        changelog.decode(value[:-3])


def test_names() -> None:
    assert changelog.ident("s", 0, "seldon.ns.model.a.outputs", 2, 17) == (
        b"s0/seldon.ns.model.a.outputs/2/17"
    )
    assert changelog.ident("t", 1, "t", 0, 5, n=2) == b"t1/t/0/5/2"
    assert changelog.changelog_topic("seldon-dataflow-abc-s0") == "seldon-dataflow-abc-s0-changelog"
    assert changelog.CHANGELOG_CONFIG["cleanup.policy"] == "compact"
