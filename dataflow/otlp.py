"""OTLP export of the engine's spans: the SDK's OTLP/gRPC exporter with a faster encoder.

`SpanEncoder` writes the `ExportTraceServiceRequest` of finished spans as protobuf bytes, the
same message as the SDK's `encode_spans` (a unit test compares them); `grpc_exporter` is the
SDK's exporter using it. Imported only when tracing exports over OTLP/gRPC.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any


def grpc_exporter() -> Any:
    """The SDK's OTLP/gRPC span exporter, its request encoded by `SpanEncoder`."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class Exporter(OTLPSpanExporter):
        def __init__(self) -> None:
            super().__init__()
            self._encode = SpanEncoder()

        def _translate_data(self, data: Sequence[Any]) -> Any:
            return self._encode(data)

    return Exporter()


_BYTES = tuple(bytes((n,)) for n in range(128))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTES[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return b"".join((_varint(number << 3 | 2), _varint(len(data)), data))


class _Unsupported(Exception):
    """A span `SpanEncoder` leaves to the SDK's encoder."""


class SpanEncoder:
    """The OTLP `ExportTraceServiceRequest` of finished spans, the same message as the SDK's
    `encode_spans` makes, about ten times faster.

    The SDK builds a protobuf object per span, attribute and value in Python (~35 us per
    record span, on the batch processor's thread, holding the GIL the steps need): the largest
    cost of tracing 1 % of the records once the spans themselves were made cheap. Here a span's
    fields are written as protobuf bytes, its string attributes from a cache (most are the
    step's, the same in every span), and the request is parsed once per batch. A span with what
    the engine's spans never carry (events, trace state, dropped counts, schema URLs, values
    other than str, bool, int, float and their tuples) is left to `encode_spans`.
    """

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self._sdk = encode_spans
        self._request = ExportTraceServiceRequest
        self._fixed64 = struct.Struct("<Q").pack
        self._fixed32 = struct.Struct("<I").pack
        self._cache: dict[tuple[int, str, str], bytes] = {}  # string attributes
        self._keys: dict[str, bytes] = {}  # an attribute's key, as the start of a KeyValue
        # (id(resource), id(scope)) -> their fields, and the two (kept: their ids stay theirs)
        self._scopes: dict[tuple[int, int], tuple[bytes, bytes, Any, Any]] = {}

    def __call__(self, spans: Sequence[Any]) -> Any:
        groups: dict[tuple[int, int], list[bytes]] = {}
        others = []
        for span in spans:
            try:
                key = (id(span.resource), id(span.instrumentation_scope))
                if key not in self._scopes:
                    resource, scope = span.resource, span.instrumentation_scope
                    self._scopes[key] = (*self._scope(resource, scope), resource, scope)
                encoded = self._span(span)
            except _Unsupported:
                others.append(span)
                continue
            groups.setdefault(key, []).append(encoded)
        data = []
        for key, group in groups.items():
            resource_field, scope_field, _, _ = self._scopes[key]
            data.append(_field(1, resource_field + _field(2, scope_field + b"".join(group))))
        request = self._request.FromString(b"".join(data))
        if others:
            request.MergeFrom(self._sdk(others))
        return request

    def _scope(self, resource: Any, scope: Any) -> tuple[bytes, bytes]:
        """A ResourceSpans' resource field and its ScopeSpans' scope field."""
        if resource.schema_url or scope is None or scope.schema_url or scope.attributes:
            raise _Unsupported
        name = _field(1, scope.name.encode())
        if scope.version:
            name += _field(2, scope.version.encode())
        return _field(1, self._attributes(1, resource.attributes)), _field(1, name)

    def _attributes(self, number: int, attributes: Any) -> bytes:
        """Repeated KeyValue field `number` of `attributes`."""
        if not attributes:
            return b""
        cache, keys = self._cache, self._keys
        tag = _varint(number << 3 | 2)
        out = []
        for key, value in attributes.items():
            if type(value) is str:
                encoded = cache.get((number, key, value))
                if encoded is None:
                    if len(cache) >= 4096:
                        cache.clear()
                    encoded = cache[number, key, value] = _field(
                        number, _field(1, key.encode()) + _field(2, _field(1, value.encode()))
                    )
                out.append(encoded)
                continue
            prefix = keys.get(key)
            if prefix is None:
                prefix = keys[key] = _field(1, key.encode()) + b"\x12"
            data = self._value(value)
            body = b"".join((prefix, _varint(len(data)), data))
            out += (tag, _varint(len(body)), body)
        return b"".join(out)

    def _value(self, value: Any) -> bytes:
        """An AnyValue's content (as the SDK's `_encode_value`)."""
        kind = type(value)
        if kind is str:
            return _field(1, value.encode())
        if kind is bool:
            return b"\x10\x01" if value else b"\x10\x00"
        if kind is int:
            return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
        if kind is float:
            return b"\x21" + struct.pack("<d", value)
        if kind is tuple:
            return _field(5, b"".join(_field(1, self._value(v)) for v in value))
        raise _Unsupported

    def _span(self, span: Any) -> bytes:
        if span.events or span.dropped_attributes or span.dropped_links:
            raise _Unsupported
        context, parent = span.context, span.parent
        if context.trace_state:
            raise _Unsupported
        out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
               b"\x12\x08", context.span_id.to_bytes(8, "big")]  # fmt: skip
        if parent is not None:
            out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        out.append(_field(5, span.name.encode()))
        out.append(b"\x30" + _varint(span.kind.value + 1))  # SpanKind, numbered from 1
        out.append(b"\x39" + self._fixed64(span.start_time))
        out.append(b"\x41" + self._fixed64(span.end_time))
        out.append(self._attributes(9, span.attributes))
        for link in span.links:
            ctx = link.context
            if ctx.trace_state or link.dropped_attributes:
                raise _Unsupported
            out.append(_field(13, b"".join((
                b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"),
                b"\x12\x08", ctx.span_id.to_bytes(8, "big"),
                self._attributes(4, link.attributes),
                b"\x35", self._fixed32(0x300 if ctx.is_remote else 0x100),
            ))))  # fmt: skip
        status = span.status
        text = status.description
        code = status.status_code.value
        out.append(_field(15, (_field(2, text.encode()) if text else b"")
                          + (b"\x18" + _varint(code) if code else b"")))  # fmt: skip
        # flags: has-is-remote (0x100), and is-remote (0x200) when the parent is remote
        out.append(b"\x85\x01" + self._fixed32(0x300 if parent and parent.is_remote else 0x100))
        return _field(2, b"".join(out))
