"""Micro-benchmark of the stateful stages' pure state machines, with no broker and no step.

    python scripts/bench_stages.py                  # a table: µs per id, median of 5 runs
    python scripts/bench_stages.py --json           # the same rows as JSON
    PYTHONPATH=/some/checkout python scripts/bench_stages.py   # another tree's dataflow

Each case feeds N ids in a backlog pattern, as a step catching up sees them: record timestamps
advance 0.5 ms per id, stream time is the largest timestamp seen so far, and `expire(now)` is
called after every 2,000 records (the step expires after each fetched batch). Joins and gates are
given the wall clock at arrival as the step gives it (1 ms later per fetch, far ahead of the
records), but not to `expire`: a step behind its sources closes windows on stream time only.
Tokens are small
objects with a `.tp`, as the step's are. Inputs (keys, values, tokens, entry names) are built
before the clock starts; each run times a fresh state machine from the first record to the
final `expire` that empties it.

Cases:

* `join-inner`, `join-outer`: a 2-source `Joiner`, 1 s window, merged by the real
  `wire.merge_join` (request=True) on small V2 responses. Every key appears once per source;
  the two records of a pair are 0 or 1 ms apart (0.5 ms on average). Records arrive in fetches
  of 1,000 from each source in turn. µs per pair (2 records, 1 output).
* `gate`: a `TriggerGate` with 1 trigger (inner), 1 s window: a fetch of 1,000 data records,
  then the 1,000 triggers that let them through. µs per id (1 data record + 1 trigger).
* `batch`: a `PartitionBatcher` of size 10 (1 s window) with the real `wire.merge_batch` and
  `wire.batch_rows` on small V2 requests, 2 input partitions read 1,000 records at a time.
  µs per record.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import dataflow
from dataflow import wire
from dataflow.batches import PartitionBatcher
from dataflow.gates import TriggerGate
from dataflow.joins import Joiner
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)

FETCH = 1000  # records per fetched batch of one source (two fetches between expiries)
WINDOW_MS = 1000
WALL = 2_000_000_000  # the wall clock when the run starts: far ahead of the records


@dataclass(frozen=True, slots=True)
class TP:
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Token:
    """A stand-in for the step's record reference: what the stages see of it is `.tp`."""

    tp: TP
    offset: int


def response(tensor: str) -> bytes:
    """A small V2 response (the demo's shape: one INT32 [1, 2] tensor)."""
    out = ModelInferResponseInferOutputTensor(
        name=tensor,
        datatype="INT32",
        shape=[1, 2],
        contents=InferTensorContents(int_contents=[1, 2]),
    )
    return bytes(ModelInferResponse(model_name="m", model_version="1", id="4312", outputs=[out]))


def request(tensor: str) -> bytes:
    """A small V2 request of one row."""
    inp = ModelInferRequestInferInputTensor(
        name=tensor,
        datatype="INT32",
        shape=[1, 2],
        contents=InferTensorContents(int_contents=[1, 2]),
    )
    return bytes(ModelInferRequest(model_name="m", id="4312", inputs=[inp]))


def _ident(kind: str, index: int, token: Token) -> bytes:
    return f"{kind}/{index}/{token.tp.topic}/{token.tp.partition}/{token.offset}".encode()


Feed = list[tuple[Any, ...] | None]  # None: expire here


def _blocks(n: int) -> list[range]:
    return [range(start, min(start + FETCH, n)) for start in range(0, n, FETCH)]


def join_feed(n: int) -> Feed:
    """(source, key, value, timestamp, token, ident, wall) per record; None: expire."""
    values = [response("a"), response("b")]
    tps = [TP("in-a", 0), TP("in-b", 0)]
    feed: Feed = []
    for block in _blocks(n):
        for source in (0, 1):
            for i in block:
                # 0.5 ms per id; the pair's two records are 0 or 1 ms apart.
                ts = 1_000_000 + (i + source) // 2
                token = Token(tps[source], i)
                key = b"0.p.%d" % i
                ident = _ident("s", source, token)
                feed.append((source, key, values[source], ts, token, ident, WALL + 2 * i // FETCH))
        feed.append(None)
    return feed


def run_join(feed: Feed, join_type: str) -> int:
    merge = partial(wire.merge_join, request=True)
    joiner: Joiner[Token] = Joiner(2, join_type, WINDOW_MS, merge)  # type: ignore[arg-type]
    now = 0
    outputs = 0
    add = joiner.add
    for item in feed:
        if item is None:
            outputs += len(joiner.expire(now).outputs)
            continue
        source, key, value, ts, token, ident, wall = item
        if ts > now:
            now = ts
        outputs += len(add(source, key, value, ts, token, now, wall_ms=wall, ident=ident).outputs)
    outputs += len(joiner.expire(now + 10 * WINDOW_MS).outputs)
    assert joiner.held() == 0
    return outputs


def gate_feed(n: int) -> Feed:
    """(kind, key, value, timestamp, token, ident, wall) per record: data, then triggers."""
    value = request("x")
    data_tp, trigger_tp = TP("data", 0), TP("trigger", 0)
    feed: Feed = []
    for block in _blocks(n):
        for i in block:
            token = Token(data_tp, i)
            ts = 1_000_000 + i // 2
            feed.append(
                ("d", b"0.p.%d" % i, value, ts, token, _ident("d", 0, token), WALL + 2 * i // FETCH)
            )
        for i in block:
            token = Token(trigger_tp, i)
            ts = 1_000_000 + (i + 1) // 2
            ident = _ident("t", 0, token)
            feed.append(("t", b"0.p.%d" % i, b"", ts, token, ident, WALL + 2 * i // FETCH + 1))
        feed.append(None)
    return feed


def run_gate(feed: Feed) -> int:
    gate: TriggerGate[Token] = TriggerGate(1, "inner", WINDOW_MS)
    now = 0
    outputs = 0
    add_data, add_trigger = gate.add_data, gate.add_trigger
    for item in feed:
        if item is None:
            outputs += len(gate.expire(now).outputs)
            continue
        kind, key, value, ts, token, ident, wall = item
        if ts > now:
            now = ts
        if kind == "d":
            step = add_data(key, value, ts, token, now, wall_ms=wall, ident=ident)
        else:
            step = add_trigger(0, key, ts, token, now, wall_ms=wall, ident=ident)
        outputs += len(step.outputs)
    outputs += len(gate.expire(now + 10 * WINDOW_MS).outputs)
    assert gate.held() == 0
    return outputs


def batch_feed(n: int) -> Feed:
    """(key, value, timestamp, token, ident) per record, 1,000 per partition in turn."""
    value = request("x")
    tps = [TP("in", 0), TP("in", 1)]
    feed: Feed = []
    for number, block in enumerate(_blocks(n)):
        tp = tps[number % 2]
        for i in block:
            token = Token(tp, i)
            feed.append((b"0.p.%d" % i, value, 1_000_000 + i // 2, token, _ident("s", 0, token)))
        if number % 2:
            feed.append(None)
    return feed


def _tp(token: Token) -> TP:
    return token.tp


def run_batch(feed: Feed) -> int:
    batcher: PartitionBatcher[Token] = PartitionBatcher(
        10, WINDOW_MS, wire.merge_batch, wire.batch_rows, partition=_tp
    )
    now = 0
    outputs = 0
    add = batcher.add
    for item in feed:
        if item is None:
            outputs += len(batcher.expire(now).outputs)
            continue
        key, value, ts, token, ident = item
        if ts > now:
            now = ts
        outputs += len(add(key, value, ts, token, now, ident=ident).outputs)
    outputs += len(batcher.full().outputs)
    assert batcher.held() == 0
    return outputs


def _time(fn: Callable[[], int], expected: int, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        got = fn()
        seconds.append(time.perf_counter() - start)
        if got != expected:
            raise AssertionError(f"{got} outputs, expected {expected}")
    return seconds


def run(n: int = 200_000, runs: int = 5) -> list[dict[str, Any]]:
    """Measure every case: rows with the median µs per id (pair, gate id, batch record)."""
    cases: list[tuple[str, str, Callable[[], int], int]] = []
    joins = join_feed(n)
    cases.append(("join-inner", "pair", partial(run_join, joins, "inner"), n))
    cases.append(("join-outer", "pair", partial(run_join, joins, "outer"), n))
    cases.append(("gate", "id", partial(run_gate, gate_feed(n)), n))
    cases.append(("batch", "record", partial(run_batch, batch_feed(n)), n // 10))
    rows = []
    for name, per, fn, expected in cases:
        seconds = _time(fn, expected, runs)
        rows.append(
            {
                "case": name,
                "per": per,
                "n": n,
                "runs": runs,
                "us_per_id": round(statistics.median(seconds) / n * 1e6, 3),
                "us_per_id_min": round(min(seconds) / n * 1e6, 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="ids per run (default 200,000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.n < FETCH:
        parser.error(f"--n must be >= {FETCH}")
    rows = run(args.n, args.runs)
    if args.json:
        print(json.dumps({"dataflow": dataflow.__file__, "rows": rows}, indent=2))
        return 0
    print(f"dataflow: {dataflow.__file__}")
    print(f"{'case':<12} {'per':<7} {'µs/id (median)':>15} {'µs/id (min)':>12}")
    for row in rows:
        median, best = row["us_per_id"], row["us_per_id_min"]
        print(f"{row['case']:<12} {row['per']:<7} {median:>15.3f} {best:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
