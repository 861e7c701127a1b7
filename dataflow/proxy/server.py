"""The proxy's I/O: the Chainer gRPC service for engines and the HTTP control API.

gRPC (grpclib), service `seldon.mlops.chainer.Chainer`, messages decoded strictly
(`dataflow.chainer.StrictCodec`: a malformed one is refused with `INVALID_ARGUMENT`), optionally
over TLS or mutual TLS:

* `SubscribePipelineUpdates`: registers the subscriber by its name with its own queue and
  streams the messages the store decides to send it; when the stream ends the subscriber is
  removed. A second subscription of a name that is connected is refused (`ALREADY_EXISTS`)
  unless it comes from the same engine process reconnecting: the same instance id in the
  `x-dataflow-instance` metadata as the live one; it then replaces (ends) the first. Dead
  connections are found by keepalive pings (every 20 s, 10 s to answer).
* `PipelineUpdateEvent`: an engine's ack, recorded by the store and logged on one line. An ack
  for a connected stream that carries another instance id than its subscription is refused
  (`PERMISSION_DENIED`).

Every change of the store is saved (`dataflow.proxy.database`) before its messages are sent.

HTTP (aiohttp, `dataflow.proxy.control`), JSON bodies; with a bearer token set every route but
`GET /health` needs `Authorization: Bearer <token>` (401 `{"error"}` otherwise):

* `GET /pipelines`: list of pipeline objects (`PipelineRecord.as_dict`), each with the
  `trouble` signals of its steps as of the last sample (`dataflow.proxy.history`).
* `GET /pipelines/{name}`: one pipeline object (with `trouble`), 404 if unknown.
* `POST /pipelines` (body: the YAML text of one spec file; `?source=<file name>` names it in
  errors): 201 `{"outcome", "pipeline", "warning"}` for a new pipeline or version, 200 when
  unchanged or retried, 400 `{"error": "<SpecError line>"}` for a bad spec.
* `DELETE /pipelines/{name}`: 200 `{"outcome", "pipeline"}`, 404 `{"error"}` if unknown.
* `GET /subscribers`: `{"subscribers": [names]}`.
* `GET /pipelines/{name}/describe`: the pipeline as its spec describes it
  (`dataflow.describe.describe_topology`) with the live figures of every engine running it
  summed per step, each engine's own under `engines` (`dataflow.describe.merge`), and per step
  the last 10 minutes of rates (`history`) and its `trouble` signals, 404 if unknown.
* `GET /`: the live page (`dataflow/proxy/page/`: static HTML, JS and CSS, nothing fetched from
  elsewhere), which polls the two routes above.
* `GET /health`: `{"status": "UP"}` (for container health checks; no token needed).

Every `history_interval` seconds (5) the proxy asks each engine once for all it runs
(`GET /pipelines` of its health server) and keeps the figures of every step for 10 minutes
(`dataflow.proxy.history`): the page's sparklines and the trouble signals come from there.

Engines are found by their health servers: each engine sends its address in the
`x-dataflow-health` metadata of its subscription (`:port` when it binds every interface: the
host is then the subscription's peer address), and `engine_urls` lists more (engines that
subscribe elsewhere, e.g. to Seldon's scheduler).

With a token, the page authenticates with a cookie: `GET /?token=<token>` sets an HttpOnly,
SameSite=Strict cookie and redirects to `/`; the cookie is accepted for GET requests only, so
it can read but never load or unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from loguru import logger

from dataflow import describe
from dataflow.chainer import HEALTH_METADATA, INSTANCE_METADATA, ChainerService, StrictCodec
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
)
from dataflow.proxy.control import ControlApi
from dataflow.proxy.database import StateDatabase, StateError
from dataflow.proxy.history import SAMPLE_S, History
from dataflow.proxy.records import (
    Ack,
    LoadResult,
    PipelineRecord,
    Send,
    UnknownPipelineError,
    UnloadResult,
    op_name,
)
from dataflow.proxy.store import PipelineStore
from dataflow.specs import PipelineSpec, load_spec, parse_spec, spec_files
from dataflow.topics import DEFAULT_NAMESPACE, DEFAULT_PREFIX
from dataflow.topology import TopologyError, topology_from

SHUTDOWN_GRACE_S = 2.0
#: Seconds an engine's health server has to answer a describe.
ENGINE_TIMEOUT_S = 2.0

# Server-side keepalive: a subscription whose engine vanished (no FIN, no RST) is found within
# 30 s, so that its name can be used again.
_GRPC_CONFIG = Configuration(
    _keepalive_time=20.0,
    _keepalive_timeout=10.0,
    _http2_max_pings_without_data=0,
    _http2_min_sent_ping_interval_without_data=10.0,
)


class _Subscription:
    """One open `SubscribePipelineUpdates` stream."""

    def __init__(
        self, name: str, instance: str | None, peer: str, health: str | None = None
    ) -> None:
        self.name = name
        self.instance = instance
        self.peer = peer
        self.health = health
        self.queue: asyncio.Queue[PipelineUpdateMessage | None] = asyncio.Queue()
        self.ended = asyncio.Event()

    def close(self) -> None:
        self.queue.put_nowait(None)


def _instance(stream: Stream[Any, Any]) -> str | None:
    value = stream.metadata.get(INSTANCE_METADATA) if stream.metadata else None
    return str(value) if value else None


def _peer(stream: Stream[Any, Any]) -> str:
    address = stream.peer.addr()
    return f"{address[0]}:{address[1]}" if address else "?"


def health_url(advertised: str | None, peer: str) -> str | None:
    """The URL of an engine's health server from its `x-dataflow-health` value (`host:port`,
    `[v6]:port` or `:port`) and the subscription's peer address (`host:port`); None if unusable.
    """
    if not advertised:
        return None
    host, _, port = advertised.rpartition(":")
    if not port.isdigit():
        return None
    if not host:
        host = peer.rpartition(":")[0] if peer != "?" else ""
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
    return f"http://{host}:{port}" if host else None


def _health(stream: Stream[Any, Any]) -> str | None:
    value = stream.metadata.get(HEALTH_METADATA) if stream.metadata else None
    return health_url(str(value) if value else None, _peer(stream))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


class ProxyServer:
    """The proxy scheduler: a `PipelineStore` behind the gRPC and HTTP servers.

    Args:
        host: address both servers bind.
        port: Chainer gRPC port (0: any free port).
        control_port: HTTP control API port (0: any free port).
        default_namespace: topic namespace of Seldon resources without `metadata.namespace`.
        prefix: topic prefix of Seldon resources.
        store: the store (default: a new one, or the one restored from `database`).
        database: where every change is saved and the pipelines are restored from (None:
            nothing is kept across restarts).
        token: the bearer token of the control API (None: no authentication).
        tls: the TLS context of the Chainer gRPC service (None: plaintext).
        engine_urls: health servers of engines to describe besides those that subscribe here
            (e.g. `http://10.0.0.5:8000`).
        history_interval: seconds between two samples of every engine's figures.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 10101,
        control_port: int = 10102,
        default_namespace: str = DEFAULT_NAMESPACE,
        prefix: str = DEFAULT_PREFIX,
        store: PipelineStore | None = None,
        database: StateDatabase | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        engine_urls: Iterable[str] = (),
        history_interval: float = SAMPLE_S,
    ) -> None:
        self.host = host
        self.history = History()
        self.history_interval = history_interval
        self._history_task: asyncio.Task[None] | None = None
        self.engine_urls = [u.rstrip("/") for u in engine_urls if u.strip()]
        self._http: aiohttp.ClientSession | None = None
        self._port = port
        self._control_port = control_port
        self.default_namespace = default_namespace
        self.prefix = prefix
        self.store = store if store is not None else PipelineStore()
        self.database = database
        self._token = token.encode() if token else None
        self._tls = tls
        if database is not None:
            restored = database.load()
            for record, max_version in restored:
                self.store.restore(record, max_version)
            if restored:
                logger.info(
                    "restored {} pipeline(s) from {}: {}",
                    len(restored),
                    database.path,
                    ", ".join(f"{r.name} v{r.version} {r.state}" for r, _ in restored),
                )
        self._subscriptions: dict[str, _Subscription] = {}
        self._stopping = False
        self._grpc: Server | None = None
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound gRPC port (the configured one before `start`)."""
        return self._port

    @property
    def control_port(self) -> int:
        """The bound HTTP port (the configured one before `start`)."""
        return self._control_port

    # Pipelines.

    def _persist(self) -> None:
        """Save what changed in the store.

        Raises:
            StateError: the save failed (the changes are saved with the next one).
        """
        records = self.store.take_dirty()
        if self.database is None or not records:
            return
        try:
            self.database.save(records, self.store.max_version)
        except StateError:
            self.store.keep_dirty(records)
            raise

    def _commit(self, sends: Iterable[Send]) -> None:
        """Save, then send. Messages about known uids go out even if the save failed."""
        try:
            self._persist()
        except StateError as e:
            logger.error("{}", e)
        self._dispatch(sends)

    def _dispatch(self, sends: Iterable[Send]) -> None:
        for send in sends:
            subscription = self._subscriptions.get(send.subscriber)
            message = send.message
            if subscription is None:
                continue
            subscription.queue.put_nowait(message)
            logger.info(
                "send to {}: {} {} v{} (uid {}, ts {})",
                send.subscriber,
                op_name(int(message.op)),
                message.pipeline,
                message.version,
                message.uid,
                message.timestamp,
            )

    def load(self, spec: PipelineSpec) -> LoadResult:
        """Load a spec into the store, save it, and send what it decides.

        Raises:
            StateError: the new state could not be saved; nothing was sent (a new uid is
                never sent before it is saved).
        """
        result = self.store.load(spec)
        self._persist()
        record = result.record
        logger.info(
            "load {}: {} v{} (uid {}, ts {}) from {}",
            result.outcome,
            record.name,
            record.version,
            record.uid,
            record.timestamp,
            spec.source,
        )
        if result.warning:
            logger.warning("{}", result.warning)
        self._dispatch(result.sends)
        return result

    def load_text(self, text: str, source: str) -> LoadResult:
        """Parse and load one spec file's text.

        Raises:
            SpecError: the spec is bad.
        """
        spec = parse_spec(
            text, source, default_namespace=self.default_namespace, prefix=self.prefix
        )
        return self.load(spec)

    def load_paths(self, paths: Iterable[Path]) -> list[LoadResult]:
        """Load spec files and folders (`*.yaml`, `*.yml`); all are checked before any loads.

        Raises:
            SpecError: the first bad file.
        """
        specs = [
            load_spec(path, default_namespace=self.default_namespace, prefix=self.prefix)
            for path in spec_files(paths)
        ]
        return [self.load(spec) for spec in specs]

    def unload(self, name: str) -> UnloadResult:
        """Unload a pipeline and send the Deletes.

        Raises:
            UnknownPipelineError: no pipeline of that name.
        """
        result = self.store.unload(name)
        record = result.record
        logger.info(
            "unload {}: {} v{} (uid {}, ts {})",
            result.outcome,
            record.name,
            record.version,
            record.uid,
            record.timestamp,
        )
        self._commit(result.sends)
        return result

    def record_ack(
        self, message: PipelineUpdateStatusMessage, instance: str | None = None, peer: str = "?"
    ) -> None:
        """Record and log one ack (one line).

        Raises:
            GRPCError: `PERMISSION_DENIED` when the ack's stream is connected under another
                instance id than `instance`.
        """
        ack = Ack.from_message(message)
        live = self._subscriptions.get(ack.stream)
        if live is not None and live.instance is not None and live.instance != instance:
            logger.warning(
                "refused an ack for stream {!r} from {}: another engine holds that subscription",
                ack.stream,
                peer,
            )
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"stream {ack.stream!r} is connected from another engine",
            )
        result = self.store.ack(ack)
        if result.accepted:
            logger.info("{}", result.describe())
        else:
            logger.warning("{}", result.describe())
        self._commit(result.sends)

    async def subscription(
        self, name: str, instance: str | None = None, peer: str = "?", health: str | None = None
    ) -> AsyncIterator[PipelineUpdateMessage]:
        """The messages of one subscriber, until its stream or the proxy ends.

        Args:
            name: the subscriber name.
            instance: the engine process's instance id (`x-dataflow-instance`), if it sent one.
            peer: its address, for logs.
            health: its health server's URL (`x-dataflow-health`), if it sent one.

        Raises:
            GRPCError: `INVALID_ARGUMENT` for an empty name, `ALREADY_EXISTS` when the name is
                connected and this is not the same engine reconnecting.
        """
        if not name:
            raise GRPCError(Status.INVALID_ARGUMENT, "a subscription needs a subscriber name")
        previous = self._subscriptions.get(name)
        if previous is not None and (instance is None or previous.instance != instance):
            logger.warning(
                "refused a subscription as {!r} from {}: that name is connected from {}",
                name,
                peer,
                previous.peer,
            )
            raise GRPCError(
                Status.ALREADY_EXISTS,
                f"subscriber name {name!r} is already connected from another engine "
                "(give every engine its own SELDON_DATAFLOW_REPLICA_ID)",
            )
        subscription = _Subscription(name, instance, peer, health)
        self._subscriptions[name] = subscription
        if previous is not None:
            logger.warning("subscription from {} ({}) replaces its previous stream", name, peer)
            previous.close()
        logger.info("subscription from {} ({})", name, peer)
        self._commit(self.store.subscribe(name))
        try:
            while True:
                message = await subscription.queue.get()
                if message is None:
                    return
                yield message
        finally:
            subscription.ended.set()
            if self._subscriptions.get(name) is subscription:
                del self._subscriptions[name]
                logger.info("subscription of {} ended", name)
                if not self._stopping:  # the proxy leaving is no engine leaving: state kept
                    self._commit(self.store.unsubscribe(name))

    # Describe.

    def engines(self) -> dict[str, str]:
        """Engine name (subscriber name, or the URL of a listed one) -> health server URL."""
        found = {s.name: s.health for s in self._subscriptions.values() if s.health}
        known = set(found.values())
        found.update({url: url for url in self.engine_urls if url not in known})
        return found

    async def _engine_view(self, url: str, name: str) -> dict[str, Any]:
        assert self._http is not None
        try:
            path = urllib.parse.quote(name, safe="")
            async with self._http.get(f"{url}/pipelines/{path}") as response:
                if response.status == 404:
                    return {"url": url, "state": "not running"}
                if response.status != 200:
                    return {"url": url, "error": f"HTTP {response.status}"}
                view: dict[str, Any] = await response.json()
                return {**view, "url": url}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"url": url, "error": f"unreachable: {type(exc).__name__} {exc}".strip()}

    async def _engine_all(self, url: str) -> dict[str, dict[str, Any]]:
        """Every pipeline an engine runs (its latest version of each name), by name; {} when
        it does not answer."""
        assert self._http is not None
        try:
            async with self._http.get(f"{url}/pipelines") as response:
                if response.status != 200:
                    return {}
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        return {p["name"]: {**p, "url": url} for p in body.get("pipelines", [])}

    async def sample(self) -> None:
        """Ask every engine once for what it runs and add each pipeline's figures to the
        history (the history task does it every `history_interval` seconds)."""
        records = self.store.records()
        engines = self.engines()
        views = await asyncio.gather(*(self._engine_all(u) for u in engines.values()))
        now = asyncio.get_running_loop().time()
        for record in records:
            per_engine = {
                engine: view[record.name]
                for engine, view in zip(engines, views, strict=True)
                if record.name in view
            }
            if per_engine:
                self.history.add(now, describe.merge(self._base(record), per_engine))
        self.history.forget((r.name, r.uid) for r in records)

    async def _history_routine(self) -> None:
        while True:
            await asyncio.sleep(self.history_interval)
            try:
                await self.sample()
            except Exception:  # a bad sample must not end the history
                logger.exception("sampling the engines' figures failed")

    def _base(self, record: PipelineRecord) -> dict[str, Any]:
        """A pipeline record's description from its spec alone (no live figures)."""
        try:
            topology = topology_from(record.definition.create_message(record.timestamp), 0)
            base = describe.describe_topology(topology)
        except TopologyError as exc:
            base = {"name": record.name, "version": record.version, "uid": record.uid}
            base.update(steps=[], reason=str(exc))
        base.update(state=str(record.state), reason=record.reason, summary=record.summary())
        return base

    async def describe(self, name: str) -> dict[str, Any]:
        """The pipeline's description with the live figures of every engine running it, the
        steps' history and trouble signals.

        Raises:
            UnknownPipelineError: no pipeline of that name.
        """
        record = self.store.get(name)
        if record is None:
            raise UnknownPipelineError(name)
        base = self._base(record)
        engines = self.engines()
        views = await asyncio.gather(*(self._engine_view(u, name) for u in engines.values()))
        return self.history.annotate(describe.merge(base, dict(zip(engines, views, strict=True))))

    # Lifecycle.

    async def start(self) -> None:
        """Bind and start both servers (ports 0 pick free ports, see `port`/`control_port`).

        Raises:
            OSError: a port cannot be bound.
        """
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ENGINE_TIMEOUT_S))
        grpc_socket = _bind(self.host, self._port)
        self._port = grpc_socket.getsockname()[1]
        chainer = ChainerService(
            lambda request, stream: self.subscription(
                str(request.name), _instance(stream), _peer(stream), _health(stream)
            ),
            lambda request, stream: self.record_ack(request, _instance(stream), _peer(stream)),
        )
        self._grpc = Server([chainer], codec=StrictCodec(), config=_GRPC_CONFIG)
        await self._grpc.start(sock=grpc_socket, ssl=self._tls)
        try:
            control_socket = _bind(self.host, self._control_port)
            self._control_port = control_socket.getsockname()[1]
            self._runner = web.AppRunner(
                ControlApi(self, self._token).app(),
                access_log=None,
                shutdown_timeout=SHUTDOWN_GRACE_S,
            )
            await self._runner.setup()
            await web.SockSite(self._runner, control_socket).start()
        except BaseException:
            await self.stop()
            raise
        self._history_task = asyncio.create_task(self._history_routine(), name="proxy:history")
        logger.info(
            "proxy scheduler: Chainer gRPC on {}:{} ({}), control API on http://{}:{} ({})",
            self.host,
            self._port,
            "TLS" if self._tls is not None else "plaintext",
            self.host,
            self._control_port,
            "bearer token" if self._token is not None else "no token",
        )

    async def stop(self) -> None:
        """End every subscription (streams finish normally), then close both servers."""
        self._stopping = True
        if self._history_task is not None:
            self._history_task.cancel()
            await asyncio.wait([self._history_task])
            self._history_task = None
        subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            subscription.close()
        if subscriptions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.ended.wait() for s in subscriptions)), SHUTDOWN_GRACE_S
                )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._grpc is not None:
            self._grpc.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grpc.wait_closed(), SHUTDOWN_GRACE_S)
            self._grpc = None
        logger.info("proxy scheduler stopped")
