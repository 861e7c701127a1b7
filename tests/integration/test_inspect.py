"""`python -m dataflow.inspect`: name resolution and formatting (pure), and reading a real topic."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from dataflow.cli.tools import inspect_main as main
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.records import (
    DecodeError,
    Target,
    decode,
    format_record,
    kind_of,
    resolve,
    start_offset,
    target_for_topic,
)
from dataflow.topics import TopicError
from tests.conftest import REPO

pytestmark = pytest.mark.kafka


def _request(request_id: str, *tensors: tuple[str, list[int]]) -> bytes:
    return bytes(
        ModelInferRequest(
            id=request_id,
            inputs=[
                ModelInferRequestInferInputTensor(
                    name=name,
                    datatype="INT32",
                    shape=[1, len(values)],
                    contents=InferTensorContents(int_contents=values),
                )
                for name, values in tensors
            ],
        )
    )


@dataclass
class _Record:
    value: bytes | None
    topic: str = "seldon.default.model.m.inputs"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1_700_000_000_000
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


# --------------------------------------------------------------------------- name resolution


def test_bare_pipeline_names_its_inputs_and_outputs() -> None:
    assert resolve("p") == [
        Target("seldon.default.pipeline.p.inputs", "request"),
        Target("seldon.default.pipeline.p.outputs", "response"),
    ]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("p.inputs", [Target("seldon.ns.pipeline.p.inputs", "request")]),
        ("p.outputs", [Target("seldon.ns.pipeline.p.outputs", "response")]),
        ("p.outputs.t", [Target("seldon.ns.pipeline.p.outputs", "response", "t")]),
        (
            "p.m",
            [
                Target("seldon.ns.model.m.inputs", "request"),
                Target("seldon.ns.model.m.outputs", "response"),
            ],
        ),
        ("p.m.inputs", [Target("seldon.ns.model.m.inputs", "request")]),
        ("p.m.outputs", [Target("seldon.ns.model.m.outputs", "response")]),
        ("p.m.outputs.OUTPUT0", [Target("seldon.ns.model.m.outputs", "response", "OUTPUT0")]),
        ("p.m.inputs.INPUT0", [Target("seldon.ns.model.m.inputs", "request", "INPUT0")]),
        # A step named like its pipeline is the pipeline itself (spec 3.1).
        ("p.p.outputs", [Target("seldon.ns.pipeline.p.outputs", "response")]),
        # A step may be called "inputs": then a direction follows it.
        ("p.inputs.outputs", [Target("seldon.ns.model.inputs.outputs", "response")]),
    ],
)
def test_references_resolve_like_seldon_pipeline_inspect(
    reference: str, expected: list[Target]
) -> None:
    assert resolve(reference, namespace="ns") == expected


def test_namespace_and_prefix_are_the_first_parts() -> None:
    assert resolve("p.m.inputs", namespace="seldon-mesh", prefix="acme") == [
        Target("acme.seldon-mesh.model.m.inputs", "request")
    ]


@pytest.mark.parametrize(
    "reference",
    ["", "p.", ".m", "p..inputs", "p.m.sideways", "p.m.inputs.", "p.m.inputs.t.u", "p/q", "p.m$"],
)
def test_malformed_references_are_refused(reference: str) -> None:
    with pytest.raises(TopicError):
        resolve(reference)


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(TopicError):
        resolve("p", prefix="a b")


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("seldon.default.model.m.inputs", "request"),
        ("seldon.default.pipeline.p.outputs", "response"),
        ("seldon.some-namespace.some-model-3.outputs.tensor1", "response"),
        ("seldon.default.errors.errors", "text"),
        ("anything-else", "request"),
    ],
)
def test_kind_follows_the_topic_name(topic: str, kind: str) -> None:
    assert kind_of(topic) == kind
    assert target_for_topic(topic) == Target(topic, kind)  # type: ignore[arg-type]


def test_topic_kind_can_be_forced_and_bad_topics_are_refused() -> None:
    assert target_for_topic("t", "response") == Target("t", "response")
    with pytest.raises(TopicError):
        target_for_topic("bad topic")


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, 3), (0, 3), (5, 5), (99, 10), (-2, 8), (-99, 3)],
)
def test_start_offset_is_clamped_to_the_partition(requested: int | None, expected: int) -> None:
    assert start_offset(requested, beginning=3, end=10) == expected


# --------------------------------------------------------------------------- decoding, formatting


def test_request_record_formats_with_headers_and_message() -> None:
    record = _Record(
        _request("r1", ("a", [1, 2])),
        key=b"r1",
        headers=[("pipeline", b"p"), ("x-request-id", b"r1")],
    )
    line = format_record(record, Target(record.topic, "request"))
    assert line == {
        "topic": "seldon.default.model.m.inputs",
        "partition": 0,
        "offset": 7,
        "timestamp": 1_700_000_000_000,
        "key": "r1",
        "headers": {"pipeline": "p", "x-request-id": "r1"},
        "message": {
            "id": "r1",
            "inputs": [
                {
                    "name": "a",
                    "datatype": "INT32",
                    "shape": ["1", "2"],
                    "contents": {"intContents": [1, 2]},
                }
            ],
        },
    }
    json.dumps(line)


def test_a_named_tensor_is_selected() -> None:
    record = _Record(_request("r1", ("a", [1]), ("b", [2])))
    line = format_record(record, Target(record.topic, "request", "b"))
    assert line is not None
    assert line["tensor"] == "b"
    assert line["message"]["name"] == "b"
    assert line["message"]["contents"] == {"intContents": [2]}
    missing = format_record(record, Target(record.topic, "request", "zzz"))
    assert missing is not None
    assert missing["message"] is None
    assert "zzz" in missing["error"]


def test_request_id_matches_the_message_id_the_header_or_the_key() -> None:
    target = Target("t", "request")
    by_id = _Record(_request("abc"))
    by_header = _Record(_request("other"), headers=[("x-request-id", b"abc")])
    by_key = _Record(_request("other"), key=b"abc")
    neither = _Record(_request("other"), key=b"k", headers=[("x-request-id", b"zz")])
    assert format_record(by_id, target, request_id="abc") is not None
    assert format_record(by_header, target, request_id="abc") is not None
    assert format_record(by_key, target, request_id="abc") is not None
    assert format_record(neither, target, request_id="abc") is None


def test_a_value_that_is_not_v2_is_shown_as_text_or_base64() -> None:
    target = Target("t", "request")
    text = format_record(_Record(b"model m failed: out of memory"), target)
    assert text is not None
    assert text["message"] is None
    assert text["value"] == "model m failed: out of memory"
    assert text["error"].startswith("not a V2 request")
    binary = format_record(_Record(b"\xff\xfe"), target)
    assert binary is not None
    assert binary["message"] is None
    assert binary["value_base64"] == "//4="
    tombstone = format_record(_Record(None), target)
    assert tombstone is not None
    assert tombstone["message"] is None
    assert "tombstone" in tombstone["error"]


def test_a_binary_key_is_shown_as_base64() -> None:
    line = format_record(_Record(_request("r"), key=b"\x00\x01"), Target("t", "request"))
    assert line is not None
    assert "key" not in line
    assert line["key_base64"] == "AAE="


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", b"\x0a\x05ab", b"\x08", b"\x0b\x0c", b"\x00\x00"],
    ids=["truncated-varint", "short-string", "no-value", "group", "field-zero"],
)
def test_strict_decoding_refuses_what_betterproto_would_accept(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(value, "request")


def test_empty_value_is_an_empty_message() -> None:
    message, warning = decode(b"", "response")
    assert isinstance(message, ModelInferResponse)
    assert warning is None


def test_raw_contents_are_expanded_into_typed_contents() -> None:
    response = ModelInferResponse(
        id="r",
        outputs=[
            ModelInferResponseInferOutputTensor(name="f", datatype="FP32", shape=[2]),
            ModelInferResponseInferOutputTensor(name="i", datatype="INT64", shape=[2]),
            ModelInferResponseInferOutputTensor(name="s", datatype="BYTES", shape=[2]),
            ModelInferResponseInferOutputTensor(name="b", datatype="BOOL", shape=[2]),
        ],
        raw_output_contents=[
            struct.pack("<2f", 1.5, -2.0),
            struct.pack("<2q", -1, 2**40),
            struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0),
            b"\x01\x00",
        ],
    )
    message, warning = decode(bytes(response), "response")
    assert warning is None
    assert isinstance(message, ModelInferResponse)
    assert message.raw_output_contents == []
    assert message.outputs[0].contents.fp32_contents == [1.5, -2.0]
    assert message.outputs[1].contents.int64_contents == [-1, 2**40]
    assert message.outputs[2].contents.bytes_contents == [b"hi", b""]
    assert message.outputs[3].contents.bool_contents == [True, False]
    raw, _ = decode(bytes(response), "response", expand_raw=False)
    assert len(raw.raw_output_contents) == 4


def test_raw_contents_that_do_not_fit_are_kept_with_a_warning() -> None:
    request = ModelInferRequest(
        inputs=[ModelInferRequestInferInputTensor(name="x", datatype="FP32", shape=[1])],
        raw_input_contents=[b"\x00\x00\x00"],
    )
    line = format_record(_Record(bytes(request)), Target("t", "request"))
    assert line is not None
    assert line["message"]["rawInputContents"] == ["AAAA"]
    assert "whole number" in line["warning"]


@pytest.mark.parametrize(
    "argv",
    [[], ["p..x"], ["p", "--kind", "text"], ["--topic", "a b"], ["p", "--offset", "x"]],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dataflow.inspect: ") and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------- against the broker


async def _inspect(bootstrap: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataflow.inspect",
        "--bootstrap-servers",
        bootstrap,
        "--timeout",
        "20",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    return process.returncode or 0, lines, stderr.decode()


async def test_inspect_reads_decodes_and_filters_a_topic(bootstrap: str, unique: str) -> None:
    namespace = f"inspect-{unique}"
    topic = f"seldon.{namespace}.model.m.inputs"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(topic, 1, 1)])
        assert all(code == 0 for _, code, *_ in response.topic_errors), response.topic_errors
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for request_id, headers, tensors in [
            ("req-1", [("pipeline", b"p"), ("x-request-id", b"hdr-1")], [("a", [1, 2])]),
            ("req-2", [("pipeline", b"p"), ("x-request-id", b"hdr-2")], [("a", [3]), ("b", [4])]),
        ]:
            await producer.send_and_wait(
                topic, _request(request_id, *tensors), key=request_id.encode(), headers=headers
            )
        await producer.send_and_wait(topic, b"not a request", headers=[("pipeline", b"p")])
    finally:
        await producer.stop()

    code, lines, err = await _inspect(bootstrap, "--topic", topic, "--num", "2")
    assert code == 0, err
    assert [line["message"]["id"] for line in lines] == ["req-1", "req-2"]
    assert [line["offset"] for line in lines] == [0, 1]
    assert {line["topic"] for line in lines} == {topic}
    assert [line["key"] for line in lines] == ["req-1", "req-2"]
    assert lines[0]["headers"] == {"pipeline": "p", "x-request-id": "hdr-1"}
    assert lines[1]["headers"] == {"pipeline": "p", "x-request-id": "hdr-2"}
    assert lines[0]["message"]["inputs"] == [
        {"name": "a", "datatype": "INT32", "shape": ["1", "2"], "contents": {"intContents": [1, 2]}}
    ]
    assert [t["name"] for t in lines[1]["message"]["inputs"]] == ["a", "b"]
    assert all(isinstance(line["timestamp"], int) and line["partition"] == 0 for line in lines)

    # Without a limit it stops at the end of the topic, showing the record that is no request.
    code, lines, err = await _inspect(bootstrap, "--topic", topic, "--num", "0")
    assert code == 0, err
    assert len(lines) == 3
    assert lines[2]["message"] is None
    assert lines[2]["value"] == "not a request"
    assert "error" in lines[2]

    # --request-id by message id, then by the x-request-id header.
    code, lines, err = await _inspect(bootstrap, "--topic", topic, "--request-id", "req-2")
    assert code == 0, err
    assert [(line["offset"], line["message"]["id"]) for line in lines] == [(1, "req-2")]
    code, lines, err = await _inspect(bootstrap, "--topic", topic, "--request-id", "hdr-1")
    assert code == 0, err
    assert [line["message"]["id"] for line in lines] == ["req-1"]

    # The same topic through a pipeline reference, one tensor, from offset 1.
    code, lines, err = await _inspect(
        bootstrap, "p.m.inputs.b", "--namespace", namespace, "--offset", "1", "--num", "1"
    )
    assert code == 0, err
    assert len(lines) == 1
    assert lines[0]["tensor"] == "b"
    assert lines[0]["message"]["contents"] == {"intContents": [4]}


async def test_inspect_of_a_missing_topic_exits_1(bootstrap: str, unique: str) -> None:
    code, lines, err = await _inspect(bootstrap, "--topic", f"inspect-missing-{unique}")
    assert code == 1
    assert lines == []
    assert "no such topic" in err
