"""The Chainer client: subscribe to pipeline updates, reconnect forever, send status acks.

Parity with the reference (spec 2.3): exponential backoff from 50 ms to 5 s between attempts,
keepalive pings every 60 s with a 2 s timeout, and acks retried with full jitter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from loguru import logger

from dataflow.proto.seldon.mlops.chainer import (
    ChainerStub,
    PipelineSubscriptionRequest,
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
)
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation as Op,
)

SUBSCRIBE_PATH = "/seldon.mlops.chainer.Chainer/SubscribePipelineUpdates"
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
ACK_ATTEMPTS = 5


def backoff_delays(minimum: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> list[float]:
    """The doubling delays from `minimum`, capped at `maximum` (the cap repeats forever)."""
    delays = [minimum]
    while delays[-1] < maximum:
        delays.append(min(maximum, delays[-1] * 2))
    return delays


class Subscriber:
    """Keeps one subscription to the scheduler alive and delivers its messages.

    Args:
        host: scheduler host.
        port: scheduler port.
        name: this replica's subscriber name (echoed as `stream` in acks).
        on_update: called with every `PipelineUpdateMessage`, in arrival order; must not block.
    """

    def __init__(
        self, host: str, port: int, name: str, on_update: Callable[[PipelineUpdateMessage], None]
    ) -> None:
        self.name = name
        self.on_update = on_update
        self.connected = False
        self.subscriptions = 0
        config = Configuration(
            _keepalive_time=60.0,
            _keepalive_timeout=2.0,
            _keepalive_permit_without_calls=False,
        )
        self._channel = Channel(host, port, config=config)
        self._stub = ChainerStub(self._channel)
        self._target = f"{host}:{port}"

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
                    PipelineUpdateMessage,
                ) as stream:
                    await stream.send_message(PipelineSubscriptionRequest(name=self.name), end=True)
                    # The request reached the scheduler over a live connection: the stream is up,
                    # even if no pipeline is sent for a while.
                    self.connected = True
                    self.subscriptions += 1
                    failures = 0
                    async for message in stream:
                        self.on_update(message)
                logger.info("scheduler stream ended; resubscribing")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                level = "WARNING" if failures in (1, len(delays)) else "DEBUG"
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
        """Tell the scheduler the outcome of `update`; retried up to 5 times with jitter.

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
        for attempt in range(ACK_ATTEMPTS):
            try:
                await self._stub.pipeline_update_event(message, timeout=10)
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
                delay = random.uniform(0, min(3.2, 0.1 * 2**attempt))
                logger.warning(
                    "ack for {} failed ({}); retry in {:.2f}s", update.pipeline, exc, delay
                )
                await asyncio.sleep(delay)
        logger.error(
            "giving up acking {} {} after {} attempts", op.name, update.pipeline, ACK_ATTEMPTS
        )
        return False

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()
