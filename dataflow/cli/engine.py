"""`dataflow engine` (and `python -m dataflow`): run the engine on uvloop until SIGTERM/SIGINT.

Its flags are the settings of `dataflow.settings.Settings` (`--kebab-case`, the reference engine's
names), each also set by its `SELDON_*` variable or `.env`; flags win. With `--num-cores N` above 1
it runs `dataflow.workers.supervise` instead: N engine processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from dataflow import tracing
from dataflow.cli.base import UsageError, given
from dataflow.settings import Settings

if TYPE_CHECKING:
    from dataflow.confluent import Registry
    from dataflow.tracing import Tracer

NAME = "dataflow"


class StartupError(Exception):
    """The engine could not start; str() is the one line to print."""


class EngineCommand(Settings):
    """Run the data-flow engine: subscribe to the scheduler (Chainer gRPC) and run every
    pipeline it sends on Kafka. Every flag can also be set in the environment (name shown) or in a
    .env file; flags win."""

    def cli_cmd(self) -> None:
        check_files(self)
        raise SystemExit(run(self))


def check_files(settings: Settings) -> None:
    """Every file a `*_path` setting names must be readable.

    Raises:
        UsageError: one line naming the file and its setting.
    """
    for field in type(settings).model_fields:
        path = getattr(settings, field) if field.endswith("_path") else ""
        if not path:
            continue
        if field == "kafka_schema_registry_config_path":  # a directory: its settings file
            from dataflow.confluent import config_file

            path = config_file(path)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            where = given(type(settings), field)
            raise UsageError(f"cannot read {path!r} ({where}): {exc.strerror}") from None


async def serve(settings: Settings) -> None:
    """Run one engine until a stop signal, then shut it down within the configured bound."""
    from loguru import logger

    from dataflow import logs
    from dataflow.engine import Engine
    from dataflow.health import HealthServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tracer, registry = await _extras(settings)
    try:
        engine = Engine(settings, tracer, registry)
    except (OSError, ssl.SSLError) as exc:
        await _close_extras(tracer, registry)
        raise StartupError(f"cannot load a TLS file (Kafka or scheduler): {exc}") from exc
    health = HealthServer(engine, settings.health_server_port, settings.health_server_host)
    try:
        await health.start()
    except OSError as exc:
        await _close_extras(tracer, registry)
        raise StartupError(
            f"cannot start the health server on "
            f"{settings.health_server_host}:{settings.health_server_port}: {exc}"
        ) from exc
    try:
        try:
            with tracing.span(tracer, "dataflow.engine.start",
                              **{"seldon.replica": settings.dataflow_replica_id}):  # fmt: skip
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
            await _close_extras(tracer, None)  # the registry closed with the engine


async def _extras(settings: Settings) -> tuple[Tracer | None, Registry | None]:
    """The tracer (from the OTEL_* environment) and the schema registry client (checked
    reachable), or None for each that is off.

    Raises:
        StartupError: a bad OTEL_* value, a bad registry file, or a registry that does not
            answer (one line).
    """
    import os

    from dataflow import confluent, tracing

    try:
        config = tracing.config_from_env(os.environ)
    except tracing.TracingConfigError as exc:
        raise StartupError(str(exc)) from None
    registry = None
    if settings.kafka_schema_registry_config_path:
        try:
            registry = confluent.Registry(
                confluent.load_config(settings.kafka_schema_registry_config_path)
            )
            await registry.start()
        except confluent.RegistryError as exc:
            raise StartupError(str(exc)) from None
    tracer = tracing.Tracer(config) if config.enabled else None
    if tracer is not None:
        from loguru import logger

        logger.info(
            "tracing on: {} ({}), traces started at the inputs for {:g}% of untraced records",
            ", ".join(config.exporters), config.protocol, config.input_ratio * 100,
        )  # fmt: skip
    return tracer, registry


async def _close_extras(tracer: Tracer | None, registry: Registry | None) -> None:
    """Export the last spans (in a thread, bounded) and close the registry client."""
    if registry is not None:
        await registry.close()
    if tracer is not None:
        import threading

        from dataflow.tracing import SHUTDOWN_TIMEOUT

        # A daemon thread, waited for at most the bound: an exporter retrying an unreachable
        # collector must not keep the process from exiting (an executor thread would).
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shutdown() -> None:
            try:
                tracer.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed after the bound
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shutdown, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            from loguru import logger

            logger.warning("tracing: the last spans were not exported in time")


def run(settings: Settings) -> int:
    """Set up logging and run the engine (or the supervisor of `--num-cores` engines)."""
    from loguru import logger

    from dataflow import __version__, logs

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
    try:  # checked before workers start too: each reads the same OTEL_* variables
        import os

        tracing.config_from_env(os.environ)
    except tracing.TracingConfigError as exc:
        logger.remove()
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1
    main: Callable[[Settings], Coroutine[Any, Any, None]] = serve
    errors: tuple[type[Exception], ...] = (StartupError,)
    if (settings.num_cores or 1) > 1:  # a supervisor of N engine processes
        from dataflow import workers

        main, errors = workers.supervise, (StartupError, workers.StartupError)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main(settings))
        else:
            uvloop.run(main(settings))
    except errors as exc:
        logger.remove()
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1
    return 0
