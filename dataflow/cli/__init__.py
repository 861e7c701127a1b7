"""`dataflow`: one command with a subcommand per task, on pydantic-settings' CLI support.

    dataflow engine [--upstream-host ...]     the engine (also `python -m dataflow [flags]`)
    dataflow proxy [--pipelines PATH...]      the proxy scheduler
    dataflow load FILE... / unload NAME / status [NAME] [--watch] [--json] / describe NAME
    dataflow inspect REF / infer PIPELINE / model --name M / kafka start|stop|status|logs

Every subcommand is a pydantic model with a `cli_cmd` method (`dataflow.cli.engine`,
`dataflow.cli.proxy`, `dataflow.cli.tools`); the engine's and the proxy's are their settings
classes, so each flag is also an environment variable (`SELDON_*`, `SELDON_PROXY_*`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pydantic import Field
from pydantic_settings import CliApp, CliSubCommand

from dataflow.cli import base
from dataflow.cli.base import Command
from dataflow.cli.engine import EngineCommand
from dataflow.cli.proxy import (
    DescribeCommand,
    LoadCommand,
    ProxyCommand,
    StatusCommand,
    UnloadCommand,
)
from dataflow.cli.tools import InferCommand, InspectCommand, KafkaCommand, ModelCommand

__all__ = ["Dataflow", "main", "run"]

PROG = "dataflow"
DESCRIPTION = (
    "Seldon Core 2's Kafka data-flow engine in asyncio, its proxy scheduler and tools.\n"
    "'dataflow COMMAND --help' shows the options of a command; flags without a command run\n"
    "the engine (python -m dataflow --upstream-host=...)."
)


class Dataflow(Command):
    """The root command: one subcommand."""

    engine: CliSubCommand[EngineCommand] = Field(
        description="run the engine (the settings of python -m dataflow)"
    )
    proxy: CliSubCommand[ProxyCommand] = Field(
        description="run the proxy scheduler (Chainer gRPC and the control API)"
    )
    load: CliSubCommand[LoadCommand] = Field(description="load pipeline specs into a proxy")
    unload: CliSubCommand[UnloadCommand] = Field(description="unload a pipeline")
    status: CliSubCommand[StatusCommand] = Field(
        description="pipelines and their engines' acks, or one pipeline (--watch, --json)"
    )
    describe: CliSubCommand[DescribeCommand] = Field(
        description="a pipeline's steps, topics and live figures (text, --json, --dot)"
    )
    inspect: CliSubCommand[InspectCommand] = Field(
        description="print a pipeline's, step's or topic's messages as JSON lines"
    )
    infer: CliSubCommand[InferCommand] = Field(
        description="send one request to a pipeline and print the answer"
    )
    model: CliSubCommand[ModelCommand] = Field(
        description="a stand-in model on Kafka (identity, add, rename)"
    )
    kafka: CliSubCommand[KafkaCommand] = Field(
        description="a local Kafka broker (scripts/kafka of a checkout)"
    )

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


COMMANDS = tuple(Dataflow.model_fields)


def run(argv: Sequence[str], prog: str = PROG) -> int:
    """Run one `dataflow` command line (without the program name); returns the exit code."""
    return base.run(Dataflow, list(argv) or ["--help"], prog, DESCRIPTION, name=prog)


def main() -> None:
    """Entry point of the `dataflow` console script."""
    argv = sys.argv[1:]
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["engine", *argv]  # `dataflow --upstream-host=...`, as `python -m dataflow`
    raise SystemExit(run(argv))
