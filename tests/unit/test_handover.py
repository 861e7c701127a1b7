"""The version handover plan and the renumbering of changelog entries (dataflow.handover)."""

from __future__ import annotations

from dataflow import changelog
from dataflow.handover import plan, renumber
from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.topology import Topology, group_id, topology_from

NS = "seldon.ns.model"


def pipeline(uid: str, version: int, *steps: tuple[list[str], str]) -> Topology:
    return topology_from(
        PipelineUpdateMessage(
            pipeline="p",
            version=version,
            uid=uid,
            updates=[
                PipelineStepUpdate(
                    sources=[PipelineTopic(pipeline_name="p", topic_name=s) for s in sources],
                    sink=PipelineTopic(pipeline_name="p", topic_name=sink),
                )
                for sources, sink in steps
            ],
        ),
        1000,
    )


def test_twins_inherit_shared_sources_the_rest_starts_at_the_log_end() -> None:
    old = pipeline("u1", 1, ([f"{NS}.a.outputs"], f"{NS}.b.inputs"))
    new = pipeline(
        "u2",
        2,
        ([f"{NS}.a.outputs", f"{NS}.x.outputs"], f"{NS}.b.inputs"),  # one source more
        ([f"{NS}.b.outputs"], f"{NS}.c.inputs"),  # a new step
    )
    steps = {s.new.sink: s for s in plan(new, old, "base")}
    join = steps[f"{NS}.b.inputs"]
    assert join.old_group == group_id("base", "u1", 0) and join.group == group_id("base", "u2", 0)
    assert join.inherited == (f"{NS}.a.outputs",)
    assert join.at_end == (f"{NS}.x.outputs",)
    fresh = steps[f"{NS}.c.inputs"]
    assert fresh.old is None and fresh.old_group == ""
    assert fresh.inherited == () and fresh.at_end == (f"{NS}.b.outputs",)


def _entry(kind: str, index: int, topic: str) -> bytes:
    return changelog.encode(kind, index, b"k", b"v", 5, False, (("pipeline", b"p"),), topic, 3, 42)


def test_entries_are_renumbered_for_the_new_steps_sources() -> None:
    a, b, x = f"{NS}.a.outputs", f"{NS}.b.outputs", f"{NS}.x.outputs"
    old = pipeline("u1", 1, ([a, b], f"{NS}.c.inputs")).steps[0]
    new = pipeline("u2", 2, ([x, b, a], f"{NS}.c.inputs")).steps[0]
    ident = changelog.ident("s", 1, b, 3, 42)
    moved = renumber(ident, _entry("j", 1, b), old, new)
    assert moved is not None
    new_ident, value = moved
    assert new_ident == changelog.ident("s", new.sources.index(old.sources[1]), b, 3, 42)
    entry = changelog.decode(value)
    assert (entry.index, entry.topic, entry.offset, entry.value) == (
        new_ident[1] - ord("0"),
        b,
        42,
        b"v",
    )


def test_entries_of_a_source_the_new_step_drops_are_left_out() -> None:
    a, b = f"{NS}.a.outputs", f"{NS}.b.outputs"
    old = pipeline("u1", 1, ([a, b], f"{NS}.c.inputs")).steps[0]
    new = pipeline("u2", 2, ([a, f"{NS}.y.outputs"], f"{NS}.c.inputs")).steps[0]
    assert renumber(changelog.ident("s", 1, b, 0, 1), _entry("j", 1, b), old, new) is None
