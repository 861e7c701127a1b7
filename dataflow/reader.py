"""The reader of `dataflow inspect` (`python -m dataflow.inspect`): print the V2 messages of a
pipeline, a step or a topic. Its command line is `dataflow.cli.tools.InspectCommand`.

A reference names the topics to read (`dataflow.records`); `--topic` reads a topic by its full
name. Records are read without a consumer group (nothing is committed), from the beginning of
every partition or from `--offset`, and printed one JSON object per line (`--raw` keeps raw
tensor contents as bytes). Exit status: 0 after `--num` records or at the end of the topics
(without `--follow`), 1 on a Kafka error or missing topics, 2 on a bad argument.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dataflow.records import (
    Target,
    format_record,
    start_offset,
)

__all__ = ["InspectError", "Options", "inspect_topics", "print_line"]


# --------------------------------------------------------------------------- I/O


@dataclass(frozen=True)
class Options:
    """What to read and print (the parsed command line, less the targets)."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    request_id: str | None = None
    offset: int | None = None
    num: int = 10
    follow: bool = False
    timeout: float = 10.0
    expand_raw: bool = True


class InspectError(RuntimeError):
    """A failure to report in one line (missing topics, a Kafka error, a time-out)."""


def _client_options(options: Options) -> dict[str, Any]:
    if options.security_protocol == "PLAINTEXT":
        return {"security_protocol": "PLAINTEXT"}
    # TLS and SASL details come from the engine's SELDON_KAFKA_* settings (environment, .env).
    from dataflow.kafka import security_options
    from dataflow.settings import Settings

    overrides: dict[str, Any] = {
        "kafka_bootstrap_servers": options.bootstrap_servers,
        "kafka_security_protocol": options.security_protocol,
    }
    settings = Settings(**overrides)
    return security_options(settings)


async def _partitions(targets: Sequence[Target], options: Options) -> dict[str, list[int]]:
    """The partitions of every target topic that exists."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=options.bootstrap_servers,
        client_id="dataflow-inspect",
        **_client_options(options),
    )
    await admin.start()
    try:
        described = await admin.describe_topics(sorted({t.topic for t in targets}))
    finally:
        await admin.close()
    return {
        d["topic"]: sorted(p["partition"] for p in d["partitions"])
        for d in described
        if d["error_code"] == 0 and d["partitions"]
    }


async def inspect_topics(
    targets: Sequence[Target],
    options: Options,
    emit: Callable[[dict[str, Any]], None],
) -> int:
    """Read the targets' topics and emit one object per matching record.

    Args:
        targets: the topics to read (all partitions of each).
        options: offsets, filters and limits.
        emit: called with each formatted record.

    Returns:
        The number of records emitted.

    Raises:
        InspectError: when no target topic exists, or the end was not reached in time.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = await _partitions(targets, options)
    by_topic = {t.topic: t for t in targets if t.topic in partitions}
    missing = [t.topic for t in targets if t.topic not in partitions]
    if not by_topic:
        raise InspectError(f"no such topic: {', '.join(missing)}")
    for topic in missing:
        print(f"dataflow.inspect: no such topic: {topic}", file=sys.stderr)
    tps = [TopicPartition(topic, p) for topic in by_topic for p in partitions[topic]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=options.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="dataflow-inspect",
        **_client_options(options),
    )
    await consumer.start()
    emitted = 0
    try:
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            offset = start_offset(options.offset, beginnings[tp], ends[tp])
            consumer.seek(tp, offset)
            if options.follow or offset < ends[tp]:
                pending.add(tp)
        last_record = time.monotonic()
        while pending and (options.num <= 0 or emitted < options.num):
            batch = await consumer.getmany(*pending, timeout_ms=200)
            if batch:
                last_record = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    if not options.follow and record.offset >= ends[tp]:
                        break
                    line = format_record(
                        record,
                        by_topic[tp.topic],
                        request_id=options.request_id,
                        expand_raw=options.expand_raw,
                    )
                    if line is None:
                        continue
                    emit(line)
                    emitted += 1
                    if 0 < options.num <= emitted:
                        return emitted
            if options.follow:
                continue
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if pending and time.monotonic() - last_record > options.timeout:
                left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
                raise InspectError(f"no records for {options.timeout:g} s before the end of {left}")
        return emitted
    finally:
        await consumer.stop()


def print_line(line: dict[str, Any]) -> None:
    """Print one JSON object on its own line, flushed."""
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()
