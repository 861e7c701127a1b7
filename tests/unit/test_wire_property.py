"""Property tests: dataflow.wire against reference implementations written with betterproto.

Each reference decodes the whole message with betterproto, builds the result the way the spec
(4.3, 4.5, 4.6, 4.8) and the reference engine describe, and encodes it. Both outputs are decoded
again and must be equal messages, and must re-encode to the same bytes (which also compares
what `==` does not: oneof members set to default values, empty-but-present contents, unknown
fields).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow import wire
from dataflow.proto.inference import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferRequestInferRequestedOutputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.wire import ChainType, WireError

DATATYPES = [
    "BOOL",
    "BYTES",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]
Message = ModelInferRequest | ModelInferResponse
Tensor = ModelInferRequestInferInputTensor | ModelInferResponseInferOutputTensor

PROFILE = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# Generators

LONG = "long-" * 30  # > 127 bytes: two-byte length prefixes
names = st.sampled_from(["a", "b", "t0", "t1", "ü", "", LONG])
texts = st.text(max_size=6)

parameters = st.one_of(
    st.builds(lambda v: InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: InferParameter(string_param=v), texts),
    st.builds(InferParameter),  # no member set
)
parameter_maps = st.dictionaries(texts, parameters, max_size=3)

int32s = st.integers(-(2**31), 2**31 - 1)
contents_fields: dict[str, Any] = {
    "bool_contents": st.lists(st.booleans(), max_size=5),
    "int_contents": st.lists(int32s, max_size=5),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=5),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=5),
    "fp32_contents": st.lists(st.floats(width=32, allow_nan=False), max_size=5),
    "fp64_contents": st.lists(st.floats(allow_nan=False), max_size=5),
    "bytes_contents": st.lists(st.binary(max_size=6), max_size=4),
}
FIELD_OF = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Extra bytes appended to a tensor: unknown fields, a repeated name or datatype (last wins), an
# unpacked shape element.
tensor_extras = st.sampled_from(
    [b"", b"", b"", b"\x30\x05", b"\x0a\x02zz", b"\x12\x04FP64", b"\x18\x07", b"\x3a\x01q"]
)


@st.composite
def contents_for(draw: st.DrawFn, datatype: str) -> InferTensorContents | None:
    mode = draw(st.sampled_from(["own", "own", "own+other", "empty", "absent"]))
    if mode == "absent":
        return None
    fields: dict[str, Any] = {}
    if mode != "empty":
        fields[FIELD_OF[datatype]] = draw(contents_fields[FIELD_OF[datatype]])
    if mode == "own+other":
        other = draw(st.sampled_from(sorted(contents_fields)))
        fields[other] = draw(contents_fields[other])
    return InferTensorContents(**fields)


@st.composite
def tensors_of(draw: st.DrawFn, cls: type[Tensor], extras: bool = True) -> Tensor:
    datatype = draw(st.sampled_from(DATATYPES))
    tensor = cls(
        name=draw(names),
        datatype=datatype,
        shape=draw(
            st.lists(st.one_of(st.integers(-1, 4), st.integers(-(2**63), 2**63 - 1)), max_size=3)
        ),
        parameters=draw(parameter_maps),
    )
    contents = draw(contents_for(datatype))
    if contents is not None:
        tensor.contents = contents
    if extras:
        tensor._unknown_fields = draw(tensor_extras)
    return tensor


# Appended to the whole message: unknown fields (varint, length-delimited, fixed32, a field
# number needing a two-byte tag), a repeated id, field 7 (raw for a request, unknown for a
# response), a tensor after the raw contents.
message_extras = st.sampled_from(
    [
        b"",
        b"",
        b"",
        b"\x48\x01",
        b"\xa2\x01\x02hi",
        b"\x5d\x00\x00\x00\x00",
        b"\x1a\x02zz",
        b"\x3a\x01x",
        b"\x2a\x0b\x0a\x01z\x12\x04INT8\x1a\x00",
    ]
)


@st.composite
def messages(
    draw: st.DrawFn, request: bool, extras: bool = True, raw: bool | None = None
) -> Message:
    """A request or response with every kind of field populated at random."""
    tensor_cls = (
        ModelInferRequestInferInputTensor if request else ModelInferResponseInferOutputTensor
    )
    tensor_list = draw(st.lists(tensors_of(tensor_cls, extras), max_size=4))
    with_raw = draw(st.booleans()) if raw is None else raw
    blobs: list[bytes] = []
    if with_raw:
        # usually one blob per tensor; sometimes fewer or more (alignment edge cases)
        count = draw(st.one_of(st.just(len(tensor_list)), st.integers(0, len(tensor_list) + 2)))
        blobs = draw(st.lists(st.binary(max_size=9), min_size=count, max_size=count))
    common = {
        "model_name": draw(st.sampled_from(["", "m", "model.test"])),
        "model_version": draw(st.sampled_from(["", "1"])),
        "id": draw(st.sampled_from(["", "4312", "ü-id"])),
        "parameters": draw(parameter_maps),
    }
    msg: Message
    if request:
        msg = ModelInferRequest(
            inputs=tensor_list,
            raw_input_contents=blobs,
            outputs=draw(
                st.lists(
                    st.builds(
                        ModelInferRequestInferRequestedOutputTensor,
                        name=names,
                        parameters=parameter_maps,
                    ),
                    max_size=2,
                )
            ),
            **common,
        )
    else:
        msg = ModelInferResponse(outputs=tensor_list, raw_output_contents=blobs, **common)
    if extras:
        msg._unknown_fields = draw(message_extras)
    return msg


# ---------------------------------------------------------------------------------------------
# betterproto references


def _cls(request: bool) -> type[Message]:
    return ModelInferRequest if request else ModelInferResponse


def _tensor_cls(request: bool) -> type[Tensor]:
    return ModelInferRequestInferInputTensor if request else ModelInferResponseInferOutputTensor


def _tensors(msg: Message) -> list[Any]:
    return list(msg.inputs if isinstance(msg, ModelInferRequest) else msg.outputs)


def _raws(msg: Message) -> list[bytes]:
    if isinstance(msg, ModelInferRequest):
        return list(msg.raw_input_contents)
    return list(msg.raw_output_contents)


def _build(
    request: bool,
    id_: str,
    params: Mapping[str, InferParameter],
    tensors: list[Any],
    raws: list[bytes],
    name: str = "",
    version: str = "",
) -> Message:
    if request:
        return ModelInferRequest(
            model_name=name,
            model_version=version,
            id=id_,
            parameters=dict(params),
            inputs=tensors,
            raw_input_contents=raws,
        )
    return ModelInferResponse(
        model_name=name,
        model_version=version,
        id=id_,
        parameters=dict(params),
        outputs=tensors,
        raw_output_contents=raws,
    )


def ref_convert(
    value: bytes,
    chain: ChainType,
    tensors: frozenset[str] | None,
    renames: Mapping[str, str] | None,
) -> bytes | None:
    """Spec 4.3 with betterproto: decode, build the target message, encode."""
    if chain is ChainType.PASSTHROUGH:
        return value
    src_request = chain in (ChainType.INPUT_INPUT, ChainType.INPUT_OUTPUT)
    dst_request = chain in (ChainType.OUTPUT_INPUT, ChainType.INPUT_INPUT)
    src = _cls(src_request)().parse(value)
    raws = _raws(src)
    kept: list[Any] = []
    kept_raw: list[bytes] = []
    for idx, tensor in enumerate(_tensors(src)):
        if tensors and tensor.name not in tensors:
            continue
        if tensor.datatype not in DATATYPES:
            raise WireError(f"unknown datatype {tensor.datatype!r}")
        new = _tensor_cls(dst_request)(
            name=(renames or {}).get(tensor.name, tensor.name),
            datatype=tensor.datatype,
            shape=list(tensor.shape),
            parameters=dict(tensor.parameters),
        )
        if not raws:
            new.contents = tensor.contents
        kept.append(new)
        if idx < len(raws):
            kept_raw.append(raws[idx])
    if not kept:
        return None
    return bytes(_build(dst_request, src.id, src.parameters, kept, kept_raw))


def ref_raw_blob(tensor: Any) -> bytes:
    """Spec 4.6 for one tensor, from decoded numbers."""
    c = tensor.contents
    dt = tensor.datatype
    if dt not in DATATYPES:
        raise WireError(f"unknown datatype {dt!r}")
    if dt == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in c.bytes_contents)
    if dt in ("FP16", "FP32"):
        return struct.pack(f"<{len(c.fp32_contents)}f", *c.fp32_contents)
    if dt == "FP64":
        return struct.pack(f"<{len(c.fp64_contents)}d", *c.fp64_contents)
    if dt == "BOOL":
        return bytes(1 if v else 0 for v in c.bool_contents)
    values, code = {
        "INT8": (c.int_contents, "b"),
        "INT16": (c.int_contents, "h"),
        "INT32": (c.int_contents, "i"),
        "INT64": (c.int64_contents, "q"),
        "UINT8": (c.uint_contents, "B"),
        "UINT16": (c.uint_contents, "H"),
        "UINT32": (c.uint_contents, "I"),
        "UINT64": (c.uint64_contents, "Q"),
    }[dt]
    bits = 8 * struct.calcsize(code)
    wrapped = []
    for v in values:  # the JVM's narrowing casts: keep the low bits, two's complement
        v &= (1 << bits) - 1
        if code.islower() and v >> (bits - 1):
            v -= 1 << bits
        wrapped.append(v)
    return struct.pack(f"<{len(wrapped)}{code}", *wrapped)


def ref_without_contents(tensor: Any) -> Any:
    copy = type(tensor)().parse(bytes(tensor))  # keeps unknown fields, like toBuilder()
    copy.contents = InferTensorContents()
    return copy


def ref_to_raw(value: bytes, request: bool) -> bytes:
    msg = _cls(request)().parse(value)
    tensors = _tensors(msg)
    if _raws(msg) or not tensors:
        return value
    blobs = [ref_raw_blob(t) for t in tensors]
    stripped = [ref_without_contents(t) for t in tensors]
    if isinstance(msg, ModelInferRequest):
        msg.inputs = stripped
        msg.raw_input_contents = blobs
    else:
        msg.outputs = stripped
        msg.raw_output_contents = blobs
    return bytes(msg)


def ref_merge_join(left: bytes, right: bytes, request: bool) -> bytes:
    """Spec 4.5's value joiner with betterproto."""
    lm = _cls(request)().parse(left)
    rm = _cls(request)().parse(right)
    if bool(_raws(lm)) != bool(_raws(rm)):
        if not _raws(lm):
            lm = _cls(request)().parse(ref_to_raw(left, request))
        else:
            rm = _cls(request)().parse(ref_to_raw(right, request))
    return bytes(
        _build(
            request,
            lm.id,
            lm.parameters,
            _tensors(lm) + _tensors(rm),
            _raws(lm) + _raws(rm),
        )
    )


def ref_merge_batch(values: list[bytes]) -> bytes:
    """BatchProcessor.merge (spec 4.8) with betterproto."""
    msgs = [ModelInferRequest().parse(v) for v in values]
    last = msgs[-1]
    any_raw = any(m.raw_input_contents for m in msgs)
    groups: dict[str, list[tuple[Any, bytes]]] = {}
    for m in msgs:
        for idx, t in enumerate(m.inputs):
            if t.datatype not in DATATYPES:
                raise WireError("unknown datatype")
            if not t.shape:
                raise WireError("no shape")
            blob = b""
            if any_raw:
                if not m.raw_input_contents:
                    blob = ref_raw_blob(t)
                elif idx < len(m.raw_input_contents):
                    blob = m.raw_input_contents[idx]
            groups.setdefault(t.name, []).append((t, blob))
    tensors = []
    raws = []
    for name, members in groups.items():
        first = members[0][0]
        params: dict[str, InferParameter] = {}
        for t, _ in members:
            params.update(t.parameters)
        tensor = ModelInferRequestInferInputTensor(
            name=name,
            datatype=first.datatype,
            shape=[sum(t.shape[0] for t, _ in members), *first.shape[1:]],
            parameters=params,
        )
        if any_raw:
            raws.append(b"".join(b for _, b in members))
        else:
            field = FIELD_OF[first.datatype]
            values_: list[Any] = []
            for t, _ in members:
                values_.extend(getattr(t.contents, field))
            tensor.contents = InferTensorContents(**{field: values_})
        tensors.append(tensor)
    return bytes(
        _build(True, last.id, last.parameters, tensors, raws, last.model_name, last.model_version)
    )


def assert_same_message(ours: bytes | None, ref: bytes | None, request: bool) -> None:
    if ref is None or ours is None:
        assert ours is ref
        return
    a = _cls(request)().parse(ours)
    b = _cls(request)().parse(ref)
    assert a == b
    assert bytes(a) == bytes(b)


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except WireError:
        return "error", None


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def conversions(
    draw: st.DrawFn,
) -> tuple[bytes, ChainType, frozenset[str] | None, dict[str, str] | None]:
    chain = draw(st.sampled_from(list(ChainType)))
    src_request = chain in (ChainType.INPUT_INPUT, ChainType.INPUT_OUTPUT)
    if not src_request and draw(st.integers(0, 3)) == 0:
        src_request = True  # the wire quirk (spec 1.3): a request parsed as a response
    msg = draw(messages(src_request))
    selection = draw(st.one_of(st.none(), st.frozensets(names, max_size=3)))
    renames = draw(
        st.one_of(
            st.none(),
            st.dictionaries(names, st.sampled_from(["x", "a", "ü", LONG + "!", ""]), max_size=3),
        )
    )
    return bytes(msg), chain, selection, renames


@PROFILE
@given(conversions())
def test_convert_matches_betterproto(case: Any) -> None:
    value, chain, selection, renames = case
    ours = _outcome(wire.convert, value, chain, selection, renames)
    ref = _outcome(ref_convert, value, chain, selection, renames)
    assert ours[0] == ref[0]
    if chain is ChainType.PASSTHROUGH:
        assert ours[1] is value
        return
    dst_request = chain in (ChainType.OUTPUT_INPUT, ChainType.INPUT_INPUT)
    assert_same_message(ours[1], ref[1], dst_request)


@PROFILE
@given(
    st.sampled_from([c for c in ChainType if c is not ChainType.PASSTHROUGH]),
    st.sampled_from(["FLOAT", "", "fp32", "INT32 "]),
    st.data(),
)
def test_convert_rejects_unknown_datatype_of_kept_tensor(
    chain: ChainType, bad: str, data: st.DataObject
) -> None:
    src_request = chain in (ChainType.INPUT_INPUT, ChainType.INPUT_OUTPUT)
    dst_request = chain in (ChainType.OUTPUT_INPUT, ChainType.INPUT_INPUT)
    msg = data.draw(messages(src_request))
    tensors = _tensors(msg)
    if not tensors:
        return
    tensors[-1].datatype = bad
    tensors[-1]._unknown_fields = b""
    value = bytes(msg)
    with pytest.raises(WireError, match="unknown datatype"):
        wire.convert(value, chain)
    # a selection that leaves the bad tensor out is fine
    others = frozenset(t.name for t in tensors[:-1]) - {tensors[-1].name}
    if others:
        ours = wire.convert(value, chain, others)
        assert_same_message(ours, ref_convert(value, chain, others, None), dst_request)


@PROFILE
@given(st.booleans(), st.data())
def test_to_raw_matches_betterproto(request: bool, data: st.DataObject) -> None:
    msg = data.draw(messages(request, raw=data.draw(st.sampled_from([False, False, None]))))
    value = bytes(msg)
    ours = wire.to_raw(value, request=request)
    assert_same_message(ours, ref_to_raw(value, request), request)


@PROFILE
@given(st.booleans(), st.data())
def test_merge_join_matches_betterproto(request: bool, data: st.DataObject) -> None:
    left = bytes(data.draw(messages(request)))
    right = bytes(data.draw(messages(request)))
    ours = wire.merge_join(left, right, request=request)
    assert_same_message(ours, ref_merge_join(left, right, request), request)


@PROFILE
@given(st.booleans(), st.data())
def test_merge_join_of_converted_records(request: bool, data: st.DataObject) -> None:
    """The engine's own use: join what convert produced from two sources."""
    chain = (
        data.draw(st.sampled_from([ChainType.OUTPUT_INPUT, ChainType.INPUT_INPUT]))
        if request
        else data.draw(st.sampled_from([ChainType.OUTPUT_OUTPUT, ChainType.INPUT_OUTPUT]))
    )
    src_request = chain in (ChainType.INPUT_INPUT, ChainType.INPUT_OUTPUT)
    sides = []
    for _ in range(2):
        value = bytes(data.draw(messages(src_request)))
        sides.append(wire.convert(value, chain) or bytes(_cls(request)(id="empty")))
    ours = wire.merge_join(sides[0], sides[1], request=request)
    assert_same_message(ours, ref_merge_join(sides[0], sides[1], request), request)


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Requests as the batcher sees them: same tensor names, shapes with a batch dimension."""
    names_ = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    datatypes = {n: draw(st.sampled_from(DATATYPES)) for n in names_}
    raw_mode = draw(st.sampled_from(["none", "all", "some"]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        tensors = []
        for name in draw(st.permutations(names_)):
            tensor = ModelInferRequestInferInputTensor(
                name=name,
                datatype=datatypes[name],
                shape=[draw(st.integers(0, 3)), 2],
                parameters=draw(parameter_maps),
            )
            contents = draw(contents_for(datatypes[name]))
            if contents is not None:
                tensor.contents = contents
            tensors.append(tensor)
        request = ModelInferRequest(
            id=draw(texts),
            model_name=draw(st.sampled_from(["", "m"])),
            model_version=draw(st.sampled_from(["", "2"])),
            parameters=draw(parameter_maps),
            inputs=tensors,
        )
        if raw_mode == "all" or (raw_mode == "some" and draw(st.booleans())):
            request = ModelInferRequest().parse(ref_to_raw(bytes(request), request=True))
        out.append(bytes(request))
    return out


@PROFILE
@given(batches())
def test_merge_batch_matches_betterproto(values: list[bytes]) -> None:
    merged = wire.merge_batch(values)
    assert_same_message(merged, ref_merge_batch(values), True)
    first = ModelInferRequest().parse(values[0]).inputs[0].name
    rows = sum(
        t.shape[0] for v in values for t in ModelInferRequest().parse(v).inputs if t.name == first
    )
    assert wire.batch_rows(merged) == rows


@PROFILE
@given(st.booleans(), st.data())
def test_request_id_matches_betterproto(request: bool, data: st.DataObject) -> None:
    value = bytes(data.draw(messages(request)))
    assert wire.request_id(value) == _cls(request)().parse(value).id


# Arbitrary or corrupted input never escapes as anything but WireError.


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=60))
    value = bytearray(bytes(draw(messages(draw(st.booleans())))))
    for _ in range(draw(st.integers(1, 3))):
        if not value:
            break
        i = draw(st.integers(0, len(value) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            value[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del value[i:]
        else:
            value[i:i] = draw(st.binary(min_size=1, max_size=3))
    return bytes(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted(), st.sampled_from(list(ChainType)), st.booleans())
def test_garbage_raises_only_wire_error(value: bytes, chain: ChainType, request: bool) -> None:
    calls = [
        lambda: wire.convert(value, chain),
        lambda: wire.convert(value, chain, frozenset({"a", "t1"}), {"a": "renamed"}),
        lambda: wire.to_raw(value, request=request),
        lambda: wire.merge_join(value, value, request=request),
        lambda: wire.merge_join(value, b"", request=request),
        lambda: wire.merge_batch([value, value]),
        lambda: wire.batch_rows(value),
    ]
    for call in calls:
        try:
            call()
        except WireError as e:
            assert str(e)
    assert isinstance(wire.request_id(value), str)
