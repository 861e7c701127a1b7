"""Every entry point answers --version with the package version."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dataflow
from tests.conftest import REPO


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "dataflow"],
        ["-m", "dataflow.proxy"],
        ["-m", "dataflow.inspect"],
        ["scripts/infer.py"],
        ["scripts/model.py"],
        ["scripts/producer.py"],
        ["scripts/consumer.py"],
    ],
)
def test_version(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *args, "--version"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f" {dataflow.__version__}"), result.stdout


def test_the_license_is_apache_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
