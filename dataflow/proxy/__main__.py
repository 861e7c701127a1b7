"""`python -m dataflow.proxy` (and `dataflow-proxy`): the proxy scheduler, or a client of it.

python -m dataflow.proxy [serve] [--pipelines PATH...] [--port 10101] ...   = dataflow proxy
python -m dataflow.proxy load FILE... | unload NAME | status [NAME]         = dataflow load ...

The commands are those of `dataflow` (`dataflow.cli.proxy`); this module keeps the older
spelling working.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dataflow.cli import base
from dataflow.cli.proxy import (
    DescribeCommand,
    LoadCommand,
    ProxyCommand,
    StatusCommand,
    UnloadCommand,
    configure_logging,
    serve,
)
from dataflow.cli.render import streams as _streams
from dataflow.proxy.settings import env_name

__all__ = ["_streams", "configure_logging", "main", "run", "serve"]

PROG = "python -m dataflow.proxy"
CLIENT_COMMANDS: dict[str, type[base.Command]] = {
    "load": LoadCommand,
    "unload": UnloadCommand,
    "status": StatusCommand,
    "describe": DescribeCommand,
}
EPILOG = (
    "commands:\n"
    "  serve (default)   run the proxy scheduler with the options above\n"
    "  load FILE...      load spec files or folders into a running proxy\n"
    "  unload NAME       unload a pipeline (Delete to every engine)\n"
    "  status [NAME]     one line per pipeline: name, version, state, reason, streams\n"
    "  describe NAME     a pipeline's steps, topics and live figures\n"
    f"  they take --url URL [env {env_name('url')}, default: "
    f"{ProxyCommand.model_fields['url'].default}]; see '{PROG} COMMAND --help'.\n"
    "  The same commands: dataflow proxy, dataflow load, dataflow status, ..."
)


def run(argv: Sequence[str], prog: str = PROG) -> int:
    """Run one command line (without the program name) and return the exit code."""
    args = list(argv)
    if args and args[0] in CLIENT_COMMANDS:
        return base.run(CLIENT_COMMANDS[args[0]], args[1:], f"{prog} {args[0]}")
    if args and args[0] == "serve":
        args = args[1:]
    return base.run(ProxyCommand, args, prog, epilog=EPILOG.replace(PROG, prog))


def main() -> None:
    """Entry point of `python -m dataflow.proxy` and `dataflow-proxy`."""
    script = Path(sys.argv[0]).name == "dataflow-proxy"
    sys.exit(run(sys.argv[1:], "dataflow-proxy" if script else PROG))


if __name__ == "__main__":
    main()
