"""`--num-cores N`: one engine made of N worker processes on one host, under a supervisor.

With N > 1, `python -m dataflow` runs this supervisor instead of an engine. To the scheduler it
is still one engine: it subscribes once, under the engine's replica id, and answers every
command with one ack for all its workers (`dataflow.acks`), with its own stream name and the
scheduler's timestamp. Its N workers are plain engines (`python -m dataflow`,
`SELDON_NUM_CORES=1`) that subscribe to a small Chainer server the supervisor runs on
127.0.0.1 (a free port):

* every scheduler command is forwarded to every worker as it came; a worker that subscribes
  (at start, or after a restart) first gets the latest Create of every uid, as the proxy does;
* workers share the pipelines' consumer groups (same group ids), so Kafka spreads the
  partitions over them; each is a static member of its own (`<instance id>-w<i>`: the engine's
  `dataflow.membership.instance_id` and the worker's index, the same across its restarts) and
  subscribes as `<replica id>-w<i>`; every other setting is the supervisor's;
* a worker that dies is restarted after a short backoff (0.5 s doubling to 5 s, back to 0.5 s
  once it ran 30 s); one that exits before all N first subscribed fails the start (exit 1, its
  own error line above), as an engine that cannot start does. Workers get SIGTERM if the
  supervisor dies (Linux `PR_SET_PDEATHSIG`), so none is left behind;
* SIGTERM/SIGINT: the scheduler stream is closed, every worker gets SIGTERM and drains; the
  supervisor waits for all of them up to `SELDON_SHUTDOWN_TIMEOUT_SECONDS`, kills those still
  alive, and exits 0.

The supervisor serves the engine's health port itself (`SELDON_HEALTH_SERVER_HOST`/`_PORT`);
workers serve theirs on 127.0.0.1 and a port the supervisor picks before each start:

* `/live`: 200 while the supervisor's loop answers;
* `/startup`: 200 once every worker subscribed once;
* `/ready`: 200 when the scheduler stream is up and every worker's own `/ready` is 200 (asked
  on each probe, 2 s per worker); the body names what each worker waits for;
* `/metrics`: every worker's metrics with a `worker="<i>"` label, and the supervisor's own:
  `dataflow_scheduler_connected`, `dataflow_workers_running`, `dataflow_worker_restarts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from grpclib.server import Server
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dataflow.acks import COMMANDS, AckBook, Summary
from dataflow.chainer import ChainerService, StrictCodec
from dataflow.describe import merge_pipelines
from dataflow.health import probe_response
from dataflow.membership import instance_id
from dataflow.metrics import merge_metrics
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
)
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation as Op,
)
from dataflow.settings import Settings
from dataflow.subscriber import Subscriber
from dataflow.worker_process import (
    LOCAL_HOST,
    death_signal,
    free_port,
    restart_delay,
    worker_env,
    worker_name,
)

__all__ = ["StartupError", "Supervisor", "supervise"]

PROBE_TIMEOUT = 2.0
KILL_WAIT = 5.0


class StartupError(Exception):
    """The supervisor could not start; str() is the one line to print."""


@dataclass
class _Worker:
    """One worker process slot: its current process, if any, and its history."""

    index: int
    name: str
    process: asyncio.subprocess.Process | None = None
    health_port: int = 0
    restarts: int = 0
    subscribed_once: bool = False
    task: asyncio.Task[None] | None = None


@dataclass
class _Subscription:
    """One worker's open stream from the local Chainer server."""

    name: str
    queue: asyncio.Queue[PipelineUpdateMessage | None] = field(default_factory=asyncio.Queue)

    def close(self) -> None:
        self.queue.put_nowait(None)


class Supervisor:
    """The engine of `settings.num_cores` worker processes (see the module docstring).

    Raises:
        OSError, ssl.SSLError: a scheduler TLS file that cannot be used.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.count = settings.num_cores or 1
        self._environ = dict(os.environ if environ is None else environ)
        self.subscriber = Subscriber.from_settings(settings, self._on_update, self._on_malformed)
        self.instance = instance_id(settings)
        self.workers = [
            _Worker(i, worker_name(settings.dataflow_replica_id, i)) for i in range(self.count)
        ]
        self._by_name = {w.name: w for w in self.workers}
        self.book = AckBook()
        self._subscriptions: dict[str, _Subscription] = {}
        self._ack_tails: dict[str, asyncio.Task[bool]] = {}
        self._acks: set[asyncio.Task[bool]] = set()
        self._grpc: Server | None = None
        self.local_port = 0
        self._runner: web.AppRunner | None = None
        self.health_port = settings.health_server_port
        self._http: aiohttp.ClientSession | None = None
        self._subscription_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._failed: str | None = None
        self._preexec = death_signal()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Local Chainer server, health server, the workers; once every worker subscribed,
        the scheduler subscription. Returns early if `stop_soon` is called meanwhile.

        Raises:
            StartupError: a port cannot be bound, or a worker exited before all subscribed.
        """
        sock = socket.create_server((LOCAL_HOST, 0))
        self.local_port = sock.getsockname()[1]
        chainer = ChainerService(
            lambda request, _stream: self.subscription(str(request.name)),
            lambda request, _stream: self.worker_ack(request),
        )
        self._grpc = Server([chainer], codec=StrictCodec())
        await self._grpc.start(sock=sock)
        await self._start_health()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
        for worker in self.workers:
            worker.task = asyncio.create_task(self._keep(worker), name=f"worker:{worker.index}")
        stopping = asyncio.create_task(self._stopping.wait())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait([stopping, started], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        started.cancel()
        if self._failed is not None:
            raise StartupError(self._failed)
        if self._stopping.is_set():
            return
        self._subscription_task = asyncio.create_task(self.subscriber.run(), name="subscriber")
        logger.info(
            "engine {} started with {} workers: kafka {}, scheduler {}:{}",
            self.settings.dataflow_replica_id,
            self.count,
            self.settings.kafka_bootstrap_servers,
            self.settings.upstream_host,
            self.settings.upstream_port,
        )

    def stop_soon(self) -> None:
        """Ask for the shutdown (a signal handler)."""
        self._stopping.set()

    async def wait(self) -> None:
        """Until `stop_soon`."""
        await self._stopping.wait()

    async def stop(self) -> None:
        """Close the scheduler stream, SIGTERM every worker, wait for them (bounded by the
        shutdown timeout), kill the rest, close the servers."""
        self._stopping.set()
        if self._subscription_task is not None:
            self._subscription_task.cancel()
            await asyncio.gather(self._subscription_task, return_exceptions=True)
        for worker in self.workers:
            self._signal(worker, signal.SIGTERM)
        tasks = [w.task for w in self.workers if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_seconds)
            if pending:
                for worker in self.workers:
                    if worker.process is not None and worker.process.returncode is None:
                        logger.warning(
                            "worker {} (pid {}) still running after {}s; killed",
                            worker.name,
                            worker.process.pid,
                            self.settings.shutdown_timeout_seconds,
                        )
                        self._signal(worker, signal.SIGKILL)
                await asyncio.wait(pending, timeout=KILL_WAIT)
                for task in pending:
                    task.cancel()
        for ack in list(self._acks):
            ack.cancel()
        for subscription in self._subscriptions.values():
            subscription.close()
        if self._grpc is not None:
            self._grpc.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grpc.wait_closed(), 2)
            self._grpc = None
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.subscriber.close()
        logger.info("engine stopped (all {} workers)", self.count)

    # -- workers ---------------------------------------------------------------------------

    def _signal(self, worker: _Worker, sig: int) -> None:
        process = worker.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def _keep(self, worker: _Worker) -> None:
        """Run worker `worker` until the shutdown, restarting it whenever it exits."""
        delay: float | None = None
        while not self._stopping.is_set():
            began = time.monotonic()
            code = await self._run_once(worker)
            if self._stopping.is_set():
                return
            if not self._started.is_set():
                self._failed = (
                    f"worker {worker.name} exited with code {code} during start-up "
                    "(see its error above)"
                )
                self._stopping.set()
                return
            delay = restart_delay(delay, time.monotonic() - began)
            worker.restarts += 1
            logger.warning(
                "worker {} exited with code {}; restarting in {:.1f}s", worker.name, code, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, worker: _Worker) -> int | str:
        """Start the worker's process and wait for its exit; its exit code (or why it did
        not start)."""
        worker.health_port = free_port()
        env = worker_env(
            self.settings,
            worker.index,
            upstream_port=self.local_port,
            health_port=worker.health_port,
            instance=self.instance,
            environ=self._environ,
        )
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dataflow", env=env, preexec_fn=self._preexec
            )
        except OSError as exc:
            logger.error("cannot start worker {}: {}", worker.name, exc)
            return f"none ({exc})"
        worker.process = process
        logger.info(
            "worker {} started (pid {}, health port {})",
            worker.name,
            process.pid,
            worker.health_port,
        )
        if self._stopping.is_set():
            self._signal(worker, signal.SIGTERM)
        code = await process.wait()
        logger.log(
            "INFO" if self._stopping.is_set() else "WARNING",
            "worker {} (pid {}) exited with code {}",
            worker.name,
            process.pid,
            code,
        )
        return code

    # -- local Chainer server --------------------------------------------------------------

    async def subscription(self, name: str) -> AsyncIterator[PipelineUpdateMessage]:
        """The messages of one worker's stream: what it missed, then every command."""
        previous = self._subscriptions.get(name)
        if previous is not None:
            previous.close()
        subscription = _Subscription(name)
        self._subscriptions[name] = subscription
        replay = self.book.replay(name)
        for message in replay:
            subscription.queue.put_nowait(message)
        worker = self._by_name.get(name)
        logger.info("worker {} subscribed; sent it {} pipeline message(s)", name, len(replay))
        if worker is not None and not worker.subscribed_once:
            worker.subscribed_once = True
            if all(w.subscribed_once for w in self.workers):
                self._started.set()
        try:
            while True:
                message = await subscription.queue.get()
                if message is None:
                    return
                yield message
        finally:
            if self._subscriptions.get(name) is subscription:
                del self._subscriptions[name]
                logger.info("worker {} stream ended", name)
                if not self._stopping.is_set():
                    self._send(self.book.left(name))

    def worker_ack(self, status: PipelineUpdateStatusMessage) -> None:
        """One worker's ack: summed with the others', maybe answered upstream."""
        update = status.update
        name = update.stream
        logger.debug(
            "worker {} ack {} {} (uid {}, ts {}) {}: {}",
            name,
            update.op.name,
            update.pipeline,
            update.uid,
            update.timestamp,
            "ok" if status.success else "FAILED",
            status.reason,
        )
        if name not in self._subscriptions or self._stopping.is_set():
            return
        self._send(self.book.ack(name, status))

    # -- scheduler -------------------------------------------------------------------------

    def _on_update(self, message: PipelineUpdateMessage) -> None:
        logger.info(
            "scheduler sent {} {} v{} (uid {}, ts {}); to workers {}",
            message.op.name,
            message.pipeline,
            message.version,
            message.uid,
            message.timestamp,
            ", ".join(sorted(self._subscriptions)) or "(none connected yet)",
        )
        if message.op not in COMMANDS:
            logger.warning("ignoring operation {} for {}", message.op.name, message.pipeline)
            return
        if self._stopping.is_set():
            return
        self.book.command(message, set(self._subscriptions))
        for subscription in self._subscriptions.values():
            subscription.queue.put_nowait(message)

    def _on_malformed(self, message: PipelineUpdateMessage, reason: str) -> None:
        """An update that does not decode: acked as failed here, never forwarded."""
        if not self._stopping.is_set():
            op = Op.Delete if message.op == Op.Delete else Op.Create
            self._send([Summary(message, op, False, reason)])

    def _send(self, summaries: list[Summary]) -> None:
        """Send acks upstream, each after the earlier ones of its uid."""
        for summary in summaries:
            uid = summary.update.uid
            task = asyncio.create_task(
                self._ack_after(self._ack_tails.get(uid), summary), name=f"ack:{uid}"
            )
            self._ack_tails[uid] = task
            self._acks.add(task)
            task.add_done_callback(self._ack_done)

    async def _ack_after(self, previous: asyncio.Task[bool] | None, summary: Summary) -> bool:
        if previous is not None:
            await asyncio.wait([previous])
        return await self.subscriber.ack(
            summary.update, summary.op, summary.success, summary.reason
        )

    def _ack_done(self, task: asyncio.Task[bool]) -> None:
        self._acks.discard(task)
        uid = task.get_name().removeprefix("ack:")
        if self._ack_tails.get(uid) is task:
            del self._ack_tails[uid]

    # -- health ----------------------------------------------------------------------------

    async def _start_health(self) -> None:
        app = web.Application()
        app.router.add_get("/live", self._live)
        app.router.add_get("/startup", self._startup)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/pipelines", self._pipelines)
        app.router.add_get("/pipelines/{name}", self._pipelines)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.health_server_host, self.health_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot start the health server on "
                f"{self.settings.health_server_host}:{self.health_port}: {exc}"
            ) from exc
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.health_port = sockets[0].getsockname()[1]
        logger.info("health server on {}:{}", self.settings.health_server_host, self.health_port)
        self.subscriber.advertise_health(self.settings.health_server_host, self.health_port)

    async def _get(self, worker: _Worker, path: str) -> tuple[int, str] | None:
        """A worker's answer to GET `path` (status, body), None when it does not answer."""
        if self._http is None or worker.process is None or worker.process.returncode is not None:
            return None
        url = f"http://{LOCAL_HOST}:{worker.health_port}{path}"
        try:
            async with self._http.get(url) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _worker_ready(self, worker: _Worker) -> tuple[bool, str]:
        answer = await self._get(worker, "/ready")
        if answer is None:
            running = worker.process is not None and worker.process.returncode is None
            return False, "starting" if running else "not running (restarting)"
        status, text = answer
        if status == 200:
            return True, "ready"
        try:
            checks = json.loads(text).get("checks", {})
            waiting = [f"{k}: {v['message']}" for k, v in checks.items() if not v["isHealthy"]]
        except (ValueError, AttributeError, KeyError, TypeError):
            waiting = [f"HTTP {status}"]
        return False, "; ".join(waiting) or f"HTTP {status}"

    async def _live(self, request: web.Request) -> web.Response:
        return probe_response({"service": (True, "event loop responsive")})

    async def _startup(self, request: web.Request) -> web.Response:
        started = self._subscription_task is not None
        return probe_response({"engine": (started, "started" if started else "starting")})

    async def _ready(self, request: web.Request) -> web.Response:
        connected = self.subscriber.connected
        checks = {
            "grpc-chainer": (
                connected,
                "scheduler stream is up" if connected else "scheduler stream is down",
            )
        }
        answers = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
        for worker, answer in zip(self.workers, answers, strict=True):
            checks[f"worker-{worker.index}"] = answer
        return probe_response(checks)

    def _own_metrics(self) -> list[Metric]:
        connected = GaugeMetricFamily(
            "dataflow_scheduler_connected", "1 when the scheduler stream is up"
        )
        connected.add_metric([], 1 if self.subscriber.connected else 0)
        running = GaugeMetricFamily("dataflow_workers_running", "worker processes running")
        running.add_metric(
            [],
            sum(1 for w in self.workers if w.process is not None and w.process.returncode is None),
        )
        restarts = CounterMetricFamily(
            "dataflow_worker_restarts", "worker processes restarted", labels=["worker"]
        )
        for worker in self.workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        return [connected, running, restarts]

    async def _metrics(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        texts = {
            str(w.index): a[1]
            for w, a in zip(self.workers, answers, strict=True)
            if a is not None and a[0] == 200
        }
        return web.Response(
            body=merge_metrics(texts, self._own_metrics()),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _pipelines(self, request: web.Request) -> web.Response:
        """`/pipelines` (or `/pipelines/{name}`) of every worker, figures summed per step."""
        answers = await asyncio.gather(*(self._get(w, "/pipelines") for w in self.workers))
        views: dict[str, list[dict[str, Any]]] = {}
        for worker, answer in zip(self.workers, answers, strict=True):
            if answer is not None and answer[0] == 200:
                views[str(worker.index)] = json.loads(answer[1]).get("pipelines", [])
        merged = merge_pipelines(views)
        name = request.match_info.get("name")
        if name is None:
            return web.json_response(
                {"engine": self.settings.dataflow_replica_id, "pipelines": merged}
            )
        found = [d for d in merged if d["name"] == name]
        if not found:
            return web.json_response({"error": f"pipeline {name!r} does not run here"}, status=404)
        return web.json_response(found[-1])


async def supervise(settings: Settings) -> None:
    """Run the engine as `settings.num_cores` workers until a stop signal (the `serve` of N > 1).

    Raises:
        StartupError: it could not start (one line).
    """
    try:
        supervisor = Supervisor(settings)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load a TLS file (scheduler): {exc}") from exc
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop_soon)
    try:
        await supervisor.start()
        await supervisor.wait()
        logger.info(
            "stop signal received; stopping {} workers (bound {}s)",
            supervisor.count,
            settings.shutdown_timeout_seconds,
        )
    finally:
        await supervisor.stop()
