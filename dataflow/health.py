"""HTTP probes (`/live`, `/ready`, `/startup`) and `/metrics`, as the reference serves them.

Liveness never depends on Kafka or the scheduler: it only says the event loop answers.
Readiness means the scheduler stream is up and every created pipeline's consumers own their
partitions. Startup means the engine finished starting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dataflow.metrics import registry_for

if TYPE_CHECKING:
    from dataflow.engine import Engine


def _body(checks: dict[str, tuple[bool, str]]) -> tuple[int, dict[str, Any]]:
    healthy = all(ok for ok, _ in checks.values())
    body = {
        "status": "UP" if healthy else "DOWN",
        "checks": {
            name: {"isHealthy": ok, "message": message} for name, (ok, message) in checks.items()
        },
        "overallHealthy": healthy,
    }
    return (200 if healthy else 503), body


class HealthServer:
    """The probe and metrics server of one engine (port 0 picks a free port; None: off)."""

    def __init__(self, engine: Engine, port: int, host: str = "0.0.0.0") -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._registry = registry_for(engine)

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
            status, body = _body(self.checks(kind))
        except Exception as exc:
            return web.json_response({"status": "DOWN", "error": str(exc)}, status=500)
        return web.json_response(body, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> None:
        """Start serving (no-op when the port is negative)."""
        if self.port < 0:
            return
        app = web.Application()
        app.router.add_get("/live", self._probe)
        app.router.add_get("/ready", self._probe)
        app.router.add_get("/startup", self._probe)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("health server on {}:{}", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
