"""The proxy scheduler: a stand-in for the Seldon scheduler's Chainer service.

Engines subscribe to it over gRPC (`seldon.mlops.chainer.Chainer`) and receive the pipelines
loaded from spec files (`dataflow.specs`); their acks drive each pipeline's state. Pipelines
are loaded at start (`--pipelines`) or later through the HTTP control API or the CLI
(`python -m dataflow.proxy load FILE`). `store` holds the logic (no I/O), `database` keeps it
in SQLite across restarts, `server` the gRPC and HTTP glue, `client` a small client of the
control API, `settings` the options, `__main__` the command line.
"""

from dataflow.proxy.client import ClientError, ControlClient
from dataflow.proxy.server import ProxyServer
from dataflow.proxy.store import PipelineState, PipelineStore

__all__ = ["ClientError", "ControlClient", "PipelineState", "PipelineStore", "ProxyServer"]
