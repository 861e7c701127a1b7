"""How far a step has read its sources, and which of them it reads next.

Kafka Streams' `PartitionGroup`: a step's consumer positions, the end offsets of its source
partitions, which partitions lag (records left to read, or no fetch answer for a while), the
step's stream time over them (`dataflow.streamtime`), and which partitions are held back because
they were read ahead of stream time by more than the step's widest window (or because the state
is full). Partitions are held back by not draining them, never by `consumer.pause()`: aiokafka
drops what it has buffered for a paused partition.

Reads the consumer's positions and watermarks; sends nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import operator
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from dataflow.streamtime import StreamTime

#: Records worked through between two yields to the event loop (a fetched batch holds up to
#: 2,000): the health server, the other steps and the acks' callbacks run in between.
SLICE_RECORDS = 256
#: Least a source may be read ahead of stream time while another lags (ms), so that pausing
#: and resuming does not happen at every batch when the window is tiny.
PACE_SLACK_MS = 1000
#: Longest a step waits for the end offsets of partitions that may lag (a broker failing over).
END_OFFSETS_TIMEOUT = 5.0
#: A caught-up source partition whose last fetch response is older than this counts as lagging
#: (aiokafka long-polls every partition with nothing buffered every 0.5 s).
UNHEARD_MS = 3000

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


_FIRST = operator.itemgetter(0)


def now_ms() -> int:
    """The wall clock in ms."""
    return time.time_ns() // 1_000_000


class Pacing:
    """A step's read positions, lag, stream time and held-back partitions.

    Args:
        consumer: the step's consumer.
        windows: the windows (ms) of the step's join and trigger gate, if any: a source may be
            read ahead of stream time by the widest of them (at least `PACE_SLACK_MS`).
        log: the step's logger.
    """

    def __init__(self, consumer: AIOKafkaConsumer, windows: Iterable[int], log: Any) -> None:
        self.consumer = consumer
        self.log = log
        self.slack_ms = max([PACE_SLACK_MS, *windows])
        self.clock: StreamTime[TopicPartition] = StreamTime()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()  # held back by pacing (not drained)
        self.readable: list[TopicPartition] = []  # what to drain while some are held back
        self.caught_up = True  # every source partition read to its end (timed steps)

    # -- fetching ---------------------------------------------------------------------------

    async def fetch(
        self, timeout_ms: int, assigned: asyncio.Event, stopping: asyncio.Event
    ) -> Batch:
        """Fetch a batch from the partitions not held back. During a rebalance getmany() waits
        for the new assignment whatever the timeout, so there a stop request is raced against
        it."""
        if self.paused and not self.readable:  # never so by pacing; be safe
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        fetch = self.consumer.getmany(*self.readable, timeout_ms=timeout_ms, max_records=2000)
        if assigned.is_set():
            result: Batch = await fetch
            return result
        getter: asyncio.Future[Any] = asyncio.ensure_future(fetch)
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
        if getter.cancelled():
            return {}
        fetched: Batch = getter.result()
        return fetched

    def ordered(
        self, batch: Batch, ends: dict[TopicPartition, int | None]
    ) -> Iterator[tuple[TopicPartition, ConsumerRecord[Any, Any], int | None]]:
        """`batch`'s records across partitions in timestamp order, each with stream time once
        it is read (the path of joins and gates; `ends` from `begin`). Positions and stream
        time move as the records are taken.

        Which partitions lag is worked out once for the batch (`begin`); per record only the
        record's partition is looked at (it stops lagging when it reaches its end offset), so a
        record costs the same whatever the number of partitions, the backlog or the state held."""
        clock, positions = self.clock, self.positions
        if len(batch) == 1:
            ((tp, records),) = batch.items()
            merged: Iterable[tuple[int, TopicPartition, ConsumerRecord[Any, Any]]] = (
                (r.timestamp, tp, r) for r in records
            )
        else:
            parts = [[(r.timestamp, tp, r) for r in records] for tp, records in batch.items()]
            if all(sorted(part, key=_FIRST) == part for part in parts):
                # Each partition in timestamp order (the usual case): one stable sort (in C)
                # gives what heapq.merge would, ties in partition order.
                merged = sorted(itertools.chain.from_iterable(parts), key=_FIRST)
            else:
                merged = heapq.merge(*parts, key=_FIRST)
        for timestamp, tp, record in merged:
            position = record.offset + 1
            positions[tp] = position
            clock.observe(tp, timestamp)
            end = ends.get(tp)
            if end is not None and position >= end:
                clock.caught_up(tp)
            yield tp, record, clock.now()

    def in_fetch_order(
        self, batch: Batch
    ) -> Iterator[tuple[TopicPartition, ConsumerRecord[Any, Any], int | None]]:
        """`batch`'s records partition by partition, on the wall clock (no stream time: batches
        and cycle-guarded chains). Positions move as the records are taken."""
        positions = self.positions
        for tp, records in batch.items():
            for record in records:
                positions[tp] = record.offset + 1
                yield tp, record, None

    # -- positions and ends -----------------------------------------------------------------

    def ends(self) -> dict[TopicPartition, int | None]:
        """The end (last stable offset, else high watermark) of each assigned partition."""
        consumer = self.consumer
        ends: dict[TopicPartition, int | None] = {}
        for tp in consumer.assignment():
            lso = consumer.last_stable_offset(tp)
            ends[tp] = lso if lso is not None else consumer.highwater(tp)
        return ends

    async def checked_ends(self) -> dict[TopicPartition, int | None]:
        """End offsets, asked of the broker again for partitions that look read to the end but
        whose time is behind the step's newest by more than the window: their end is known
        from a fetch that may have waited in the consumer's buffer while the other sources
        were read, so they may well lag (and must hold stream time back)."""
        ends = self.ends()
        clock = self.clock
        newest = max((t for tp in ends if (t := clock.time_of(tp)) is not None), default=None)
        if newest is None:
            return ends
        suspects = []
        for tp, end in ends.items():
            position, t = self.positions.get(tp), clock.time_of(tp)
            if end is None or position is None or position < end:
                continue  # lagging anyway
            if t is None or newest - t > self.slack_ms:
                suspects.append(tp)
        if suspects:
            try:
                asked = self.consumer.end_offsets(suspects)
                ends.update(await asyncio.wait_for(asked, END_OFFSETS_TIMEOUT))
            except (KafkaError, TimeoutError) as exc:
                # Unknown ends hold stream time back (the safe side); the next batch asks again.
                self.log.debug("end offsets of {}: {!r}", suspects, exc)
                ends.update(dict.fromkeys(suspects))
        return ends

    def lagging(self, ends: dict[TopicPartition, int | None]) -> list[TopicPartition]:
        """Partitions with records left to read (or not known yet), and partitions no fetch
        answered for `UNHEARD_MS`: their leader is down or moving, and records may be waiting
        to be written there (a producer retrying toward the new leader), so they must hold
        stream time back and keep windows from closing on the wall clock."""
        lagging = []
        now = now_ms()
        for tp, end in ends.items():
            position = self.positions.get(tp)
            if end is None or position is None or position < end:
                lagging.append(tp)
                continue
            heard = self.consumer.last_poll_timestamp(tp)
            if heard is not None and now - heard > UNHEARD_MS:
                lagging.append(tp)
        return lagging

    async def refresh_positions(self) -> None:
        """Positions of partitions fetched from but not yet seen with records."""
        for tp in self.consumer.assignment():
            if tp not in self.positions and self.consumer.highwater(tp) is not None:
                self.positions[tp] = await self.consumer.position(tp)

    async def begin(self, batch: Batch) -> dict[TopicPartition, int | None]:
        """Before a fetched batch is worked through in time order: the partitions' ends, and
        which partitions lag (worked out once for the batch)."""
        await self.refresh_positions()
        for tp, records in batch.items():
            self.positions[tp] = records[0].offset
        ends = await self.checked_ends()
        self.clock.lagging(self.lagging(ends))
        return ends

    async def settle(self) -> tuple[int | None, list[TopicPartition]]:
        """After a batch: stream time and the partitions that lag."""
        await self.refresh_positions()
        lagging = self.lagging(await self.checked_ends())
        return self.clock.now(lagging), lagging

    async def read_committed(
        self, assigned: set[TopicPartition], exactly_once: bool
    ) -> tuple[dict[TopicPartition, int | None], str]:
        """The committed offset of each assigned partition that could be read, logged as
        where it starts; and (exactly-once) why one could not be read, else ''."""
        starts = []
        reset = getattr(self.consumer, "_auto_offset_reset", "reset")
        committed: dict[TopicPartition, int | None] = {}
        unreadable = ""
        for tp in sorted(assigned):
            try:
                committed[tp] = await self.consumer.committed(tp)
            except KafkaError as exc:
                starts.append(f"{tp.topic}[{tp.partition}] (committed offset unknown: {exc})")
                if exactly_once:
                    unreadable = f"cannot read the committed offset of {tp}: {exc}"
                continue
            offset = committed[tp]
            where = (
                f"the {reset} offset (none committed)"
                if offset is None
                else f"committed offset {offset}"
            )
            starts.append(f"{tp.topic}[{tp.partition}] from {where}")
        if starts:
            self.log.info("reads {}", "; ".join(starts))
        return committed, unreadable

    async def seek_to(self, committed: dict[TopicPartition, int | None]) -> None:
        """Seek to the committed offsets; where none is, to the reset policy's end."""
        reset = getattr(self.consumer, "_auto_offset_reset", "reset")
        missing = [tp for tp, offset in committed.items() if offset is None]
        ends: dict[TopicPartition, int] = {}
        if missing:
            ends = await (
                self.consumer.end_offsets(missing)
                if reset == "latest"
                else self.consumer.beginning_offsets(missing)
            )
        for tp, offset in committed.items():
            self.consumer.seek(tp, ends[tp] if offset is None else offset)

    # -- holding sources back ---------------------------------------------------------------

    def pace(self, lagging: list[TopicPartition], full: bool) -> None:
        """Hold back sources read ahead of stream time, and all but the slowest when `full`."""
        wanted = self.clock.ahead(lagging, self.slack_ms)
        if full:
            wanted |= self.clock.ahead(lagging, 0)
        assigned = self.consumer.assignment()
        # Held back by not draining them (getmany() of the others), not by consumer.pause():
        # aiokafka drops what it has buffered for a partition when it is paused, so every
        # pause would throw a prefetched fetch away to be fetched again. Left undrained, a
        # partition keeps one fetch in the buffer and is not fetched further.
        self.paused = wanted & assigned
        self.readable = sorted(assigned - self.paused) if self.paused else []

    def revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Forget the positions of revoked partitions, and hold nothing back."""
        for tp in revoked:
            self.positions.pop(tp, None)
        self.paused.clear()
        self.readable.clear()

    # -- lag --------------------------------------------------------------------------------

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high watermark per assigned partition (known positions only)."""
        lag = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.positions.get(tp)
            if high is not None and position is not None:
                lag[tp] = max(0, high - position)
        return lag

    def waiting(self, behind: list[TopicPartition], lag: dict[TopicPartition, int]) -> list[str]:
        """What holds reading back, in words: paused partitions, the partition holding stream
        time back (timed steps not caught up), partitions with nothing fetched."""
        reasons = []
        paused = [tp for tp in behind if tp in self.paused]
        if paused:
            reasons.append(
                "paused, read ahead of stream time by more than the window: "
                + ", ".join(tp_name(tp) for tp in paused)
            )
        holder = self.clock.holder() if not self.caught_up else None
        if holder is not None:
            t = self.clock.time_of(holder)
            at = "not read yet" if t is None else f"at {t} ms"
            reasons.append(f"stream time held by {tp_name(holder)} ({at})")
        unpaused = [tp for tp in behind if tp not in self.paused]
        if unpaused:
            reasons.append(
                "nothing fetched from "
                + ", ".join(f"{tp_name(tp)} (lag {lag[tp]})" for tp in unpaused)
            )
        return reasons


def tp_name(tp: TopicPartition) -> str:
    """`topic[partition]`."""
    return f"{tp.topic}[{tp.partition}]"
