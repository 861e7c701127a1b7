"""A new pipeline version takes over where the previous one stopped: offsets and held state.

Each version's steps have their own consumer groups (`topology.group_id`: from the uid), and a
new group starts at `SELDON_KAFKA_AUTO_OFFSET_RESET` (earliest): without a handover, every
version update replays the topics' whole history. When a pipeline gets a new version while an
earlier one runs in this engine, before the new version's steps start, each of its steps is
seeded (`plan`, then `Handover.run`):

* a step whose previous-version twin (the step writing the same sink) read a source too starts
  that source's partitions at the twin's committed offsets; a source the twin did not read, and a
  step with no twin, start at the log end taken now;
* a stateful step (join, trigger gate, batch) also gets its twin's held state: the live entries
  of the twin's changelog are copied into its own changelog (source indexes renumbered for the
  new step; entries of sources the new step does not read are left out), read before the offsets
  are committed, so every record the new step will not read again is in its state;
* a new group that already has committed offsets (seeded by another replica or worker, or by
  this engine before a restart) is left alone; so is one with members.

Both versions run side by side until the scheduler deletes the old one, so records in between
may be processed by both (at least once). A pipeline with no earlier version here starts as
before (the reset policy: the 2022 demo's pre-loaded topics are read from the beginning).
`SELDON_VERSION_HANDOVER=reset` turns the handover off. `plan` and `renumber` are pure.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from loguru import logger

from dataflow import changelog
from dataflow.kafka import read_latest
from dataflow.topology import StepSpec, Topology, group_id

__all__ = ["Handover", "StepHandover", "plan", "renumber"]


@dataclass(frozen=True, slots=True)
class StepHandover:
    """How one step of a new version starts.

    Attributes:
        new: the step of the new version.
        old: its twin in the previous version (the step writing the same sink), or None.
        group: the new step's consumer group.
        old_group: the twin's consumer group ('' without a twin).
        inherited: topics both read: start at the twin's committed offsets.
        at_end: topics the twin did not read (all, without a twin): start at the log end.
    """

    new: StepSpec
    old: StepSpec | None
    group: str
    old_group: str
    inherited: tuple[str, ...]
    at_end: tuple[str, ...]


def plan(new: Topology, old: Topology, base: str) -> list[StepHandover]:
    """The handover of every step of `new` from `old` (consumer groups under `base`)."""
    twins = {spec.sink: spec for spec in old.steps}
    steps = []
    for spec in new.steps:
        twin = twins.get(spec.sink)
        read = set(twin.topics) if twin is not None else set()
        steps.append(
            StepHandover(
                new=spec,
                old=twin,
                group=group_id(base, new.uid, spec.index),
                old_group=group_id(base, old.uid, twin.index) if twin is not None else "",
                inherited=tuple(t for t in spec.topics if t in read),
                at_end=tuple(t for t in spec.topics if t not in read),
            )
        )
    return steps


_IDENT = re.compile(rb"^([a-z])(-?\d+)/")


def _index_map(old: Sequence[Any], new: Sequence[Any]) -> dict[int, int]:
    """Old position -> new position of sources (or triggers): the same one where both have it,
    else the first new one of the same topic."""
    out: dict[int, int] = {}
    for i, item in enumerate(old):
        if item in new:
            out[i] = list(new).index(item)
            continue
        same = [j for j, other in enumerate(new) if other.topic == item.topic]
        if same:
            out[i] = same[0]
    return out


def renumber(
    ident: bytes, value: bytes, old: StepSpec, new: StepSpec
) -> tuple[bytes, bytes] | None:
    """A changelog entry of `old` as an entry of `new` (source and trigger indexes renumbered),
    or None when `new` does not read the record's source."""
    match = _IDENT.match(ident)
    if match is None:
        return None
    letter, number = match.group(1), int(match.group(2))
    if letter == b"t":
        table = _index_map(old.triggers, new.triggers)
    else:
        table = _index_map(old.sources, new.sources)
    if number not in table:
        return None
    entry = changelog.decode(value)
    index = entry.index if entry.index < 0 else table.get(entry.index)
    if index is None:
        return None
    renamed = letter + str(table[number]).encode() + ident[match.end(2) :]
    encoded = changelog.encode(
        entry.kind,
        index,
        entry.key,
        entry.value,
        entry.timestamp_ms,
        entry.matched,
        entry.headers,
        entry.topic,
        entry.partition,
        entry.offset,
    )
    return renamed, encoded


class Handover:
    """Seeds the groups (and changelogs) of a new version's steps (module docstring).

    Args:
        consumer: makes a consumer of a group (None: no group) that never joins it.
        producer: sends the copied changelog entries.
        changelog_of: a step's changelog topic from its consumer group.
        ensure_changelog: creates a changelog topic (name, partitions) if missing.
    """

    def __init__(
        self,
        consumer: Callable[[str | None], AIOKafkaConsumer],
        producer: AIOKafkaProducer,
        changelog_of: Callable[[str], str],
        ensure_changelog: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._changelog_of = changelog_of
        self._ensure_changelog = ensure_changelog

    async def run(self, steps: list[StepHandover]) -> None:
        """Seed each step of `steps` (from `plan`)."""
        for step in steps:
            await self._step(step)

    async def _partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        tps = []
        for topic in topics:
            for partition in sorted(await self._producer.partitions_for(topic) or ()):
                tps.append(TopicPartition(topic, partition))
        return tps

    async def _step(self, step: StepHandover) -> None:
        inherited = await self._partitions(step.inherited)
        at_end = await self._partitions(step.at_end)
        seeder = self._consumer(step.group)
        await seeder.start()
        try:
            seeder.assign(inherited + at_end)
            for tp in inherited + at_end:
                if await seeder.committed(tp) is not None:
                    logger.debug("group {} has offsets already: no handover", step.group)
                    return
            offsets: dict[TopicPartition, int] = {}
            if inherited:
                offsets.update(await self._committed(step.old_group, inherited))
            if at_end:
                offsets.update(await seeder.end_offsets(at_end))
            copied = 0
            if step.old is not None and step.new.is_stateful and step.old.is_stateful:
                copied = await self._copy_state(step, step.old)
            if not offsets:
                return
            origin = step.old_group or "the log end"
            note = f"handover from {origin}"
            try:
                await seeder.commit({tp: OffsetAndMetadata(o, note) for tp, o in offsets.items()})
            except Exception as exc:  # members joined meanwhile (another replica seeded it)
                logger.info("group {} not seeded ({}): it is in use", step.group, exc)
                return
            starts = ", ".join(
                f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items())
            )
            what = f" and {copied} state entries" if copied else ""
            logger.info("step {} takes over from {}{}: {}", step.group, origin, what, starts)
        finally:
            await seeder.stop()

    async def _committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The committed offsets of `group` (partitions without one are left out: they start at
        the reset policy, as the twin did)."""
        reader = self._consumer(group)
        await reader.start()
        try:
            found = {}
            for tp in tps:
                offset = await reader.committed(tp)
                if offset is not None:
                    found[tp] = offset
            return found
        finally:
            await reader.stop()

    async def _copy_state(self, step: StepHandover, old: StepSpec) -> int:
        """Copy the live entries of the twin's changelog into the new step's; the count copied."""
        source, target = self._changelog_of(step.old_group), self._changelog_of(step.group)
        counts = [len(await self._producer.partitions_for(t) or ()) for t in step.new.topics]
        partitions = max(1, *counts)
        await self._ensure_changelog(target, partitions)
        latest = await read_latest(self._consumer(None), await self._partitions([source]))
        sent = []
        for ident, value in latest.items():
            if value is None:
                continue
            entry = renumber(ident, value, old, step.new)
            if entry is None:
                continue
            partition = changelog.decode(value).partition % partitions
            sent.append(
                await self._producer.send(target, entry[1], key=entry[0], partition=partition)
            )
        if sent:
            await asyncio.gather(*sent)
        return len(sent)
