"""`dataflow inspect`, `infer`, `model` and `kafka`: the tools' command lines.

The tools' code is in `dataflow.reader`, `dataflow.infer` and `dataflow.model` (imported when a
command runs, so `dataflow --help` stays quick); `scripts/infer.py` and `scripts/model.py` run the
same commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn

from pydantic import AliasChoices, Field
from pydantic_settings import CliImplicitFlag, CliPositionalArg

from dataflow.cli.base import Command, Repeated, UsageError

DEFAULT_BOOTSTRAP = "localhost:9092"
BOOTSTRAP_ENV = "SELDON_KAFKA_BOOTSTRAP_SERVERS"
SECURITY_PROTOCOL_ENV = "SELDON_KAFKA_SECURITY_PROTOCOL"
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class InspectCommand(Command):
    """Print the V2 messages of a pipeline, a step or a topic as JSON lines (one object per
    record), like `seldon pipeline inspect`. References: <pipeline> (its inputs and outputs),
    <pipeline>.inputs|outputs[.<tensor>], <pipeline>.<step> (the step's model topics),
    <pipeline>.<step>.inputs|outputs[.<tensor>]."""

    ENV: ClassVar[dict[str, str]] = {
        "bootstrap_servers": BOOTSTRAP_ENV,
        "security_protocol": SECURITY_PROTOCOL_ENV,
    }

    reference: CliPositionalArg[str] = Field(
        "", description="<pipeline>[.<step>][.inputs|.outputs[.<tensor>]]"
    )
    topic: list[str] = Field(
        default_factory=list,
        json_schema_extra={"metavar": "TOPIC"},
        description="read this topic by its full name, e.g. seldon.default.model.m.inputs "
        "(repeatable)",
    )
    namespace: str = Field("default", description="scheduler namespace")
    prefix: str = Field("seldon", description="topic prefix")
    kind: Literal["request", "response", "text"] | None = Field(
        None, description="decode --topic values as this (default: from the topic name)"
    )
    request_id: str = Field(
        "", description="only records whose message id, x-request-id header or key is this"
    )
    offset: int | None = Field(
        None,
        description="start at this offset in every partition; -N: the last N records "
        "(default: beginning)",
    )
    num: int = Field(10, ge=0, description="stop after this many records (0: no limit)")
    follow: CliImplicitFlag[bool] = Field(False, description="keep reading new records")
    timeout: float = Field(
        10.0, gt=0, description="without --follow: give up after this many seconds without records"
    )
    raw: CliImplicitFlag[bool] = Field(
        False, description="keep raw tensor contents as bytes (base64)"
    )
    bootstrap_servers: str = Field(
        default_factory=lambda: _env(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP),
        description="Kafka bootstrap servers",
    )
    security_protocol: SecurityProtocol = Field(
        default_factory=lambda: _env(SECURITY_PROTOCOL_ENV, "PLAINTEXT"),  # type: ignore[arg-type]
        description="Kafka security protocol; TLS and SASL details come from the engine's "
        "SELDON_KAFKA_* settings",
    )

    def cli_cmd(self) -> None:
        raise SystemExit(_inspect(self))


def _inspect(args: InspectCommand) -> int:
    """Run `dataflow inspect` with its parsed command line; returns the exit code.

    Raises:
        UsageError: a command line that names no topic or a bad reference (exit 2).
    """
    from dataflow.reader import InspectError, Options, inspect_topics, print_line
    from dataflow.records import Target, resolve, target_for_topic
    from dataflow.topics import TopicError

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
        asyncio.run(inspect_topics(targets, options, print_line))
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


def inspect_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m dataflow.inspect` (the same as `dataflow inspect`)."""
    from dataflow.cli import base

    args = sys.argv[1:] if argv is None else argv
    raise SystemExit(base.run(InspectCommand, args, "python -m dataflow.inspect"))


class InferCommand(Command):
    """Send one request to a pipeline over Kafka and print its answer, like
    `seldon pipeline infer`. Exit 0 with the response, 1 when the answer is an error, 2 on
    timeout."""

    pipeline: CliPositionalArg[str] = Field(description="pipeline name")
    namespace: str = Field("default", description="scheduler namespace")
    prefix: str = Field("seldon", description="topic prefix")
    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers")
    tensor: Repeated = Field(
        default_factory=list,
        json_schema_extra={"metavar": "NAME:DATATYPE:SHAPE:VALUES"},
        description="input tensor NAME:DATATYPE:SHAPE:VALUES (repeatable; default "
        "INPUT0:FP32:1,4:1,2,3,4)",
    )
    raw: CliImplicitFlag[bool] = Field(False, description="send values as raw input contents")
    header: Repeated = Field(
        default_factory=list,
        json_schema_extra={"metavar": "NAME=VALUE"},
        description="request header NAME=VALUE (repeatable)",
    )
    id: str = Field("", description="request id (default a random UUID)")
    timeout: float = Field(30.0, gt=0, description="seconds to wait for the answer")
    partitions: int = Field(1, ge=1, description="partitions of created topics")
    json_: CliImplicitFlag[bool] = Field(
        False, alias="json", description="print the response as JSON"
    )

    NAME: ClassVar[str] = "dataflow infer"

    def cli_cmd(self) -> None:
        from dataflow import infer

        try:
            tensors = [infer.parse_tensor(t) for t in self.tensor or [infer.DEFAULT_TENSOR]]
        except ValueError as e:
            raise UsageError(f"--tensor: {e}") from None
        headers = []
        for value in self.header:
            name, sep, text = value.partition("=")
            if not sep or not name:
                raise UsageError(f"--header: expected NAME=VALUE, got {value!r}")
            headers.append((name, text))
        request = infer.build_request(self.pipeline, tensors, self.id, self.raw, headers)
        run_tool(type(self).NAME, infer.infer(self, request))


class ModelCommand(Command):
    """A stand-in model on Kafka: answers <prefix>.<ns>.model.<name>.inputs on
    <prefix>.<ns>.model.<name>.outputs, as Seldon's modelgw does, computing identity, add a
    constant, or rename tensors. Runs until SIGTERM or SIGINT."""

    name: str = Field(description="model name")
    namespace: str = Field("default", description="scheduler namespace")
    prefix: str = Field("seldon", description="topic prefix")
    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers")
    fn: Literal["identity", "add", "rename"] = Field(
        "identity", description="what the model computes"
    )
    add: float = Field(1.0, description="the constant of --fn add")
    rename: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"metavar": "OLD=NEW"},
        description="tensor rename OLD=NEW of --fn rename (repeatable)",
    )
    group: str = Field("", description="consumer group (default <prefix>-<ns>-model-<name>)")
    offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new consumer group starts"
    )
    partitions: int = Field(1, ge=1, description="partitions of created topics")
    verbose: CliImplicitFlag[bool] = Field(
        False, validation_alias=AliasChoices("verbose", "v"), description="one line per request"
    )

    NAME: ClassVar[str] = "dataflow model"

    def cli_cmd(self) -> None:
        from dataflow import model

        run_tool(type(self).NAME, model.serve(self))


def checkout_script(name: str) -> Path | None:
    """`scripts/<name>` of the source checkout this package runs from, None in a wheel."""
    script = Path(__file__).resolve().parents[2] / "scripts" / name
    return script if script.is_file() and os.access(script, os.X_OK) else None


class KafkaCommand(Command):
    """A local single-node KRaft Kafka broker for development and tests (scripts/kafka of the
    source checkout: jars from Maven Central, data in .kafka/; KAFKA_PORT, KAFKA_VERSION,
    KAFKA_DIR, ... in the environment)."""

    verb: CliPositionalArg[Literal["start", "stop", "status", "logs", "fetch"]] = Field(
        description="start, stop, status (exit 0 running, 3 stopped, 4 another broker), logs, "
        "fetch (the jars only)"
    )
    lines: CliPositionalArg[int] = Field(100, ge=1, description="logs: how many lines")

    def cli_cmd(self) -> None:
        script = checkout_script("kafka")
        if script is None:
            raise UsageError(
                "the broker script is part of the source checkout (scripts/kafka), not of the "
                "installed package; run it from a clone of the repository, or use any Kafka "
                "broker (SELDON_KAFKA_BOOTSTRAP_SERVERS)"
            )
        if shutil.which("bash") is None:
            raise UsageError("scripts/kafka needs bash")
        args = [str(script), self.verb] + ([str(self.lines)] if self.verb == "logs" else [])
        sys.stdout.flush()
        raise SystemExit(subprocess.call(args))


#: Seconds an interrupted tool's coroutine gets to close its clients before the tool exits.
INTERRUPT_GRACE = 2.0


async def _interruptible(main: Coroutine[Any, Any, int]) -> int | None:
    """`main`'s exit code, or None once Ctrl-C came. The loop's own SIGINT handler works where
    Python's KeyboardInterrupt does not: in a process started with SIGINT ignored (a background
    job of a script; a CI run that way saw infer wait out its 30 s timeout after Ctrl-C), and
    with a library that swallows the cancellation."""
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(main)
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    waiter = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        waiter.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.wait({work}, timeout=INTERRUPT_GRACE)
    return None


def run_tool(name: str, main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a tool's coroutine and exit with its code; Ctrl-C (130) or an error of Kafka or the
    network (1) ends it with one line on stderr, never a traceback."""
    from aiokafka.errors import KafkaError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the one line below says why
    try:
        code = asyncio.run(_interruptible(main))
        if code is None:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        logging.getLogger("asyncio").disabled = True  # "Unclosed AIOKafka..." of unstarted clients
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (KafkaError, OSError) as exc:
        logging.getLogger("asyncio").disabled = True
        print(f"{name}: {exc or type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
