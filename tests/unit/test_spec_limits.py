"""Bounds checked at load, topic name lengths, and cycles refused in both spec forms."""

from __future__ import annotations

import pytest

from dataflow.specs import SpecError, parse_spec
from dataflow.specs.limits import (
    MAX_BATCH_SIZE,
    MAX_STEP_REVISITS,
    MAX_WINDOW_MS,
    find_cycle,
    topic_edges,
)


def seldon(steps: str, extra: str = "", name: str = "p") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n"
        f"  name: {name}\nspec:\n  steps:\n{steps}{extra}"
    )


def explicit(steps: str, extra: str = "") -> str:
    return f"kind: PipelineUpdate\nname: x\n{extra}steps:\n{steps}"


def refused(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            seldon("  - name: a\n    batch: {size: 4294967295, windowMs: 4294967295}\n"),
            "x.yaml: spec.steps[0].batch.size: 4294967295 is above the limit of 100000 records",
        ),
        (
            seldon("  - name: a\n    batch: {size: 10, windowMs: 4294967295}\n"),
            "x.yaml: spec.steps[0].batch.windowMs: "
            "4294967295 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            seldon("  - name: a\n    joinWindowMs: 3600001\n"),
            "x.yaml: spec.steps[0].joinWindowMs: 3600001 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            seldon(
                "  - name: a\n", "  input:\n    externalInputs: [q]\n    joinWindowMs: 9999999\n"
            ),
            "x.yaml: spec.input.joinWindowMs: 9999999 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            seldon("  - name: a\n", "  output:\n    steps: [a]\n    joinWindowMs: 9999999\n"),
            "x.yaml: spec.output.joinWindowMs: 9999999 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            seldon("  - name: a\n", "  maxStepRevisits: 5000\n"),
            "x.yaml: spec.maxStepRevisits: 5000 is above the limit of 1000",
        ),
        (
            explicit("- {sources: [a.outputs], sink: b.inputs, batch: {size: 100001}}\n"),
            "x.yaml: steps[0].batch.size: 100001 is above the limit of 100000 records",
        ),
        (
            explicit("- {sources: [a.outputs], sink: b.inputs, batch: {windowMs: 3600001}}\n"),
            "x.yaml: steps[0].batch.windowMs: 3600001 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            explicit("- {sources: [a, b], sink: c.inputs, joinWindowMs: 4294967295}\n"),
            "x.yaml: steps[0].joinWindowMs: 4294967295 is above the limit of 3600000 ms (1 hour)",
        ),
        (
            explicit("- {sources: [a], sink: b}\n", "maxStepRevisits: 1001\n"),
            "x.yaml: maxStepRevisits: 1001 is above the limit of 1000",
        ),
    ],
)
def test_sizes_and_windows_are_bounded(text: str, error: str) -> None:
    assert refused(text) == error


def test_the_bounds_themselves_are_accepted() -> None:
    batch = f"{{size: {MAX_BATCH_SIZE}, windowMs: {MAX_WINDOW_MS}}}"
    text = seldon(
        f"  - name: a\n    joinWindowMs: {MAX_WINDOW_MS}\n    batch: {batch}\n",
        f"  maxStepRevisits: {MAX_STEP_REVISITS}\n",
    )
    update = parse_spec(text, "x.yaml").to_message(1, "u").updates[0]
    assert (update.batch.size, update.batch.window_ms) == (MAX_BATCH_SIZE, MAX_WINDOW_MS)
    assert update.join_window_ms == MAX_WINDOW_MS


def test_names_are_counted_on_the_topics_they_make() -> None:
    # seldon.default.pipeline.<name>.outputs: 249 - 32 = 217 characters fit, 218 do not
    assert parse_spec(seldon("  - name: a\n", name="p" * 217), "x.yaml").name == "p" * 217
    assert refused(seldon("  - name: a\n", name="p" * 218)) == (
        "x.yaml: metadata.name: pipeline name 'pppppppppppppppppppp...' (218 characters) "
        "makes topic 'seldon.default.pipeline.pppppppppppppppp...' of 250 characters; "
        "Kafka's limit is 249"
    )
    assert refused(seldon("  - name: a\n", name="p" * 300)).startswith(
        "x.yaml: metadata.name: pipeline name 'pppppppppppppppppppp...' (300 characters)"
    )
    assert refused(seldon("  - name: a\n  - name: " + "s" * 230 + "\n")).startswith(
        "x.yaml: spec.steps[1].name: step name 'ssssssssssssssssssss...' (230 characters) "
        "makes topic 'seldon.default.model.sssssssssssssssssss...' of 259 characters"
    )
    namespace = "n" * 240
    text = seldon("  - name: a\n").replace("  name: p\n", f"  name: p\n  namespace: {namespace}\n")
    assert refused(text).startswith("x.yaml: metadata.namespace: namespace 'nnnn")
    external = seldon("  - name: a\n", "  input:\n    externalInputs: [" + "q" * 220 + "]\n")
    assert refused(external).startswith("x.yaml: spec.input.externalInputs[0]: reference 'qqqq")
    long_topic = explicit("- {sources: [a], sink: " + "b" * 250 + "}\n")
    assert refused(long_topic) == (
        "x.yaml: steps[0].sink.topic: topic name 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'... "
        "of 250 characters: Kafka's limit is 249"
    )


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        (
            "- {sources: [a.inputs], sink: a.inputs}\n",
            "x.yaml: steps[0]: cycle a.inputs -> a.inputs",
        ),
        (
            "- {sources: [a.outputs], sink: b.inputs}\n"
            "- {sources: [b.inputs], sink: c.inputs}\n"
            "- {sources: [c.inputs, d.outputs], sink: a.outputs}\n",
            "x.yaml: steps[0]: cycle a.outputs -> b.inputs -> c.inputs -> a.outputs",
        ),
        (
            "- {sources: [a.outputs], sink: b.inputs}\n"
            "- {sources: [z.outputs], triggers: [b.inputs], sink: a.outputs}\n",
            "x.yaml: steps[0]: cycle a.outputs -> b.inputs -> a.outputs",
        ),
    ],
)
def test_explicit_cycles_are_refused(steps: str, error: str) -> None:
    assert refused(explicit(steps)) == (
        f"{error}: a step reads a topic it or a later step writes "
        "(set allowCycles: true to allow it, bounded by maxStepRevisits)"
    )


def test_explicit_cycles_with_allow_cycles_are_accepted() -> None:
    text = explicit(
        "- {sources: [a.inputs], sink: a.inputs}\n", "allowCycles: true\nmaxStepRevisits: 3\n"
    )
    message = parse_spec(text, "x.yaml").to_message(1, "u")
    assert message.allow_cycles and message.max_step_revisits == 3


def test_a_chain_and_a_diamond_are_no_cycles() -> None:
    chain = explicit(
        "- {sources: [a.outputs], sink: b.inputs}\n"
        "- {sources: [b.inputs], sink: c.inputs}\n"
        "- {sources: [a.outputs, c.inputs], sink: d.inputs}\n"
    )
    assert parse_spec(chain, "x.yaml").name == "x"


def test_seldon_loop_through_the_pipeline_topics_is_refused() -> None:
    text = seldon("  - name: a\n    inputs: [p.outputs]\n", "  output:\n    steps: [a]\n")
    assert refused(text) == (
        "x.yaml: spec.steps: cycle pipeline.p.outputs -> model.a.inputs -> model.a.outputs -> "
        "pipeline.p.outputs (set spec.allowCycles: true to allow it)"
    )
    allowed = text + "  allowCycles: true\n"
    assert parse_spec(allowed, "x.yaml").to_message(1, "u").allow_cycles


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    edges = topic_edges([(["x", "y"], "z")], [("z", "x")])
    assert edges == {"x": ["z"], "y": ["z"], "z": ["x"]}
    assert find_cycle(edges) == ["x", "z", "x"]
    deep = {str(i): [str(i + 1)] for i in range(5000)}  # no recursion limit
    assert find_cycle(deep) is None
