#!/usr/bin/env python3
"""Read the demo's output topics until 5 records per topic, printing each decoded request.

Each line: `received inference response on topic <topic> (<size> bytes): <request as text>`.
Exits 1 if the records do not all arrive within --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import betterproto
from aiokafka import AIOKafkaConsumer

from dataflow import __version__
from dataflow.proto.inference import InferTensorContents, ModelInferRequest


def _contents(contents: InferTensorContents) -> str:
    parts = []
    for name in (
        "bool_contents",
        "int_contents",
        "int64_contents",
        "uint_contents",
        "uint64_contents",
        "fp32_contents",
        "fp64_contents",
        "bytes_contents",
    ):
        parts.extend(
            f"{name}:{v!r}" if isinstance(v, bytes) else f"{name}:{v}"
            for v in getattr(contents, name)
        )
    return " ".join(parts)


def as_text(request: ModelInferRequest) -> str:
    """A one-line text form of a request, in the style of protobuf's text format."""
    parts = []
    if request.model_name:
        parts.append(f'model_name:"{request.model_name}"')
    if request.id:
        parts.append(f'id:"{request.id}"')
    for key, param in request.parameters.items():
        which, value = betterproto.which_one_of(param, "parameter_choice")
        parts.append(f'parameters:{{key:"{key}" {which}:{value!r}}}')
    for tensor in request.inputs:
        shape = " ".join(f"shape:{s}" for s in tensor.shape)
        inner = f'name:"{tensor.name}" datatype:"{tensor.datatype}" {shape}'
        contents = _contents(tensor.contents) if tensor.contents else ""
        if contents:
            inner += f" contents:{{{contents}}}"
        parts.append(f"inputs:{{{inner}}}")
    parts.extend(f"raw_input_contents:<{len(raw)} bytes>" for raw in request.raw_input_contents)
    return " ".join(parts)


async def consume(args: argparse.Namespace) -> int:
    consumer = AIOKafkaConsumer(
        *args.output_topics,
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    counts = dict.fromkeys(args.output_topics, 0)
    deadline = time.monotonic() + args.timeout
    try:
        while any(c < args.count for c in counts.values()) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    counts[record.topic] += 1
                    try:
                        text = as_text(ModelInferRequest().parse(record.value))
                    except Exception as exc:  # a bad record is reported and counted
                        text = f"cannot decode: {exc}"
                    print(
                        f"received inference response on topic {record.topic} "
                        f"({len(record.value)} bytes): {text}",
                        flush=True,
                    )
    finally:
        await consumer.stop()
    missing = {t: args.count - c for t, c in counts.items() if c < args.count}
    if missing:
        print(f"demo FAILED: timed out waiting for records: {missing}", file=sys.stderr)
        return 1
    print(f"demo OK: {args.count} records on each of {', '.join(counts)}", flush=True)
    return 0


def topics(value: str) -> list[str]:
    return [t for t in value.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--security-protocol", default="PLAINTEXT")
    parser.add_argument("--pipeline-header", default="some-pipeline", help="unused, as in 2022")
    parser.add_argument("--input-topics", type=topics, default=[], help="unused, as in 2022")
    parser.add_argument("--output-topics", type=topics, default=[], help="comma-separated")
    parser.add_argument("--group", default="data-flow-test")
    parser.add_argument("--count", type=int, default=5, help="records to wait for per topic")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if not args.output_topics:
        parser.error("give --output-topics")
    sys.exit(asyncio.run(consume(args)))


if __name__ == "__main__":
    main()
