"""Send one request to a pipeline over Kafka and print its answer, like `seldon pipeline infer`.

Writes a ModelInferRequest to `<prefix>.<ns>.pipeline.<pipeline>.inputs` with key
`0.<pipeline>.<id>` and headers `pipeline: <pipeline>`, `x-request-id: <id>` (the gateway's
conventions), then reads `<prefix>.<ns>.pipeline.<pipeline>.outputs` from its end offsets
taken before sending (no consumer group) until the record with that key (or `x-request-id`)
arrives. Exit 0 with the response printed (one line, or JSON with --json), 1 when the answer is
an error (header `seldon-pipeline-errors`) or undecodable, 2 on timeout.

    dataflow infer tfsimples --tensor INPUT0:INT32:1,4:1,2,3,4 --json

The command line is `dataflow.cli.tools.InferCommand` (`dataflow infer`, `scripts/infer.py`).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from dataflow import headers as hdr
from dataflow.kafka import ensure_topics, tool_admin
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.tensors import (
    CONTENTS_FIELDS,
    RAW_CODES,
    Value,
    decode_raw,
    encode_raw,
    raw_datatype,
)
from dataflow.topics import INPUTS, OUTPUTS, pipeline_topic

DEFAULT_TENSOR = "INPUT0:FP32:1,4:1,2,3,4"


class Options(Protocol):
    """What `infer` needs of the command line (`dataflow infer`)."""

    @property
    def pipeline(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    @property
    def timeout(self) -> float: ...

    @property
    def json_(self) -> bool: ...


# -- requests ----------------------------------------------------------------------------------


def _value(text: str, datatype: str) -> Value:
    """One element of a --tensor flag, checked against the datatype's range."""
    if datatype == "BYTES":
        return text.encode()
    if datatype == "BOOL":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"not a BOOL value: {text!r}")
    code = RAW_CODES[datatype]
    if code in "efd":
        return float(text)
    number = int(text)
    bits = 8 * struct.calcsize(code)
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
    )
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range for {datatype}")
    return number


def parse_tensor(spec: str) -> ModelInferRequestInferInputTensor:
    """A request tensor from `NAME:DATATYPE:SHAPE:VALUES`, e.g. `INPUT0:FP32:1,4:1,2,3,4`.

    SHAPE and VALUES are comma-separated (an empty SHAPE is a scalar); the number of values must
    be the shape's element count. BOOL values are true/false/1/0; BYTES values are UTF-8 text
    (everything after the third `:`, split on commas).

    Raises:
        ValueError: A malformed flag, unknown datatype, bad value or wrong value count.
    """
    parts = spec.split(":", 3)
    if len(parts) != 4 or not parts[0]:
        raise ValueError(f"expected NAME:DATATYPE:SHAPE:VALUES, got {spec!r}")
    name, datatype, shape_text, values_text = parts
    datatype = datatype.upper()
    if datatype not in CONTENTS_FIELDS:
        raise ValueError(f"unknown datatype {datatype!r} in {spec!r}")
    try:
        shape = [int(d) for d in shape_text.split(",")] if shape_text else []
    except ValueError:
        raise ValueError(f"bad shape {shape_text!r} in {spec!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape_text!r} of {spec!r}")
    texts = values_text.split(",") if values_text else []
    if len(texts) != math.prod(shape):
        raise ValueError(
            f"tensor {name!r} of shape {shape} needs {math.prod(shape)} values, got {len(texts)}"
        )
    try:
        values = [_value(t, datatype) for t in texts]
    except ValueError as e:
        raise ValueError(f"tensor {name!r}: {e}") from None
    contents = InferTensorContents()
    setattr(contents, CONTENTS_FIELDS[datatype], values)
    return ModelInferRequestInferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=contents
    )


@dataclass(frozen=True)
class Request:
    """One pipeline request as the gateway writes it."""

    id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def build_request(
    pipeline: str,
    tensors: Sequence[ModelInferRequestInferInputTensor],
    request_id: str | None = None,
    raw: bool = False,
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    """The record for a request to `pipeline` (gateway conventions).

    Args:
        pipeline: Pipeline name.
        tensors: Input tensors with their values in `contents`.
        request_id: Request id; a random UUID when None or empty.
        raw: Send the values as raw input contents instead of `contents`.
        headers: Extra headers, names lower-cased, before `pipeline` and `x-request-id`.

    Returns:
        Key `0.<pipeline>.<id>`, the encoded ModelInferRequest and the headers.
    """
    rid = request_id or str(uuid.uuid4())
    inputs = list(tensors)
    raws: list[bytes] = []
    if raw:
        converted = []
        for t in inputs:
            values = getattr(t.contents, CONTENTS_FIELDS[t.datatype])
            raws.append(encode_raw(t.datatype, values))
            converted.append(
                ModelInferRequestInferInputTensor(
                    name=t.name, datatype=t.datatype, shape=list(t.shape), parameters=t.parameters
                )
            )
        inputs = converted
    request = ModelInferRequest(id=rid, inputs=inputs, raw_input_contents=raws)
    own = {"pipeline", "x-request-id"}
    record_headers = [(k.lower(), v.encode()) for k, v in headers if k.lower() not in own]
    record_headers += [("pipeline", pipeline.encode()), ("x-request-id", rid.encode())]
    return Request(rid, f"0.{pipeline}.{rid}".encode(), bytes(request), record_headers)


# -- responses ---------------------------------------------------------------------------------


def tensor_values(
    tensor: ModelInferResponseInferOutputTensor, raw: bytes | None = None
) -> list[Value]:
    """The elements of an output tensor, from its raw contents when given, else `contents`."""
    if raw is not None:
        # FP16 raw contents may be 4-byte floats (the engine's raw conversion).
        return decode_raw(raw_datatype(tensor.datatype, tensor.shape, raw), raw)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise ValueError(f"unknown datatype {tensor.datatype!r}")
    return list(getattr(tensor.contents, field))


def _f32(value: float) -> float:
    """The shortest float that reads back as the same 4-byte float."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def _jsonable(value: Value, datatype: str) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    if isinstance(value, float) and datatype in ("FP16", "FP32"):
        return _f32(value)
    return value


def outputs(response: ModelInferResponse) -> list[dict[str, Any]]:
    """Name, datatype, shape and decoded values (`data`) of every output tensor."""
    raws = response.raw_output_contents
    result = []
    for i, tensor in enumerate(response.outputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        try:
            values = tensor_values(tensor, raws[i] if i < len(raws) else None)
            entry["data"] = [_jsonable(v, tensor.datatype) for v in values]
        except ValueError as e:
            entry["error"] = str(e)
        result.append(entry)
    return result


def render_json(response: ModelInferResponse) -> str:
    """The response as JSON: model_name, id, outputs with name, datatype, shape and data."""
    body = {"model_name": response.model_name, "id": response.id, "outputs": outputs(response)}
    return json.dumps(body)


def render_text(response: ModelInferResponse) -> str:
    """The response on one line: `id=... model=... NAME DATATYPE[shape]=[values] ...`."""
    parts = [f"id={response.id}", f"model={response.model_name}"]
    for entry in outputs(response):
        shape = ",".join(str(d) for d in entry["shape"])
        values = json.dumps(entry["data"]) if "data" in entry else f"<{entry['error']}>"
        parts.append(f"{entry['name']} {entry['datatype']}[{shape}]={values}")
    return " ".join(parts)


def is_answer(record: ConsumerRecord[bytes, bytes], request: Request) -> bool:
    """Whether a pipeline-outputs record answers `request` (same key, or same x-request-id)."""
    if record.key == request.key:
        return True
    return any(k == "x-request-id" and v == request.id.encode() for k, v in record.headers)


def error_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """`<header value>: <payload text>` when the record carries `seldon-pipeline-errors`."""
    for k, v in record.headers:
        if k == hdr.PIPELINE_ERRORS:
            text = (record.value or b"").decode(errors="replace")
            return f"{v.decode(errors='replace')}: {text}"
    return None


# -- Kafka -------------------------------------------------------------------------------------


def topic_names(prefix: str, namespace: str, pipeline: str) -> tuple[str, str]:
    """(inputs, outputs) topics of `pipeline`."""
    return (
        pipeline_topic(namespace, pipeline, INPUTS, prefix=prefix),
        pipeline_topic(namespace, pipeline, OUTPUTS, prefix=prefix),
    )


async def infer(args: Options, request: Request) -> int:
    inputs, outputs_topic = topic_names(args.prefix, args.namespace, args.pipeline)
    async with tool_admin(args.bootstrap_servers) as admin:
        ready = await ensure_topics(admin, [inputs, outputs_topic], partitions=args.partitions)
    counts = ready.partitions
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all")
    await consumer.start()
    try:
        tps = [TopicPartition(outputs_topic, p) for p in range(counts[outputs_topic])]
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        await producer.start()
        try:
            await producer.send_and_wait(
                inputs, request.value, key=request.key, partition=0, headers=request.headers
            )
        finally:
            await producer.stop()
        deadline = time.monotonic() + args.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            batch = await consumer.getmany(timeout_ms=max(1, int(min(remaining, 0.2) * 1000)))
            for record in (r for records in batch.values() for r in records):
                if is_answer(record, request):
                    return answer(record, args.json_)
    finally:
        await consumer.stop()
    print(
        f"timed out after {args.timeout}s waiting for the answer to {request.id} on"
        f" {outputs_topic}",
        file=sys.stderr,
    )
    return 2


def answer(record: ConsumerRecord[bytes, bytes], as_json: bool) -> int:
    """Print the answer record; returns the exit code."""
    error = error_of(record)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        response = ModelInferResponse().parse(record.value or b"")
    except Exception as e:  # betterproto raises assorted errors on bad input
        print(f"error: cannot decode the response: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(render_json(response) if as_json else render_text(response))
    return 0
