"""The proxy scheduler: a stand-in for the Seldon scheduler's Chainer service.

Engines subscribe to it over gRPC (`seldon.mlops.chainer.Chainer`) and receive the pipelines
loaded from spec files (`dataflow.specs`); their acks drive each pipeline's state. Pipelines
are loaded at start (`--pipelines`) or later through the HTTP control API or the CLI
(`python -m dataflow.proxy load FILE`). `store` holds the logic (no I/O), `database` keeps it
in SQLite across restarts, `server` the gRPC and HTTP glue, `client` a small client of the
control API, `settings` the options, `__main__` the command line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataflow.proxy.client import ClientError, ControlClient
    from dataflow.proxy.records import PipelineState
    from dataflow.proxy.server import ProxyServer
    from dataflow.proxy.store import PipelineStore

__all__ = ["ClientError", "ControlClient", "PipelineState", "PipelineStore", "ProxyServer"]

# Imported on first use: `dataflow.proxy.settings` (which every `dataflow` command imports)
# must not pull in the server (aiohttp, grpclib), which costs about 0.5 s at each start.
_HOMES = {
    "ClientError": "dataflow.proxy.client",
    "ControlClient": "dataflow.proxy.client",
    "ProxyServer": "dataflow.proxy.server",
    "PipelineState": "dataflow.proxy.records",
    "PipelineStore": "dataflow.proxy.store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home), name)
