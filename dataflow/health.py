"""HTTP probes (`/live`, `/ready`, `/startup`), `/metrics`, and `/pipelines` (what runs).

Liveness never depends on Kafka or the scheduler: it only says the event loop answers.
Readiness means the scheduler stream is up and every created pipeline's consumers own their
partitions. Startup means the engine finished starting.

`GET /pipelines` is `{"engine", "pipelines": [...]}`, every pipeline version this engine runs
as `dataflow.describe.describe_topology` describes it, with each step's live figures; `GET
/pipelines/{name}` is the newest version of that name (404 `{"error"}` if none). Rates come from
a `RateRing` per step sampled on each such request (no background task): a caller asking every
few seconds sees rates over the last `RATE_WINDOW_S` seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dataflow.describe import RateRing, counters_of, describe_topology, figures
from dataflow.metrics import registry_for
from dataflow.topology import group_id

if TYPE_CHECKING:
    from dataflow.engine import Engine
    from dataflow.pipeline import Pipeline


def probe_response(checks: dict[str, tuple[bool, str]]) -> web.Response:
    """The answer of a probe: 200 when every check is healthy, else 503, with each check's
    message (the body of the reference engine's probes). Served by `HealthServer` and by the
    workers' supervisor (`dataflow.workers`).

    Args:
        checks: name -> (healthy, message).
    """
    healthy = all(ok for ok, _ in checks.values())
    body = {
        "status": "UP" if healthy else "DOWN",
        "checks": {
            name: {"isHealthy": ok, "message": message} for name, (ok, message) in checks.items()
        },
        "overallHealthy": healthy,
    }
    return web.json_response(body, status=200 if healthy else 503)


class HealthServer:
    """The probe and metrics server of one engine (port 0 picks a free port; None: off)."""

    def __init__(self, engine: Engine, port: int, host: str = "0.0.0.0") -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._registry = registry_for(engine)
        self._rings: dict[tuple[str, int], RateRing] = {}  # (uid, step index)

    def checks(self, kind: str) -> dict[str, tuple[bool, str]]:
        """The named checks of a probe kind: live, ready or startup."""
        engine = self.engine
        if kind == "live":
            return {"service": (True, "event loop responsive")}
        if kind == "startup":
            started = engine.startup_done.is_set()
            return {"engine": (started, "started" if started else "starting")}
        connected = engine.subscriber.connected
        waiting = sorted(
            p.topology.name
            for p in engine.pipelines.values()
            if p.failed is None and not p.assigned
        )
        return {
            "kafka": engine.broker.check(),
            "grpc-chainer": (
                connected,
                "scheduler stream is up" if connected else "scheduler stream is down",
            ),
            "pipelines": (
                not waiting,
                "all pipelines own their partitions"
                if not waiting
                else "waiting for partitions: " + ", ".join(waiting),
            ),
        }

    async def _probe(self, request: web.Request) -> web.Response:
        kind = request.path.strip("/")
        try:
            checks = self.checks(kind)
        except Exception as exc:
            return web.json_response({"status": "DOWN", "error": str(exc)}, status=500)
        return probe_response(checks)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def _describe(self, pipeline: Pipeline, now: float) -> dict[str, Any]:
        topology = pipeline.topology
        if pipeline.failed is not None:
            state = "Failed"
        elif not pipeline.active:
            state = "Creating"
        else:
            state = "Ready" if pipeline.assigned else "Rebalancing"
        steps = {step.spec.index: step for step in pipeline.steps}

        def live(index: int) -> dict[str, Any]:
            step = steps[index]
            ring = self._rings.setdefault((topology.uid, index), RateRing())
            rates = ring.add(now, counters_of(step.stats))
            lag = {(tp.topic, tp.partition): n for tp, n in step.lag().items()}
            return figures(step.stats, lag, rates)

        described = describe_topology(
            topology,
            state=state,
            reason=pipeline.failed or "",
            groups=[
                group_id(pipeline.settings.group_base(), topology.uid, spec.index)
                for spec in topology.steps
            ],
            state_topics=[step.state_topic for step in pipeline.steps],
            live=live,
        )
        lag = self.engine.watchdog.lag
        described["event_loop_lag"] = {
            "last_ms": round(lag.last * 1000, 1),
            "max_1m_ms": round(lag.recent_max() * 1000, 1),
        }
        return described

    def describe(self) -> dict[str, Any]:
        """Every pipeline version this engine runs, with live figures (takes a rate sample)."""
        now = time.monotonic()
        pipelines = list(self.engine.pipelines.values())
        uids = {p.topology.uid for p in pipelines}
        for key in [k for k in self._rings if k[0] not in uids]:
            del self._rings[key]
        described = [self._describe(p, now) for p in pipelines]
        described.sort(key=lambda d: (d["name"], d["version"]))
        return {"engine": self.engine.settings.dataflow_replica_id, "pipelines": described}

    async def _pipelines(self, request: web.Request) -> web.Response:
        return web.json_response(self.describe())

    async def _pipeline(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = [d for d in self.describe()["pipelines"] if d["name"] == name]
        if not found:
            return web.json_response({"error": f"pipeline {name!r} does not run here"}, status=404)
        return web.json_response(found[-1])

    async def start(self) -> None:
        """Start serving (no-op when the port is negative)."""
        if self.port < 0:
            return
        app = web.Application()
        app.router.add_get("/live", self._probe)
        app.router.add_get("/ready", self._probe)
        app.router.add_get("/startup", self._probe)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/pipelines", self._pipelines)
        app.router.add_get("/pipelines/{name}", self._pipeline)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("health server on {}:{}", self.host, self.port)
        self.engine.subscriber.advertise_health(self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
