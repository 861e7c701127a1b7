"""`python -m dataflow`: the `dataflow` command, with the engine as the default.

`python -m dataflow [flags]` runs the engine with the reference engine's flags and `SELDON_*`
variables, as `dataflow engine [flags]` does; `python -m dataflow COMMAND ...` runs any other
command of `dataflow` (see `dataflow.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dataflow.cli import COMMANDS, run
from dataflow.cli.engine import StartupError, serve

__all__ = ["StartupError", "main", "serve"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m dataflow`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
        args = ["engine", *args]
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
