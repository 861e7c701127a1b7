"""`python -m dataflow`: parse the settings, run the engine on uvloop until SIGTERM/SIGINT.

With `--num-cores N` above 1 it runs `dataflow.workers.supervise` instead: N engine processes.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from loguru import logger

from dataflow import __version__, logs
from dataflow.settings import Settings, SettingsError, load_settings


class StartupError(Exception):
    """The engine could not start; str() is the one line to print."""


async def serve(settings: Settings) -> None:
    """Run one engine until a stop signal, then shut it down within the configured bound."""
    from dataflow.engine import Engine
    from dataflow.health import HealthServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        engine = Engine(settings)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load a TLS file (Kafka or scheduler): {exc}") from exc
    health = HealthServer(engine, settings.health_server_port, settings.health_server_host)
    try:
        await health.start()
    except OSError as exc:
        raise StartupError(
            f"cannot start the health server on "
            f"{settings.health_server_host}:{settings.health_server_port}: {exc}"
        ) from exc
    try:
        try:
            await engine.start()
        except Exception as exc:
            reason = logs.last_kafka_error() or f"{type(exc).__name__}: {exc}"
            if reason.rstrip().endswith(":"):  # e.g. a bare ConnectionResetError
                reason = f"{reason.rstrip()} connection closed by the broker" + (
                    " during the TLS handshake (does the listener speak TLS?)"
                    if "SSL" in settings.kafka_security_protocol
                    else ""
                )
            raise StartupError(
                f"cannot connect to Kafka at {settings.kafka_bootstrap_servers} "
                f"({settings.kafka_security_protocol}): {reason}"
            ) from exc
        await stop.wait()
        logger.info(
            "stop signal received; shutting down (bound {}s)", settings.shutdown_timeout_seconds
        )
    finally:
        try:
            await asyncio.wait_for(engine.stop(), settings.shutdown_timeout_seconds)
        finally:
            await health.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m dataflow`."""
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"dataflow: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level_app, settings.log_level_kafka, settings.log_format)
    logger.info(
        "dataflow {}: scheduler {}:{}, Kafka {} ({}), health server :{}",
        __version__,
        settings.upstream_host,
        settings.upstream_port,
        settings.kafka_bootstrap_servers,
        settings.kafka_security_protocol,
        settings.health_server_port,
    )
    logger.debug("settings: {}", settings.masked())
    run: Callable[[Settings], Coroutine[Any, Any, None]] = serve
    errors: tuple[type[Exception], ...] = (StartupError,)
    if (settings.num_cores or 1) > 1:  # a supervisor of N engine processes
        from dataflow import workers

        run, errors = workers.supervise, (StartupError, workers.StartupError)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run(settings))
        else:
            uvloop.run(run(settings))
    except errors as exc:
        logger.remove()
        print(f"dataflow: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
