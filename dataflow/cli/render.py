"""Text of `dataflow load`, `unload` and `status` from the control API's JSON (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def line(record: dict[str, Any]) -> str:
    """`name vN (uid U): State`."""
    return f"{record['name']} v{record['version']} (uid {record['uid']}): {record['state']}"


def streams(record: dict[str, Any]) -> str:
    """The engines' acks of a pipeline on one line: `acked: a Ready; waiting: b`."""
    acks: dict[str, dict[str, Any]] = record["streams"]
    acked = [f"{name} {s['state']}" for name, s in acks.items() if s["op"] is not None]
    waiting = [name for name, s in acks.items() if s["op"] is None]
    parts = ([f"acked: {', '.join(acked)}"] if acked else []) + (
        [f"waiting: {', '.join(waiting)}"] if waiting else []
    )
    if not acks:
        parts = ["no dataflow engines"]
    retiring = [f"v{r['version']} {r['state']}" for r in record.get("retiring", [])]
    if retiring:
        parts.append(f"retiring: {', '.join(retiring)}")
    return "; ".join(parts)


def table(records: Sequence[dict[str, Any]]) -> str:
    """One line per pipeline: name, version, state, reason, streams, then a `trouble:` line
    per trouble signal of its steps (no newline at the end)."""
    if not records:
        return "no pipelines"
    rows = [
        (r["name"], f"v{r['version']}", r["state"], r["reason"] or "-", streams(r)) for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for record, (name, version, state, reason, acks) in zip(records, rows, strict=True):
        lines.append(
            f"{name:<{widths[0]}}  {version:<{widths[1]}}  {state:<{widths[2]}}  {reason}  [{acks}]"
        )
        lines.extend(f"  trouble: {signal}" for signal in record.get("trouble") or [])
    return "\n".join(lines)


def pipeline(record: dict[str, Any]) -> str:
    """One pipeline in detail: identity, state, reason, summary, every engine's ack, retiring
    versions, trouble signals (no newline at the end)."""
    lines = [
        f"{record['name']} v{record['version']} (uid {record['uid']})",
        f"  state:    {record['state']} - {record['reason'] or '-'}",
        f"  engines:  {record.get('summary') or '-'}",
    ]
    if record.get("source"):
        lines.append(f"  source:   {record['source']}")
    acks: dict[str, dict[str, Any]] = record["streams"]
    if not acks:
        lines.append("  no dataflow engines")
    width = max((len(name) for name in acks), default=0)
    for name, ack in sorted(acks.items()):
        if ack["op"] is None:
            lines.append(f"  {name:<{width}}  waiting")
            continue
        ok = "ok" if ack["success"] else "failed"
        reason = f" - {ack['reason']}" if ack["reason"] else ""
        lines.append(f"  {name:<{width}}  {ack['state']} ({ack['op']} {ok}){reason}")
    for retiring in record.get("retiring", []):
        lines.append(
            f"  retiring: v{retiring['version']} (uid {retiring['uid']}) {retiring['state']}"
        )
    lines.extend(f"  trouble:  {signal}" for signal in record.get("trouble") or [])
    return "\n".join(lines)
