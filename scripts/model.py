#!/usr/bin/env python3
"""A stand-in model on Kafka (`dataflow model`): see `dataflow/model.py`.

python scripts/model.py --name tfsimple1 --fn add --add 1
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dataflow.cli import base
from dataflow.cli.tools import ModelCommand
from dataflow.model import *  # noqa: F403  (the model's functions, for tests)


class _Command(ModelCommand):
    NAME = "model.py"


def main(argv: Sequence[str] | None = None) -> None:
    """Run `dataflow model` under this script's name."""
    raise SystemExit(base.run(_Command, sys.argv[1:] if argv is None else argv, "model.py"))


if __name__ == "__main__":
    main()
