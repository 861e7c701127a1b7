"""A command line parsed into its model without running it (what `dataflow.cli.base.run` does
before it calls the command)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic_settings import BaseSettings, CliApp

from dataflow.cli.base import source

T = TypeVar("T", bound=BaseSettings)


def parse(model: type[T], argv: Sequence[str], prog: str = "dataflow") -> T:
    """The model `argv` gives."""
    return CliApp.run(
        model,
        cli_args=list(argv),
        cli_settings_source=source(model, argv, prog),
        cli_cmd_method_name="_not_a_command",
    )
