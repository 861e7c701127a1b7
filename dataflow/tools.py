"""Helpers shared by the command-line tools: topic creation for tools, V2 datatype tables, raw
element encode/decode.

Used by `scripts/model.py`, `scripts/infer.py`, `scripts/producer.py` and `dataflow.inspect`;
the engine does not import it (it creates topics with `dataflow.kafka.ensure_topics`). aiokafka
is imported only by `ensure_topics`, so the pure helpers stay cheap to import.

Raw contents (`raw_input_contents` / `raw_output_contents`) hold one blob per tensor: fixed-width
datatypes as little-endian elements back to back, BYTES as a 4-byte little-endian length then the
bytes, per element.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, NoReturn

__all__ = [
    "CONTENTS_FIELDS",
    "NUMERIC_CODES",
    "RAW_CODES",
    "RawError",
    "Value",
    "decode_raw",
    "encode_raw",
    "ensure_topics",
    "raw_datatype",
    "run_tool",
]

CONTENTS_FIELDS: dict[str, str] = {
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
"""V2 datatype -> InferTensorContents field holding its values (FP16 travels in fp32_contents).

Its keys are every datatype the tools know.
"""

RAW_CODES: dict[str, str] = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
"""V2 datatype -> struct code of one little-endian raw element (every datatype but BYTES)."""

NUMERIC_CODES: dict[str, str] = {k: v for k, v in RAW_CODES.items() if k != "BOOL"}
"""`RAW_CODES` of the numeric datatypes (no BOOL, no BYTES)."""

Value = bool | int | float | str | bytes
"""One tensor element as the tools handle it."""

RawProblem = Literal["truncated-length", "past-end", "datatype", "partial"]


class RawError(ValueError):
    """A raw-contents blob that does not hold whole elements of its datatype.

    `str(error)` is the reason; `problem` says which check failed, for callers that word it
    their own way.

    Attributes:
        problem: `truncated-length` (a BYTES length prefix is cut off), `past-end` (a BYTES
            element runs past the end), `datatype` (unknown datatype) or `partial` (the size is
            not a multiple of the element width).
    """

    def __init__(self, message: str, problem: RawProblem) -> None:
        super().__init__(message)
        self.problem: RawProblem = problem


def raw_datatype(datatype: str, shape: Sequence[int], blob: bytes) -> str:
    """The datatype a raw blob of a `datatype` tensor of `shape` is written in.

    FP16 raw contents are 2-byte halves, or 4-byte floats (`FP32`) when the blob has exactly 4
    bytes per element of the shape, as the engine's raw conversion writes them; any
    other datatype is returned unchanged.
    """
    if datatype == "FP16" and all(d >= 0 for d in shape) and len(blob) == 4 * math.prod(shape):
        return "FP32"
    return datatype


def encode_raw(datatype: str, values: Sequence[Any]) -> bytes:
    """Values as one raw-contents blob, little-endian (BYTES: 4-byte length then the bytes)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + bytes(v) for v in values)
    return struct.pack(f"<{len(values)}{RAW_CODES[datatype]}", *values)


def decode_raw(datatype: str, blob: bytes) -> list[Value]:
    """The elements of a raw-contents blob of `datatype`.

    Raises:
        RawError: The blob does not hold whole elements of the datatype, or the datatype is
            unknown.
    """
    if datatype == "BYTES":
        out: list[Value] = []
        pos = 0
        while pos < len(blob):
            if pos + 4 > len(blob):
                raise RawError(f"truncated BYTES length at byte {pos}", "truncated-length")
            (n,) = struct.unpack_from("<I", blob, pos)
            if pos + 4 + n > len(blob):
                raise RawError(
                    f"BYTES element of {n} bytes at byte {pos} runs past the end", "past-end"
                )
            out.append(blob[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return out
    code = RAW_CODES.get(datatype)
    if code is None:
        raise RawError(f"unknown datatype {datatype!r}", "datatype")
    width = struct.calcsize(code)
    if len(blob) % width:
        raise RawError(
            f"{len(blob)} bytes are not whole {datatype} elements of {width} bytes", "partial"
        )
    if code == "?":
        return [b != 0 for b in blob]
    return list(struct.unpack(f"<{len(blob) // width}{code}", blob))


async def ensure_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    timeout: float = 30,
    *,
    security_protocol: str = "PLAINTEXT",
    on_create: Callable[[list[str]], None] | None = None,
) -> dict[str, int]:
    """Create the topics that do not exist (the cluster's default replication); wait until all
    are described.

    Args:
        bootstrap: Kafka bootstrap servers.
        names: The topics (duplicates are created once).
        partitions: Partitions of the topics created.
        timeout: Seconds to wait for all topics to be described.
        security_protocol: aiokafka's `security_protocol` of the admin client.
        on_create: Called with the names it asked the broker to create, when any were missing.

    Returns:
        The partition count of every topic.

    Raises:
        RuntimeError: Some topic is still not described after `timeout` seconds.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    from dataflow.kafka import NewTopic, create_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, security_protocol=security_protocol)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            # Per-topic errors (e.g. created meanwhile by someone else) show in the wait below.
            await create_topics(admin, [NewTopic(n, partitions) for n in missing], 30_000)
            if on_create is not None:
                on_create(missing)
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(list(names))
            counts = {
                d["topic"]: len(d["partitions"])
                for d in described
                if d["error_code"] == 0 and d["partitions"]
            }
            if all(n in counts for n in names):
                return counts
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not available after {timeout}s: {described}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def run_tool(name: str, main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a tool's coroutine and exit with its code; Ctrl-C (130) or an error of Kafka or the
    network (1) ends it with one line on stderr, never a traceback."""
    from aiokafka.errors import KafkaError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the one line below says why
    try:
        code = asyncio.run(main)
    except KeyboardInterrupt:
        logging.getLogger("asyncio").disabled = True  # "Unclosed AIOKafka..." of unstarted clients
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (KafkaError, OSError) as exc:
        logging.getLogger("asyncio").disabled = True
        print(f"{name}: {exc or type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
