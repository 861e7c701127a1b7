"""What a step's parts (its collector and its state) share with the step that owns them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from dataflow.errors import StepFailed
from dataflow.offsets import OffsetTracker
from dataflow.stats import StepStats


@dataclass(frozen=True, slots=True)
class StepContext:
    """A step's shared bookkeeping, and the callbacks into the step.

    Attributes:
        producer: the engine's shared producer.
        producer_for: the producer of an input partition's task (exactly-once: the task's,
            inside its open transaction); else the shared producer.
        exactly_once: the step sends in transactions (a failed send fails the step).
        tracker: the step's offset tracker (what is safe to commit).
        stats: the step's counters.
        log: the step's logger.
        generation: the step's partition generation, bumped by each revocation: what was
            consumed before it no longer holds offsets.
        fail: reports that the step can no longer deliver (its loop raises the failure).
    """

    producer: AIOKafkaProducer
    producer_for: Callable[[int], Awaitable[AIOKafkaProducer]]
    exactly_once: bool
    tracker: OffsetTracker[TopicPartition]
    stats: StepStats
    log: Any
    generation: Callable[[], int]
    fail: Callable[[StepFailed], None]
