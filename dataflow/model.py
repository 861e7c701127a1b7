"""A stand-in model on Kafka: answers model inputs on model outputs, as Seldon's modelgw does.

Consumes `<prefix>.<ns>.model.<name>.inputs` (ModelInferRequest) and writes one
ModelInferResponse per request to `<prefix>.<ns>.model.<name>.outputs` with the same key, the
same partition number and the input's headers; `model_name` is the model's name, `id`,
`model_version` and `parameters` are copied. The "model" is a deterministic function:

- `identity`: outputs are the inputs (names, datatypes, shapes, parameters, contents), raw input
  contents become raw output contents;
- `add`: identity plus a constant added to every element of every numeric tensor, in `contents`
  and in raw contents (decoded little-endian per datatype); integers are rounded and wrap around
  in their datatype's width; BYTES and BOOL tensors are unchanged;
- `rename`: identity with tensor names mapped by `--rename OLD=NEW` (others kept).

A request that cannot be decoded or processed is answered, as modelgw does, by its error text on
`<prefix>.<ns>.errors.errors` with the input's key and headers plus `seldon-pipeline-errors:
<name>`. At least once: input offsets are committed only after every answer of a fetched batch is
acknowledged. Runs until SIGTERM or SIGINT (exit 0).

    dataflow model --name tfsimple1 --fn add --add 1

The command line is `dataflow.cli.tools.ModelCommand` (`dataflow model`, `scripts/model.py`).
"""

from __future__ import annotations

import asyncio
import math
import signal
import struct
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from dataflow import headers as hdr
from dataflow import tensors, wire
from dataflow.kafka import ensure_topics, tool_admin
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.topics import INPUTS, OUTPUTS, errors_topic, model_topic

FUNCTIONS = ("identity", "add", "rename")

_FLOAT_MAX = {"e": 65504.0, "f": 3.4028234663852886e38}


class Options(Protocol):
    """What the serving loop needs of the command line (`dataflow model`)."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def fn(self) -> str: ...

    @property
    def add(self) -> float: ...

    @property
    def rename(self) -> dict[str, str]: ...

    @property
    def group(self) -> str: ...

    @property
    def offset_reset(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    @property
    def verbose(self) -> bool: ...


class RequestError(ValueError):
    """A request the model cannot answer; `str(error)` is the error text for the errors topic."""


# -- the model function ------------------------------------------------------------------------


def _add_int(value: int, add: float, code: str) -> int:
    """`value + add` rounded to an integer, wrapped to the width of struct code `code`."""
    result = value + int(add) if add.is_integer() else round(value + add)
    bits = 8 * struct.calcsize(code)
    result &= (1 << bits) - 1
    if code.islower() and result >> (bits - 1):
        result -= 1 << bits
    return result


def _add_float(value: float, add: float, code: str) -> float:
    """`value + add`, overflowing to +-inf beyond the range of a half or single float."""
    result = value + add
    limit = _FLOAT_MAX.get(code)
    if limit is not None and math.isfinite(result) and abs(result) > limit:
        return math.copysign(math.inf, result)
    return result


def _add_values(values: Sequence[Any], add: float, code: str) -> list[Any]:
    """`add` added to every value; `code` is the struct code of the values' type."""
    if code in "efd":
        return [_add_float(v, add, code) for v in values]
    return [_add_int(v, add, code) for v in values]


def _add_raw(tensor: ModelInferRequestInferInputTensor, blob: bytes, add: float) -> bytes:
    """Raw contents of `tensor` with `add` added to every element (BYTES, BOOL unchanged)."""
    if tensor.datatype not in tensors.NUMERIC_CODES:
        return blob
    datatype = tensors.raw_datatype(tensor.datatype, tensor.shape, blob)
    code = tensors.RAW_CODES[datatype]
    width = struct.calcsize(code)
    if len(blob) % width:
        raise RequestError(
            f"raw contents of tensor {tensor.name!r} ({tensor.datatype}) have {len(blob)} bytes,"
            f" not a multiple of {width}"
        )
    return tensors.encode_raw(datatype, _add_values(tensors.decode_raw(datatype, blob), add, code))


def _add_contents(tensor: ModelInferRequestInferInputTensor, add: float) -> InferTensorContents:
    """A copy of the tensor's contents with `add` added to its numeric values."""
    contents = InferTensorContents().parse(bytes(tensor.contents))
    if tensor.datatype in tensors.NUMERIC_CODES:
        field = tensors.CONTENTS_FIELDS[tensor.datatype]
        code = "f" if tensor.datatype == "FP16" else tensors.NUMERIC_CODES[tensor.datatype]
        setattr(contents, field, _add_values(getattr(contents, field), add, code))
    return contents


def _parse(request: bytes) -> ModelInferRequest:
    """Decode a request strictly: malformed protobuf or unknown datatypes are errors."""
    try:
        wire.to_raw(request, request=True)  # strict scan of the wire format; result unused
        parsed = ModelInferRequest().parse(request)
    except wire.WireError as e:
        raise RequestError(f"cannot decode request: {e}") from None
    except Exception as e:  # betterproto raises assorted errors on bad input
        raise RequestError(f"cannot decode request: {type(e).__name__}: {e}") from None
    for tensor in parsed.inputs:
        if tensor.datatype not in tensors.CONTENTS_FIELDS:
            raise RequestError(f"tensor {tensor.name!r} has unknown datatype {tensor.datatype!r}")
    raws = parsed.raw_input_contents
    if raws and len(raws) != len(parsed.inputs):
        raise RequestError(
            f"request has {len(raws)} raw input contents for {len(parsed.inputs)} inputs"
        )
    return parsed


def respond(request: bytes, name: str, fn: str, add: float, renames: dict[str, str]) -> bytes:
    """The encoded ModelInferResponse of model `name` computing `fn` for an encoded request.

    Args:
        request: Encoded ModelInferRequest.
        name: Model name, written as the response's `model_name`.
        fn: One of `identity`, `add`, `rename`.
        add: The constant of `add`.
        renames: Tensor name map of `rename` (names not listed are kept).

    Raises:
        RequestError: The request cannot be decoded or processed; the text is the error.
    """
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown function {fn!r}: expected one of {', '.join(FUNCTIONS)}")
    parsed = _parse(request)
    outputs: list[ModelInferResponseInferOutputTensor] = []
    raws: list[bytes] = []
    for i, tensor in enumerate(parsed.inputs):
        out = ModelInferResponseInferOutputTensor(
            name=renames.get(tensor.name, tensor.name) if fn == "rename" else tensor.name,
            datatype=tensor.datatype,
            shape=list(tensor.shape),
            parameters=dict(tensor.parameters),
        )
        if tensor.is_set("contents"):
            out.contents = _add_contents(tensor, add) if fn == "add" else tensor.contents
        outputs.append(out)
        if parsed.raw_input_contents:
            blob = parsed.raw_input_contents[i]
            raws.append(_add_raw(tensor, blob, add) if fn == "add" else blob)
    response = ModelInferResponse(
        model_name=name,
        model_version=parsed.model_version,
        id=parsed.id,
        parameters=dict(parsed.parameters),
        outputs=outputs,
        raw_output_contents=raws,
    )
    try:
        return bytes(response)
    except (struct.error, OverflowError, ValueError) as e:
        raise RequestError(f"cannot encode response: {e}") from None


# -- Kafka -------------------------------------------------------------------------------------


def topic_names(prefix: str, namespace: str, name: str) -> tuple[str, str, str]:
    """(inputs, outputs, errors) topics of model `name`."""
    return (
        model_topic(namespace, name, INPUTS, prefix=prefix),
        model_topic(namespace, name, OUTPUTS, prefix=prefix),
        errors_topic(namespace, prefix=prefix),
    )


def _key_text(key: bytes | None) -> str:
    return "<no key>" if key is None else key.decode(errors="replace")


class Model:
    """The serving loop: a consumer group on the inputs topic and a producer."""

    def __init__(self, args: Options) -> None:
        self.args = args
        self.inputs, self.outputs, self.errors = topic_names(args.prefix, args.namespace, args.name)
        self.renames: dict[str, str] = dict(args.rename)
        self.partitions: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            self.inputs,
            bootstrap_servers=args.bootstrap_servers,
            group_id=args.group or f"{args.prefix}-{args.namespace}-model-{args.name}",
            enable_auto_commit=False,
            auto_offset_reset=args.offset_reset,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=args.bootstrap_servers, acks="all", linger_ms=1
        )

    def _partition(self, topic: str, partition: int) -> int:
        """The input's partition number, clamped to the partitions of `topic`."""
        return min(partition, self.partitions.get(topic, 1) - 1)

    async def _send(
        self, record: ConsumerRecord[bytes, bytes], topic: str, value: bytes, error: bool
    ) -> asyncio.Future[Any]:
        """Send `value` with the record's key, partition number and headers (+ error header)."""
        headers = list(record.headers)
        if error:
            headers.append((hdr.PIPELINE_ERRORS, self.args.name.encode()))
        future: asyncio.Future[Any] = await self.producer.send(
            topic,
            value,
            key=record.key,
            partition=self._partition(topic, record.partition),
            headers=headers,
        )
        return future

    async def _error(self, record: ConsumerRecord[bytes, bytes], text: str) -> asyncio.Future[Any]:
        """Answer `record` with error `text` on the errors topic, as modelgw does."""
        print(
            f"{_key_text(record.key)} p{record.partition} @{record.offset}: {text}",
            file=sys.stderr,
            flush=True,
        )
        return await self._send(record, self.errors, text.encode(), error=True)

    async def _answer(self, record: ConsumerRecord[bytes, bytes]) -> asyncio.Future[Any]:
        """Send the response to `record`, or its error; returns the send's ack future."""
        args = self.args
        try:
            value = respond(record.value or b"", args.name, args.fn, args.add, self.renames)
        except RequestError as e:
            return await self._error(record, f"model {args.name}: {e}")
        except Exception as e:  # a bug of this stand-in: still an answer, as a real model's
            return await self._error(record, f"model {args.name}: {type(e).__name__}: {e}")
        if args.verbose:
            print(
                f"model {args.name}: {_key_text(record.key)} p{record.partition}"
                f" @{record.offset} id={wire.request_id(record.value or b'')!r}: ok",
                flush=True,
            )
        try:
            return await self._send(record, self.outputs, value, error=False)
        except KafkaError as e:  # e.g. larger than max_request_size
            return await self._error(record, f"model {args.name}: cannot send response: {e}")

    async def _handle(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Answer a fetched batch; commit its offsets once every answer is acknowledged."""
        pending = [(r, await self._answer(r)) for records in batch.values() for r in records]
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        retries = [
            await self._error(r, f"model {self.args.name}: cannot send response: {res}")
            for (r, _), res in zip(pending, results, strict=True)
            if isinstance(res, BaseException)
        ]
        await asyncio.gather(*retries)  # a failure here ends the process before the commit
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:  # rebalanced: redelivered later
            print(f"model {self.args.name}: commit failed: {e}", file=sys.stderr, flush=True)

    async def run(self) -> int:
        args = self.args
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        topics = [self.inputs, self.outputs, self.errors]
        async with tool_admin(args.bootstrap_servers) as admin:
            self.partitions = (
                await ensure_topics(admin, topics, partitions=args.partitions)
            ).partitions
        await self.producer.start()
        try:
            await self.consumer.start()
            try:
                ready = False
                while not self.stop.is_set():
                    batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
                    if not ready and self.consumer.assignment():
                        print(f"model {args.name} ready: {self.inputs} -> {self.outputs}")
                        sys.stdout.flush()
                        ready = True
                    if batch:
                        await self._handle(batch)
            finally:
                await self.consumer.stop()
        finally:
            await self.producer.stop()
        return 0


async def serve(args: Options) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    return await Model(args).run()
