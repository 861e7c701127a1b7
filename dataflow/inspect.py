"""`python -m dataflow.inspect` (`dataflow inspect`): print the V2 messages of a pipeline, a step
or a topic.

A reference names the topics to read (`dataflow.records`); `--topic` reads a topic by its full
name. Records are read without a consumer group (nothing is committed), from the beginning of
every partition or from `--offset`, and printed one JSON object per line (`--raw` keeps raw
tensor contents as bytes). Exit status: 0 after `--num` records or at the end of the topics
(without `--follow`), 1 on a Kafka error or missing topics, 2 on a bad argument.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dataflow.records import (
    Kind,
    Target,
    format_record,
    resolve,
    start_offset,
    target_for_topic,
)
from dataflow.topics import TopicError

__all__ = ["InspectError", "Options", "inspect_topics", "main", "run"]


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


def _print(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class Arguments(Protocol):
    """The command line of `dataflow inspect` (`dataflow.cli.tools.InspectCommand`)."""

    @property
    def reference(self) -> str: ...

    @property
    def topic(self) -> list[str]: ...

    @property
    def namespace(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def kind(self) -> Kind | None: ...

    @property
    def request_id(self) -> str: ...

    @property
    def offset(self) -> int | None: ...

    @property
    def num(self) -> int: ...

    @property
    def follow(self) -> bool: ...

    @property
    def timeout(self) -> float: ...

    @property
    def raw(self) -> bool: ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def security_protocol(self) -> str: ...


def run(args: Arguments) -> int:
    """Run `dataflow inspect` with its parsed command line; returns the exit code.

    Raises:
        UsageError: a command line that names no topic or a bad reference (exit 2).
    """
    from dataflow.cli.base import UsageError

    if not args.reference and not args.topic:
        raise UsageError("give a reference or --topic")
    if args.kind and not args.topic:
        raise UsageError("--kind applies to --topic only")
    try:
        targets: list[Target] = []
        if args.reference:
            targets += resolve(args.reference, namespace=args.namespace, prefix=args.prefix)
        targets += [target_for_topic(t, args.kind) for t in args.topic]
    except TopicError as exc:
        raise UsageError(str(exc)) from None
    options = Options(
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        request_id=args.request_id or None,
        offset=args.offset,
        num=args.num,
        follow=args.follow,
        timeout=args.timeout,
        expand_raw=not args.raw,
    )
    try:
        asyncio.run(inspect_topics(targets, options, _print))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except InspectError as exc:
        print(f"dataflow inspect: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Kafka errors: one line, not a traceback
        print(f"dataflow inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m dataflow.inspect` (the same as `dataflow inspect`)."""
    from dataflow.cli import base
    from dataflow.cli.tools import InspectCommand

    args = sys.argv[1:] if argv is None else argv
    raise SystemExit(base.run(InspectCommand, args, "python -m dataflow.inspect"))


if __name__ == "__main__":
    main()
