"""One worker process of the multi-core engine: its identity, its environment, when it is
restarted, and the signal it gets when the supervisor dies (`dataflow.workers`)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from dataflow.settings import ENV_PREFIX, Settings

__all__ = ["LOCAL_HOST", "death_signal", "free_port", "restart_delay", "worker_env", "worker_name"]

LOCAL_HOST = "127.0.0.1"
RESTART_MIN = 0.5
RESTART_MAX = 5.0
RESTART_RESET_AFTER = 30.0


def worker_name(base: str, index: int) -> str:
    """The replica id (or static member id) of worker `index` of the engine `base`."""
    return f"{base}-w{index}"


def worker_env(
    settings: Settings,
    index: int,
    *,
    upstream_port: int,
    health_port: int,
    instance: str,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """The environment of worker `index`: every setting of the supervisor, spelt out as
    `SELDON_*` (so flags, `.env` and defaults reach it alike), but its own identity, the local
    Chainer server (plaintext) and a local health port.

    Args:
        settings: the supervisor's settings.
        index: the worker's index, 0 to N-1.
        upstream_port: the port of the supervisor's local Chainer server.
        health_port: the port the worker's health server binds on 127.0.0.1.
        instance: the engine's static member id (`dataflow.membership.instance_id`).
        environ: the supervisor's environment; its `SELDON_*` entries are replaced.
    """
    env = {k: v for k, v in environ.items() if not k.upper().startswith(ENV_PREFIX)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[ENV_PREFIX + name.upper()] = str(value)
    env.update(
        {
            "SELDON_NUM_CORES": "1",
            "SELDON_DATAFLOW_REPLICA_ID": worker_name(settings.dataflow_replica_id, index),
            "SELDON_KAFKA_GROUP_INSTANCE_ID": worker_name(instance, index),
            "SELDON_UPSTREAM_HOST": LOCAL_HOST,
            "SELDON_UPSTREAM_PORT": str(upstream_port),
            "SELDON_UPSTREAM_SECURITY_PROTOCOL": "PLAINTEXT",
            "SELDON_UPSTREAM_TLS_CA_PATH": "",
            "SELDON_UPSTREAM_TLS_CERT_PATH": "",
            "SELDON_UPSTREAM_TLS_KEY_PATH": "",
            "SELDON_HEALTH_SERVER_HOST": LOCAL_HOST,
            "SELDON_HEALTH_SERVER_PORT": str(health_port),
        }
    )
    return env


def restart_delay(previous: float | None, ran: float) -> float:
    """The pause before restarting a worker that ran `ran` seconds (None: its first exit)."""
    if previous is None or ran >= RESTART_RESET_AFTER:
        return RESTART_MIN
    return min(RESTART_MAX, previous * 2)


def free_port(host: str = LOCAL_HOST) -> int:
    """A port free on `host` now (a worker's health server binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def death_signal() -> Any:
    """A `preexec_fn` that has the child get SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
