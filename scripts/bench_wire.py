"""Benchmark one response -> request conversion: dataflow.wire against betterproto.

    python scripts/bench_wire.py          # prints a table
    from bench_wire import run; run()     # rows as dicts (used by scripts/bench)

Cases: the 77-byte demo record (spec 5.1), 1,000 FP32 values in fp32_contents, 1 MiB of raw
contents; plus the demo record with a tensor selection and a rename. Each figure is the median
of `runs` timed runs. Run through scripts/env.sh so the malloc settings of docs/performance.md
apply (they matter for the 1 MiB case).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from dataflow import wire
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)

Output = ModelInferResponseInferOutputTensor


def demo_record() -> bytes:
    """The 77-byte record of the 2022 demo producer (spec 5.1)."""
    return bytes(
        ModelInferResponse(
            model_name="model.test",
            model_version="1",
            id="4312",
            outputs=[
                Output(
                    name=name,
                    datatype="INT32",
                    shape=[1, 2],
                    contents=InferTensorContents(int_contents=[0, 0]),
                )
                for name in ("tensor0", "tensor1")
            ],
        )
    )


def fp32_record() -> bytes:
    return bytes(
        ModelInferResponse(
            model_name="model",
            id="fp32",
            outputs=[
                Output(
                    name="x",
                    datatype="FP32",
                    shape=[1, 1000],
                    contents=InferTensorContents(fp32_contents=[i * 0.5 for i in range(1000)]),
                )
            ],
        )
    )


def raw_record() -> bytes:
    blob = bytes(range(256)) * 4096  # 1 MiB
    return bytes(
        ModelInferResponse(
            model_name="model",
            id="raw",
            outputs=[Output(name="x", datatype="UINT8", shape=[1, len(blob)])],
            raw_output_contents=[blob],
        )
    )


def betterproto_convert(
    value: bytes,
    tensors: frozenset[str] | None = None,
    renames: Mapping[str, str] | None = None,
) -> bytes | None:
    """OUTPUT_INPUT conversion (spec 4.3) the decoding way: decode, build, encode."""
    src = ModelInferResponse().parse(value)
    raws = src.raw_output_contents
    inputs = []
    kept_raw = []
    for idx, tensor in enumerate(src.outputs):
        if tensors and tensor.name not in tensors:
            continue
        new = ModelInferRequestInferInputTensor(
            name=(renames or {}).get(tensor.name, tensor.name),
            datatype=tensor.datatype,
            shape=tensor.shape,
            parameters=tensor.parameters,
        )
        if not raws:
            new.contents = tensor.contents
        inputs.append(new)
        if idx < len(raws):
            kept_raw.append(raws[idx])
    if not inputs:
        return None
    return bytes(
        ModelInferRequest(
            id=src.id, parameters=src.parameters, inputs=inputs, raw_input_contents=kept_raw
        )
    )


def _rate(fn: Callable[[], object], runs: int, min_time: float) -> float:
    """Calls per second: median over `runs` runs of at least `min_time` seconds each."""
    loops = 1
    while True:  # calibrate the loop count to the target run time
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time / 4:
            break
        loops *= 4
    loops = max(1, int(loops * min_time / max(elapsed, 1e-9)))
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        rates.append(loops / (time.perf_counter() - start))
    return statistics.median(rates)


def run(runs: int = 5, min_time: float = 0.2) -> list[dict[str, Any]]:
    """Measure every case.

    Args:
        runs: Timed runs per figure (the median is reported); at least 5.
        min_time: Seconds per timed run.

    Returns:
        One dict per case: `case`, `bytes`, `wire_per_s`, `betterproto_per_s`, `ratio`
        (wire / betterproto), `wire_us` and `betterproto_us` (microseconds per conversion).
    """
    runs = max(5, runs)
    demo = demo_record()
    chain = wire.ChainType.OUTPUT_INPUT
    select = frozenset({"tensor1"})
    rename = {"tensor1": "renamed"}
    cases: list[tuple[str, bytes, frozenset[str] | None, dict[str, str] | None]] = [
        ("demo record, 2 INT32 tensors", demo, None, None),
        ("demo record, select + rename", demo, select, rename),
        ("1,000 FP32 in fp32_contents", fp32_record(), None, None),
        ("1 MiB raw contents", raw_record(), None, None),
    ]
    rows = []
    for name, value, tensors, renames in cases:
        ours = wire.convert(value, chain, tensors, renames)
        theirs = betterproto_convert(value, tensors, renames)
        assert ours is not None and theirs is not None
        assert ModelInferRequest().parse(ours) == ModelInferRequest().parse(theirs), name
        fast = _rate(partial(wire.convert, value, chain, tensors, renames), runs, min_time)
        slow = _rate(partial(betterproto_convert, value, tensors, renames), runs, min_time)
        rows.append(
            {
                "case": name,
                "bytes": len(value),
                "wire_per_s": fast,
                "betterproto_per_s": slow,
                "ratio": fast / slow,
                "wire_us": 1e6 / fast,
                "betterproto_us": 1e6 / slow,
            }
        )
    return rows


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print("note: MALLOC_MMAP_THRESHOLD_ unset; source scripts/env.sh first", file=sys.stderr)
    rows = run()
    header = (
        f"| {'case':<30} | {'bytes':>9} | {'wire.convert':>19} | {'betterproto':>19}"
        f" | {'ratio':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        wire_cell = f"{r['wire_per_s']:,.0f}/s {r['wire_us']:.1f}us"
        bp_cell = f"{r['betterproto_per_s']:,.0f}/s {r['betterproto_us']:.0f}us"
        print(
            f"| {r['case']:<30} | {r['bytes']:>9,} | {wire_cell:>19} | {bp_cell:>19} |"
            f" {r['ratio']:>6.0f}x |"
        )


if __name__ == "__main__":
    main()
