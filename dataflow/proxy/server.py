"""The proxy's I/O: the Chainer gRPC service for engines and the HTTP control API.

gRPC (grpclib, the generated `ChainerBase`), service `seldon.mlops.chainer.Chainer`:

* `SubscribePipelineUpdates`: registers the subscriber by its name with its own queue and
  streams the messages the store decides to send it; a second subscription of the same name
  replaces (ends) the first; when the stream ends the subscriber is removed.
* `PipelineUpdateEvent`: an engine's ack, recorded by the store and logged on one line.

HTTP (aiohttp), JSON bodies:

* `GET /pipelines`: list of pipeline objects (`PipelineRecord.as_dict`).
* `GET /pipelines/{name}`: one pipeline object, 404 if unknown.
* `POST /pipelines` (body: the YAML text of one spec file; `?source=<file name>` names it in
  errors): 201 `{"outcome", "pipeline", "warning"}` for a new pipeline or version, 200 when
  unchanged or retried, 400 `{"error": "<SpecError line>"}` for a bad spec.
* `DELETE /pipelines/{name}`: 200 `{"outcome", "pipeline"}`, 404 `{"error"}` if unknown.
* `GET /subscribers`: `{"subscribers": [names]}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from grpclib.server import Server
from loguru import logger

from dataflow.proto.seldon.mlops.chainer import (
    ChainerBase,
    PipelineSubscriptionRequest,
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
    PipelineUpdateStatusResponse,
)
from dataflow.proxy.store import (
    Ack,
    LoadResult,
    PipelineStore,
    Send,
    UnknownPipelineError,
    UnloadResult,
    op_name,
)
from dataflow.specs import PipelineSpec, SpecError, load_spec, parse_spec, spec_files
from dataflow.topics import DEFAULT_NAMESPACE, DEFAULT_PREFIX

SHUTDOWN_GRACE_S = 2.0


class _Subscription:
    """One open `SubscribePipelineUpdates` stream."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[PipelineUpdateMessage | None] = asyncio.Queue()
        self.ended = asyncio.Event()

    def close(self) -> None:
        self.queue.put_nowait(None)


class ChainerService(ChainerBase):  # type: ignore[misc]
    """`seldon.mlops.chainer.Chainer` backed by a `ProxyServer`."""

    def __init__(self, proxy: ProxyServer) -> None:
        self._proxy = proxy

    async def subscribe_pipeline_updates(
        self, pipeline_subscription_request: PipelineSubscriptionRequest
    ) -> AsyncIterator[PipelineUpdateMessage]:
        """Stream pipeline updates to one engine replica until it or the proxy goes away."""
        async for message in self._proxy.subscription(str(pipeline_subscription_request.name)):
            yield message

    async def pipeline_update_event(
        self, pipeline_update_status_message: PipelineUpdateStatusMessage
    ) -> PipelineUpdateStatusResponse:
        """Record one ack."""
        self._proxy.record_ack(pipeline_update_status_message)
        return PipelineUpdateStatusResponse()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


class ProxyServer:
    """The proxy scheduler: a `PipelineStore` behind the gRPC and HTTP servers.

    Args:
        host: address both servers bind.
        port: Chainer gRPC port (0: any free port).
        control_port: HTTP control API port (0: any free port).
        default_namespace: topic namespace of Seldon resources without `metadata.namespace`.
        prefix: topic prefix of Seldon resources.
        store: the store (default: a new one).
    """

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 10101,
        control_port: int = 10102,
        default_namespace: str = DEFAULT_NAMESPACE,
        prefix: str = DEFAULT_PREFIX,
        store: PipelineStore | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self._control_port = control_port
        self.default_namespace = default_namespace
        self.prefix = prefix
        self.store = store if store is not None else PipelineStore()
        self._subscriptions: dict[str, _Subscription] = {}
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
        """Load a spec into the store and send what it decides."""
        result = self.store.load(spec)
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
        self._dispatch(result.sends)
        return result

    def record_ack(self, message: PipelineUpdateStatusMessage) -> None:
        """Record and log one ack (one line)."""
        result = self.store.ack(Ack.from_message(message))
        if result.accepted:
            logger.info("{}", result.describe())
        else:
            logger.warning("{}", result.describe())

    async def subscription(self, name: str) -> AsyncIterator[PipelineUpdateMessage]:
        """The messages of one subscriber, until its stream or the proxy ends."""
        subscription = _Subscription(name)
        previous = self._subscriptions.get(name)
        self._subscriptions[name] = subscription
        if previous is not None:
            logger.warning("subscription from {} replaces its previous stream", name)
            previous.close()
        logger.info("subscription from {}", name)
        self._dispatch(self.store.subscribe(name))
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
                self._dispatch(self.store.unsubscribe(name))

    # HTTP control API.

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/pipelines", self._http_list)
        app.router.add_post("/pipelines", self._http_load)
        app.router.add_get("/pipelines/{name}", self._http_get)
        app.router.add_delete("/pipelines/{name}", self._http_unload)
        app.router.add_get("/subscribers", self._http_subscribers)
        return app

    async def _http_list(self, request: web.Request) -> web.Response:
        return _json([record.as_dict() for record in self.store.records()])

    async def _http_get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        record = self.store.get(name)
        if record is None:
            return _json({"error": str(UnknownPipelineError(name))}, 404)
        return _json(record.as_dict())

    async def _http_load(self, request: web.Request) -> web.Response:
        source = request.query.get("source") or "request"
        try:
            text = await request.text()
            result = self.load_text(text, source)
        except SpecError as e:
            logger.warning("load refused: {}", e)
            return _json({"error": str(e)}, 400)
        except UnicodeDecodeError:
            return _json({"error": f"{source}: body is not UTF-8 text"}, 400)
        body = {
            "outcome": result.outcome,
            "pipeline": result.record.as_dict(),
            "warning": result.warning,
        }
        return _json(body, 201 if result.outcome in ("created", "updated") else 200)

    async def _http_unload(self, request: web.Request) -> web.Response:
        try:
            result = self.unload(request.match_info["name"])
        except UnknownPipelineError as e:
            return _json({"error": str(e)}, 404)
        return _json({"outcome": result.outcome, "pipeline": result.record.as_dict()})

    async def _http_subscribers(self, request: web.Request) -> web.Response:
        return _json({"subscribers": list(self.store.subscribers)})

    # Lifecycle.

    async def start(self) -> None:
        """Bind and start both servers (ports 0 pick free ports, see `port`/`control_port`).

        Raises:
            OSError: a port cannot be bound.
        """
        grpc_socket = _bind(self.host, self._port)
        self._port = grpc_socket.getsockname()[1]
        self._grpc = Server([ChainerService(self)])
        await self._grpc.start(sock=grpc_socket)
        try:
            control_socket = _bind(self.host, self._control_port)
            self._control_port = control_socket.getsockname()[1]
            self._runner = web.AppRunner(
                self._app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
            )
            await self._runner.setup()
            await web.SockSite(self._runner, control_socket).start()
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "proxy scheduler: Chainer gRPC on {}:{}, control API on http://{}:{}",
            self.host,
            self._port,
            self.host,
            self._control_port,
        )

    async def stop(self) -> None:
        """End every subscription (streams finish normally), then close both servers."""
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
        if self._grpc is not None:
            self._grpc.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grpc.wait_closed(), SHUTDOWN_GRACE_S)
            self._grpc = None
        logger.info("proxy scheduler stopped")
