"""The Chainer control plane as both ends speak it: strict decoding, TLS contexts, identity.

betterproto decodes whatever it is given: a field whose wire type does not match the schema
becomes a value of the wrong type (an `int` in a message field), and the error surfaces later, far
from its cause. Bytes of the 2022 `chainer.proto` (spec 1.2: `PipelineStepUpdate{1 repeated
string sources, 2 string sink, 3 enum ty}`) decode that way. Here every field of a known number
must carry its type's wire type (packed repeated scalars may also be length-delimited), nested
messages are checked the same way, strings must be UTF-8, and the bytes must parse to their end;
anything else is a `MalformedMessage`. Unknown field numbers are skipped (a newer scheduler may
add fields), as protobuf does. No library does this check: Google's protobuf treats a known field
with the wrong wire type as an unknown field instead of refusing it.

`StrictCodec` is the grpclib codec of the proxy and the engine; `bytes` as a message type passes
raw bytes through, so the engine can ack a malformed update instead of dropping its stream.

`INSTANCE_METADATA` is the gRPC metadata key an engine sends with its subscription and acks: a
random id per engine process, so the proxy tells the same engine reconnecting (same id) from
another engine using a name that is already connected.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import betterproto
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.wire import WireError, varint
from dataflow.wire import fields as wire_fields

SUBSCRIBE_PATH = "/seldon.mlops.chainer.Chainer/SubscribePipelineUpdates"
EVENT_PATH = "/seldon.mlops.chainer.Chainer/PipelineUpdateEvent"

INSTANCE_METADATA = "x-dataflow-instance"
"""gRPC metadata key of an engine process's instance id (lowercase, as HTTP/2 requires)."""
HEALTH_METADATA = "x-dataflow-health"
"""gRPC metadata key of an engine's health server, `host:port` (`:port` when it binds every
interface: the scheduler then uses the address the subscription came from)."""

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_NAMES = {
    VARINT: "varint",
    FIXED64: "64-bit",
    LENGTH: "length-delimited",
    START_GROUP: "start-group",
    END_GROUP: "end-group",
    FIXED32: "32-bit",
}
_WIRE_OF_TYPE = {
    **dict.fromkeys(
        ("enum", "bool", "int32", "int64", "uint32", "uint64", "sint32", "sint64"), VARINT
    ),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), FIXED64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), FIXED32),
    **dict.fromkeys(("string", "bytes", "message", "map"), LENGTH),
}
_MAX_DEPTH = 64

M = TypeVar("M", bound=betterproto.Message)


class MalformedMessage(ValueError):
    """Bytes that are not a valid message of the expected type; str() is the reason."""


def _bad(where: str, text: str) -> MalformedMessage:
    return MalformedMessage(f"{where}: {text}" if where else text)


def _fields(data: bytes, start: int, end: int, where: str) -> list[tuple[int, int, int, int]]:
    """(number, wire type, value start, value end) of every field of one message level, by
    the one protobuf walker (`wire.fields`; groups, legal as unknown fields, skipped)."""
    try:
        found = wire_fields(data, start, end, groups=True)
    except WireError as exc:
        raise _bad(where, str(exc).removeprefix("malformed protobuf: ")) from None
    return [(number, wt, a, b) for number, wt, _, a, b in found]


def _is_repeated(cls: type[betterproto.Message], name: str) -> bool:
    hint = cls._type_hint(name)
    return typing.get_origin(hint) is list


def _check(
    cls: type[betterproto.Message], data: bytes, start: int, end: int, where: str, depth: int
) -> None:
    if depth > _MAX_DEPTH:
        raise _bad(where, "messages nested too deeply")
    info: Any = cls()._betterproto  # type: ignore[arg-type]
    fields = _fields(data, start, end, where)
    # Wire types of this level first: the clearest sign of a message of another schema.
    counts: dict[int, int] = {}
    nested: list[tuple[type[betterproto.Message], int, int, str]] = []
    for number, wire, a, b in fields:
        name = info.field_name_by_number.get(number)
        if name is None:
            continue  # unknown field: skipped, as protobuf does
        meta = info.meta_by_field_name[name]
        index = counts.get(number, 0)
        counts[number] = index + 1
        repeated = _is_repeated(cls, name)
        label = f"{where}.{name}" if where else name
        label += f"[{index}]" if repeated else ""
        expected = _WIRE_OF_TYPE.get(meta.proto_type, LENGTH)
        packed = repeated and meta.proto_type in betterproto.PACKED_TYPES and wire == LENGTH
        if wire != expected and not packed:
            raise MalformedMessage(
                f"{label} (field {number}): wire type {_WIRE_NAMES[wire]}, "
                f"expected {_WIRE_NAMES[expected]} ({meta.proto_type})"
            )
        if meta.proto_type == "string":
            try:
                data[a:b].decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedMessage(f"{label} (field {number}): not UTF-8 text") from None
        elif meta.proto_type == "message":
            nested.append((info.cls_by_field[name], a, b, label))
    for child, a, b, label in nested:
        _check(child, data, a, b, label, depth + 1)


def check_wire(cls: type[betterproto.Message], data: bytes) -> None:
    """Check that `data` is a well-formed message of `cls` (see the module docstring).

    Raises:
        MalformedMessage: the first problem, naming the field path, e.g.
            `updates[0].sink (field 3): wire type varint, expected length-delimited (message)`.
    """
    _check(cls, data, 0, len(data), "", 0)


def decode(cls: type[M], data: bytes) -> M:
    """Decode `data` as a `cls` message after `check_wire`.

    Raises:
        MalformedMessage: the bytes are not a valid `cls`.
    """
    check_wire(cls, data)
    try:
        return cls().parse(data)
    except Exception as exc:  # betterproto raises whatever its parsing hits
        raise MalformedMessage(f"does not parse: {type(exc).__name__}: {exc}") from None


def header(data: bytes) -> PipelineUpdateMessage:
    """What can be read of a `PipelineUpdateMessage`'s identity, for the ack of a refusal.

    Fields 1-4 (op, pipeline, version, uid) have the same layout in every `chainer.proto` since
    2022; 10 (timestamp) and 11 (stream) were added later. Fields with the wrong wire type or
    text that is not UTF-8 are left unset; reading stops at the first byte that does not parse.
    """
    message = PipelineUpdateMessage()
    try:
        fields = _fields(data, 0, len(data), "")
    except MalformedMessage:
        fields = []
    for number, wire, a, b in fields:
        if wire == VARINT and number in (1, 3, 10):
            value = varint(data, a)[0]
            if number == 1:
                try:
                    message.op = PipelineUpdateMessagePipelineOperation(value)
                except ValueError:
                    message.op = PipelineUpdateMessagePipelineOperation.Unknown
            elif number == 3:
                message.version = value & 0xFFFFFFFF
            else:
                message.timestamp = value
        elif wire == LENGTH and number in (2, 4):
            try:
                text = data[a:b].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if number == 2:
                message.pipeline = text
            else:
                message.uid = text
    return message


class StrictCodec(ProtoCodec):
    """grpclib's protobuf codec with `decode` made strict; `bytes` passes through unchanged.

    A malformed message is refused with `INVALID_ARGUMENT` and the reason.
    """

    def encode(self, message: Any, message_type: Any) -> bytes:
        """Serialise `message` (`bytes` are sent as they are)."""
        if message_type is bytes:
            return bytes(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        """Decode strictly (`bytes`: the raw message).

        Raises:
            GRPCError: `INVALID_ARGUMENT`, `malformed <type>: <reason>`.
        """
        if message_type is bytes:
            return data
        try:
            return decode(message_type, data)
        except MalformedMessage as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"malformed {message_type.__name__}: {exc}"
            ) from None


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS for a Chainer server: its certificate, and with `client_ca` mutual TLS.

    Args:
        cert: the server certificate chain (PEM).
        key: its private key (PEM).
        client_ca: CA certificates (PEM) that sign the clients' certificates; when given, a
            client without a certificate signed by one of them cannot connect.

    Raises:
        OSError, ssl.SSLError: a file that cannot be read or used.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """TLS for a Chainer client: the server is checked against `ca` (default: the system CAs).

    Args:
        ca: CA certificates (PEM) of the server's certificate.
        cert: the client certificate (PEM), for a server that asks for one (mutual TLS).
        key: its private key (PEM).

    Raises:
        OSError, ssl.SSLError: a file that cannot be read or used.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


#: The updates a Chainer server streams to one subscriber: (its request, its stream) -> updates.
Subscription = Callable[[Any, Any], AsyncIterator[PipelineUpdateMessage]]
#: Takes one status message (an ack): (the message, its stream).
Ack = Callable[[Any, Any], None]


class ChainerService:
    """`seldon.mlops.chainer.Chainer` served from a backend: the proxy scheduler, or the workers'
    supervisor.

    Its handlers take grpclib streams, so that the backend can read the subscriber's metadata
    (instance id, health address) and peer.

    Args:
        subscription: the updates to stream to a subscriber until it or the server goes away.
        ack: records one status message.
    """

    def __init__(self, subscription: Subscription, ack: Ack) -> None:
        self._subscription = subscription
        self._ack = ack

    def __mapping__(self) -> dict[str, Handler]:
        return service_mapping(self._subscribe, self._event)

    async def _subscribe(self, stream: Any) -> None:
        request = await stream.recv_message()
        assert request is not None
        async for message in self._subscription(request, stream):
            await stream.send_message(message)

    async def _event(self, stream: Any) -> None:
        from dataflow.proto.seldon.mlops.chainer import PipelineUpdateStatusResponse

        request = await stream.recv_message()
        assert request is not None
        self._ack(request, stream)
        await stream.send_message(PipelineUpdateStatusResponse())


def service_mapping(
    subscribe: Callable[[Any], Awaitable[None]], event: Callable[[Any], Awaitable[None]]
) -> dict[str, Handler]:
    """grpclib's handler table of a Chainer server (the proxy's, the workers' supervisor's)."""
    from dataflow.proto.seldon.mlops.chainer import (
        PipelineSubscriptionRequest,
        PipelineUpdateStatusMessage,
        PipelineUpdateStatusResponse,
    )

    return {
        SUBSCRIBE_PATH: Handler(
            subscribe,
            Cardinality.UNARY_STREAM,
            PipelineSubscriptionRequest,
            PipelineUpdateMessage,
        ),
        EVENT_PATH: Handler(
            event,
            Cardinality.UNARY_UNARY,
            PipelineUpdateStatusMessage,
            PipelineUpdateStatusResponse,
        ),
    }
