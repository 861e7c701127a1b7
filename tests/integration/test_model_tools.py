"""scripts/model.py (stand-in model) and scripts/infer.py (pipeline request tool).

Pure tests of the model functions, the tensor flag parser, the request builder and the response
rendering; then both tools as child processes against the real broker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from dataflow.cli.base import run
from dataflow.cli.tools import ModelCommand
from dataflow.proto.inference import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.cli import parse
from tests.integration.harness import REPO, consume, create_topics

pytestmark = pytest.mark.kafka


def _load(name: str, path: Path) -> ModuleType:
    """Import a script by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


model = _load("scripts_model_tool", REPO / "scripts" / "model.py")
infer = _load("scripts_infer_tool", REPO / "scripts" / "infer.py")


def _tensor(
    name: str, datatype: str, shape: list[int], **contents: Any
) -> ModelInferRequestInferInputTensor:
    tensor = ModelInferRequestInferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents = InferTensorContents(**contents)
    return tensor


def _respond(request: ModelInferRequest, fn: str, add: float = 1.0, **renames: str) -> Any:
    return ModelInferResponse().parse(model.respond(bytes(request), "m", fn, add, renames))


def _mixed_request() -> ModelInferRequest:
    return ModelInferRequest(
        model_name="m",
        id="req-1",
        parameters={"content_type": InferParameter(string_param="np")},
        inputs=[
            _tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1.0, 2.5, -3.0, 4.0]),
            _tensor("I8", "INT8", [3], int_contents=[-128, 0, 127]),
            _tensor("I64", "INT64", [2], int64_contents=[-(2**62), 2**62]),
            _tensor("U8", "UINT8", [2], uint_contents=[254, 255]),
            _tensor("U64", "UINT64", [1], uint64_contents=[2**64 - 1]),
            _tensor("F64", "FP64", [2], fp64_contents=[0.25, -1e300]),
            _tensor("B", "BOOL", [2], bool_contents=[True, False]),
            _tensor("S", "BYTES", [2], bytes_contents=[b"ab", b""]),
        ],
    )


# -- respond -----------------------------------------------------------------------------------


def test_identity_copies_tensors_id_and_parameters_and_names_the_model() -> None:
    request = _mixed_request()
    request.inputs[0].parameters = {"p": InferParameter(int64_param=7)}
    response = _respond(request, "identity")
    assert response.model_name == "m"
    assert response.id == "req-1"
    assert response.parameters == {"content_type": InferParameter(string_param="np")}
    assert [bytes(o) for o in response.outputs] == [bytes(i) for i in request.inputs]
    assert response.raw_output_contents == []


def test_identity_copies_raw_contents() -> None:
    blobs = [struct.pack("<4f", 1, 2, 3, 4), struct.pack("<I", 2) + b"hi"]
    request = ModelInferRequest(
        id="r",
        inputs=[_tensor("A", "FP32", [1, 4]), _tensor("B", "BYTES", [1])],
        raw_input_contents=blobs,
    )
    response = _respond(request, "identity")
    assert response.raw_output_contents == blobs
    assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
        ("A", "FP32", [1, 4]),
        ("B", "BYTES", [1]),
    ]
    assert not any(o.is_set("contents") for o in response.outputs)


def test_add_on_contents_per_datatype_wraps_integers_and_keeps_bool_and_bytes() -> None:
    response = _respond(_mixed_request(), "add", 1.0)
    c = [o.contents for o in response.outputs]
    assert c[0].fp32_contents == [2.0, 3.5, -2.0, 5.0]
    assert c[1].int_contents == [-127, 1, -128]  # INT8 127 + 1 wraps
    assert c[2].int64_contents == [-(2**62) + 1, 2**62 + 1]  # exact, no float rounding
    assert c[3].uint_contents == [255, 0]  # UINT8 255 + 1 wraps
    assert c[4].uint64_contents == [0]
    assert c[5].fp64_contents == [1.25, -1e300 + 1]
    assert c[6].bool_contents == [True, False]
    assert c[7].bytes_contents == [b"ab", b""]
    assert [o.name for o in response.outputs] == [i.name for i in _mixed_request().inputs]


def test_add_a_fraction_rounds_integers() -> None:
    request = ModelInferRequest(
        inputs=[
            _tensor("I", "INT32", [3], int_contents=[1, 2, -5]),
            _tensor("F", "FP64", [1], fp64_contents=[1.0]),
        ]
    )
    response = _respond(request, "add", 0.75)
    assert response.outputs[0].contents.int_contents == [2, 3, -4]
    assert response.outputs[1].contents.fp64_contents == [1.75]


def test_add_on_raw_contents_decodes_and_reencodes_little_endian() -> None:
    request = ModelInferRequest(
        id="raw",
        inputs=[
            _tensor("I16", "INT16", [3]),
            _tensor("U32", "UINT32", [2]),
            _tensor("F32", "FP32", [1, 2]),
            _tensor("F64", "FP64", [1]),
            _tensor("H", "FP16", [2]),
            _tensor("B", "BOOL", [2]),
            _tensor("S", "BYTES", [1]),
        ],
        raw_input_contents=[
            struct.pack("<3h", -1, 5, 32767),
            struct.pack("<2I", 0, 2**32 - 1),
            struct.pack("<2f", 1.5, -2.0),
            struct.pack("<d", 10.0),
            struct.pack("<2e", 0.5, 2.0),
            b"\x01\x00",
            struct.pack("<I", 3) + b"abc",
        ],
    )
    raws = _respond(request, "add", 1.0).raw_output_contents
    assert struct.unpack("<3h", raws[0]) == (0, 6, -32768)
    assert struct.unpack("<2I", raws[1]) == (1, 0)
    assert struct.unpack("<2f", raws[2]) == (2.5, -1.0)
    assert struct.unpack("<d", raws[3]) == (11.0,)
    assert struct.unpack("<2e", raws[4]) == (1.5, 3.0)
    assert raws[5] == b"\x01\x00"
    assert raws[6] == struct.pack("<I", 3) + b"abc"


def test_add_on_raw_fp16_written_as_four_byte_floats() -> None:
    request = ModelInferRequest(
        inputs=[_tensor("H", "FP16", [2])], raw_input_contents=[struct.pack("<2f", 1.0, 2.0)]
    )
    raw = _respond(request, "add", 1.0).raw_output_contents[0]
    assert struct.unpack("<2f", raw) == (2.0, 3.0)


def test_rename_maps_listed_names_and_keeps_the_others() -> None:
    request = ModelInferRequest(
        id="r",
        inputs=[
            _tensor("INPUT0", "INT32", [1], int_contents=[1]),
            _tensor("INPUT1", "INT32", [1], int_contents=[2]),
        ],
    )
    response = _respond(request, "rename", INPUT0="OUTPUT0", OTHER="X")
    assert [o.name for o in response.outputs] == ["OUTPUT0", "INPUT1"]
    assert [o.contents.int_contents for o in response.outputs] == [[1], [2]]


def test_renames_apply_only_to_rename() -> None:
    request = ModelInferRequest(inputs=[_tensor("A", "INT32", [1], int_contents=[1])])
    assert _respond(request, "identity", A="B").outputs[0].name == "A"
    assert _respond(request, "add", A="B").outputs[0].name == "A"


def test_empty_request_gives_an_empty_response() -> None:
    response = _respond(ModelInferRequest(), "add")
    assert (response.model_name, response.outputs) == ("m", [])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xff\xff", "cannot decode request"),
        (b"not a protobuf at all", "cannot decode request"),
        (
            bytes(ModelInferRequest(inputs=[_tensor("x", "FP99", [1])])),
            "unknown datatype 'FP99'",
        ),
        (
            bytes(
                ModelInferRequest(
                    inputs=[_tensor("x", "FP32", [1]), _tensor("y", "FP32", [1])],
                    raw_input_contents=[b"\0\0\0\0"],
                )
            ),
            "1 raw input contents for 2 inputs",
        ),
    ],
)
def test_bad_requests_raise_request_error(value: bytes, reason: str) -> None:
    with pytest.raises(model.RequestError, match=reason):
        model.respond(value, "m", "identity", 1.0, {})


def test_add_on_raw_contents_of_a_wrong_length_is_an_error() -> None:
    request = ModelInferRequest(inputs=[_tensor("x", "INT32", [1])], raw_input_contents=[b"abc"])
    with pytest.raises(model.RequestError, match="not a multiple of 4"):
        model.respond(bytes(request), "m", "add", 1.0, {})


def test_unknown_function_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown function"):
        model.respond(b"", "m", "square", 1.0, {})


def test_model_cli_parses_renames_and_rejects_bad_ones() -> None:
    args = parse(
        ModelCommand, ["--name", "m", "--fn", "rename", "--rename", "A=B", "--rename", "C=D"]
    )
    assert (args.name, args.namespace, args.prefix, args.fn) == ("m", "default", "seldon", "rename")
    assert args.rename == {"A": "B", "C": "D"}
    assert model.topic_names("seldon", "ns", "m") == (
        "seldon.ns.model.m.inputs",
        "seldon.ns.model.m.outputs",
        "seldon.ns.errors.errors",
    )
    assert run(ModelCommand, ["--name", "m", "--rename", "A"], "model.py") == 2


# -- infer: requests and rendering -------------------------------------------------------------


def test_parse_tensor_default_and_datatypes() -> None:
    t = infer.parse_tensor(infer.DEFAULT_TENSOR)
    assert (t.name, t.datatype, t.shape, t.contents.fp32_contents) == (
        "INPUT0",
        "FP32",
        [1, 4],
        [1.0, 2.0, 3.0, 4.0],
    )
    assert infer.parse_tensor("a:int64:2:-5,7").contents.int64_contents == [-5, 7]
    assert infer.parse_tensor("a:UINT8:2:0,255").contents.uint_contents == [0, 255]
    assert infer.parse_tensor("a:BOOL:3:true,0,False").contents.bool_contents == [
        True,
        False,
        False,
    ]
    s = infer.parse_tensor("s:BYTES:2:a:b,c")
    assert s.contents.bytes_contents == [b"a:b", b"c"]
    assert infer.parse_tensor("x:FP64::2.5").shape == []


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("INPUT0:FP32:1,4", "NAME:DATATYPE:SHAPE:VALUES"),
        (":FP32:1:1", "NAME:DATATYPE:SHAPE:VALUES"),
        ("a:FP99:1:1", "unknown datatype"),
        ("a:FP32:1,x:1", "bad shape"),
        ("a:FP32:1,4:1,2,3", "needs 4 values, got 3"),
        ("a:INT8:1:128", "out of range for INT8"),
        ("a:UINT32:1:-1", "out of range for UINT32"),
        ("a:INT32:1:1.5", "tensor 'a'"),
        ("a:BOOL:1:yes", "not a BOOL value"),
    ],
)
def test_parse_tensor_errors(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        infer.parse_tensor(spec)


def test_build_request_follows_the_gateway_conventions() -> None:
    tensors = [infer.parse_tensor("INPUT0:INT32:1,2:3,4")]
    request = infer.build_request("p1", tensors, "abc", headers=[("X-Trace", "t")])
    assert request.id == "abc"
    assert request.key == b"0.p1.abc"
    assert request.headers == [("x-trace", b"t"), ("pipeline", b"p1"), ("x-request-id", b"abc")]
    decoded = ModelInferRequest().parse(request.value)
    assert decoded.id == "abc"
    assert [(i.name, i.datatype, i.shape) for i in decoded.inputs] == [("INPUT0", "INT32", [1, 2])]
    assert decoded.inputs[0].contents.int_contents == [3, 4]

    generated = infer.build_request("p1", tensors)
    assert uuid.UUID(generated.id)
    assert generated.key == f"0.p1.{generated.id}".encode()


def test_build_request_raw_moves_values_to_raw_input_contents() -> None:
    tensors = [infer.parse_tensor("a:FP32:2:1,2"), infer.parse_tensor("s:BYTES:2:hi,x")]
    decoded = ModelInferRequest().parse(infer.build_request("p", tensors, "r", raw=True).value)
    assert decoded.raw_input_contents == [
        struct.pack("<2f", 1, 2),
        struct.pack("<I", 2) + b"hi" + struct.pack("<I", 1) + b"x",
    ]
    assert not any(i.is_set("contents") for i in decoded.inputs)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("INT8", [-1, 2]),
        ("UINT16", [0, 65535]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP64", [0.1, -2.0]),
        ("BOOL", [True, False]),
        ("BYTES", [b"", b"abc"]),
    ],
)
def test_raw_round_trip(datatype: str, values: list[Any]) -> None:
    assert infer.decode_raw(datatype, infer.encode_raw(datatype, values)) == values


def test_decode_raw_rejects_partial_elements() -> None:
    with pytest.raises(ValueError, match="not whole INT32"):
        infer.decode_raw("INT32", b"abcde")
    with pytest.raises(ValueError, match="runs past the end"):
        infer.decode_raw("BYTES", struct.pack("<I", 9) + b"ab")


def _response() -> ModelInferResponse:
    return ModelInferResponse(
        model_name="m",
        id="r1",
        outputs=[
            ModelInferResponseInferOutputTensor(name="A", datatype="FP32", shape=[1, 2]),
            ModelInferResponseInferOutputTensor(name="S", datatype="BYTES", shape=[1]),
        ],
        raw_output_contents=[struct.pack("<2f", 0.1, 2.0), struct.pack("<I", 2) + b"ok"],
    )


def test_render_json_decodes_raw_outputs() -> None:
    assert json.loads(infer.render_json(_response())) == {
        "model_name": "m",
        "id": "r1",
        "outputs": [
            {"name": "A", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 2.0]},
            {"name": "S", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        ],
    }


def test_render_text_is_one_line_with_contents_values() -> None:
    response = ModelInferResponse(
        model_name="m",
        id="r1",
        outputs=[
            ModelInferResponseInferOutputTensor(
                name="OUT",
                datatype="INT32",
                shape=[1, 3],
                contents=InferTensorContents(int_contents=[1, 2, 3]),
            )
        ],
    )
    assert infer.render_text(response) == "id=r1 model=m OUT INT32[1,3]=[1, 2, 3]"
    assert "\n" not in infer.render_text(_response())


def _record(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=tuple(headers),
    )


def test_answers_match_by_key_or_request_id_and_errors_by_header() -> None:
    request = infer.build_request("p", [infer.parse_tensor(infer.DEFAULT_TENSOR)], "r1")
    assert infer.is_answer(_record(b"0.p.r1", b"", []), request)
    assert infer.is_answer(_record(b"other", b"", [("x-request-id", b"r1")]), request)
    assert not infer.is_answer(_record(b"0.p.r2", b"", [("x-request-id", b"r2")]), request)
    assert infer.error_of(_record(b"k", b"ok", [])) is None
    failed = _record(b"k", b"boom", [("seldon-pipeline-errors", b"m1")])
    assert infer.error_of(failed) == "m1: boom"


# -- the tools against the broker --------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Child:
    """A tool as a child process, its merged output collected line by line."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def output(self) -> str:
        return "".join(self.lines)

    async def drain(self, marker: str) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))
            if marker in self.lines[-1]:
                self.ready.set()

    async def stop(self) -> float:
        """SIGTERM; returns the seconds until the process exited 0."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        assert code == 0, self.output()
        return time.monotonic() - start


@asynccontextmanager
async def running_model(
    bootstrap: str, name: str, namespace: str, *extra: str
) -> AsyncIterator[Child]:
    """scripts/model.py as a child process, ready; killed at the end if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "model.py"), "--name", name,
        "--namespace", namespace, "--bootstrap-servers", bootstrap, "--verbose", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(), cwd=REPO,
    )  # fmt: skip
    child = Child(proc)
    drain = asyncio.create_task(child.drain(f"model {name} ready"))
    try:
        ready = asyncio.create_task(child.ready.wait())
        await asyncio.wait([ready, drain], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        assert child.ready.is_set(), f"model not ready (exit {proc.returncode}):\n{child.output()}"
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drain


async def _send(
    bootstrap: str, topic: str, partition: int, records: list[tuple[bytes, bytes, list[Any]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                topic, value, key=key, partition=partition, headers=headers
            )
    finally:
        await producer.stop()


async def test_model_adds_one_keeps_key_partition_and_headers_then_stops_on_sigterm(
    bootstrap: str, unique: str
) -> None:
    ns, name, group = f"test-{unique}", f"m-{unique}", f"g-{unique}"
    inputs, outputs, _ = model.topic_names("seldon", ns, name)
    await create_topics(bootstrap, inputs, outputs, partitions=2)
    async with running_model(
        bootstrap, name, ns, "--fn", "add", "--add", "1", "--group", group
    ) as child:
        request = ModelInferRequest(
            id="r1",
            parameters={"k": InferParameter(bool_param=True)},
            inputs=[
                _tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4]),
                _tensor("INPUT1", "INT64", [2], int64_contents=[10, -10]),
            ],
        )
        headers = [("pipeline", b"p1"), ("x-request-id", b"r1"), ("traceparent", b"00-ab")]
        await _send(bootstrap, inputs, 1, [(b"1.p1.r1", bytes(request), headers)])

        (record,) = await consume(bootstrap, outputs, 1, timeout=30)
        assert record.key == b"1.p1.r1"
        assert record.partition == 1
        assert list(record.headers) == headers
        response = ModelInferResponse().parse(record.value)
        assert (response.model_name, response.id) == (name, "r1")
        assert response.parameters == {"k": InferParameter(bool_param=True)}
        assert response.outputs[0].contents.fp32_contents == [2.0, 3.0, 4.0, 5.0]
        assert response.outputs[1].contents.int64_contents == [11, -9]

        checker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        await checker.start()
        try:
            deadline = time.monotonic() + 10
            while await checker.committed(TopicPartition(inputs, 1)) != 1:
                assert time.monotonic() < deadline, "input offset not committed"
                await asyncio.sleep(0.1)
        finally:
            await checker.stop()

        assert await child.stop() < 10
    assert f"model {name} ready: {inputs} -> {outputs}" in child.output()
    assert "1.p1.r1 p1 @0 id='r1': ok" in child.output()


async def test_garbage_request_goes_to_errors_topic_and_the_model_keeps_serving(
    bootstrap: str, unique: str
) -> None:
    ns, name = f"test-{unique}", f"m-{unique}"
    inputs, outputs, errors = model.topic_names("seldon", ns, name)
    async with running_model(bootstrap, name, ns, "--fn", "identity") as child:
        good = ModelInferRequest(
            id="good", inputs=[_tensor("x", "BYTES", [1], bytes_contents=[b"v"])]
        )
        headers = [("pipeline", b"p1"), ("x-request-id", b"bad")]
        await _send(
            bootstrap,
            inputs,
            0,
            [
                (b"0.p1.bad", b"\xff\xff\xff garbage", headers),
                (b"0.p1.good", bytes(good), [("pipeline", b"p1")]),
            ],
        )
        (error,) = await consume(bootstrap, errors, 1, timeout=30)
        assert error.key == b"0.p1.bad"
        assert list(error.headers) == [*headers, ("seldon-pipeline-errors", name.encode())]
        assert b"cannot decode request" in error.value
        assert name.encode() in error.value

        (answer,) = await consume(bootstrap, outputs, 1, timeout=30)
        assert answer.key == b"0.p1.good"
        response = ModelInferResponse().parse(answer.value)
        assert (response.id, response.outputs[0].contents.bytes_contents) == ("good", [b"v"])
        assert await child.stop() < 10


async def _infer(bootstrap: str, ns: str, pipeline: str, *extra: str) -> asyncio.Task[Any]:
    """scripts/infer.py running as a task that returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "infer.py"), pipeline, "--namespace", ns,
        "--bootstrap-servers", bootstrap, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), cwd=REPO,
    )  # fmt: skip

    async def finish() -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return asyncio.create_task(finish())


async def _answer_one(
    bootstrap: str, inputs: str, outputs: str, answer: Any
) -> ConsumerRecord[bytes, bytes]:
    """Wait for the request on `inputs`, then write a stale record and `answer(request)`."""
    (request,) = await consume(bootstrap, inputs, 1, timeout=30)
    key, value, headers = answer(request)
    await _send(
        bootstrap,
        outputs,
        0,
        [(b"0.p.other", b"\x00junk", [("pipeline", b"p")]), (key, value, headers)],
    )
    return request


@pytest.fixture
def pipeline_topics(unique: str) -> tuple[str, str, str]:
    """(namespace, inputs topic, outputs topic) of pipeline `p` in a namespace of its own."""
    ns = f"test-{unique}"
    inputs, outputs = infer.topic_names("seldon", ns, "p")
    return ns, inputs, outputs


async def test_infer_sends_a_gateway_request_and_prints_the_answer(
    bootstrap: str, pipeline_topics: tuple[str, str, str]
) -> None:
    ns, inputs, outputs = pipeline_topics
    await create_topics(bootstrap, inputs, outputs)
    # an earlier answer with the same key: infer must read only what comes after its start
    stale = ModelInferResponse(id="old")
    await _send(bootstrap, outputs, 0, [(b"0.p.r1", bytes(stale), [])])
    task = await _infer(bootstrap, ns, "p", "--id", "r1", "--tensor", "A:INT32:1,2:1,2", "--json")

    def respond(request: ConsumerRecord[bytes, bytes]) -> tuple[bytes, bytes, list[Any]]:
        value = model.respond(request.value, "m", "add", 1.0, {})
        return request.key, value, list(request.headers)

    request = await _answer_one(bootstrap, inputs, outputs, respond)
    code, out, err = await task
    assert code == 0, err
    assert request.key == b"0.p.r1"
    assert list(request.headers) == [("pipeline", b"p"), ("x-request-id", b"r1")]
    assert json.loads(out) == {
        "model_name": "m",
        "id": "r1",
        "outputs": [{"name": "A", "datatype": "INT32", "shape": [1, 2], "data": [2, 3]}],
    }


async def test_infer_exits_1_on_a_pipeline_error(
    bootstrap: str, pipeline_topics: tuple[str, str, str]
) -> None:
    ns, inputs, outputs = pipeline_topics
    task = await _infer(bootstrap, ns, "p")  # creates the topics itself

    def fail(request: ConsumerRecord[bytes, bytes]) -> tuple[bytes, bytes, list[Any]]:
        headers = [*request.headers, ("seldon-pipeline-errors", b"m1")]
        return request.key, b"model m1: it broke", headers

    await _answer_one(bootstrap, inputs, outputs, fail)
    code, out, err = await task
    assert (code, out) == (1, "")
    assert "m1: model m1: it broke" in err


async def test_infer_exits_2_on_timeout(
    bootstrap: str, pipeline_topics: tuple[str, str, str]
) -> None:
    ns, _, _ = pipeline_topics
    start = time.monotonic()
    code, out, err = await (await _infer(bootstrap, ns, "p", "--timeout", "1"))
    assert (code, out) == (2, "")
    assert "timed out after 1.0s" in err
    assert time.monotonic() - start < 20
