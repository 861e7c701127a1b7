"""`python -m dataflow.inspect`: print the V2 messages of a pipeline, a step or a topic.

Like `seldon pipeline inspect`, a reference names the topics to read::

    <pipeline>                                   seldon.<ns>.pipeline.<pipeline>.{inputs,outputs}
    <pipeline>.inputs|outputs[.<tensor>]         seldon.<ns>.pipeline.<pipeline>.<io>
    <pipeline>.<step>                            seldon.<ns>.model.<step>.{inputs,outputs}
    <pipeline>.<step>.inputs|outputs[.<tensor>]  seldon.<ns>.model.<step>.<io>

(a step named like its pipeline means the pipeline's own topics); `--topic` reads a topic by its
full name. Records are read without a consumer group (nothing is committed), from the beginning
of every partition or from `--offset`, decoded as `ModelInferRequest` on `inputs` topics and
`ModelInferResponse` on `outputs` topics, and printed one JSON object per line::

    {"topic": ..., "partition": 0, "offset": 5, "timestamp": 1764129600000, "key": null,
     "headers": {"pipeline": "p"}, "message": {"id": "4312", "inputs": [...]}}

A record that is not a V2 message gets `"message": null`, an `error` and its value as `value`
(UTF-8 text) or `value_base64`. Raw tensor contents are decoded into typed contents as the Seldon
CLI does (`--raw` keeps them as bytes). Exit status: 0 after `--num` records or at the end of the
topics (without `--follow`), 1 on a Kafka error or missing topics, 2 on a bad argument.

The resolution, decoding and formatting functions are pure; only `inspect_topics` does I/O.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from dataflow.headers import REQUEST_ID
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.tools import CONTENTS_FIELDS, RawError, decode_raw
from dataflow.topics import (
    DEFAULT_NAMESPACE,
    DEFAULT_PREFIX,
    ERRORS_SEGMENT,
    INPUTS,
    OUTPUTS,
    SEPARATOR,
    TopicError,
    TopicNamer,
    check_name,
    check_topic,
)

__all__ = [
    "Kind",
    "Target",
    "decode",
    "format_record",
    "kind_of",
    "main",
    "matches_request_id",
    "resolve",
    "start_offset",
    "target_for_topic",
]

Kind = Literal["request", "response", "text"]
"""How a topic's values are decoded: V2 request (`inputs`), V2 response (`outputs`), or text."""

REFERENCE_FORM = (
    "'<pipeline>[.inputs|.outputs[.<tensor>]]' or '<pipeline>.<step>[.inputs|.outputs[.<tensor>]]'"
)
BOOTSTRAP_ENV = "SELDON_KAFKA_BOOTSTRAP_SERVERS"
SECURITY_PROTOCOL_ENV = "SELDON_KAFKA_SECURITY_PROTOCOL"
DEFAULT_BOOTSTRAP = "localhost:9092"

_V2: TypeAlias = ModelInferRequest | ModelInferResponse
_Tensor: TypeAlias = ModelInferRequestInferInputTensor | ModelInferResponseInferOutputTensor


@dataclass(frozen=True)
class Target:
    """One topic to read.

    Attributes:
        topic: the Kafka topic.
        kind: how its values are decoded.
        tensor: print only this tensor of each message, or None for whole messages.
    """

    topic: str
    kind: Kind
    tensor: str | None = None


class RecordLike(Protocol):
    """What `format_record` reads of a record (aiokafka's `ConsumerRecord` has it all)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


# --------------------------------------------------------------------------- name resolution


def kind_of(topic: str) -> Kind:
    """The kind of a topic's values, from its name.

    `...inputs` carries requests and `...outputs` responses; a 2022-style tensor topic
    (`...outputs.<tensor>`) counts by its second-to-last part; `<prefix>.<ns>.errors.errors`
    carries error text. Anything else is read as requests.
    """
    parts = topic.split(SEPARATOR)
    if parts[-2:] == [ERRORS_SEGMENT, ERRORS_SEGMENT]:
        return "text"
    for part in reversed(parts[-2:]):
        if part == INPUTS:
            return "request"
        if part == OUTPUTS:
            return "response"
    return "request"


def target_for_topic(topic: str, kind: Kind | None = None) -> Target:
    """A topic given by its full name, read whole.

    Raises:
        TopicError: when the name is not a legal topic name.
    """
    check_topic(topic)
    return Target(topic, kind or kind_of(topic))


def _io_kind(direction: str) -> Kind:
    return "request" if direction == INPUTS else "response"


def _tensor(name: str, reference: str) -> str:
    if not name:
        raise TopicError(f"bad reference {reference!r}: empty tensor name")
    return name


def resolve(
    reference: str, *, namespace: str = DEFAULT_NAMESPACE, prefix: str = DEFAULT_PREFIX
) -> list[Target]:
    """Resolve a `seldon pipeline inspect` reference to the topics it names.

    Args:
        reference: `<pipeline>`, `<pipeline>.inputs|outputs[.<tensor>]`, `<pipeline>.<step>` or
            `<pipeline>.<step>.inputs|outputs[.<tensor>]`.
        namespace: the scheduler namespace (the second part of every topic name).
        prefix: the topic prefix.

    Returns:
        The targets, inputs before outputs when the reference names both.

    Raises:
        TopicError: when the reference, namespace or prefix is malformed.
    """
    namer = TopicNamer(namespace, prefix)
    parts = reference.split(SEPARATOR)
    if len(parts) > 4 or any(not p for p in parts[:2]):
        raise TopicError(f"bad reference {reference!r}: expected {REFERENCE_FORM}")
    pipeline = check_name(parts[0], "pipeline name")
    directions = (INPUTS, OUTPUTS)
    if len(parts) == 1:
        return [Target(namer.pipeline(pipeline, d), _io_kind(d)) for d in directions]
    second = parts[1]
    if second in directions and (len(parts) == 2 or parts[2] not in directions):
        # <pipeline>.<io>[.<tensor>]; `<p>.inputs.outputs` is a step called "inputs" (below).
        if len(parts) > 3:
            raise TopicError(f"bad reference {reference!r}: expected {REFERENCE_FORM}")
        tensor = _tensor(parts[2], reference) if len(parts) == 3 else None
        return [Target(namer.pipeline(pipeline, second), _io_kind(second), tensor)]
    step = check_name(second, "step name")

    def topic(direction: Literal["inputs", "outputs"]) -> str:
        if step == pipeline:
            return namer.pipeline(pipeline, direction)
        return namer.model(step, direction)

    if len(parts) == 2:
        return [Target(topic(d), _io_kind(d)) for d in directions]
    io = parts[2]
    if io != INPUTS and io != OUTPUTS:
        raise TopicError(
            f"bad reference {reference!r}: {io!r} is not inputs|outputs (expected {REFERENCE_FORM})"
        )
    tensor = _tensor(parts[3], reference) if len(parts) == 4 else None
    return [Target(topic(io), _io_kind(io), tensor)]


# --------------------------------------------------------------------------- decoding


class DecodeError(ValueError):
    """A value that is not the expected V2 message, or raw contents that do not fit."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            break
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise DecodeError("truncated or overlong varint")


def _check_wire(buf: bytes) -> None:
    """Walk the top-level fields: every tag, length and value must fit exactly.

    betterproto accepts some garbage (a truncated varint parses as an empty message), so this
    strict walk decides whether the bytes are protobuf at all.

    Raises:
        DecodeError: at the first field that does not fit.
    """
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        wire_type = tag & 0x07
        if tag >> 3 == 0:
            raise DecodeError(f"field number 0 at byte {start}")
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            pos += length
        else:
            raise DecodeError(f"wire type {wire_type} at byte {start}")
        if pos > len(buf):
            raise DecodeError(f"field at byte {start} runs past the end ({len(buf)} bytes)")


def _raw_problem(exc: RawError, tensor: _Tensor, raw: bytes) -> str:
    """What is wrong with a tensor's raw contents, worded as `seldon pipeline inspect` does."""
    if exc.problem == "truncated-length":
        return "truncated BYTES length"
    if exc.problem == "past-end":
        return "BYTES element past the end"
    if exc.problem == "partial":
        return f"{len(raw)} raw bytes is not a whole number of {tensor.datatype} elements"
    return str(exc)


def _expand_raw(tensors: Sequence[_Tensor], raws: Sequence[bytes]) -> None:
    """Move raw contents into typed contents, tensor by tensor (in place).

    Raises:
        DecodeError: when the raw blobs do not match the tensors; nothing is changed then.
    """
    if len(raws) != len(tensors):
        raise DecodeError(f"{len(raws)} raw contents for {len(tensors)} tensors")
    decoded: list[tuple[str, list[Any]]] = []
    for tensor, raw in zip(tensors, raws, strict=True):
        try:
            values = decode_raw(tensor.datatype, raw)
        except RawError as exc:
            raise DecodeError(f"tensor {tensor.name!r}: {_raw_problem(exc, tensor, raw)}") from None
        decoded.append((CONTENTS_FIELDS[tensor.datatype], values))
    for tensor, (field, values) in zip(tensors, decoded, strict=True):
        contents = InferTensorContents()
        setattr(contents, field, values)
        tensor.contents = contents


def decode(value: bytes, kind: Kind, *, expand_raw: bool = True) -> tuple[_V2, str | None]:
    """Decode a record value as a V2 request or response.

    Args:
        value: the record value.
        kind: `request` or `response`.
        expand_raw: move raw contents into typed contents (as `seldon pipeline inspect`).

    Returns:
        The message, and a warning when raw contents could not be expanded (then they are
        left as bytes), else None.

    Raises:
        DecodeError: when the value is not such a message.
    """
    try:
        _check_wire(value)
    except DecodeError as exc:
        raise DecodeError(f"not a V2 {kind}: {exc}") from None
    message: _V2 = ModelInferRequest() if kind == "request" else ModelInferResponse()
    try:
        message.parse(value)
    except Exception as exc:  # betterproto raises assorted errors on malformed input
        raise DecodeError(f"not a V2 {kind}: {type(exc).__name__}: {exc}") from None
    unknown = bytes(getattr(message, "_unknown_fields", b""))
    if unknown:
        raise DecodeError(f"not a V2 {kind}: {len(unknown)} bytes of unknown fields")
    if not expand_raw:
        return message, None
    if isinstance(message, ModelInferRequest):
        tensors: Sequence[_Tensor] = message.inputs
        raws = message.raw_input_contents
    else:
        tensors = message.outputs
        raws = message.raw_output_contents
    if not raws:
        return message, None
    try:
        _expand_raw(tensors, raws)
    except DecodeError as exc:
        return message, f"raw contents kept as bytes: {exc}"
    raws.clear()
    return message, None


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return None
    return text


def _headers(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    # A repeated header keeps its last value; values that are not UTF-8 are shown with U+FFFD.
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}


def matches_request_id(
    request_id: str, key: bytes | None, headers: Mapping[str, str], message_id: str | None
) -> bool:
    """True when the record belongs to request `request_id`.

    It does when the message id, the `x-request-id` header or the record key (Seldon keys
    records by request id) equals it.
    """
    return (
        message_id == request_id
        or headers.get(REQUEST_ID) == request_id
        or (key is not None and key == request_id.encode())
    )


def _tensor_dict(message: _V2, tensor: str) -> dict[str, Any] | None:
    tensors: Sequence[_Tensor] = (
        message.inputs if isinstance(message, ModelInferRequest) else message.outputs
    )
    for candidate in tensors:
        if candidate.name == tensor:
            result: dict[str, Any] = candidate.to_dict()
            return result
    return None


def format_record(
    record: RecordLike,
    target: Target,
    *,
    request_id: str | None = None,
    expand_raw: bool = True,
) -> dict[str, Any] | None:
    """The JSON object printed for a record, or None when `request_id` filters it out.

    Args:
        record: the Kafka record.
        target: the topic's target (how to decode, which tensor to keep).
        request_id: keep only records of this request (see `matches_request_id`).
        expand_raw: decode raw contents into typed contents.

    Returns:
        `topic`, `partition`, `offset`, `timestamp` (ms), `key` (text, or `key_base64`),
        `headers` (name -> text) and `message` (betterproto `to_dict()` of the message, or of
        the named tensor), plus `error` and the raw `value`/`value_base64` when the value does
        not decode, and `warning` when raw contents were kept as bytes.
    """
    headers = _headers(record.headers)
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    key_text = None if record.key is None else _text(record.key)
    if record.key is not None and key_text is None:
        out["key_base64"] = base64.b64encode(record.key).decode()
    else:
        out["key"] = key_text
    out["headers"] = headers
    message: _V2 | None = None
    error: str | None = None
    warning: str | None = None
    value = record.value
    if value is None:
        error = "no value (tombstone)"
    elif target.kind == "text":
        error = "not decoded: this topic carries text"
    else:
        try:
            message, warning = decode(value, target.kind, expand_raw=expand_raw)
        except DecodeError as exc:
            error = str(exc)
    message_id = message.id if message is not None else None
    if request_id is not None and not matches_request_id(
        request_id, record.key, headers, message_id
    ):
        return None
    if message is None:
        out["message"] = None
    elif target.tensor is None:
        out["message"] = message.to_dict()
    else:
        out["tensor"] = target.tensor
        out["message"] = _tensor_dict(message, target.tensor)
        if out["message"] is None:
            error = f"no tensor {target.tensor!r} in the message"
    if error is not None:
        out["error"] = error
        if value is not None and message is None:
            text = _text(value)
            if text is None:
                out["value_base64"] = base64.b64encode(value).decode()
            else:
                out["value"] = text
    if warning is not None:
        out["warning"] = warning
    return out


def start_offset(requested: int | None, beginning: int, end: int) -> int:
    """Where to start reading a partition holding offsets `beginning` to `end - 1`.

    Args:
        requested: None for the beginning; `n >= 0` for offset n; `-n` for the last n records.

    Returns:
        The offset, clamped to `[beginning, end]`.
    """
    if requested is None:
        return beginning
    wanted = end + requested if requested < 0 else requested
    return max(beginning, min(wanted, end))


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
