"""V2 tensors as the tools handle them: datatype tables, raw element encode/decode.

Used by `dataflow.model`, `dataflow.infer` and `dataflow.records` (the tools); the engine does
not import it (it converts messages on the wire, `dataflow.wire`). Pure.

Raw contents (`raw_input_contents` / `raw_output_contents`) hold one blob per tensor: fixed-width
datatypes as little-endian elements back to back, BYTES as a 4-byte little-endian length then the
bytes, per element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Literal

__all__ = [
    "CONTENTS_FIELDS",
    "NUMERIC_CODES",
    "RAW_CODES",
    "RawError",
    "Value",
    "decode_raw",
    "encode_raw",
    "raw_datatype",
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
