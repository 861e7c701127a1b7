"""V2 inference messages on the protobuf wire format: the engine's per-record hot path.

Works on the encoded bytes of `inference.ModelInferRequest` / `ModelInferResponse` (spec 1.3)
with hand-written varint and tag scanning, so that a conversion costs a few microseconds and does
not grow with tensor size: tensor messages and raw blobs are copied as slices, never decoded.
Numbers are decoded only where the spec needs them: raw-contents conversion (spec 4.6, for joins
of raw and non-raw sides and for batches) and the batch dimension of shapes (spec 4.8).

Layouts relied on (field numbers):

- request:  1 model_name, 2 model_version, 3 id, 4 parameters (map entries), 5 inputs,
  6 requested outputs, 7 raw_input_contents;
- response: 1 model_name, 2 model_version, 3 id, 4 parameters, 5 outputs, 6 raw_output_contents;
- tensor (both): 1 name, 2 datatype, 3 shape (packed int64), 4 parameters, 5 contents;
- contents: 1 bool, 2 int32, 3 int64, 4 uint32, 5 uint64, 6 float, 7 double, 8 bytes.

Deliberately imports nothing but the standard library (no protobuf runtime, no I/O).

Choices where the spec is silent:

- `convert` validates the framing of the top level and of each tensor (varints, lengths, wire
  types of known fields) and the datatype of every KEPT tensor; it does not look inside
  parameters, contents or dropped fields (requested outputs), which it copies or drops as bytes.
  Unknown fields inside a tensor are dropped, like unknown top-level fields (the reference
  builds each tensor field by field). Group wire types (3, 4) are rejected as malformed.
- Repeated singular fields follow protobuf's last-one-wins (a tensor's name, the id).
- `to_raw` returns a message that already has raw contents unchanged.
- In a batch with raw contents, a tensor whose request has fewer raw blobs than tensors
  contributes no data (spec 4.3's rule); a tensor without a shape cannot be batched (WireError).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence

__all__ = [
    "ChainType",
    "WireError",
    "batch_rows",
    "chain_type",
    "convert",
    "fields",
    "merge_batch",
    "merge_join",
    "request_id",
    "to_raw",
]

# A piece of output: small slices are bytes, large ones memoryviews (joined once at the end).
_Piece = bytes | memoryview
_Span = tuple[int, int]

# Above this size, output pieces are memoryview slices so that big blobs are copied only once.
_VIEW_MIN = 4096

_U64 = (1 << 64) - 1

_DATATYPES = frozenset(
    {
        b"BOOL",
        b"BYTES",
        b"UINT8",
        b"UINT16",
        b"UINT32",
        b"UINT64",
        b"INT8",
        b"INT16",
        b"INT32",
        b"INT64",
        b"FP16",
        b"FP32",
        b"FP64",
    }
)

# datatype -> (InferTensorContents field holding its values, bytes per raw element, struct code).
# FP16 travels as 4-byte floats in fp32_contents, as the reference engine does (spec 4.6).
_CONTENTS_FIELD: dict[bytes, tuple[int, int, str]] = {
    b"BOOL": (1, 1, "B"),
    b"INT8": (2, 1, "B"),
    b"INT16": (2, 2, "H"),
    b"INT32": (2, 4, "I"),
    b"INT64": (3, 8, "Q"),
    b"UINT8": (4, 1, "B"),
    b"UINT16": (4, 2, "H"),
    b"UINT32": (4, 4, "I"),
    b"UINT64": (5, 8, "Q"),
    b"FP16": (6, 4, ""),
    b"FP32": (6, 4, ""),
    b"FP64": (7, 8, ""),
    b"BYTES": (8, 0, ""),
}

# Single-byte varints, precomputed: almost every length and tag we write is one of these.
_SMALL = [bytes((i,)) for i in range(128)]

_TAG_TENSOR = b"\x2a"
_TAG_CONTENTS = b"\x2a"  # tensor field 5
_TAG_RAW_RESPONSE = b"\x32"  # response field 6
_TAG_RAW_REQUEST = b"\x3a"  # request field 7
_LEN_U32 = struct.Struct("<I")


class WireError(ValueError):
    """A message that cannot be processed: malformed protobuf or an unsupported tensor.

    `str(error)` is a readable reason, e.g. "malformed protobuf: truncated varint at byte 17".
    """


class ChainType(enum.Enum):
    """What a step reads and writes, from the topic suffixes (spec 4.1)."""

    OUTPUT_INPUT = "output_input"
    INPUT_INPUT = "input_input"
    OUTPUT_OUTPUT = "output_output"
    INPUT_OUTPUT = "input_output"
    PASSTHROUGH = "passthrough"


_OI = ChainType.OUTPUT_INPUT
_II = ChainType.INPUT_INPUT
_OO = ChainType.OUTPUT_OUTPUT
_IO = ChainType.INPUT_OUTPUT
_PASS = ChainType.PASSTHROUGH

_CHAINS = {
    ("outputs", "inputs"): _OI,
    ("inputs", "inputs"): _II,
    ("outputs", "outputs"): _OO,
    ("inputs", "outputs"): _IO,
}


def chain_type(source_topic: str, sink_topic: str) -> ChainType:
    """Classify a step by the last `.`-segment of its source and sink topics (spec 4.1).

    Args:
        source_topic: Fully qualified source topic, e.g. `seldon.ns.model.m1.outputs`.
        sink_topic: Fully qualified sink topic, e.g. `seldon.ns.model.m2.inputs`.

    Returns:
        The chain type; PASSTHROUGH when either suffix is neither `inputs` nor `outputs`.
    """
    key = (source_topic.rpartition(".")[2], sink_topic.rpartition(".")[2])
    return _CHAINS.get(key, _PASS)


# --------------------------------------------------------------------------------------------
# Low-level scanning


#: Deepest nesting of groups `fields(..., groups=True)` skips.
_MAX_GROUP_DEPTH = 64


def _malformed(reason: str, pos: int) -> WireError:
    return WireError(f"malformed protobuf: {reason} at byte {pos}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at `pos` (any length); returns (value, position after it)."""
    start = pos
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _malformed("truncated varint", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise _malformed("varint longer than 10 bytes", start)


def _enc_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= _U64  # negative int64 values take 10 bytes, as protobuf encoders write them
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip(buf: bytes, pos: int, wire_type: int, limit: int, field_start: int) -> int:
    """Skip a non-length-delimited value at `pos`; returns the position after it."""
    if wire_type == 0:
        _, pos = _varint(buf, pos)
    elif wire_type == 1:
        pos += 8
    elif wire_type == 5:
        pos += 4
    elif wire_type in (3, 4):
        raise _malformed("group wire type is not supported", field_start)
    else:
        raise _malformed(f"invalid wire type {wire_type}", field_start)
    if pos > limit:
        raise _malformed("truncated field", field_start)
    return pos


def _fields(
    buf: bytes, start: int, end: int, groups: bool = False
) -> list[tuple[int, int, int, int, int]]:
    """All fields of the message in buf[start:end] (`groups`: group fields skipped whole).

    Returns (field number, wire type, field start, value start, value end) per field; for
    length-delimited fields the value excludes the length prefix.
    """
    out: list[tuple[int, int, int, int, int]] = []
    pos = start
    while pos < end:
        fs = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos)
        field = tag >> 3
        wt = tag & 7
        if field == 0:
            raise _malformed("field number 0", fs)
        if wt == 2:
            if pos >= end:
                raise _malformed("truncated length", fs)
            ln = buf[pos]
            if ln < 0x80:
                pos += 1
            else:
                ln, pos = _varint(buf, pos)
            vend = pos + ln
            if vend > end:
                raise _malformed(
                    f"field {field} of length {ln} runs past the end of its message", fs
                )
            out.append((field, 2, fs, pos, vend))
            pos = vend
        else:
            vs = pos
            if groups and wt in (3, 4):
                if wt == 4:
                    raise _malformed("unexpected end-group", fs)
                pos = _skip_group(buf, pos, end, field, fs, 0)
            else:
                pos = _skip(buf, pos, wt, end, fs)
            out.append((field, wt, fs, vs, pos))
    return out


def _skip_group(buf: bytes, pos: int, end: int, number: int, field_start: int, depth: int) -> int:
    """The position after group `number`'s end-group tag (nested groups skipped too)."""
    if depth > _MAX_GROUP_DEPTH:
        raise _malformed("groups nested too deeply", field_start)
    while True:
        if pos >= end:
            raise _malformed(f"group {number} has no end", field_start)
        fs = pos
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 4:
            if field != number:
                raise _malformed(f"group {number} ended as {field}", fs)
            return pos
        if wt == 2:
            if pos >= end:
                raise _malformed("truncated length", fs)
            ln, pos = _varint(buf, pos)
            pos += ln
            if pos > end:
                raise _malformed(f"field {field} of length {ln} runs past the end of its group", fs)
        elif wt == 3:
            pos = _skip_group(buf, pos, end, field, fs, depth + 1)
        else:
            pos = _skip(buf, pos, wt, end, fs)


def fields(
    buf: bytes, start: int = 0, end: int | None = None, *, groups: bool = False
) -> list[tuple[int, int, int, int, int]]:
    """The walker of the protobuf wire format: every field of the message in `buf[start:end]`,
    its framing checked (tags, lengths and values fit).

    Args:
        groups: skip group fields (a deprecated wire type, legal as unknown fields of
            a message: the Chainer's decoder) instead of refusing them.

    Returns:
        (field number, wire type, field start, value start, value end) per field; for
        length-delimited fields the value excludes the length prefix.

    Raises:
        WireError: the first field that does not fit, e.g. "malformed protobuf: truncated varint
            at byte 17".
    """
    return _fields(buf, start, len(buf) if end is None else end, groups)


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it (`WireError` when it does not fit)."""
    return _varint(buf, pos)


def _wrong_type(field: int, wt: int, pos: int, what: str) -> WireError:
    return _malformed(f"wrong wire type {wt} for {what} field {field}", pos)


def _tensor_name(buf: bytes, start: int, end: int, pos: int) -> str:
    try:
        return buf[start:end].decode()
    except UnicodeDecodeError:
        raise _malformed("tensor name is not valid UTF-8", pos) from None


def _unknown_datatype(name: str, datatype: bytes) -> WireError:
    return WireError(f"tensor {name!r} has unknown datatype {datatype.decode(errors='replace')!r}")


def _len_prefixed(tag: bytes, body: Sequence[_Piece]) -> list[_Piece]:
    """The pieces of a length-delimited field with the given tag whose value is `body`."""
    size = 0
    for piece in body:
        size += len(piece)
    return [tag, _enc_varint(size), *body]


# --------------------------------------------------------------------------------------------
# Conversion (spec 4.3): the hot path


def _rebuild_tensor(
    buf: bytes, src: bytes | memoryview, vs: int, ve: int, name: bytes | None, strip: bool
) -> list[_Piece]:
    """A tensor field rebuilt from buf[vs:ve]: renamed when `name` is given, contents removed
    when `strip`, unknown fields dropped; other fields keep their bytes and order."""
    body: list[_Piece] = []
    if name is not None:
        body.append(b"\x0a")
        body.append(_enc_varint(len(name)))
        body.append(name)
    for field, _wt, fs, _vs, fe in _fields(buf, vs, ve):
        if field > 5 or (field == 1 and name is not None) or (field == 5 and strip):
            continue
        body.append(src[fs:fe])
    return _len_prefixed(_TAG_TENSOR, body)


# First-byte dispatch tables for the hot path: tag byte -> kind of length-delimited field, 0 for
# anything that needs the general path (other wire types, unknown fields, multi-byte tags).
_K_DROP, _K_ID, _K_PARAM, _K_TENSOR, _K_RAW = 1, 2, 3, 4, 5
_K_NAME, _K_DATATYPE, _K_OTHER, _K_CONTENTS = 1, 2, 3, 4


def _kinds(entries: dict[int, int]) -> bytes:
    table = bytearray(256)
    for tag, kind in entries.items():
        table[tag] = kind
    return bytes(table)


_RESPONSE_KINDS = _kinds(
    {0x0A: _K_DROP, 0x12: _K_DROP, 0x1A: _K_ID, 0x22: _K_PARAM, 0x2A: _K_TENSOR, 0x32: _K_RAW}
)
_REQUEST_KINDS = _kinds(
    {
        0x0A: _K_DROP,
        0x12: _K_DROP,
        0x1A: _K_ID,
        0x22: _K_PARAM,
        0x2A: _K_TENSOR,
        0x32: _K_DROP,
        0x3A: _K_RAW,
    }
)
_TENSOR_KINDS = _kinds(
    {0x0A: _K_NAME, 0x12: _K_DATATYPE, 0x1A: _K_OTHER, 0x22: _K_OTHER, 0x2A: _K_CONTENTS}
)


def _slow_field(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int, int]:
    """General path for the field at `pos` of a message ending at `end`.

    Returns (field number, wire type, value start, position after the field); a
    length-delimited value excludes its length prefix.
    """
    fs = pos
    tag, pos = _varint(buf, pos)
    field = tag >> 3
    wt = tag & 7
    if field == 0:
        raise _malformed("field number 0", fs)
    if wt == 2:
        if pos >= end:
            raise _malformed("truncated length", fs)
        ln, vs = _varint(buf, pos)
        ve = vs + ln
        if ve > end:
            raise _malformed(f"{what} field {field} runs past the end of its message", fs)
        return field, wt, vs, ve
    return field, wt, pos, _skip(buf, pos, wt, end, fs)


def convert(
    value: bytes,
    chain: ChainType,
    tensors: frozenset[str] | None = None,
    renames: Mapping[str, str] | None = None,
) -> bytes | None:
    """Convert one record's value for a step (spec 4.3), on the wire.

    The result holds the source's id and top-level parameters, then the kept tensors in their
    original order (renamed if asked), then the raw contents that belong to kept tensors.
    model_name, model_version, requested outputs and unknown top-level fields are dropped.

    Args:
        value: Encoded ModelInferResponse (OUTPUT_*) or ModelInferRequest (INPUT_*).
        chain: The step's chain type; PASSTHROUGH returns `value` unchanged, unvalidated.
        tensors: Original names of the tensors to keep; None or empty keeps all.
        renames: Original tensor name -> new name; names not in it are kept.

    Returns:
        The encoded request (*_INPUT) or response (*_OUTPUT), or None when no tensor is left.

    Raises:
        WireError: Malformed protobuf, or a kept tensor whose datatype is not a V2 datatype.
    """
    if chain is _PASS:
        return value
    if chain is _OI:
        kinds, known, raw_tag = _RESPONSE_KINDS, 6, _TAG_RAW_REQUEST
    elif chain is _II:
        kinds, known, raw_tag = _REQUEST_KINDS, 7, _TAG_RAW_REQUEST
    elif chain is _OO:
        kinds, known, raw_tag = _RESPONSE_KINDS, 6, _TAG_RAW_RESPONSE
    elif chain is _IO:
        kinds, known, raw_tag = _REQUEST_KINDS, 7, _TAG_RAW_RESPONSE
    else:
        raise TypeError(f"not a ChainType: {chain!r}")
    n = len(value)
    src: bytes | memoryview = value if n <= _VIEW_MIN else memoryview(value)

    id_span: _Span | None = None
    params: list[_Span] = []
    tens: list[tuple[int, int, int]] = []  # (field start, value start, value end)
    raws: list[_Span] = []  # raw blob values
    pos = 0
    fs = 0
    try:
        while pos < n:
            fs = pos
            kind = kinds[value[pos]]
            if kind:
                ln = value[pos + 1]
                if ln < 0x80:
                    pos += 2
                else:
                    ln, pos = _varint(value, pos + 1)
                end = pos + ln
                if end > n:
                    raise _malformed(
                        f"field {value[fs] >> 3} of length {ln} runs past the end of the message",
                        fs,
                    )
            else:
                field, wt, pos, end = _slow_field(value, pos, n, "top-level")
                if field > known:
                    pos = end  # unknown fields are dropped
                    continue
                if wt != 2:
                    raise _wrong_type(field, wt, fs, "top-level")
                kind = kinds[(field << 3) | 2]
            if kind == 4:
                tens.append((fs, pos, end))
            elif kind == 5:
                raws.append((pos, end))
            elif kind == 2:
                id_span = (fs, end)
            elif kind == 3:
                params.append((fs, end))
            pos = end
    except IndexError:
        raise _malformed("truncated field", fs) from None
    if not tens:
        return None

    nraw = len(raws)
    select = tensors or None
    rename = renames or None
    by_name = select is not None or rename is not None
    out: list[_Piece] = []
    # Unchanged fields that are adjacent in the source are copied as one slice: [rs, re).
    rs = re = 0
    if id_span is not None:
        rs, re = id_span
    for s, e in params:
        if s != re:
            if re > rs:
                out.append(src[rs:re])
            rs = s
        re = e
    kept_raw: list[int] = []
    kept = 0
    tkinds = _TENSOR_KINDS
    try:
        for idx, (fs, vs, ve) in enumerate(tens):
            # Walk the tensor's own fields; contents and parameters stay opaque. `irregular`
            # (unknown fields, repeated names) sends the tensor through the general rebuild.
            ns = ne = ds = de = nfs = pos = vs
            has_contents = irregular = False
            if pos < ve and value[pos] == 0x0A:  # the usual head: name, datatype
                ln = value[pos + 1]
                if ln < 0x80:
                    ns = pos + 2
                    ne = pos = ns + ln
                    if pos < ve and value[pos] == 0x12:
                        ln = value[pos + 1]
                        if ln < 0x80:
                            ds = pos + 2
                            de = pos = ds + ln
                    if pos > ve:
                        raise _malformed("tensor field runs past the end of the tensor", vs)
                    # the usual tail: a shape, then contents ending the tensor
                    if pos + 1 < ve and value[pos] == 0x1A and value[pos + 1] < 0x80:
                        cfs = pos + 2 + value[pos + 1]
                        if (
                            cfs + 1 < ve
                            and value[cfs] == 0x2A
                            and value[cfs + 1] < 0x80
                            and cfs + 2 + value[cfs + 1] == ve
                        ):
                            has_contents = True
                            pos = ve
            while pos < ve:
                tfs = pos
                kind = tkinds[value[pos]]
                if kind:
                    ln = value[pos + 1]
                    if ln < 0x80:
                        pos += 2
                    else:
                        ln, pos = _varint(value, pos + 1)
                    end = pos + ln
                    if end > ve:
                        raise _malformed("tensor field runs past the end of the tensor", tfs)
                    # after the head, shape, parameters and contents are what is left
                    if kind == 4:  # contents
                        has_contents = True
                    elif kind == 2:  # datatype
                        ds = pos
                        de = end
                    elif kind == 1:  # name
                        irregular = irregular or ne != vs
                        nfs = tfs
                        ns = pos
                        ne = end
                    pos = end
                else:
                    field, wt, fvs, pos = _slow_field(value, pos, ve, "tensor")
                    if field > 5:
                        irregular = True
                    elif wt != 2 and not (field == 3 and wt == 0):  # shape may be unpacked
                        raise _wrong_type(field, wt, tfs, "tensor")
                    elif field == 1:
                        irregular = True
                        ns, ne = fvs, pos
                    elif field == 2:
                        ds, de = fvs, pos
                    elif field == 5:
                        has_contents = True
            new_name: bytes | None = None
            if by_name:
                name = _tensor_name(value, ns, ne, fs)
                if select is not None and name not in select:
                    continue
                if rename is not None:
                    renamed = rename.get(name)
                    if renamed is not None and renamed != name:
                        new_name = renamed.encode()
            if value[ds:de] not in _DATATYPES:
                raise _unknown_datatype(_tensor_name(value, ns, ne, fs), value[ds:de])
            kept += 1
            if idx < nraw:
                kept_raw.append(idx)
            if irregular or (has_contents and nraw):
                if re > rs:
                    out.append(src[rs:re])
                rs = re = 0
                out.extend(_rebuild_tensor(value, src, vs, ve, new_name, nraw > 0))
            elif new_name is None:
                if fs != re:
                    if re > rs:
                        out.append(src[rs:re])
                    rs = fs
                re = ve
            else:
                if re > rs:
                    out.append(src[rs:re])
                rs = re = 0
                # only the name field changes: [head][new name][rest]
                size = len(new_name)
                name_len = _enc_varint(size)
                out.append(_TAG_TENSOR)
                out.append(_enc_varint(ve - vs - (ne - nfs) + 1 + len(name_len) + size))
                if nfs > vs:
                    out.append(src[vs:nfs])
                out.append(b"\x0a")
                out.append(name_len)
                out.append(new_name)
                if ve > ne:
                    out.append(src[ne:ve])
    except IndexError:
        raise _malformed("truncated field", fs) from None
    if not kept:
        return None
    if not out and not kept_raw:  # one unchanged run: a single slice, no join
        return value[rs:re]
    if re > rs:
        out.append(src[rs:re])
    for idx in kept_raw:
        s, e = raws[idx]
        out.append(raw_tag)
        out.append(_enc_varint(e - s))
        out.append(src[s:e])
    return b"".join(out)


def request_id(value: bytes) -> str:
    """The id (field 3) of an encoded request or response.

    Args:
        value: Encoded ModelInferRequest or ModelInferResponse.

    Returns:
        The last id field's text; "" when absent, not UTF-8, or the message is malformed.
    """
    found: _Span | None = None
    pos = 0
    n = len(value)
    try:
        while pos < n:
            tag = value[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(value, pos)
            wt = tag & 7
            if wt == 2:
                ln = value[pos]
                if ln < 0x80:
                    pos += 1
                else:
                    ln, pos = _varint(value, pos)
                end = pos + ln
                if end > n:
                    return ""
                if tag == 0x1A:
                    found = (pos, end)
                pos = end
            elif tag >> 3 == 3:
                return ""
            else:
                pos = _skip(value, pos, wt, n, pos)
        if found is None:
            return ""
        return value[found[0] : found[1]].decode()
    except (IndexError, WireError, UnicodeDecodeError):
        return ""


# --------------------------------------------------------------------------------------------
# Decoded views for the slower paths (raw conversion, joins, batches)


class _Message:
    """Top-level layout of an encoded request or response (spans into `buf`)."""

    __slots__ = ("buf", "fields", "ids", "names", "params", "raws", "tensors", "versions")

    def __init__(self, buf: bytes, request: bool) -> None:
        self.buf = buf
        # every field in source order, as (field number, field start, field end)
        self.fields: list[tuple[int, int, int]] = []
        self.names: list[_Span] = []  # model_name fields (whole field)
        self.versions: list[_Span] = []  # model_version fields
        self.ids: list[_Span] = []  # id fields
        self.params: list[_Span] = []  # parameter map entry fields
        self.tensors: list[tuple[int, int, int]] = []  # (field start, value start, value end)
        self.raws: list[_Span] = []  # raw blob values
        raw_field = 7 if request else 6
        for field, wt, fs, vs, ve in _fields(buf, 0, len(buf)):
            self.fields.append((field, fs, ve))
            if field > raw_field:
                continue
            if wt != 2:
                raise _wrong_type(field, wt, fs, "top-level")
            if field == 5:
                self.tensors.append((fs, vs, ve))
            elif field == raw_field:
                self.raws.append((vs, ve))
            elif field == 3:
                self.ids.append((fs, ve))
            elif field == 4:
                self.params.append((fs, ve))
            elif field == 1:
                self.names.append((fs, ve))
            elif field == 2:
                self.versions.append((fs, ve))


class _Tensor:
    """One tensor message, decoded as far as batching and raw conversion need."""

    __slots__ = (
        "buf",
        "contents",
        "datatype",
        "fields",
        "name",
        "name_text",
        "params",
        "shape",
    )

    def __init__(self, buf: bytes, vs: int, ve: int) -> None:
        self.buf = buf
        self.name = b""
        self.datatype = b""
        self.fields = _fields(buf, vs, ve)
        shape_bytes: list[bytes] = []
        self.params: list[tuple[bytes, _Span]] = []  # (key, whole entry field)
        self.contents: list[_Span] = []  # contents message values
        for field, wt, fs, fvs, fve in self.fields:
            if field > 5:
                continue
            if field == 3:
                if wt not in (0, 2):
                    raise _wrong_type(field, wt, fs, "tensor")
                shape_bytes.append(buf[fvs:fve])
                continue
            if wt != 2:
                raise _wrong_type(field, wt, fs, "tensor")
            if field == 1:
                self.name = buf[fvs:fve]
            elif field == 2:
                self.datatype = buf[fvs:fve]
            elif field == 4:
                self.params.append((_entry_key(buf, fvs, fve), (fs, fve)))
            else:
                self.contents.append((fvs, fve))
        self.name_text = _tensor_name(self.name, 0, len(self.name), vs)
        if self.datatype not in _DATATYPES:
            raise _unknown_datatype(self.name_text, self.datatype)
        self.shape = [v - (1 << 64) if v >> 63 else v for v in _varints(b"".join(shape_bytes))]

    def field_pieces(self, src: bytes | memoryview, contents: bool) -> list[_Piece]:
        """The tensor's fields as they are, without contents unless `contents`."""
        return [src[fs:fe] for field, _wt, fs, _vs, fe in self.fields if contents or field != 5]

    def values(self, field: int) -> list[_Piece]:
        """Payload bytes of contents `field` (packed or not), in order."""
        return _contents_payloads(self.buf, self.contents, field)


def _entry_key(buf: bytes, start: int, end: int) -> bytes:
    key = b""
    for field, wt, fs, vs, ve in _fields(buf, start, end):
        if field == 1:
            if wt != 2:
                raise _wrong_type(field, wt, fs, "parameter entry")
            key = buf[vs:ve]
    return key


def _varints(data: bytes) -> list[int]:
    """Decode concatenated varints (a packed repeated field's payload)."""
    if not data or max(data) < 0x80:
        return list(data)
    out: list[int] = []
    pos = 0
    n = len(data)
    while pos < n:
        b = data[pos]
        if b < 0x80:
            out.append(b)
            pos += 1
        else:
            v, pos = _varint(data, pos)
            out.append(v)
    return out


# InferTensorContents: field -> wire type of one unpacked element, element width for fixed types
_CONTENTS_WIRE = {1: (0, 0), 2: (0, 0), 3: (0, 0), 4: (0, 0), 5: (0, 0), 6: (5, 4), 7: (1, 8)}


def _contents_payloads(buf: bytes, contents: list[_Span], want: int) -> list[_Piece]:
    """Values of contents field `want` across the (merged) contents messages.

    For scalar fields each piece is packed-payload bytes (varints or little-endian fixed
    values), so pieces concatenate into one packed payload. For bytes_contents (8) each piece
    is one element.
    """
    out: list[_Piece] = []
    for cs, ce in contents:
        for field, wt, fs, vs, ve in _fields(buf, cs, ce):
            if field > 8:
                continue
            if field == 8:
                if wt != 2:
                    raise _wrong_type(field, wt, fs, "tensor contents")
            else:
                elem_wt, width = _CONTENTS_WIRE[field]
                if wt == 2:
                    if width and (ve - vs) % width:
                        raise _malformed(
                            f"packed contents field {field} is not a multiple of {width} bytes",
                            fs,
                        )
                elif wt != elem_wt:
                    raise _wrong_type(field, wt, fs, "tensor contents")
            if field == want:
                out.append(buf[vs:ve])
    return out


def _raw_blob(tensor: _Tensor) -> bytes:
    """A tensor's contents as one raw blob, little-endian (spec 4.6)."""
    field, width, code = _CONTENTS_FIELD[tensor.datatype]
    payloads = tensor.values(field)
    if field == 8:  # BYTES: 4-byte little-endian length, then the bytes, per element
        parts: list[_Piece] = []
        for p in payloads:
            parts.append(_LEN_U32.pack(len(p)))
            parts.append(p)
        return b"".join(parts)
    data = b"".join(payloads)
    if field >= 6:  # packed floats and doubles are already little-endian IEEE values
        return data
    if field == 1:  # BOOL: 1 or 0, whatever non-zero varint encodes true
        if not data or max(data) <= 1:
            return data
        return bytes(1 if v else 0 for v in _varints(data))
    values = _varints(data)
    if not values:
        return b""
    if width == 1 and max(data) < 0x80:  # every element is one small varint byte
        return data
    mask = (1 << (8 * width)) - 1  # keep the low bytes: two's complement, like the JVM casts
    return struct.pack(f"<{len(values)}{code}", *[v & mask for v in values])


def _to_raw_parts(msg: _Message, src: bytes | memoryview) -> tuple[list[_Piece], list[bytes]]:
    """Tensor field pieces without contents, and one raw blob per tensor (spec 4.6)."""
    pieces: list[_Piece] = []
    blobs: list[bytes] = []
    for _fs, vs, ve in msg.tensors:
        tensor = _Tensor(msg.buf, vs, ve)
        blobs.append(_raw_blob(tensor))
        pieces.extend(_len_prefixed(_TAG_TENSOR, tensor.field_pieces(src, False)))
    return pieces, blobs


def _view(value: bytes) -> bytes | memoryview:
    return value if len(value) <= _VIEW_MIN else memoryview(value)


def _raw_field(tag: bytes, blob: _Piece) -> list[_Piece]:
    return [tag, _enc_varint(len(blob)), blob]


def to_raw(value: bytes, *, request: bool) -> bytes:
    """Move every tensor's contents into raw contents (spec 4.6).

    Each tensor in order gets one raw blob, little-endian: BOOL/INT8/UINT8 1 byte per element,
    (U)INT16 2, (U)INT32 4, (U)INT64 8, FP32 and FP16 4-byte floats from fp32_contents, FP64 8,
    BYTES a 4-byte length then the bytes per element; its `contents` is cleared. Other fields
    are kept. A message that already has raw contents, or no tensor, is returned unchanged.

    Args:
        value: Encoded ModelInferRequest (`request=True`) or ModelInferResponse.
        request: Whether `value` is a request (raw field 7) or a response (raw field 6).

    Returns:
        The encoded message with raw contents.

    Raises:
        WireError: Malformed protobuf, or a tensor whose datatype is not a V2 datatype.
    """
    msg = _Message(value, request)
    if msg.raws or not msg.tensors:
        return value
    src = _view(value)
    tensor_pieces, blobs = _to_raw_parts(msg, src)
    raw_field = 7 if request else 6
    raw_tag = _TAG_RAW_REQUEST if request else _TAG_RAW_RESPONSE
    out: list[_Piece] = []
    done_tensors = False
    done_raw = False
    # Ascending field numbers, as encoders write them; unknown fields keep their place.
    for field, fs, fe in sorted(msg.fields, key=lambda f: f[0]):
        if field >= 5 and not done_tensors:
            out.extend(tensor_pieces)
            done_tensors = True
        if field > raw_field and not done_raw:
            for blob in blobs:
                out.extend(_raw_field(raw_tag, blob))
            done_raw = True
        if field != 5:
            out.append(src[fs:fe])
    if not done_raw:
        for blob in blobs:
            out.extend(_raw_field(raw_tag, blob))
    return b"".join(out)


def _top_spans(
    value: bytes, kinds: bytes
) -> tuple[_Span | None, list[_Span], list[_Span], list[_Span]] | None:
    """(last id field, parameter fields, tensor fields, raw values) of a message whose every
    top-level field has a one-byte tag the table `kinds` knows; None otherwise, or when it is
    malformed (the general path then decides, and says why)."""
    n = len(value)
    pos = 0
    ident: _Span | None = None
    params: list[_Span] = []
    tensors: list[_Span] = []
    raws: list[_Span] = []
    try:
        while pos < n:
            fs = pos
            kind = kinds[value[pos]]
            if not kind:
                return None
            ln = value[pos + 1]
            if ln < 0x80:
                pos += 2
            else:
                ln, pos = _varint(value, pos + 1)
            end = pos + ln
            if end > n:
                return None
            if kind == _K_TENSOR:
                tensors.append((fs, end))
            elif kind == _K_RAW:
                raws.append((pos, end))
            elif kind == _K_ID:
                ident = (fs, end)
            elif kind == _K_PARAM:
                params.append((fs, end))
            pos = end
    except (IndexError, WireError):
        return None
    return ident, params, tensors, raws


def _laid_out(ident: _Span | None, params: list[_Span], tensors: list[_Span], value: bytes) -> bool:
    """True when `value` is exactly `ident`, `params` and `tensors`, one after the other."""
    pos = 0
    if ident is not None:
        if ident[0] != 0:
            return False
        pos = ident[1]
    for s, e in params:
        if s != pos:
            return False
        pos = e
    for s, e in tensors:
        if s != pos:
            return False
        pos = e
    return pos == len(value)


def merge_join(left: bytes, right: bytes, *, request: bool) -> bytes:
    """Join two converted messages with the same key (spec 4.5).

    The result has id and parameters from `left`, then left's tensors and right's tensors, then
    left's raw contents and right's. When exactly one side uses raw contents the other side is
    converted to raw first (spec 4.6). model_name, model_version, requested outputs and unknown
    fields are not carried over.

    Args:
        left: Encoded request or response (the earlier source in the step's order).
        right: Encoded message of the same kind.
        request: Whether both are requests (raw field 7) or responses (raw field 6).

    Returns:
        The encoded joined message.

    Raises:
        WireError: Malformed protobuf, or an unknown datatype on a side that needs conversion.
    """
    raw_tag = _TAG_RAW_REQUEST if request else _TAG_RAW_RESPONSE
    kinds = _REQUEST_KINDS if request else _RESPONSE_KINDS
    fast_left = _top_spans(left, kinds)
    fast_right = _top_spans(right, kinds) if fast_left is not None else None
    if fast_left is not None and fast_right is not None:
        # Both sides in the usual shape (as `convert` writes them), raw contents on both or
        # neither: the fields are copied as they are.
        l_id, l_params, l_tensors, l_raws = fast_left
        _, _, r_tensors, r_raws = fast_right
        if not l_raws and not r_raws and r_tensors and _laid_out(l_id, l_params, l_tensors, left):
            # The usual join: left is exactly its id, parameters and tensors, in that order,
            # so the result is left followed by right's tensors.
            start, end = r_tensors[0][0], r_tensors[-1][1]
            if end - start == sum(e - s for s, e in r_tensors):  # contiguous
                return left + right[start:end]
        if bool(l_raws) == bool(r_raws):
            ls, rs = _view(left), _view(right)
            pieces: list[_Piece] = [] if l_id is None else [ls[l_id[0] : l_id[1]]]
            pieces.extend(ls[s:e] for s, e in l_params)
            pieces.extend(ls[s:e] for s, e in l_tensors)
            pieces.extend(rs[s:e] for s, e in r_tensors)
            for src, raws in ((ls, l_raws), (rs, r_raws)):
                for s, e in raws:
                    pieces.extend(_raw_field(raw_tag, src[s:e]))
            return b"".join(pieces)
    lm = _Message(left, request)
    rm = _Message(right, request)
    ls = _view(left)
    rs = _view(right)
    out: list[_Piece] = []
    if lm.ids:
        s, e = lm.ids[-1]
        out.append(ls[s:e])
    for s, e in lm.params:
        out.append(ls[s:e])
    sides: list[tuple[list[_Piece], list[_Piece]]] = []
    convert_side = bool(lm.raws) != bool(rm.raws)
    for msg, src in ((lm, ls), (rm, rs)):
        if convert_side and not msg.raws:
            tensor_pieces, blobs = _to_raw_parts(msg, src)
            sides.append((tensor_pieces, [*blobs]))
        else:
            sides.append(
                (
                    [src[fs:ve] for fs, _vs, ve in msg.tensors],
                    [src[s:e] for s, e in msg.raws],
                )
            )
    for tensor_pieces, _ in sides:
        out.extend(tensor_pieces)
    for _, raw_blobs in sides:
        for blob in raw_blobs:
            out.extend(_raw_field(raw_tag, blob))
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# Batching (spec 4.8)


def batch_rows(value: bytes) -> int:
    """The batch size of a request: `inputs[0].shape[0]` (spec 4.8).

    Args:
        value: Encoded ModelInferRequest.

    Returns:
        The first input's first dimension; 0 when there is no input or its shape is empty.

    Raises:
        WireError: Malformed protobuf.
    """
    spans = _top_spans(value, _REQUEST_KINDS)
    if spans is not None and spans[2]:
        fs, fe = spans[2][0]
        vs = fs + 2 if value[fs + 1] < 0x80 else _varint(value, fs + 1)[1]
        tensor = _plain_tensor(value, vs, fe)
        if tensor is not None:
            return tensor[2][0]
    for field, wt, fs, vs, ve in _fields(value, 0, len(value)):
        if field != 5:
            continue
        if wt != 2:
            raise _wrong_type(field, wt, fs, "top-level")
        shape: list[bytes] = []
        for tfield, twt, tfs, tvs, tve in _fields(value, vs, ve):
            if tfield == 3:
                if twt not in (0, 2):
                    raise _wrong_type(tfield, twt, tfs, "tensor")
                shape.append(value[tvs:tve])
        dims = _varints(b"".join(shape))
        if not dims:
            return 0
        return dims[0] - (1 << 64) if dims[0] >> 63 else dims[0]
    return 0


class _Group:
    """The tensors of one name across a batch: the first one's datatype (its contents field)
    and dimensions after the first, the rows so far, the parameters and the data."""

    __slots__ = ("data", "datatype", "dims", "field", "params", "rows")

    def __init__(self, datatype: bytes, shape: Sequence[int]) -> None:
        self.datatype = datatype
        self.field = _CONTENTS_FIELD[datatype][0]
        self.dims = shape[1:]
        self.rows = 0
        self.params: dict[bytes, _Piece] = {}
        self.data: list[_Piece] = []


def _plain_tensor(buf: bytes, vs: int, ve: int) -> tuple[bytes, bytes, list[int], int, int] | None:
    """(name, datatype, shape, contents value start, end) of a tensor in the usual shape: one
    each of name, a known datatype, a non-empty packed shape of one-byte dimensions, and at most
    one contents field, all with one-byte tags and lengths, no parameters or other fields;
    None for anything else (the general path decides, and says why when it is malformed)."""
    name: bytes | None = None
    datatype: bytes | None = None
    shape: list[int] | None = None
    cs = ce = -1
    pos = vs
    try:
        while pos < ve:
            tag = buf[pos]
            ln = buf[pos + 1]
            if ln >= 0x80:
                return None
            start = pos + 2
            pos = start + ln
            if pos > ve:
                return None
            if tag == 0x0A and name is None:
                name = buf[start:pos]
            elif tag == 0x12 and datatype is None:
                datatype = buf[start:pos]
            elif tag == 0x1A and shape is None:
                dims = buf[start:pos]
                if not dims or max(dims) >= 0x80:
                    return None
                shape = list(dims)
            elif tag == 0x2A and cs < 0:
                cs, ce = start, pos
            else:
                return None
    except IndexError:
        return None
    if name is None or datatype not in _DATATYPES or shape is None:
        return None
    return name, datatype, shape, cs, ce


def _plain_payload(buf: bytes, cs: int, ce: int, field: int) -> bytes | None:
    """The packed payload of contents field `field` when the contents message at buf[cs:ce]
    is just that one field (one-byte length, whole elements); b"" when there are no contents;
    None for anything else."""
    if cs < 0 or cs == ce:
        return b""
    if field == 8 or buf[cs] != (field << 3) | 2:
        return None
    ln = buf[cs + 1]
    if ln >= 0x80 or cs + 2 + ln != ce:
        return None
    width = _CONTENTS_WIRE[field][1]
    if width and ln % width:
        return None
    return buf[cs + 2 : ce]


def _plain_groups(values: Sequence[bytes]) -> dict[bytes, _Group] | None:
    """`merge_batch`'s tensor groups when every request and tensor is in the usual shape (no
    raw contents, `_plain_tensor`, `_plain_payload`): one pass over each request, no decoded
    views; None otherwise."""
    groups: dict[bytes, _Group] = {}
    for value in values:
        spans = _top_spans(value, _REQUEST_KINDS)
        if spans is None or spans[3]:
            return None
        for fs, fe in spans[2]:
            vs = fs + 2 if value[fs + 1] < 0x80 else _varint(value, fs + 1)[1]
            tensor = _plain_tensor(value, vs, fe)
            if tensor is None:
                return None
            name, datatype, shape, cs, ce = tensor
            group = groups.get(name)
            if group is None:
                try:
                    name.decode()
                except UnicodeDecodeError:
                    return None
                group = groups[name] = _Group(datatype, shape)
            payload = _plain_payload(value, cs, ce, group.field)
            if payload is None:
                return None
            group.rows += shape[0]
            if payload:
                group.data.append(payload)
    return groups


def merge_batch(values: Sequence[bytes]) -> bytes:
    """Merge requests into one batched request (spec 4.8).

    id, model_name, model_version and top-level parameters come from the last request. Tensors
    are grouped by name in order of first appearance; each group's shape is the sum of the
    first dimensions followed by the first tensor's other dimensions, its parameters are the
    union (later wins), and its datatype is the first tensor's. Contents are concatenated in the
    first tensor's datatype field (FP16 in fp32_contents); if any request uses raw contents,
    every request is taken in raw form and the raw blobs are concatenated per group instead.

    Args:
        values: Encoded ModelInferRequests, oldest first.

    Returns:
        The encoded merged request.

    Raises:
        WireError: Malformed protobuf, an unknown datatype, or a tensor without a shape.
        ValueError: `values` is empty.
    """
    if not values:
        raise ValueError("merge_batch needs at least one request")
    plain = _plain_groups(values)
    if plain is not None:
        return _batched(_Message(values[-1], True), plain, False)
    msgs = [_Message(v, True) for v in values]
    any_raw = any(m.raws for m in msgs)
    groups: dict[bytes, _Group] = {}
    for msg in msgs:
        src = _view(msg.buf)
        for idx, (_fs, vs, ve) in enumerate(msg.tensors):
            tensor = _Tensor(msg.buf, vs, ve)
            if not tensor.shape:
                raise WireError(f"tensor {tensor.name_text!r} has no shape to batch along")
            group = groups.get(tensor.name)
            if group is None:
                group = groups[tensor.name] = _Group(tensor.datatype, tensor.shape)
            group.rows += tensor.shape[0]
            for key, (s, e) in tensor.params:
                group.params[key] = src[s:e]
            if any_raw:
                if not msg.raws:
                    group.data.append(_raw_blob(tensor))
                elif idx < len(msg.raws):
                    s, e = msg.raws[idx]
                    group.data.append(src[s:e])
                # else: a tensor beyond its request's raw count has no data (spec 4.3 edge)
            else:
                group.data.extend(tensor.values(group.field))
    return _batched(msgs[-1], groups, any_raw)


def _batched(last: _Message, groups: dict[bytes, _Group], any_raw: bool) -> bytes:
    """The merged request: `last`'s model name, version, id and parameters, then each group's
    tensor, then (`any_raw`) each group's raw contents."""
    lsrc = _view(last.buf)
    out: list[_Piece] = []
    for spans in (last.names, last.versions, last.ids):
        if spans:
            s, e = spans[-1]
            out.append(lsrc[s:e])
    for s, e in last.params:
        out.append(lsrc[s:e])
    raw_blobs: list[list[_Piece]] = []
    for name, group in groups.items():
        body: list[_Piece] = []
        if name:
            body.extend((b"\x0a", _enc_varint(len(name)), name))
        body.extend((b"\x12", _enc_varint(len(group.datatype)), group.datatype))
        shape = b"".join(_enc_varint(d) for d in [group.rows, *group.dims])
        body.extend((b"\x1a", _enc_varint(len(shape)), shape))
        body.extend(group.params.values())
        if any_raw:
            raw_blobs.append(group.data)
        else:
            field = group.field
            contents: list[_Piece] = []
            if field == 8:
                for element in group.data:
                    contents.extend((b"\x42", _enc_varint(len(element)), element))
            elif group.data:
                contents = _len_prefixed(_SMALL[(field << 3) | 2], group.data)
            # the reference always sets contents, even when empty
            body.extend(_len_prefixed(_TAG_CONTENTS, contents))
        out.extend(_len_prefixed(_TAG_TENSOR, body))
    for blob_parts in raw_blobs:
        out.extend(_len_prefixed(_TAG_RAW_REQUEST, blob_parts))
    return b"".join(out)
