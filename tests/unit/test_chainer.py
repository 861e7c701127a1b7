"""Strict decoding of Chainer messages: wrong wire types, the 2022 layout, truncation, identity."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from dataflow.chainer import MalformedMessage, StrictCodec, check_wire, decode, header
from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)

Op = PipelineUpdateMessagePipelineOperation
F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "seldon.mlops.chainer"


def chainer_2022() -> type:
    """`PipelineUpdateMessage` of the 2022 chainer.proto (commit 34a30d1c7, spec 1.2)."""
    fd = descriptor_pb2.FileDescriptorProto(name="chainer-2022.proto", package=PACKAGE)
    fd.syntax = "proto3"
    step = fd.message_type.add(name="PipelineStepUpdate")
    join = step.enum_type.add(name="PipelineJoinType")
    for number, name in enumerate(("Unknown", "Inner")):
        join.value.add(name=name, number=number)
    step.field.add(name="sources", number=1, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    step.field.add(name="sink", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    step.field.add(
        name="ty",
        number=3,
        type=F.TYPE_ENUM,
        type_name=f".{PACKAGE}.PipelineStepUpdate.PipelineJoinType",
        label=F.LABEL_OPTIONAL,
    )
    step.field.add(name="passEmptyResponses", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    update = fd.message_type.add(name="PipelineUpdateMessage")
    ops = update.enum_type.add(name="PipelineOperation")
    for number, name in enumerate(("Unknown", "Create", "Delete")):
        ops.value.add(name=name, number=number)
    update.field.add(
        name="op",
        number=1,
        type=F.TYPE_ENUM,
        type_name=f".{PACKAGE}.PipelineUpdateMessage.PipelineOperation",
        label=F.LABEL_OPTIONAL,
    )
    update.field.add(name="pipeline", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    update.field.add(name="version", number=3, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    update.field.add(name="uid", number=4, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    update.field.add(
        name="updates",
        number=5,
        type=F.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.PipelineStepUpdate",
        label=F.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    cls: type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{PACKAGE}.PipelineUpdateMessage")
    )
    return cls


def demo_2022() -> bytes:
    """The 2022 proxy's canned message (spec 5), in the 2022 wire layout."""
    message = chainer_2022()(op=1, pipeline="some-pipeline", version=1, uid="1234")
    for source, sink in (
        ("some-model-1.outputs", "some-model-2.inputs"),
        ("some-model-3.outputs.tensor1", "some-model-4.inputs"),
    ):
        step = message.updates.add()
        step.sources.append(f"seldon.some-namespace.{source}")
        step.sink = f"seldon.some-namespace.{sink}"
        step.ty = 1
    data: bytes = message.SerializeToString()
    return data


def current() -> PipelineUpdateMessage:
    return PipelineUpdateMessage(
        op=Op.Create,
        pipeline="p",
        version=2,
        uid="u",
        updates=[
            PipelineStepUpdate(
                sources=[PipelineTopic(pipeline_name="p", topic_name="a.outputs", tensor="t")],
                sink=PipelineTopic(pipeline_name="p", topic_name="b.inputs"),
                join_window_ms=0,
                batch=Batch(size=3),
            )
        ],
        timestamp=7,
    )


def test_2022_bytes_decode_to_nonsense_in_betterproto_but_are_refused_here() -> None:
    data = demo_2022()
    loose = PipelineUpdateMessage().parse(data)
    assert loose.updates[0].sink == 1  # an int in a message field: what the issue saw
    with pytest.raises(MalformedMessage) as info:
        decode(PipelineUpdateMessage, data)
    assert str(info.value) == (
        "updates[0].sink (field 3): wire type varint, expected length-delimited (message)"
    )


def test_identity_of_a_2022_message_is_read_for_the_ack() -> None:
    identity = header(demo_2022())
    assert (identity.op, identity.pipeline, identity.version, identity.uid) == (
        Op.Create,
        "some-pipeline",
        1,
        "1234",
    )
    assert identity.updates == [] and identity.timestamp == 0


def test_current_messages_round_trip() -> None:
    message = current()
    assert decode(PipelineUpdateMessage, bytes(message)) == message
    status = PipelineUpdateStatusMessage(update=message, success=True, reason="ok")
    assert decode(PipelineUpdateStatusMessage, bytes(status)) == status
    assert decode(PipelineUpdateMessage, b"") == PipelineUpdateMessage()


def test_unknown_fields_are_skipped() -> None:
    extra = bytes([0xF8, 0x01, 0x05])  # field 31, varint 5
    extra += bytes([0xFA, 0x01, 0x02, 0x68, 0x69])  # field 31, length-delimited "hi"
    extra += bytes([0xFB, 0x01, 0x08, 0x01, 0xFC, 0x01])  # field 31 as a group holding a varint
    data = bytes(current()) + extra
    assert decode(PipelineUpdateMessage, data).uid == "u"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([0x08, 0x80]), "truncated varint at byte 1"),
        (bytes([0x12, 0x05, 0x61]), "field 2 of length 5 runs past the end of its message"),
        (bytes([0x12, 0x02, 0xFF, 0xFE]), "pipeline (field 2): not UTF-8 text"),
        (bytes([0x2A, 0x02, 0x18, 0x01]), "updates[0].sink (field 3): wire type varint"),
        (bytes([0x0A, 0x00]), "op (field 1): wire type length-delimited, expected varint (enum)"),
        (bytes([0x50, 0x01, 0x2D, 0, 0, 0, 0]), "updates[0] (field 5): wire type 32-bit"),
        (bytes([0x00, 0x01]), "field number 0"),
        (bytes([0x0C]), "unexpected end-group"),
        (bytes([0x0E]), "invalid wire type 6 at byte 0"),
        (bytes([0xFB, 0x01, 0x08, 0x01]), "group 31 has no end"),
        (bytes([0xFB, 0x01, 0xF4, 0x01]), "group 31 ended as 30"),
        (bytes([0xFB, 0x01, 0x08]), "truncated varint"),
        (bytes([0x08]) + b"\xff" * 10, "varint longer than 10 bytes"),
    ],
)
def test_malformed_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        check_wire(PipelineUpdateMessage, data)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_codec_refuses_with_invalid_argument_and_passes_bytes() -> None:
    codec = StrictCodec()
    with pytest.raises(GRPCError) as info:
        codec.decode(demo_2022(), PipelineUpdateMessage)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert info.value.message == (
        "malformed PipelineUpdateMessage: updates[0].sink (field 3): wire type varint, "
        "expected length-delimited (message)"
    )
    assert codec.decode(b"\x01\x02", bytes) == b"\x01\x02"
    assert codec.encode(b"\x01\x02", bytes) == b"\x01\x02"
    assert codec.decode(bytes(current()), PipelineUpdateMessage) == current()
