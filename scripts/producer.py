#!/usr/bin/env python3
"""Write the 2022 demo's V2 test messages.

For every input topic: 5 records with header `pipeline: <pipeline>-other` (which the engine must
drop), then 5 with `pipeline: <pipeline>`. Each value is a 77-byte `ModelInferResponse` with two
INT32 tensors holding the loop index. No key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaProducer

from dataflow import __version__
from dataflow.kafka import ensure_topics, tool_admin
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)

N = 5


def demo_response(d: int) -> bytes:
    """The demo's response for loop index `d`."""
    tensors = [
        ModelInferResponseInferOutputTensor(
            name=name,
            datatype="INT32",
            shape=[1, 2],
            contents=InferTensorContents(int_contents=[d, d]),
        )
        for name in ("tensor0", "tensor1")
    ]
    return bytes(
        ModelInferResponse(model_name="model.test", model_version="1", id="4312", outputs=tensors)
    )


def topics(value: str) -> list[str]:
    return [t for t in value.split(",") if t]


async def produce(args: argparse.Namespace) -> int:
    targets = args.input_topics + args.output_topics
    # The local broker does not create topics on write.
    async with tool_admin(args.bootstrap_servers, args.security_protocol) as admin:
        created = (await ensure_topics(admin, targets, partitions=1)).created
    if created:
        print(f"created topics {', '.join(created)}")
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap_servers, security_protocol=args.security_protocol
    )
    await producer.start()
    try:
        for header in (args.pipeline_header + "-other", args.pipeline_header):
            for d in range(N):
                value = demo_response(d)
                for topic in targets:
                    await producer.send(topic, value, headers=[("pipeline", header.encode())])
        await producer.flush()
    finally:
        await producer.stop()
    for topic in targets:
        print(f"produced {2 * N} records of {len(demo_response(0))} bytes to {topic}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--security-protocol", default="PLAINTEXT")
    parser.add_argument("--pipeline-header", default="some-pipeline")
    parser.add_argument("--input-topics", type=topics, default=[], help="comma-separated")
    parser.add_argument("--output-topics", type=topics, default=[], help="comma-separated")
    args = parser.parse_args()
    if not args.input_topics and not args.output_topics:
        parser.error("give at least one of --input-topics, --output-topics")
    sys.exit(asyncio.run(produce(args)))


if __name__ == "__main__":
    main()
