"""What `dataflow inspect` shows: a reference resolved to topics, a record decoded and formatted.

Like `seldon pipeline inspect`, a reference names the topics to read::

    <pipeline>                                   seldon.<ns>.pipeline.<pipeline>.{inputs,outputs}
    <pipeline>.inputs|outputs[.<tensor>]         seldon.<ns>.pipeline.<pipeline>.<io>
    <pipeline>.<step>                            seldon.<ns>.model.<step>.{inputs,outputs}
    <pipeline>.<step>.inputs|outputs[.<tensor>]  seldon.<ns>.model.<step>.<io>

(a step named like its pipeline means the pipeline's own topics). Values are decoded as
`ModelInferRequest` on `inputs` topics and `ModelInferResponse` on `outputs` topics (the framing
checked by `dataflow.wire`'s walker first), and formatted one JSON object per record::

    {"topic": ..., "partition": 0, "offset": 5, "timestamp": 1764129600000, "key": null,
     "headers": {"pipeline": "p"}, "message": {"id": "4312", "inputs": [...]}}

A record that is not a V2 message gets `"message": null`, an `error` and its value as `value`
(UTF-8 text) or `value_base64`. Raw tensor contents are decoded into typed contents as the Seldon
CLI does. Pure: the reading is `dataflow.inspect`'s.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
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
from dataflow.tensors import CONTENTS_FIELDS, RawError, decode_raw
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
from dataflow.wire import WireError, fields

__all__ = [
    "DecodeError",
    "Kind",
    "Target",
    "decode",
    "format_record",
    "kind_of",
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
        fields(value)  # betterproto accepts some garbage (a truncated varint parses as empty)
    except WireError as exc:
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
