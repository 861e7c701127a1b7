"""What a stateful (or cycle-guarded) step does with its records: route, convert, its stages.

Kafka Streams' processor nodes, as the step's loop calls them: the record goes to each source
and trigger of the step whose `pipeline` header it carries, is converted on the wire, and goes
through the step's stages (`dataflow.stages`); what that causes (outputs, state changes) is
added to the slice's `Result`. Pure: no I/O, the clocks are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from dataflow import changelog
from dataflow import headers as hdr
from dataflow.stages import Ref, Result, StepStages
from dataflow.stats import StepStats
from dataflow.topology import Routes
from dataflow.windows import Output
from dataflow.wire import ChainType, WireError, convert

# Trigger records parse as responses whatever their topic (spec 4.7).
_TRIGGER_CHAIN = ChainType.OUTPUT_INPUT


class RecordProcessor:
    """One step's per-record processing (module docstring).

    Args:
        routing: what each source topic's records feed (`topology.routes_of`).
        stages: the step's stages.
        named: the stages' entries get names (the step keeps a changelog).
        stats: the step's counters.
        log: the step's logger.
        generation: the step's partition generation now.
    """

    def __init__(
        self,
        routing: dict[str, Routes],
        stages: StepStages,
        named: bool,
        stats: StepStats,
        log: Any,
        generation: Callable[[], int],
    ) -> None:
        self.routing = routing
        self.stages = stages
        self.named = named
        self.stats = stats
        self.log = log
        self.generation = generation
        self._prefixes: dict[tuple[int, TopicPartition], bytes] = {}  # trigger i: -1 - i

    def take(
        self,
        items: Iterable[tuple[TopicPartition, ConsumerRecord[Any, Any], int | None]],
        unknown: int,
        wall: int,
        received: float,
        result: Result,
    ) -> int:
        """Records through the step's stages, each with its stream time (`unknown` stands for
        a stream time not known yet; `received`: when the slice was taken, for the latency
        histogram); what they cause is added to `result`. A record that does not convert
        becomes an output for the error topic. Returns how many records were taken."""
        generation = self.generation()
        routes = self.routing.get
        stats = self.stats
        add = self.stages.add
        add_trigger = self.stages.add_trigger
        named = self.named
        pipeline = hdr.PIPELINE
        taken = 0
        for tp, record, stream in items:
            taken += 1
            routing = routes(tp.topic)
            if routing is None:
                stats.filtered += 1
                continue
            now = unknown if stream is None else stream
            headers = record.headers
            ref = Ref(tp, record.offset, record.key, headers, record.timestamp, received,
                      generation)  # fmt: skip
            matched = False
            try:
                for feed in routing.sources:
                    if (pipeline, feed.pipeline) not in headers:
                        continue
                    matched = True
                    source = feed.spec
                    value = convert(record.value, source.chain, source.tensors, source.renames)
                    if value is None:
                        converted_to_nothing(stats, self.log, tp, record.offset)
                        continue
                    name = b""
                    if named:
                        name = self._prefix(feed.index, tp) + b"%d" % record.offset
                    add(feed.index, ref, value, now, wall, name, result)
                for gate in routing.triggers:
                    if (pipeline, gate.pipeline) not in headers:
                        continue
                    matched = True
                    if convert(record.value, _TRIGGER_CHAIN, gate.spec.tensors) is not None:
                        name = self._prefix(gate.index, tp, "t") + b"%d" % record.offset
                        add_trigger(gate.index, ref, now, wall, name, result)
            except WireError as exc:
                reason = f"{tp.topic}[{tp.partition}]@{record.offset}: {exc}"
                result.outputs.append(Output(ref.key, b"", ref.timestamp, ref, (ref,), reason))
            if not matched:
                stats.filtered += 1
        return taken

    def _prefix(self, index: int, tp: TopicPartition, kind: str = "s") -> bytes:
        """The start of the state entry names of a source's (or trigger's) records of `tp`."""
        key = (index, tp) if kind == "s" else (-1 - index, tp)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = changelog.ident_prefix(kind, index, tp.topic, tp.partition)
            self._prefixes[key] = prefix
        return prefix


def converted_to_nothing(stats: StepStats, log: Any, tp: TopicPartition, offset: int) -> None:
    """A record converted to nothing (no tensor left after selection, or an empty message):
    the reference drops these; counted, and logged at debug."""
    stats.empty += 1
    log.debug("{}[{}]@{} converted to nothing: no output", tp.topic, tp.partition, offset)
