"""The Chainer client: subscribe to pipeline updates, reconnect forever, send status acks.

Parity with the reference (spec 2.3): exponential backoff from 50 ms to 5 s between attempts,
keepalive pings every 60 s with a 2 s timeout, and acks retried with full jitter.

Updates are decoded strictly (`dataflow.chainer`): one that does not fit the current
`chainer.proto` (the 2022 layout, say) is handed to `on_malformed` with what can be read of its
identity, never to `on_update`, and the stream goes on. Plaintext by default; TLS and mutual TLS
with `SELDON_UPSTREAM_SECURITY_PROTOCOL=SSL`. The subscription and every ack carry this
process's instance id (`x-dataflow-instance` metadata) so the scheduler can tell this engine
reconnecting from another one using the same subscriber name.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from loguru import logger

from dataflow.chainer import (
    HEALTH_METADATA,
    INSTANCE_METADATA,
    SUBSCRIBE_PATH,
    MalformedMessage,
    StrictCodec,
    client_context,
    decode,
    header,
)
from dataflow.proto.seldon.mlops.chainer import (
    ChainerStub,
    PipelineSubscriptionRequest,
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
)
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation as Op,
)
from dataflow.settings import Settings

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
#: Failed attempts of one ack before a WARNING (earlier ones are logged at DEBUG).
ACK_WARN_AFTER = 3


def backoff_delays(minimum: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> list[float]:
    """The doubling delays from `minimum`, capped at `maximum` (the cap repeats forever)."""
    delays = [minimum]
    while delays[-1] < maximum:
        delays.append(min(maximum, delays[-1] * 2))
    return delays


MALFORMED = "malformed PipelineUpdateMessage"
"""Start of the reason of the failed ack of an update that does not decode."""


def upstream_tls(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context of the settings, None for PLAINTEXT.

    Raises:
        OSError, ssl.SSLError: a CA, certificate or key file that cannot be used.
    """
    if settings.upstream_security_protocol != "SSL":
        return None

    def path(value: str) -> Path | None:
        return Path(value) if value else None

    return client_context(
        path(settings.upstream_tls_ca_path),
        path(settings.upstream_tls_cert_path),
        path(settings.upstream_tls_key_path),
    )


class Subscriber:
    """Keeps one subscription to the scheduler alive and delivers its messages.

    Args:
        host: scheduler host.
        port: scheduler port.
        name: this replica's subscriber name (echoed as `stream` in acks).
        on_update: called with every `PipelineUpdateMessage`, in arrival order; must not block.
        on_malformed: called instead with the identity read from an update that does not
            decode, and the reason (`malformed PipelineUpdateMessage: ...`); must not block.
        tls: the client TLS context (None: plaintext).
        instance: this process's instance id (default: a random one).
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        on_update: Callable[[PipelineUpdateMessage], None],
        on_malformed: Callable[[PipelineUpdateMessage, str], None] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        instance: str | None = None,
    ) -> None:
        self.name = name
        self.on_update = on_update
        self.on_malformed = on_malformed
        self.instance = instance or secrets.token_hex(8)
        self.connected = False
        self.subscriptions = 0
        config = Configuration(
            _keepalive_time=60.0,
            _keepalive_timeout=2.0,
            _keepalive_permit_without_calls=False,
        )
        self._channel = Channel(host, port, ssl=tls, config=config, codec=StrictCodec())
        self._stub = ChainerStub(self._channel)
        self._metadata = {INSTANCE_METADATA: self.instance}
        self._target = f"{host}:{port}" + (" (TLS)" if tls is not None else "")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        on_update: Callable[[PipelineUpdateMessage], None],
        on_malformed: Callable[[PipelineUpdateMessage, str], None] | None = None,
    ) -> Subscriber:
        """The subscriber of an engine: scheduler address, replica id and TLS of `settings`.

        Raises:
            OSError, ssl.SSLError: a TLS file that cannot be used.
        """
        return cls(
            settings.upstream_host,
            settings.upstream_port,
            settings.dataflow_replica_id,
            on_update,
            on_malformed,
            tls=upstream_tls(settings),
        )

    def advertise_health(self, host: str, port: int) -> None:
        """Send the health server's address with the subscription (`x-dataflow-health`)."""
        wildcard = host in ("", "0.0.0.0", "::")
        shown = "" if wildcard else f"[{host}]" if ":" in host else host
        self._metadata[HEALTH_METADATA] = f"{shown}:{port}"

    def _deliver(self, raw: bytes) -> None:
        try:
            message = decode(PipelineUpdateMessage, raw)
        except MalformedMessage as exc:
            identity = header(raw)
            reason = f"{MALFORMED}: {exc}"
            logger.warning(
                "refused an update from the scheduler ({} v{}, uid {}, ts {}): {}",
                identity.pipeline or "<no pipeline>",
                identity.version,
                identity.uid or "-",
                identity.timestamp,
                reason,
            )
            if self.on_malformed is not None:
                self.on_malformed(identity, reason)
            return
        self.on_update(message)

    async def run(self) -> None:
        """Subscribe, and resubscribe after every end or error, until cancelled."""
        delays = backoff_delays()
        failures = 0
        while True:
            try:
                logger.info("subscribing to scheduler {} as {}", self._target, self.name)
                async with self._channel.request(
                    SUBSCRIBE_PATH,
                    Cardinality.UNARY_STREAM,
                    PipelineSubscriptionRequest,
                    bytes,
                    metadata=self._metadata,
                ) as stream:
                    await stream.send_message(PipelineSubscriptionRequest(name=self.name), end=True)
                    # The request reached the scheduler over a live connection: the stream is up,
                    # even if no pipeline is sent for a while.
                    self.connected = True
                    self.subscriptions += 1
                    failures = 0
                    async for raw in stream:
                        self._deliver(raw)
                logger.info("scheduler stream ended; resubscribing")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                level = "WARNING" if failures in (1, len(delays)) else "DEBUG"
                if isinstance(exc, GRPCError):  # it answered: say what it said
                    logger.log(
                        level,
                        "scheduler {} refused the subscription as {}: {} {}; retry in {:.2f}s",
                        self._target,
                        self.name,
                        exc.status.name,
                        exc.message,
                        delay,
                    )
                else:
                    logger.log(
                        level,
                        "scheduler {} unreachable ({}); retry in {:.2f}s",
                        self._target,
                        type(exc).__name__,
                        delay,
                    )
                self.connected = False
                await asyncio.sleep(delay)
                continue
            self.connected = False
            await asyncio.sleep(BACKOFF_MIN)

    async def ack(self, update: PipelineUpdateMessage, op: Op, success: bool, reason: str) -> bool:
        """Tell the scheduler the outcome of `update`, retried with jitter (backoff to 5 s)
        for as long as the subscription it answers is up; once that stream has ended the ack
        is dropped: the scheduler sends its pipelines again to the next subscription, and each
        is acked again then. A scheduler restart is a healthy event: no ERROR line.

        Returns:
            True when the scheduler received the ack.
        """
        message = PipelineUpdateStatusMessage(
            update=PipelineUpdateMessage(
                op=op,
                pipeline=update.pipeline,
                version=update.version,
                uid=update.uid,
                timestamp=update.timestamp,
                stream=self.name,
            ),
            success=success,
            reason=reason,
        )
        stream = self.subscriptions
        attempt = 0
        while True:
            try:
                await self._stub.pipeline_update_event(message, timeout=10, metadata=self._metadata)
                logger.info(
                    "ack {} {} v{} (uid {}, ts {}) {}: {}",
                    op.name,
                    update.pipeline,
                    update.version,
                    update.uid,
                    update.timestamp,
                    "ok" if success else "FAILED",
                    reason,
                )
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                delay = random.uniform(0, min(BACKOFF_MAX, 0.1 * 2 ** min(attempt, 10)))
                logger.log(
                    "WARNING" if attempt == ACK_WARN_AFTER else "DEBUG",
                    "ack {} {} failed ({}); retrying every {:.0f} s at most while the "
                    "scheduler stream lasts",
                    op.name,
                    update.pipeline,
                    exc,
                    BACKOFF_MAX,
                )
                await asyncio.sleep(delay)
            if self.subscriptions != stream or not self.connected:
                logger.info(
                    "ack {} {} v{} dropped after {} attempts: its scheduler stream ended "
                    "(the scheduler sends its pipelines again on resubscription)",
                    op.name,
                    update.pipeline,
                    update.version,
                    attempt,
                )
                return False

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()
