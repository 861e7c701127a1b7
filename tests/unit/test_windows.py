"""`dataflow.windows.Output` keeps a frozen dataclass's behaviour with its own `__init__`."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from dataflow.windows import Output


def test_output_is_a_frozen_dataclass_with_its_fields_in_order() -> None:
    out = Output(b"k", b"v", 5, "a", ("a", "b"))
    assert [f.name for f in dataclasses.fields(out)] == [
        "key",
        "value",
        "timestamp_ms",
        "origin",
        "contributors",
        "error",
    ]
    assert (out.key, out.value, out.timestamp_ms, out.origin, out.contributors, out.error) == (
        b"k",
        b"v",
        5,
        "a",
        ("a", "b"),
        "",
    )
    assert out == Output(key=b"k", value=b"v", timestamp_ms=5, origin="a", contributors=("a", "b"))
    assert hash(out) == hash(Output(b"k", b"v", 5, "a", ("a", "b"), ""))
    assert out != Output(b"k", b"v", 5, "a", ("a", "b"), "bad")
    assert repr(out) == (
        "Output(key=b'k', value=b'v', timestamp_ms=5, origin='a', contributors=('a', 'b'), "
        "error='')"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.value = b"w"  # type: ignore[misc]
    assert dataclasses.replace(out, error="e") == Output(b"k", b"v", 5, "a", ("a", "b"), "e")
    assert pickle.loads(pickle.dumps(out)) == out
    assert copy.copy(out) == out
    assert not hasattr(out, "__dict__")
