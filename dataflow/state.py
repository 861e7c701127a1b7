"""What a stateful step holds, mirrored in its changelog, and restored on assignment.

Kafka Streams' `ProcessorStateManager`. The state itself is the pure state machines of
`dataflow.stages` (join windows, trigger gates, batches); this module keeps their bookkeeping:

* every entry a stage keeps is written to the step's compacted changelog (`dataflow.changelog`)
  at the next flush (before each commit), as record batches; the records processed since the
  previous flush stay held (`hold()`) until the flush and their outputs are acknowledged; an
  entry that enters and leaves between two flushes is never written (Kafka Streams' record
  cache does the same);
* an entry that leaves the state gets a tombstone, written only once the deliveries that carry
  its data are acknowledged (`Ref.deferred`), so a crash in between restores it;
* newly assigned partitions are restored from the changelog before the step reads them; the
  state of partitions owned no more is dropped (their next owner restores it);
* what is held is counted, and fetching is held back when it is full.

It sends through `producer_for(task)` and reports through callbacks: it imports neither the
step nor its collector.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aiokafka import AIOKafkaConsumer, TopicPartition

from dataflow import changelog
from dataflow.collector import RecordBatches, TaskBatches
from dataflow.context import StepContext
from dataflow.errors import StepFailed
from dataflow.kafka import read_latest
from dataflow.offsets import BatchHold
from dataflow.stages import Ref, StepStages
from dataflow.windows import Entry

#: Longest a changelog restore may take before the step is reported failed.
RESTORE_TIMEOUT = 120.0
#: Entries loaded between two yields to the event loop while restoring.
SLICE_ENTRIES = 256


@dataclass(frozen=True)
class StateOptions:
    """Where a stateful step keeps its state and how much it may hold.

    Attributes:
        changelog: the step's changelog topic.
        ensure_changelog: creates it (name, partitions) if missing.
        restore_consumer: makes a group-less consumer to read it back.
        max_records: most entries held before fetching is paused.
        max_bytes: most key and value bytes held before fetching is paused.
        grace_ms: how long join and trigger windows keep a record after they close, for a
            partner that arrives late (`SELDON_JOIN_GRACE_MS`).
    """

    changelog: str
    ensure_changelog: Callable[[str, int], Awaitable[None]]
    restore_consumer: Callable[[], AIOKafkaConsumer]
    max_records: int = 500_000
    max_bytes: int = 256 * 1024 * 1024
    grace_ms: int = 0


Held = tuple[int, int]
"""An entry held in state: (its input partition, its key and value bytes). A plain tuple: a
named tuple's constructor is a Python call, and one is made per entry."""


class StepState:
    """A stateful step's state bookkeeping and changelog (module docstring).

    Args:
        context: what the state shares with its step (producers, holds, counters).
        options: the changelog and the bounds.
        stages: the step's stages (they hold the entries themselves).
    """

    def __init__(self, context: StepContext, options: StateOptions, stages: StepStages) -> None:
        self.options = options
        self.stages = stages
        self.producer = context.producer
        self.producer_for = context.producer_for
        self.tracker = context.tracker
        self.stats = context.stats
        self.log = context.log
        self.generation = context.generation
        self.fail = context.fail
        self.exactly_once = context.exactly_once
        self.entries: dict[bytes, Held] = {}  # ident -> what it holds, of every entry
        self.owned: set[int] = set()  # input partition numbers whose state is loaded
        self.tombstones: list[Entry[Ref]] = []  # removals whose deliveries were acked
        #: Entries put since the last flush, and whether an earlier flush wrote them.
        self.dirty: dict[bytes, tuple[Entry[Ref], bool]] = {}
        self._hold: BatchHold[TopicPartition] | None = None  # what the next flush seals
        self.partitions = 1  # the changelog's
        self.full = False

    @property
    def topic(self) -> str:
        """The changelog topic."""
        return self.options.changelog

    async def start(self, topics: Sequence[str]) -> None:
        """Create the changelog, with as many partitions as the widest source topic."""
        counts = [len(await self.producer.partitions_for(t) or ()) for t in topics]
        self.partitions = max(1, *counts)
        await self.options.ensure_changelog(self.options.changelog, self.partitions)

    # -- changelog writes -------------------------------------------------------------------

    def hold(self) -> BatchHold[TopicPartition]:
        """The hold of the records processed since the last flush: the step holds each fetched
        batch's partitions in it from their first offset, and counts in it the record batches
        of the outputs it sends; the next flush counts its changelog writes in it too, and
        seals it. So those offsets are released only once everything the records caused is
        acknowledged: their outputs, and the entries they left in the state. (An entry put and
        removed between two flushes is never written: every output carrying it was sent in
        the same period, so this hold keeps its offset until they are acknowledged.)"""
        if self._hold is None:
            self._hold = BatchHold(self.tracker, self.generation)
        return self._hold

    def put(self, entries: list[Entry[Ref]]) -> None:
        """`entries` entered the state or changed: each is written at the next `flush` (the
        record that caused it is held in `hold()` until then). Written as it is then: changes
        in between (an outer join's `matched` flag) cost no second write."""
        held, dirty = self.entries, self.dirty
        grown = 0
        for entry in entries:
            ident = entry.ident
            token = entry.token
            size = len(entry.value) + len(token.key or b"")
            old = held.get(ident)
            written = False
            if old is not None:
                grown -= old[1]
                prior = dirty.get(ident)
                written = prior[1] if prior is not None else True  # not dirty: in the changelog
            held[ident] = (token.tp.partition, size)
            grown += size
            dirty[ident] = (entry, written)
        self.stats.state_bytes += grown

    def remove(self, entries: list[Entry[Ref]]) -> None:
        """`entries` left the state. One never written (it came and went between two flushes):
        nothing to write, its offset is held in `hold()` until the period's outputs are
        acknowledged. Else its tombstone follows the deliveries that carry its data."""
        held, dirty, stats = self.entries, self.dirty, self.stats
        for entry in entries:
            ident = entry.ident
            old = held.pop(ident, None)
            if old is not None:
                stats.state_bytes -= old[1]
            pending = dirty.pop(ident, None)
            if pending is not None and not pending[1]:
                stats.state_unwritten += 1
                continue
            token = entry.token
            if token.pending > 0:
                if token.deferred is None:
                    token.deferred = []
                token.deferred.append(entry)
            else:
                self.tombstones.append(entry)

    def released(self, entries: list[Entry[Ref]]) -> None:
        """The deliveries that carried `entries`' data were acknowledged."""
        self.tombstones.extend(entries)

    @property
    def writes(self) -> bool:
        """True while entries or tombstones wait to be written."""
        return bool(self.dirty or self.tombstones)

    async def flush(self) -> None:
        """Write what changed since the last flush, as record batches per changelog partition:
        the entries put (the offsets held in `hold()` meanwhile are released once these and
        the period's outputs are acknowledged), and the tombstones of removed entries whose
        deliveries were acknowledged."""
        hold, self._hold = self._hold, None
        dirty, self.dirty = self.dirty, {}
        tombstones, self.tombstones = self.tombstones, []
        if hold is None and not dirty and not tombstones:
            return
        topic = self.options.changelog
        on_done = partial(self._written, hold)
        sends = TaskBatches(self.producer_for, topic, on_done, hold, exactly_once=self.exactly_once)
        partitions = self.partitions
        batches: dict[int, RecordBatches] = {}  # by input partition
        writes: list[tuple[int, bytes, bytes | None]] = []
        for ident, (entry, _) in dirty.items():
            token = entry.token
            value = changelog.encode(
                entry.kind,
                entry.source,
                token.key,
                entry.value,
                entry.timestamp_ms,
                entry.matched,
                token.headers,
                token.tp.topic,
                token.tp.partition,
                token.offset,
            )
            writes.append((token.tp.partition, ident, value))
        for entry in tombstones:
            if entry.ident not in self.entries:  # else written again since (consumed again)
                writes.append((entry.token.tp.partition, entry.ident, None))
        for task, name, data in writes:
            out = batches.get(task)
            if out is None:
                out = batches[task] = await sends.get(task)
            partition = task % partitions
            if not out.add(partition, name, data, None, [], name):
                await out.add_to_next(partition, name, data, None, [], name)
        self.stats.state_writes += len(dirty)
        await sends.seal()
        if hold is not None:
            hold.sealed()

    def _written(
        self,
        hold: BatchHold[TopicPartition] | None,
        idents: list[bytes],
        failure: BaseException | None,
    ) -> None:
        """A record batch of the changelog was acknowledged, or failed: the pipeline is then
        rebuilt from the changelog (the offsets of its hold stay held)."""
        if failure is None:
            if hold is not None:
                hold.done()
            return
        if hold is not None and hold.generation != self.generation():
            return  # its partitions were revoked: the next owner replays the records
        self.fail(StepFailed(f"cannot write state to {self.topic}: {failure!r}"))

    # -- bounds -----------------------------------------------------------------------------

    def check_full(self) -> bool:
        """Count what is held; True (and a warning when it becomes so) when the state is full."""
        self.stats.state_records = len(self.entries)
        full = (
            len(self.entries) >= self.options.max_records
            or self.stats.state_bytes >= self.options.max_bytes
        )
        if full and not self.full:
            self.stats.state_full += 1
            self.log.warning(
                "state full ({} records, {} bytes): fetching only what holds stream time back",
                len(self.entries),
                self.stats.state_bytes,
            )
        self.full = full
        return full

    # -- restore ----------------------------------------------------------------------------

    async def restore(self, assigned: set[TopicPartition], wall_ms: Callable[[], int]) -> None:
        """Load the state of newly owned partitions from the changelog; drop the state of
        partitions owned no more (their next owner restores it)."""
        now_owned = {tp.partition for tp in assigned}
        gone = self.owned - now_owned
        if gone:
            self.stages.discard(lambda ref: ref.tp.partition in gone)
            for name, held in list(self.entries.items()):
                if held[0] in gone:
                    del self.entries[name]
                    self.dirty.pop(name, None)
                    self.stats.state_bytes -= held[1]
        new = now_owned - self.owned
        self.owned = now_owned
        if not new:
            return
        t0 = time.monotonic()
        latest = await asyncio.wait_for(self._read(new), RESTORE_TIMEOUT)
        wall = wall_ms()
        loaded = 0
        for n, (name, value) in enumerate(latest.items(), 1):
            if not n % SLICE_ENTRIES:
                await asyncio.sleep(0)  # a big state loads in slices: the loop stays live
            if value is None:
                continue
            try:
                restored = changelog.decode(value)
            except ValueError as exc:
                self.log.warning("skipping changelog entry {!r}: {}", name, exc)
                continue
            if restored.partition not in new:
                continue
            tp = TopicPartition(restored.topic, restored.partition)
            ref = Ref(
                tp,
                restored.offset,
                restored.key,
                restored.headers,
                restored.timestamp_ms,
                time.perf_counter(),
                restored=True,
            )
            entry: Entry[Ref] = Entry(
                restored.kind,
                restored.index,
                restored.key or b"",
                restored.value,
                restored.timestamp_ms,
                ref,
                name,
                matched=restored.matched,
            )
            self.stages.load(entry, wall)
            size = len(restored.value) + len(restored.key or b"")
            self.entries[name] = (restored.partition, size)
            self.stats.state_bytes += size
            loaded += 1
        self.stats.restored += loaded
        self.stats.state_records = len(self.entries)
        self.log.info(
            "restored {} state entries of partitions {} from {} in {:.2f}s",
            loaded,
            sorted(new),
            self.options.changelog,
            time.monotonic() - t0,
        )

    async def _read(self, partitions: set[int]) -> dict[bytes, bytes | None]:
        """The latest value per key of the changelog partitions holding `partitions`."""
        topic = self.options.changelog
        tps = sorted({TopicPartition(topic, p % self.partitions) for p in partitions})
        return await read_latest(self.options.restore_consumer(), tps)
