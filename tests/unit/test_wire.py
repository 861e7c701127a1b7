"""dataflow.wire: conversions, joins, raw contents and batches on the protobuf wire format."""

from __future__ import annotations

import struct
from typing import Any

import pytest

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

Input = ModelInferRequestInferInputTensor
Output = ModelInferResponseInferOutputTensor

# Spec 5.1: the 2022 demo producer's record for d = 0.
DEMO_HEX = (
    "0a0a6d6f64656c2e746573741201311a04343331322a1a0a0774656e736f72301205494e5433321a0201022a04"
    "120200002a1a0a0774656e736f72311205494e5433321a0201022a0412020000"
)
DEMO = bytes.fromhex(DEMO_HEX)
ID_FIELD = bytes.fromhex("1a0434333132")  # id "4312"
TENSOR0 = bytes.fromhex("2a1a0a0774656e736f72301205494e5433321a0201022a0412020000")
TENSOR1 = bytes.fromhex("2a1a0a0774656e736f72311205494e5433321a0201022a0412020000")


def demo_response(d: int = 0) -> ModelInferResponse:
    """The demo producer's message, built with the generated classes."""
    return ModelInferResponse(
        model_name="model.test",
        model_version="1",
        id="4312",
        outputs=[
            Output(
                name=name,
                datatype="INT32",
                shape=[1, 2],
                contents=InferTensorContents(int_contents=[d, d]),
            )
            for name in ("tensor0", "tensor1")
        ],
    )


def request(value: bytes | None) -> ModelInferRequest:
    assert value is not None
    return ModelInferRequest().parse(value)


def response(value: bytes | None) -> ModelInferResponse:
    assert value is not None
    return ModelInferResponse().parse(value)


# ---------------------------------------------------------------------------------------------
# The 2022 demo (spec 5.1)


def test_demo_record_is_77_bytes_and_matches_the_generated_classes() -> None:
    assert len(DEMO) == 77
    assert bytes(demo_response(0)) == DEMO
    assert DEMO[15:] == ID_FIELD + TENSOR0 + TENSOR1
    assert int.from_bytes(DEMO[:4], "big") == 168455535  # what kcat -s value=i shows
    for d in range(5):
        assert len(bytes(demo_response(d))) == 77


def test_demo_step1_whole_message_gives_62_bytes() -> None:
    out = wire.convert(DEMO, ChainType.OUTPUT_INPUT)
    assert out == ID_FIELD + TENSOR0 + TENSOR1
    assert out is not None and len(out) == 62
    assert int.from_bytes(out[:4], "big") == 436483123
    assert request(out) == ModelInferRequest(
        id="4312",
        inputs=[
            Input(
                name=n,
                datatype="INT32",
                shape=[1, 2],
                contents=InferTensorContents(int_contents=[0, 0]),
            )
            for n in ("tensor0", "tensor1")
        ],
    )


def test_demo_step2_tensor1_gives_34_bytes() -> None:
    out = wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"tensor1"}))
    assert out == ID_FIELD + TENSOR1
    assert out is not None and len(out) == 34
    assert out.hex() == "1a0434333132" + "2a1a0a0774656e736f72311205494e5433321a0201022a0412020000"
    assert request(out).inputs[0].contents.int_contents == [0, 0]


def test_demo_other_values_of_d() -> None:
    for d in range(5):
        value = bytes(demo_response(d))
        assert wire.convert(value, ChainType.OUTPUT_INPUT) == value[15:]


# ---------------------------------------------------------------------------------------------
# chain_type (spec 4.1)


@pytest.mark.parametrize(
    ("source", "sink", "expected"),
    [
        ("seldon.ns.model.m1.outputs", "seldon.ns.model.m2.inputs", ChainType.OUTPUT_INPUT),
        ("seldon.ns.pipeline.p.inputs", "seldon.ns.model.m1.inputs", ChainType.INPUT_INPUT),
        ("seldon.ns.model.m1.outputs", "seldon.ns.pipeline.p.outputs", ChainType.OUTPUT_OUTPUT),
        ("seldon.ns.pipeline.p.inputs", "seldon.ns.pipeline.p.outputs", ChainType.INPUT_OUTPUT),
        ("seldon.ns.errors.errors", "seldon.ns.pipeline.p.outputs", ChainType.PASSTHROUGH),
        ("seldon.ns.model.m1.outputs", "seldon.ns.errors.errors", ChainType.PASSTHROUGH),
        ("outputs", "inputs", ChainType.OUTPUT_INPUT),
        ("seldon.ns.model.m1.outputs.x", "seldon.ns.model.m2.inputs", ChainType.PASSTHROUGH),
        ("seldon.ns.model.inputs.m1", "seldon.ns.model.m2.inputs", ChainType.PASSTHROUGH),
    ],
)
def test_chain_type(source: str, sink: str, expected: ChainType) -> None:
    assert wire.chain_type(source, sink) is expected


# ---------------------------------------------------------------------------------------------
# convert (spec 4.3)


def test_passthrough_returns_the_value_unchecked() -> None:
    for value in (DEMO, b"\xff\xff garbage", b""):
        assert wire.convert(value, ChainType.PASSTHROUGH) is value


def test_output_output_keeps_a_response() -> None:
    out = wire.convert(DEMO, ChainType.OUTPUT_OUTPUT)
    assert out == DEMO[15:]
    assert response(out).outputs[1].name == "tensor1"


def test_selection_is_by_original_name_and_keeps_order() -> None:
    out = wire.convert(
        DEMO, ChainType.OUTPUT_INPUT, frozenset({"tensor1", "tensor0"}), {"tensor0": "zzz"}
    )
    assert [t.name for t in request(out).inputs] == ["zzz", "tensor1"]
    # selecting by the new name does not match anything
    assert (
        wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"zzz"}), {"tensor0": "zzz"}) is None
    )


def test_empty_selection_keeps_everything() -> None:
    assert wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset()) == DEMO[15:]
    assert wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset(), {}) == DEMO[15:]


def test_rename_rewrites_only_the_name_field() -> None:
    out = wire.convert(DEMO, ChainType.OUTPUT_INPUT, None, {"tensor1": "renamed", "nope": "x"})
    renamed = bytes.fromhex("2a1a0a0772656e616d65641205494e5433321a0201022a0412020000")
    assert out == ID_FIELD + TENSOR0 + renamed
    # a longer name changes the tensor's length prefix
    out = wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"tensor0"}), {"tensor0": "a" * 200})
    msg = request(out)
    assert msg.inputs[0].name == "a" * 200
    assert msg.inputs[0].contents.int_contents == [0, 0]
    # renaming to the same name leaves the bytes alone
    assert wire.convert(DEMO, ChainType.OUTPUT_INPUT, None, {"tensor0": "tensor0"}) == DEMO[15:]


def test_rename_of_a_tensor_without_a_name_adds_one() -> None:
    value = bytes(ModelInferResponse(id="1", outputs=[Output(datatype="FP32", shape=[1])]))
    out = wire.convert(value, ChainType.OUTPUT_INPUT, None, {"": "named"})
    assert request(out).inputs == [Input(name="named", datatype="FP32", shape=[1])]


def test_rename_where_name_is_not_the_first_field() -> None:
    tensor = b"\x12\x04FP32\x0a\x01a\x1a\x01\x01"
    value = b"\x2a" + bytes([len(tensor)]) + tensor
    out = wire.convert(value, ChainType.OUTPUT_INPUT, None, {"a": "bb"})
    assert out == b"\x2a\x0d\x12\x04FP32\x0a\x02bb\x1a\x01\x01"


def test_id_and_parameters_are_copied_and_model_fields_dropped() -> None:
    params = {
        "b": InferParameter(bool_param=False),
        "i": InferParameter(int64_param=0),
        "s": InferParameter(string_param=""),
        "n": InferParameter(),
    }
    src = ModelInferResponse(
        model_name="m",
        model_version="7",
        id="abc",
        parameters=params,
        outputs=[Output(name="t", datatype="BYTES", shape=[1], parameters={"p": params["i"]})],
    )
    out = wire.convert(bytes(src), ChainType.OUTPUT_INPUT)
    expected = ModelInferRequest(
        id="abc",
        parameters=params,
        inputs=[Input(name="t", datatype="BYTES", shape=[1], parameters={"p": params["i"]})],
    )
    assert out == bytes(expected)  # oneof members at default values survive byte for byte


def test_input_input_drops_model_name_and_requested_outputs() -> None:
    src = ModelInferRequest(
        model_name="model.test",
        model_version="3",
        id="r1",
        inputs=[Input(name="x", datatype="INT64", shape=[1], contents=InferTensorContents())],
        outputs=[ModelInferRequestInferRequestedOutputTensor(name="wanted")],
    )
    out = wire.convert(bytes(src), ChainType.INPUT_INPUT)
    msg = request(out)
    assert msg.model_name == "" and msg.model_version == ""
    assert msg.outputs == []
    assert msg.id == "r1"
    assert [t.name for t in msg.inputs] == ["x"]


def test_input_output_builds_a_response_with_raw_in_field_6() -> None:
    src = ModelInferRequest(
        id="r",
        inputs=[Input(name="x", datatype="UINT8", shape=[2]), Input(name="y", datatype="FP32")],
        raw_input_contents=[b"\x01\x02", b"\x00\x00\x80\x3f"],
    )
    out = wire.convert(bytes(src), ChainType.INPUT_OUTPUT)
    assert response(out) == ModelInferResponse(
        id="r",
        outputs=[Output(name="x", datatype="UINT8", shape=[2]), Output(name="y", datatype="FP32")],
        raw_output_contents=[b"\x01\x02", b"\x00\x00\x80\x3f"],
    )


def raw_response() -> ModelInferResponse:
    return ModelInferResponse(
        id="raw",
        outputs=[
            Output(
                name=n, datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[i])
            )
            for i, n in enumerate("abc")
        ],
        raw_output_contents=[b"A" * 4, b"B" * 4, b"C" * 4],
    )


def test_selection_keeps_raw_blobs_aligned_and_drops_contents() -> None:
    out = wire.convert(bytes(raw_response()), ChainType.OUTPUT_INPUT, frozenset({"a", "c"}))
    assert out == bytes(
        ModelInferRequest(
            id="raw",
            inputs=[
                Input(name="a", datatype="INT32", shape=[1]),
                Input(name="c", datatype="INT32", shape=[1]),
            ],
            raw_input_contents=[b"A" * 4, b"C" * 4],
        )
    )


def test_raw_count_below_tensor_count() -> None:
    src = raw_response()
    src.raw_output_contents = [b"A" * 4]  # only the first tensor has data
    out = wire.convert(bytes(src), ChainType.OUTPUT_INPUT, frozenset({"b", "c"}))
    msg = request(out)
    assert [t.name for t in msg.inputs] == ["b", "c"]
    assert msg.raw_input_contents == []
    assert all(not t.contents.int_contents for t in msg.inputs)  # data lost, as in spec 4.3
    out = wire.convert(bytes(src), ChainType.OUTPUT_INPUT)
    assert request(out).raw_input_contents == [b"A" * 4]


def test_raw_count_above_tensor_count_drops_the_extra_blobs() -> None:
    src = raw_response()
    src.raw_output_contents = [b"1", b"2", b"3", b"4", b"5"]
    assert request(wire.convert(bytes(src), ChainType.OUTPUT_INPUT)).raw_input_contents == [
        b"1",
        b"2",
        b"3",
    ]


def test_no_tensor_left_gives_none() -> None:
    assert wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"missing"})) is None
    assert wire.convert(bytes(ModelInferResponse(id="x")), ChainType.OUTPUT_INPUT) is None
    assert wire.convert(b"", ChainType.INPUT_INPUT) is None


def test_unknown_top_level_fields_are_dropped_and_fields_come_out_in_order() -> None:
    # raw first, then an unknown field, a tensor, the id, a two-byte-tag unknown field
    tensor = b"\x0a\x01t\x12\x04INT8"
    value = (
        b"\x32\x01\x07"
        + b"\x48\x2a"
        + b"\x2a"
        + bytes([len(tensor)])
        + tensor
        + b"\x1a\x01i"
        + b"\xa2\x06\x01z"
    )
    out = wire.convert(value, ChainType.OUTPUT_INPUT)
    assert out == b"\x1a\x01i" + b"\x2a" + bytes([len(tensor)]) + tensor + b"\x3a\x01\x07"


def test_last_id_wins_and_duplicate_names_are_handled() -> None:
    tensor = b"\x0a\x01a\x12\x04BOOL\x0a\x01b"  # name given twice: "b" wins
    value = b"\x1a\x01x" + b"\x2a" + bytes([len(tensor)]) + tensor + b"\x1a\x01y"
    out = wire.convert(value, ChainType.OUTPUT_OUTPUT, frozenset({"b"}), {"b": "c"})
    msg = response(out)
    assert msg.id == "y"
    assert [t.name for t in msg.outputs] == ["c"]
    assert wire.convert(value, ChainType.OUTPUT_OUTPUT, frozenset({"a"})) is None


def test_unknown_tensor_fields_are_dropped() -> None:
    tensor = b"\x0a\x01a\x12\x04BOOL\x30\x01\x3d\x00\x00\x00\x00"
    value = b"\x2a" + bytes([len(tensor)]) + tensor
    assert wire.convert(value, ChainType.OUTPUT_INPUT) == b"\x2a\x09\x0a\x01a\x12\x04BOOL"


@pytest.mark.parametrize("seed", range(5))
def test_responses_of_many_layouts_convert_to_the_requests_they_decode_to(seed: int) -> None:
    import random

    rng = random.Random(seed)
    for _ in range(200):
        tensors = []
        for t in range(rng.randint(1, 3)):
            n = rng.choice([0, 1, 3, 150])  # 150 INT64s: lengths over one byte
            tensor = Output(name=f"t{t}" * rng.randint(1, 2), datatype="INT64")
            if rng.random() < 0.8:
                tensor.shape = [n] if rng.random() < 0.5 else [1, n]
            if rng.random() < 0.3:
                tensor.parameters = {"k": InferParameter(int64_param=t)}
            if n and rng.random() < 0.9:
                tensor.contents = InferTensorContents(int64_contents=list(range(n)))
            tensors.append(tensor)
        source = ModelInferResponse(model_name="m", id=str(rng.random()), outputs=tensors)
        value = wire.convert(bytes(source), ChainType.OUTPUT_INPUT, None)
        assert request(value) == ModelInferRequest(
            id=source.id,
            inputs=[
                Input(
                    name=t.name,
                    datatype=t.datatype,
                    shape=t.shape,
                    parameters=t.parameters,
                    contents=t.contents,
                )
                for t in tensors
            ],
        )


def test_unpacked_shape_is_accepted() -> None:
    tensor = b"\x0a\x01a\x12\x04BOOL\x18\x02\x18\x03"
    value = b"\x2a" + bytes([len(tensor)]) + tensor
    assert wire.convert(value, ChainType.OUTPUT_INPUT) == value
    assert request(value).inputs[0].shape == [2, 3]


def test_large_messages_convert_without_decoding_contents() -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    src = ModelInferResponse(
        model_name="m",
        id="big",
        outputs=[Output(name="x", datatype="UINT8", shape=[len(blob)])],
        raw_output_contents=[blob],
    )
    value = bytes(src)
    out = wire.convert(value, ChainType.OUTPUT_INPUT)
    assert out is not None
    assert out[-len(blob) :] == blob
    assert request(out).raw_input_contents == [blob]
    assert out[: -len(blob) - 4] == bytes(
        ModelInferRequest(id="big", inputs=[Input(name="x", datatype="UINT8", shape=[len(blob)])])
    )
    floats = [float(i) for i in range(1000)]
    src2 = ModelInferResponse(
        id="f",
        outputs=[
            Output(
                name="x",
                datatype="FP32",
                shape=[1000],
                contents=InferTensorContents(fp32_contents=floats),
            )
        ],
    )
    out = wire.convert(bytes(src2), ChainType.OUTPUT_INPUT, frozenset({"x"}), {"x": "y"})
    assert request(out).inputs[0].contents.fp32_contents == floats


# ---------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x1a\x84", "truncated varint at byte 1"),
        (b"\x1a\x04432", "runs past the end"),
        (DEMO[:-1], "runs past the end"),
        (DEMO[:40], "runs past the end"),
        (b"\xff\xff\xff", "truncated varint at byte 0"),
        (b"\x48" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes at byte 1"),
        (b"\x18\x01", "wrong wire type 0 for top-level field 3 at byte 0"),
        (b"\x2d\x00\x00\x00\x00", "wrong wire type 5 for top-level field 5"),
        (b"\x31" + b"\x00" * 8, "wrong wire type 1 for top-level field 6"),
        (b"\x2a\x03\x10\x01\x00", "wrong wire type 0 for tensor field 2"),
        (b"\x2a\x02\x0a\x05", "runs past the end"),
        (b"\x02\x00", "field number 0"),
        (b"\x4b\x4c", "group wire type is not supported"),
        (b"\x4e", "invalid wire type 6"),
        (b"\x4d\x00\x00", "truncated field"),
        (b"\x1a", "truncated"),
    ],
)
def test_malformed_protobuf_raises_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(WireError, match="malformed protobuf: .*" + reason.replace("(", r"\(")):
        wire.convert(value, ChainType.OUTPUT_INPUT)
    assert wire.request_id(value) in ("", "432")


def test_unknown_fields_with_any_wire_type_are_skipped() -> None:
    value = (
        b"\x48\x96\x01"  # field 9 varint
        + b"\x51"
        + b"\x00" * 8  # field 10 fixed64
        + b"\x5d\x00\x00\x00\x00"  # field 11 fixed32
        + b"\x3a\x01z"  # field 7: unknown in a response
        + DEMO
    )
    assert wire.convert(value, ChainType.OUTPUT_INPUT) == DEMO[15:]
    # field 7 of a request is its raw contents and must be length-delimited
    with pytest.raises(WireError, match="wrong wire type 0 for top-level field 7"):
        wire.convert(b"\x38\x01" + DEMO, ChainType.INPUT_INPUT)


def test_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_unknown_datatype_raises() -> None:
    src = demo_response()
    src.outputs[0].datatype = "FLOAT"
    with pytest.raises(WireError, match="tensor 'tensor0' has unknown datatype 'FLOAT'"):
        wire.convert(bytes(src), ChainType.OUTPUT_INPUT)
    # a tensor that is not kept is not checked
    assert (
        wire.convert(bytes(src), ChainType.OUTPUT_INPUT, frozenset({"tensor1"}))
        == ID_FIELD + TENSOR1
    )
    src.outputs[0].datatype = ""
    with pytest.raises(WireError, match="unknown datatype ''"):
        wire.convert(bytes(src), ChainType.OUTPUT_INPUT)


def test_tensor_name_must_be_utf8_when_selecting() -> None:
    tensor = b"\x0a\x01\xff\x12\x04BOOL"
    value = b"\x2a" + bytes([len(tensor)]) + tensor
    with pytest.raises(WireError, match="not valid UTF-8"):
        wire.convert(value, ChainType.OUTPUT_INPUT, frozenset({"a"}))


# ---------------------------------------------------------------------------------------------
# request_id


def test_request_id() -> None:
    assert wire.request_id(DEMO) == "4312"
    assert wire.request_id(DEMO[15:]) == "4312"
    assert wire.request_id(b"") == ""
    assert wire.request_id(bytes(ModelInferRequest(model_name="m"))) == ""
    assert wire.request_id(b"\x1a\x01a\x1a\x02bc") == "bc"
    assert wire.request_id(b"\x1a\x02\xff\xfe") == ""
    assert wire.request_id(b"\x1a\x05ab") == ""
    assert wire.request_id(b"\x18\x01") == ""
    assert wire.request_id(bytes(ModelInferRequest(id="ü" * 100))) == "ü" * 100


# ---------------------------------------------------------------------------------------------
# to_raw (spec 4.6)


@pytest.mark.parametrize(
    ("datatype", "contents", "raw"),
    [
        ("BOOL", {"bool_contents": [True, False, True]}, "010001"),
        ("UINT8", {"uint_contents": [1, 255, 256]}, "01ff00"),
        ("UINT16", {"uint_contents": [1, 65535, 65536]}, "0100ffff0000"),
        ("UINT32", {"uint_contents": [1, 2**32 - 1]}, "01000000ffffffff"),
        ("UINT64", {"uint64_contents": [1, 2**64 - 1]}, "0100000000000000ffffffffffffffff"),
        ("INT8", {"int_contents": [-1, 127, -128, 300]}, "ff7f802c"),
        ("INT16", {"int_contents": [-2, 300, 70000]}, "feff2c017011"),
        ("INT32", {"int_contents": [-1, 7]}, "ffffffff07000000"),
        ("INT64", {"int64_contents": [-1, 2**40]}, "ffffffffffffffff0000000000010000"),
        ("FP16", {"fp32_contents": [1.5]}, struct.pack("<f", 1.5).hex()),
        ("FP32", {"fp32_contents": [1.5, -2.25]}, struct.pack("<2f", 1.5, -2.25).hex()),
        ("FP64", {"fp64_contents": [0.1]}, struct.pack("<d", 0.1).hex()),
        ("BYTES", {"bytes_contents": [b"ab", b""]}, "020000006162" + "00000000"),
        ("INT32", {}, ""),
        ("FP32", {"int_contents": [1]}, ""),  # only the datatype's field counts
    ],
)
def test_to_raw_every_datatype(datatype: str, contents: dict[str, Any], raw: str) -> None:
    tensor = Input(
        name="x",
        datatype=datatype,
        shape=[1],
        parameters={"p": InferParameter(int64_param=1)},
        contents=InferTensorContents(**contents),
    )
    src = ModelInferRequest(model_name="m", id="i", inputs=[tensor])
    out = wire.to_raw(bytes(src), request=True)
    expected = ModelInferRequest(
        model_name="m",
        id="i",
        inputs=[
            Input(
                name="x",
                datatype=datatype,
                shape=[1],
                parameters={"p": InferParameter(int64_param=1)},
            )
        ],
        raw_input_contents=[bytes.fromhex(raw)],
    )
    assert request(out) == expected
    assert out == bytes(expected)
    # a response puts the blob in field 6
    resp = ModelInferResponse(
        id="i",
        outputs=[Output(name="x", datatype=datatype, contents=InferTensorContents(**contents))],
    )
    assert response(wire.to_raw(bytes(resp), request=False)).raw_output_contents == [
        bytes.fromhex(raw)
    ]


def test_to_raw_of_unpacked_contents() -> None:
    contents = b"\x10\x01\x10\x7f"  # int_contents 1, 127 unpacked
    tensor = b"\x0a\x01x\x12\x05INT16\x2a" + bytes([len(contents)]) + contents
    value = b"\x2a" + bytes([len(tensor)]) + tensor
    out = wire.to_raw(value, request=True)
    assert request(out).raw_input_contents == [b"\x01\x00\x7f\x00"]


def test_to_raw_leaves_raw_messages_and_messages_without_tensors_alone() -> None:
    raw = bytes(raw_response())
    assert wire.to_raw(raw, request=False) is raw
    empty = bytes(ModelInferRequest(id="x"))
    assert wire.to_raw(empty, request=True) is empty


def test_to_raw_rejects_unknown_datatype() -> None:
    src = ModelInferRequest(inputs=[Input(name="x", datatype="STRING")])
    with pytest.raises(WireError, match="tensor 'x' has unknown datatype 'STRING'"):
        wire.to_raw(bytes(src), request=True)


# ---------------------------------------------------------------------------------------------
# merge_join (spec 4.5)


def test_join_takes_id_and_parameters_from_left_and_concatenates_tensors() -> None:
    left = ModelInferRequest(
        model_name="lm",
        id="L",
        parameters={"a": InferParameter(string_param="l")},
        inputs=[
            Input(
                name="l",
                datatype="INT32",
                shape=[1],
                contents=InferTensorContents(int_contents=[1]),
            )
        ],
    )
    right = ModelInferRequest(
        id="R",
        parameters={"b": InferParameter(bool_param=True)},
        inputs=[
            Input(
                name="r",
                datatype="FP64",
                shape=[1],
                contents=InferTensorContents(fp64_contents=[2.0]),
            )
        ],
    )
    out = wire.merge_join(bytes(left), bytes(right), request=True)
    assert out == bytes(
        ModelInferRequest(
            id="L",
            parameters={"a": InferParameter(string_param="l")},
            inputs=[*left.inputs, *right.inputs],
        )
    )


def test_join_of_responses_with_raw_on_both_sides() -> None:
    left = ModelInferResponse(
        id="1", outputs=[Output(name="a", datatype="UINT8")], raw_output_contents=[b"\x01"]
    )
    right = ModelInferResponse(
        id="2", outputs=[Output(name="b", datatype="UINT8")], raw_output_contents=[b"\x02"]
    )
    out = wire.merge_join(bytes(left), bytes(right), request=False)
    assert response(out) == ModelInferResponse(
        id="1",
        outputs=[Output(name="a", datatype="UINT8"), Output(name="b", datatype="UINT8")],
        raw_output_contents=[b"\x01", b"\x02"],
    )


def test_join_converts_the_non_raw_side_to_raw() -> None:
    raw = ModelInferRequest(
        id="raw",
        inputs=[Input(name="a", datatype="INT16", shape=[2])],
        raw_input_contents=[b"\x01\x00\x02\x00"],
    )
    std = ModelInferRequest(
        id="std",
        inputs=[
            Input(
                name="b",
                datatype="INT32",
                shape=[2],
                contents=InferTensorContents(int_contents=[-1, 3]),
            )
        ],
    )
    out = wire.merge_join(bytes(std), bytes(raw), request=True)
    assert request(out) == ModelInferRequest(
        id="std",
        inputs=[
            Input(name="b", datatype="INT32", shape=[2]),
            Input(name="a", datatype="INT16", shape=[2]),
        ],
        raw_input_contents=[b"\xff\xff\xff\xff\x03\x00\x00\x00", b"\x01\x00\x02\x00"],
    )


def test_join_converts_bytes_with_length_prefixes() -> None:
    raw = ModelInferRequest(
        id="raw",
        inputs=[Input(name="a", datatype="BYTES", shape=[1])],
        raw_input_contents=[b"\x02\x00\x00\x00hi"],
    )
    std = ModelInferRequest(
        id="std",
        inputs=[
            Input(
                name="b",
                datatype="BYTES",
                shape=[2],
                contents=InferTensorContents(bytes_contents=[b"abc", b""]),
            )
        ],
    )
    out = wire.merge_join(bytes(raw), bytes(std), request=True)
    msg = request(out)
    assert msg.id == "raw"
    assert [t.name for t in msg.inputs] == ["a", "b"]
    assert msg.raw_input_contents == [b"\x02\x00\x00\x00hi", b"\x03\x00\x00\x00abc\x00\x00\x00\x00"]
    assert msg.inputs[1].contents == InferTensorContents()


def test_join_of_two_converted_demo_records() -> None:
    a = wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"tensor0"}))
    b = wire.convert(DEMO, ChainType.OUTPUT_INPUT, frozenset({"tensor1"}), {"tensor1": "t1"})
    assert a is not None and b is not None
    out = wire.merge_join(a, b, request=True)
    assert [t.name for t in request(out).inputs] == ["tensor0", "t1"]
    assert out[: len(ID_FIELD) + len(TENSOR0)] == ID_FIELD + TENSOR0


def test_join_of_laid_out_sides_matches_the_field_by_field_join() -> None:
    def tensor(name: str, n: int) -> Input:
        contents = InferTensorContents(int_contents=[n])
        return Input(name=name, datatype="INT32", shape=[1], contents=contents)

    params = {"a": InferParameter(string_param="l")}
    laid_out = bytes(ModelInferRequest(id="L", parameters=params, inputs=[tensor("l", 1)]))
    named = bytes(ModelInferRequest(model_name="m", id="L", parameters=params,
                                    inputs=[tensor("l", 1)]))  # fmt: skip
    # Right's tensors with a parameter between them (protobuf concatenation merges).
    scattered = (
        bytes(ModelInferRequest(id="R", inputs=[tensor("r1", 2)]))
        + bytes(ModelInferRequest(parameters={"b": InferParameter(bool_param=True)}))
        + bytes(ModelInferRequest(inputs=[tensor("r2", 3)]))
    )
    together = bytes(ModelInferRequest(id="R", inputs=[tensor("r1", 2), tensor("r2", 3)]))
    expected = bytes(
        ModelInferRequest(
            id="L", parameters=params, inputs=[tensor("l", 1), tensor("r1", 2), tensor("r2", 3)]
        )
    )
    for left in (laid_out, named):
        for right in (scattered, together):
            assert wire.merge_join(left, right, request=True) == expected


def test_join_rejects_malformed_sides() -> None:
    with pytest.raises(WireError):
        wire.merge_join(DEMO[:-3], DEMO, request=False)


# ---------------------------------------------------------------------------------------------
# Batching (spec 4.8, vectors of spec 6.2)


def image_request(id_: str, values: list[float]) -> ModelInferRequest:
    return ModelInferRequest(
        id=id_,
        inputs=[
            Input(
                name="preprocessed_image",
                datatype="FP32",
                shape=[len(values), 1, 1, 1],
                contents=InferTensorContents(fp32_contents=values),
            )
        ],
    )


def raw_image_request(id_: str, values: list[float]) -> bytes:
    return wire.to_raw(bytes(image_request(id_, values)), request=True)


def same(value: bytes, expected: ModelInferRequest | bytes) -> None:
    """Equal messages once both are decoded (floats compare as the float32 on the wire)."""
    assert request(value) == request(bytes(expected))


def test_batch_vector_1_merges_three_requests() -> None:
    out = wire.merge_batch([bytes(image_request(str(i), [12.34])) for i in (1, 2, 3)])
    same(out, image_request("3", [12.34] * 3))
    assert wire.batch_rows(out) == 3


def test_batch_vector_2_merges_three_empty_requests() -> None:
    out = wire.merge_batch([bytes(image_request(str(i), [])) for i in (1, 2, 3)])
    same(out, image_request("3", []))
    assert request(out).inputs[0].shape == [0, 1, 1, 1]
    assert wire.batch_rows(out) == 0


def _plain_batches() -> list[list[bytes]]:
    """Batches the usual-shape path takes, and near misses it leaves to the general path."""

    def tensor(name: str, datatype: str, shape: list[int], **contents: Any) -> Input:
        return Input(name=name, datatype=datatype, shape=shape,
                     contents=InferTensorContents(**contents) if contents else None)  # fmt: skip

    def req(i: int, *tensors: Input, **params: InferParameter) -> bytes:
        return bytes(ModelInferRequest(model_name="m", id=str(i), parameters=params,
                                       inputs=list(tensors)))  # fmt: skip

    a = tensor("a", "INT32", [1, 2], int_contents=[1, 2])
    b = tensor("b", "FP32", [2], fp32_contents=[0.5, 1.5])
    empty = tensor("a", "INT32", [0, 2])
    big = tensor("a", "INT32", [200, 1], int_contents=list(range(200)))
    other_type = tensor("a", "INT64", [1, 2], int64_contents=[3, 4])
    with_param = Input(name="a", datatype="INT32", shape=[1, 2],
                       parameters={"p": InferParameter(bool_param=True)},
                       contents=InferTensorContents(int_contents=[5, 6]))  # fmt: skip
    return [
        [req(1, a, b), req(2, a, b), req(3, b, a)],
        [req(1, a), req(2, empty), req(3, a, p=InferParameter(string_param="x"))],
        [req(1, a), req(2, big)],
        [req(1, a), req(2, other_type)],
        [req(1, a), req(2, with_param)],
        [req(1, tensor("", "BYTES", [2], bytes_contents=[b"x", b"yz"])), req(2, a)],
    ]


def test_the_usual_shape_takes_the_plain_path() -> None:
    usual, with_params, big, *_ = _plain_batches()
    assert wire._plain_groups(usual) is not None
    assert wire._plain_groups(with_params) is not None, "top-level parameters are the last's"
    assert wire._plain_groups(big) is None, "a length over one byte: the general path"


@pytest.mark.parametrize("batch", _plain_batches())
def test_batches_of_the_usual_shape_merge_as_the_general_path_does(
    batch: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = wire.merge_batch(batch)
    rows = [wire.batch_rows(v) for v in batch]
    monkeypatch.setattr(wire, "_plain_groups", lambda values: None)
    monkeypatch.setattr(wire, "_plain_tensor", lambda buf, vs, ve: None)
    assert fast == wire.merge_batch(batch)
    assert rows == [wire.batch_rows(v) for v in batch]


def test_batch_vector_3_merges_three_raw_requests() -> None:
    out = wire.merge_batch([raw_image_request(str(i), [12.34]) for i in (1, 2, 3)])
    expected = raw_image_request("3", [12.34] * 3)
    same(out, expected)
    assert out == expected


@pytest.mark.parametrize(
    ("kinds", "values", "expected_id"),
    [
        (["std", "raw"], [12.34, 23.45], "raw"),
        (["raw", "std"], [23.45, 12.34], "standard"),
        (["std", "raw", "std"], [12.34, 23.45, 34.56], "standard"),
        (["raw", "std", "raw"], [23.45, 34.56, 45.67], "raw"),
    ],
)
def test_batch_vector_5_mixed_raw_and_standard(
    kinds: list[str], values: list[float], expected_id: str
) -> None:
    batch = [
        raw_image_request("raw", [v]) if kind == "raw" else bytes(image_request("standard", [v]))
        for kind, v in zip(kinds, values, strict=True)
    ]
    out = wire.merge_batch(batch)
    same(out, raw_image_request(expected_id, values))
    assert request(out).raw_input_contents == [struct.pack(f"<{len(values)}f", *values)]


def test_batch_takes_model_fields_and_parameters_from_the_last_and_unions_tensor_parameters() -> (
    None
):
    def req(i: int, **params: InferParameter) -> bytes:
        return bytes(
            ModelInferRequest(
                model_name=f"m{i}",
                model_version=str(i),
                id=str(i),
                parameters={f"top{i}": InferParameter(int64_param=i)},
                inputs=[
                    Input(
                        name="b",
                        datatype="INT64",
                        shape=[1, 2],
                        parameters=params,
                        contents=InferTensorContents(int64_contents=[i, -i]),
                    ),
                    Input(
                        name="a",
                        datatype="BYTES",
                        shape=[1],
                        contents=InferTensorContents(bytes_contents=[b"x" * i]),
                    ),
                ],
                outputs=[ModelInferRequestInferRequestedOutputTensor(name="o")],
            )
        )

    out = wire.merge_batch(
        [
            req(1, p=InferParameter(int64_param=1), q=InferParameter(bool_param=False)),
            req(2, p=InferParameter(string_param="two")),
        ]
    )
    assert request(out) == ModelInferRequest(
        model_name="m2",
        model_version="2",
        id="2",
        parameters={"top2": InferParameter(int64_param=2)},
        inputs=[
            Input(
                name="b",
                datatype="INT64",
                shape=[2, 2],
                parameters={
                    "p": InferParameter(string_param="two"),
                    "q": InferParameter(bool_param=False),
                },
                contents=InferTensorContents(int64_contents=[1, -1, 2, -2]),
            ),
            Input(
                name="a",
                datatype="BYTES",
                shape=[2],
                contents=InferTensorContents(bytes_contents=[b"x", b"xx"]),
            ),
        ],
    )


def test_batch_groups_tensors_by_name_in_first_appearance_order() -> None:
    a1 = Input(
        name="a", datatype="UINT8", shape=[1], contents=InferTensorContents(uint_contents=[1])
    )
    b1 = Input(
        name="b", datatype="UINT8", shape=[2], contents=InferTensorContents(uint_contents=[2, 3])
    )
    out = wire.merge_batch(
        [
            bytes(ModelInferRequest(id="1", inputs=[a1, b1])),
            bytes(ModelInferRequest(id="2", inputs=[b1, a1])),
        ]
    )
    msg = request(out)
    assert [(t.name, t.shape, t.contents.uint_contents) for t in msg.inputs] == [
        ("a", [2], [1, 1]),
        ("b", [4], [2, 3, 2, 3]),
    ]


def test_batch_of_one_request_and_errors() -> None:
    one = bytes(image_request("1", [1.0, 2.0]))
    same(wire.merge_batch([one]), image_request("1", [1.0, 2.0]))
    with pytest.raises(ValueError, match="at least one"):
        wire.merge_batch([])
    no_shape = bytes(ModelInferRequest(inputs=[Input(name="x", datatype="FP32")]))
    with pytest.raises(WireError, match="tensor 'x' has no shape"):
        wire.merge_batch([no_shape, no_shape])
    bad = bytes(ModelInferRequest(inputs=[Input(name="x", datatype="float", shape=[1])]))
    with pytest.raises(WireError, match="unknown datatype 'float'"):
        wire.merge_batch([one, bad])
    with pytest.raises(WireError, match="malformed"):
        wire.merge_batch([one, one[:-2]])


def test_batch_rows() -> None:
    assert wire.batch_rows(bytes(image_request("1", [1.0] * 7))) == 7
    assert wire.batch_rows(DEMO[15:]) == 1
    assert wire.batch_rows(b"") == 0
    assert wire.batch_rows(bytes(ModelInferRequest(id="x"))) == 0
    assert wire.batch_rows(bytes(ModelInferRequest(inputs=[Input(name="x", datatype="FP32")]))) == 0
    assert wire.batch_rows(bytes(ModelInferRequest(inputs=[Input(name="x", shape=[-1, 3])]))) == -1
    assert wire.batch_rows(bytes(ModelInferRequest(inputs=[Input(name="x", shape=[300])]))) == 300
    with pytest.raises(WireError):
        wire.batch_rows(b"\x2a\x05\x1a")


def test_wire_imports_no_protobuf_or_io_library() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(wire))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {"__future__", "enum", "struct", "collections"}
