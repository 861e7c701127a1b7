"""What a spec may ask for: bounds on sizes and windows, topic name lengths, and no cycles.

Pure: no I/O. The bounds are checked when a spec is loaded (the models use the annotated types
below), so that a typo does not hold records for weeks or fail at topic creation:

* `batch.size` at most 100,000 records (the engine's own state bound, 500,000 by default, is
  checked again when it builds the step);
* `batch.windowMs` and every `joinWindowMs` at most one hour;
* `maxStepRevisits` at most 1,000;
* every topic a name produces at most Kafka's 249 characters.

A topic graph with a cycle (a step reading a topic that it, or a step downstream of it, writes)
is refused unless the pipeline sets `allowCycles`; then the engine bounds every loop by
`maxStepRevisits`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated

from pydantic import Field

from dataflow.topics import MAX_TOPIC_LENGTH

MAX_BATCH_SIZE = 100_000
"""Largest `batch.size`."""
MAX_WINDOW_MS = 3_600_000
"""Largest `batch.windowMs` and `joinWindowMs`: one hour."""
MAX_STEP_REVISITS = 1_000
"""Largest `maxStepRevisits`."""

BatchSize = Annotated[int, Field(ge=0, le=MAX_BATCH_SIZE)]
WindowMs = Annotated[int, Field(ge=0, le=MAX_WINDOW_MS)]
StepRevisits = Annotated[int, Field(ge=0, le=MAX_STEP_REVISITS)]

LIMIT_NOTES = {MAX_WINDOW_MS: " ms (1 hour)", MAX_BATCH_SIZE: " records"}
"""How to read a limit in an error message."""


def shorten(text: str, keep: int = 40) -> str:
    """`text`, cut to `keep` characters and `...` when longer."""
    return text if len(text) <= keep else text[:keep] + "..."


def topic_too_long(topic: str, what: str) -> str | None:
    """Why `topic` cannot be a Kafka topic because of its length, or None.

    Args:
        topic: the topic a name produces.
        what: the name, for the message, e.g. `pipeline name 'p...' (300 characters)`.
    """
    if len(topic) <= MAX_TOPIC_LENGTH:
        return None
    return (
        f"{what} makes topic {shorten(topic)!r} of {len(topic)} characters; "
        f"Kafka's limit is {MAX_TOPIC_LENGTH}"
    )


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle of a directed graph as its nodes, first node repeated at the end; None if none.

    Nodes are visited in the order of `edges` (then of each node's successors), so the answer
    is the same for the same graph.
    """
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        trail: list[str] = []
        on_trail: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(edges.get(start, ())))]
        trail.append(start)
        on_trail.add(start)
        while stack:
            node, successors = stack[-1]
            for successor in successors:
                if successor in on_trail:
                    return [*trail[trail.index(successor) :], successor]
                if successor not in done:
                    stack.append((successor, iter(edges.get(successor, ()))))
                    trail.append(successor)
                    on_trail.add(successor)
                    break
            else:
                stack.pop()
                trail.pop()
                on_trail.discard(node)
                done.add(node)
    return None


def topic_edges(
    steps: Sequence[tuple[Sequence[str], str]], extra: Iterable[tuple[str, str]] = ()
) -> dict[str, list[str]]:
    """The topic graph of steps given as (topics read, topic written): read -> written.

    Args:
        steps: per step, the sources and triggers it reads and its sink.
        extra: more edges, e.g. a model between its inputs and outputs topics.
    """
    edges: dict[str, list[str]] = {}
    for reads, sink in steps:
        for topic in reads:
            targets = edges.setdefault(topic, [])
            if sink not in targets:
                targets.append(sink)
        edges.setdefault(sink, [])
    for a, b in extra:
        targets = edges.setdefault(a, [])
        if b not in targets:
            targets.append(b)
        edges.setdefault(b, [])
    return edges
