"""A pipeline as an engine runs it, as plain data: steps, topics, joins, live figures.

Pure: no I/O. The engine's health server (`GET /pipelines`) turns its running topologies and
their steps' counters into these dicts; the supervisor of `--num-cores` workers and the proxy
(`GET /pipelines/{name}/describe`) sum the figures of several engines with `merge`; the CLI
(`dataflow describe NAME`) prints them with `render_text` or `render_dot`.

Rates are per second over the last few seconds, from successive samples of the counters
(`RateRing`): the health server samples when it is asked, so a caller that asks every 2 s
(the live page) sees rates over the last `RATE_WINDOW_S` seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dataflow.stats import StepStats
from dataflow.topology import StepSpec, Topology

#: Counters with a rate, as named in the description (`records_out`: acked by the broker).
COUNTERS: tuple[str, ...] = ("records_in", "records_out", "filtered", "errors", "empty", "late")
#: Gauges summed across engines.
GAUGES: tuple[str, ...] = ("state_records", "state_bytes")
#: Seconds of samples a rate is computed over (the oldest sample kept within it).
RATE_WINDOW_S = 5.0


def step_name(sink: str) -> str:
    """A step's name from its sink topic: the model (`seldon.ns.model.NAME.inputs` -> `NAME`),
    `PIPELINE.outputs` for a pipeline's output step, else the topic itself."""
    parts = sink.split(".")
    if len(parts) >= 5 and parts[-3] == "model":
        return parts[-2]
    if len(parts) >= 5 and parts[-3] == "pipeline":
        return f"{parts[-2]}.{parts[-1]}"
    return sink


def _name_of(spec: StepSpec) -> str:
    name = step_name(spec.sink)
    errors = all(s.topic.rsplit(".", 2)[-2:] == ["errors", "errors"] for s in spec.sources)
    if errors and name.endswith(".outputs"):  # the step carrying step errors to the outputs
        return name.removesuffix(".outputs") + ".errors"
    return name


def step_names(topology: Topology) -> list[str]:
    """Every step's name in index order (`PIPELINE.errors` for the step that sends the errors
    topic to the pipeline's outputs); a repeated name gets `#<index>`."""
    names = [_name_of(spec) for spec in topology.steps]
    return [
        name if names.count(name) == 1 else f"{name}#{spec.index}"
        for name, spec in zip(names, topology.steps, strict=True)
    ]


def counters_of(stats: StepStats) -> dict[str, int]:
    """The counters of `COUNTERS` read from a step's stats."""
    return {
        "records_in": stats.records_in,
        "records_out": stats.acked,
        "filtered": stats.filtered,
        "errors": stats.errors,
        "empty": stats.empty,
        "late": stats.late,
    }


class RateRing:
    """Successive (time, counters) samples of one step; rates over the last `window` seconds.

    Args:
        window: seconds of history a rate spans (older samples are dropped, one is kept as
            the base).
    """

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, now: float, counters: Mapping[str, int]) -> dict[str, float]:
        """Record a sample taken at `now` (monotonic seconds); return the rates per second.

        The base is the oldest sample not older than `window` (or, if every other is older,
        the newest of those); with a single sample every rate is 0.
        """
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        return self.rates()

    def rates(self) -> dict[str, float]:
        """Per-second rates between the oldest and newest samples held."""
        if len(self._samples) < 2:
            return dict.fromkeys(self._samples[-1][1] if self._samples else COUNTERS, 0.0)
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return dict.fromkeys(last, 0.0)
        # A counter that went down (a rebuilt pipeline) counts from 0.
        return {
            k: round(max(0, v - first.get(k, 0) if v >= first.get(k, 0) else v) / span, 3)
            for k, v in last.items()
        }


def _tensors(tensors: frozenset[str] | None) -> list[str] | None:
    return sorted(tensors) if tensors is not None else None


def describe_spec(spec: StepSpec, name: str) -> dict[str, Any]:
    """The spec-level description of one step (no live figures, no group)."""
    return {
        "name": name,
        "index": spec.index,
        "sources": [
            {
                "topic": s.topic,
                "pipeline": s.pipeline,
                "tensors": _tensors(s.tensors),
                "renames": dict(s.renames),
                "chain": s.chain.name.lower(),
            }
            for s in spec.sources
        ],
        "join": spec.join if spec.is_join else None,
        "window_ms": spec.window_ms if spec.is_stateful else None,
        "triggers": [
            {"topic": t.topic, "pipeline": t.pipeline, "tensors": _tensors(t.tensors)}
            for t in spec.triggers
        ],
        "triggers_join": spec.triggers_join if spec.triggers else None,
        "batch": (
            {"size": spec.batch_size, "window_ms": spec.batch_window_ms}
            if spec.sink_is_request and (spec.batch_size or spec.batch_window_ms)
            else None
        ),
        "sink": spec.sink,
        "stateful": spec.is_stateful,
    }


def empty_figures() -> dict[str, Any]:
    """Live figures of a step no engine reported."""
    return {
        "totals": dict.fromkeys(COUNTERS, 0),
        "rates": dict.fromkeys(COUNTERS, 0.0),
        "lag": {},
        "lag_total": 0,
        **dict.fromkeys(GAUGES, 0),
        "last_error": "",
        "waiting": "",
        "stuck_seconds": 0.0,
    }


def figures(
    stats: StepStats, lag: Mapping[tuple[str, int], int], rates: Mapping[str, float]
) -> dict[str, Any]:
    """The live figures of one step: totals, rates, lag per `topic/partition`, state, error."""
    per_partition = {f"{topic}/{partition}": n for (topic, partition), n in sorted(lag.items())}
    return {
        "totals": counters_of(stats),
        "rates": {k: float(rates.get(k, 0.0)) for k in COUNTERS},
        "lag": per_partition,
        "lag_total": sum(per_partition.values()),
        "state_records": stats.state_records,
        "state_bytes": stats.state_bytes,
        "last_error": stats.last_error,
        "waiting": stats.waiting,
        "stuck_seconds": round(stats.stuck_seconds, 1),
    }


def describe_topology(
    topology: Topology,
    *,
    state: str = "",
    reason: str = "",
    groups: Sequence[str] = (),
    state_topics: Sequence[str] = (),
    live: Callable[[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pipeline version as plain data.

    Args:
        topology: the pipeline version.
        state: `Ready`, `Creating`, `Rebalancing`, `Failed` (empty when not running).
        reason: why it failed, if it did.
        groups: each step's consumer group, by index (empty: unknown here).
        state_topics: each step's changelog topic ('' for a stateless step), by index.
        live: the live figures of the step of an index (None: none, e.g. in the proxy).
    """
    steps = []
    for spec, name in zip(topology.steps, step_names(topology), strict=True):
        step = describe_spec(spec, name)
        step["consumer_group"] = groups[spec.index] if spec.index < len(groups) else ""
        step["state_topic"] = state_topics[spec.index] if spec.index < len(state_topics) else ""
        step["live"] = live(spec.index) if live is not None else None
        steps.append(step)
    return {
        "name": topology.name,
        "version": topology.version,
        "uid": topology.uid,
        "state": state,
        "reason": reason,
        "output_topic": topology.output_topic,
        "error_topic": topology.error_topic,
        "allow_cycles": topology.allow_cycles,
        "steps": steps,
    }


def sum_figures(many: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Figures of several engines summed (lag per partition: the largest, since the
    partitions of a group are split among its members; last error: the first non-empty)."""
    out = empty_figures()
    for one in many:
        if not one:
            continue
        for k in COUNTERS:
            out["totals"][k] += one.get("totals", {}).get(k, 0)
            out["rates"][k] = round(out["rates"][k] + one.get("rates", {}).get(k, 0.0), 3)
        for k in GAUGES:
            out[k] += one.get(k, 0)
        for tp, n in one.get("lag", {}).items():
            out["lag"][tp] = max(n, out["lag"].get(tp, 0))
        out["last_error"] = out["last_error"] or one.get("last_error", "")
        if one.get("waiting"):  # each engine waits on its own partitions
            out["waiting"] = "; ".join(w for w in (out["waiting"], one["waiting"]) if w)
        out["stuck_seconds"] = max(out["stuck_seconds"], one.get("stuck_seconds", 0.0))
    out["lag"] = dict(sorted(out["lag"].items()))
    out["lag_total"] = sum(out["lag"].values())
    return out


_STATE_ORDER = ("Failed", "Rebalancing", "Creating", "Ready")


def worst_state(states: Iterable[str]) -> str:
    """The state that says most about several engines' copies: Failed first, Ready last."""
    found = [s for s in states if s]
    for state in _STATE_ORDER:
        if state in found:
            return state
    return found[0] if found else ""


def merge(base: Mapping[str, Any], engines: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`base` (a description, live or not) with the live figures of each engine's copy of the
    same pipeline version summed per step index, and those copies under `engines`.

    An engine's entry without `steps` (an error, or a version it does not run) adds nothing.
    """
    out = {k: v for k, v in base.items() if k != "steps"}
    running = {
        engine: d
        for engine, d in engines.items()
        if d.get("steps") is not None and d.get("uid", base.get("uid")) == base.get("uid")
    }
    steps = []
    for step in base.get("steps", []):
        step = dict(step)
        copies = [
            s
            for d in running.values()
            for s in d["steps"]
            if s.get("index") == step["index"] and s.get("live") is not None
        ]
        for copy in copies:  # engine-only fields the proxy cannot know
            for key in ("consumer_group", "state_topic", "window_ms"):
                if not step.get(key) and copy.get(key):
                    step[key] = copy[key]
        step["live"] = sum_figures(c["live"] for c in copies)
        steps.append(step)
    out["steps"] = steps
    if running:
        out["engine_state"] = worst_state(d.get("state", "") for d in running.values())
    out["engines"] = {
        engine: (
            {
                "state": d.get("state", ""),
                "reason": d.get("reason", ""),
                "steps": [
                    {"name": s["name"], "index": s["index"], "live": s.get("live")}
                    for s in d["steps"]
                ],
                **({"url": d["url"]} if "url" in d else {}),
                **({"event_loop_lag": d["event_loop_lag"]} if "event_loop_lag" in d else {}),
            }
            if engine in running
            else {k: v for k, v in d.items() if k in ("url", "error", "state")}
        )
        for engine, d in engines.items()
    }
    out["last_errors"] = [
        {"step": s["name"], "reason": s["live"]["last_error"]}
        for s in steps
        if s["live"]["last_error"]
    ]
    return out


# -- renderers -----------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:.1f}/s"


def _source_text(source: Mapping[str, Any]) -> str:
    text = str(source["topic"])
    if source.get("tensors"):
        text += " [" + ", ".join(source["tensors"]) + "]"
    renames = source.get("renames") or {}
    if renames:
        text += " (" + ", ".join(f"{k}->{v}" for k, v in sorted(renames.items())) + ")"
    return text


def render_text(d: Mapping[str, Any]) -> str:
    """Human text: the pipeline, then one block per step with its topics and live figures."""
    lines = [f"{d.get('name', '?')} v{d.get('version', '?')} (uid {d.get('uid', '?')})"]
    state = d.get("state") or d.get("engine_state") or ""
    if state:
        lines.append(f"  state:    {state}" + (f" ({d['reason']})" if d.get("reason") else ""))
    if d.get("summary"):
        lines.append(f"  engines:  {d['summary']}")
    for engine, e in sorted((d.get("engines") or {}).items()):
        status = e.get("error") or e.get("state") or "?"
        lines.append(
            f"    {engine}: {status}"
            + (f" ({e['url']})" if e.get("url") else "")
            + _loop_lag_text(e.get("event_loop_lag"))
        )
    if d.get("event_loop_lag") and not d.get("engines"):
        lines.append(f"  loop:    {_loop_lag_text(d['event_loop_lag']).strip()}")
    for signal in d.get("trouble") or []:
        lines.append(f"  trouble:  {signal}")
    for step in d.get("steps", []):
        lines.append("")
        lines.append(f"step {step['name']} (#{step['index']})")
        for source in step.get("sources", []):
            lines.append(f"  source:   {_source_text(source)}")
        if step.get("join"):
            lines.append(f"  join:     {step['join']}, window {step.get('window_ms')} ms")
        for trigger in step.get("triggers", []):
            lines.append(f"  trigger:  {_source_text(trigger)}")
        if step.get("triggers"):
            lines.append(f"  triggers: {step.get('triggers_join')} join")
        if step.get("batch"):
            batch = step["batch"]
            lines.append(
                f"  batch:    size {batch.get('size')}, window {batch.get('window_ms')} ms"
            )
        lines.append(f"  sink:     {step['sink']}")
        if step.get("consumer_group"):
            lines.append(f"  group:    {step['consumer_group']}")
        if step.get("state_topic"):
            lines.append(f"  state:    {step['state_topic']}")
        live = step.get("live")
        if live:
            t, r = live["totals"], live["rates"]
            lines.append(
                "  records:  "
                + ", ".join(f"{k.replace('records_', '')} {t[k]} ({_rate(r[k])})" for k in COUNTERS)
            )
            lag = ", ".join(f"{tp} {n}" for tp, n in live["lag"].items()) or "-"
            lines.append(f"  lag:      {live['lag_total']} ({lag})")
            if step.get("stateful"):
                lines.append(
                    f"  held:     {live['state_records']} records, {live['state_bytes']} bytes"
                )
            if live.get("waiting"):
                stuck = live.get("stuck_seconds", 0.0)
                lines.append(f"  waiting:  {stuck:.0f}s without progress: {live['waiting']}")
            if live.get("last_error"):
                lines.append(f"  error:    {live['last_error']}")
        for signal in step.get("trouble") or []:
            lines.append(f"  trouble:  {signal}")
    return "\n".join(lines) + "\n"


def _loop_lag_text(lag: Mapping[str, Any] | None) -> str:
    if not lag:
        return ""
    return (
        f" event loop lag {lag.get('last_ms', 0):.1f} ms,"
        f" max {lag.get('max_1m_ms', 0):.1f} ms in the last minute"
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(d: Mapping[str, Any]) -> str:
    """Graphviz: topics (ellipses) and steps (boxes) as nodes, left to right; a join's or a
    trigger's edges are labelled, the rates are in the step's label."""
    lines = [
        f"digraph {_quote(str(d.get('name', 'pipeline')))} {{",
        "  rankdir=LR;",
        "  node [fontname=Helvetica, fontsize=10];",
    ]
    topics: list[str] = []

    def topic(name: str) -> str:
        if name not in topics:
            topics.append(name)
        return _quote("t:" + name)

    body: list[str] = []
    for step in d.get("steps", []):
        node = _quote(f"s:{step['index']}")
        label = [step["name"]]
        if step.get("join"):
            label.append(f"join {step['join']} {step.get('window_ms')} ms")
        if step.get("batch"):
            label.append(f"batch {step['batch'].get('size')}")
        live = step.get("live")
        if live:
            r = live["rates"]
            label.append(
                f"in {_rate(r['records_in'])} out {_rate(r['records_out'])} "
                f"err {live['totals']['errors']} lag {live['lag_total']}"
            )
        body.append(f"  {node} [shape=box, style=rounded, label={_quote(chr(10).join(label))}];")
        for source in step.get("sources", []):
            attrs = []
            renames = source.get("renames") or {}
            if source.get("tensors") or renames:
                attrs.append(
                    f"label={_quote(_source_text(source)[len(source['topic']) :].strip())}"
                )
            suffix = f" [{', '.join(attrs)}]" if attrs else ""
            body.append(f"  {topic(source['topic'])} -> {node}{suffix};")
        for trigger in step.get("triggers", []):
            body.append(
                f"  {topic(trigger['topic'])} -> {node} "
                f"[style=dashed, label={_quote('trigger ' + str(step.get('triggers_join')))}];"
            )
        body.append(f"  {node} -> {topic(step['sink'])};")
    for name in topics:
        lines.append(f"  {_quote('t:' + name)} [shape=ellipse, label={_quote(name)}];")
    lines.extend(body)
    lines.append("}")
    return "\n".join(lines) + "\n"


def merge_pipelines(views: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' `/pipelines` lists (by worker label) as one: per pipeline version, the
    figures summed per step and each worker's copy under `engines`."""
    by_uid: dict[str, dict[str, dict[str, Any]]] = {}
    for worker, pipelines in views.items():
        for pipeline in pipelines:
            by_uid.setdefault(pipeline["uid"], {})[worker] = pipeline
    merged = []
    for copies in by_uid.values():
        base = next(iter(copies.values()))
        one = merge(base, copies)
        one["state"] = one.pop("engine_state", base.get("state", ""))
        merged.append(one)
    merged.sort(key=lambda d: (d["name"], d["version"]))
    return merged
