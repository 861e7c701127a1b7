#!/usr/bin/env python3
"""Send one request to a pipeline and print its answer (`dataflow infer`): see
`dataflow/infer.py`.

    python scripts/infer.py tfsimples --tensor INPUT0:INT32:1,4:1,2,3,4 --json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dataflow.cli import base
from dataflow.cli.tools import InferCommand
from dataflow.infer import *  # noqa: F403  (the request and answer functions, for tests)


class _Command(InferCommand):
    NAME = "infer.py"


def main(argv: Sequence[str] | None = None) -> None:
    """Run `dataflow infer` under this script's name."""
    raise SystemExit(base.run(_Command, sys.argv[1:] if argv is None else argv, "infer.py"))


if __name__ == "__main__":
    main()
