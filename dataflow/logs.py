"""Logging through loguru, with stdlib logging (aiokafka, grpclib) routed into it."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from loguru import logger

_KAFKA_LOGGERS = ("aiokafka", "grpclib", "kafka")
_STDLIB_LEVELS = {
    "TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50,
}  # fmt: skip

#: aiokafka lines of healthy paths that it retries by itself (a new topic's leader not elected
#: yet, the group coordinator not loaded yet on a first start; one broker of a cluster down,
#: whose partitions move to the others): logged at INFO, not ERROR. An outage of the whole
#: cluster is the engine's own warning (`dataflow.reachability`).
_RETRIED = (
    ("Got error produce response", "NotLeaderForPartitionError"),
    ("Group Coordinator Request failed", "CoordinatorNotAvailable"),
    ("Group Coordinator Request failed", "NodeNotReadyError"),
    ("FindCoordinator Request failed", "CoordinatorNotAvailable"),
    ("Marking the coordinator dead", ""),
    ("Heartbeat failed for group", "because it is rebalancing"),
    ("Unable connect to node with id", ""),
    ("Failed fetch messages from", "NodeNotReadyError"),
    ("Failed fetch messages from", "KafkaConnectionError"),
)


def _retried(record: logging.LogRecord) -> bool:
    if not record.name.startswith("aiokafka") or record.levelno > logging.ERROR:
        return False
    message = record.getMessage()
    return any(head in message and tail in message for head, tail in _RETRIED)


#: Client-library lines let through per second, all loggers together; the rest are counted.
CLIENT_LINES_PER_SECOND = 2


class _Budget:
    """At most `CLIENT_LINES_PER_SECOND` client lines a second (a broker outage makes aiokafka
    log a thousand a second); what is held back is counted for `take_suppressed`."""

    window = 0
    used = 0
    suppressed = 0

    @classmethod
    def allow(cls) -> bool:
        now = int(time.monotonic())
        if now != cls.window:
            cls.window, cls.used = now, 0
        if cls.used < CLIENT_LINES_PER_SECOND:
            cls.used += 1
            return True
        cls.suppressed += 1
        return False


def take_suppressed() -> int:
    """How many client log lines were held back since the last call."""
    held, _Budget.suppressed = _Budget.suppressed, 0
    return held


class _InterceptHandler(logging.Handler):
    """Routes stdlib records into loguru; client-library records below `kafka_level` dropped,
    the others rate-limited."""

    kafka_level = logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        client = record.name.startswith(_KAFKA_LOGGERS)
        if client and _retried(record):
            record.levelno, record.levelname = logging.INFO, "INFO"
        if client and (record.levelno < self.kafka_level or not _Budget.allow()):
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


class _LastError(logging.Handler):
    """Remembers the last error aiokafka logged, to explain a failed start in one line."""

    message = ""

    def emit(self, record: logging.LogRecord) -> None:
        _LastError.message = record.getMessage()


def last_kafka_error() -> str:
    """The last error line aiokafka logged, or an empty string."""
    return _LastError.message


def _json_sink(message: Any) -> None:
    record = message.record
    flat = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        **{k: v for k, v in record["extra"].items()},
    }
    if record["exception"] is not None:
        flat["exception"] = str(record["exception"])
    sys.stderr.write(orjson.dumps(flat, default=str).decode() + "\n")


def setup(app_level: str = "INFO", kafka_level: str = "WARNING", fmt: str = "text") -> None:
    """Configure loguru once for the process.

    Args:
        app_level: level of the engine's own lines.
        kafka_level: level of aiokafka and grpclib lines.
        fmt: `text` (human-readable) or `json` (one flat object per line).
    """
    app_level = "WARNING" if app_level == "WARN" else app_level
    kafka_level = "WARNING" if kafka_level == "WARN" else kafka_level
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink, level=app_level)
    else:
        logger.add(
            sys.stderr,
            level=app_level,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "{extra[prefix]}{message}",
            colorize=None,
        )
    logger.configure(extra={"prefix": ""}, patcher=_prefix)
    intercept = _InterceptHandler()
    intercept.kafka_level = _STDLIB_LEVELS[kafka_level]
    logging.basicConfig(handlers=[intercept], level=logging.WARNING, force=True)
    # Client loggers pass errors on even when quieter, so a failed start can be explained.
    for name in _KAFKA_LOGGERS:
        logging.getLogger(name).setLevel(min(intercept.kafka_level, logging.ERROR))
    logging.getLogger("aiokafka").addHandler(_LastError(level=logging.ERROR))


def _prefix(record: Any) -> None:
    extra = record["extra"]
    parts = [f"{k}={extra[k]}" for k in ("pipeline", "step", "request_id") if k in extra]
    extra["prefix"] = ("[" + " ".join(parts) + "] ") if parts else ""
