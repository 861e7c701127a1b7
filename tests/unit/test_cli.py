"""`dataflow`: the subcommands, their help, --version, one-line errors, and where values come
from (flags, then `SELDON_*` variables, then `.env`). No broker: commands are parsed, not run,
except those that fail before any I/O."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic_settings import get_subcommand

import dataflow
from dataflow.cli import COMMANDS, Dataflow, render, run
from dataflow.cli.engine import EngineCommand
from dataflow.cli.proxy import ProxyCommand, StatusCommand
from dataflow.cli.tools import InferCommand, KafkaCommand, ModelCommand
from tests.cli import parse
from tests.conftest import REPO

EXPECTED = (
    "engine",
    "proxy",
    "load",
    "unload",
    "status",
    "describe",
    "inspect",
    "infer",
    "model",
    "kafka",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("SELDON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dataflow ")
    for command in EXPECTED:
        assert f"\n    {command} " in out, command
    assert COMMANDS == EXPECTED


def test_no_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 0
    assert "{engine,proxy,load," in capsys.readouterr().out


@pytest.mark.parametrize("command", EXPECTED)
def test_every_subcommand_has_help_and_version(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dataflow {command} ")
    assert "--version" in out
    assert run([command, "--version"]) == 0
    assert capsys.readouterr().out == f"dataflow {command} {dataflow.__version__}\n"


def test_engine_help_names_every_setting_and_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["engine", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in EngineCommand.model_fields:
        assert f"--{name.replace('_', '-')} " in text, name
        assert f"[env SELDON_{name.upper()}, default: " in text, name
    assert "[env SELDON_UPSTREAM_PORT, default: 9008]" in text


def test_proxy_help_has_no_token_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["proxy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--token-path" in out and "[env SELDON_PROXY_HOST, default: 127.0.0.1]" in " ".join(
        out.split()
    )
    assert "--token " not in out and "--url" not in out


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["engine", "--upstream-port=abc"], "dataflow: bad value 'abc' for --upstream-port: "),
        (["engine", "--no-such-flag=1"], "dataflow: unrecognized arguments: --no-such-flag=1"),
        (["nope"], "dataflow: argument {engine,proxy,"),
        (["status", "--interval", "0"], "dataflow: bad value '0' for --interval: "),
        (["model"], "dataflow model: the following arguments are required: --name"),
        (["model", "--name", "m", "--fn", "square"], "dataflow: bad value 'square' for --fn: "),
        (["infer", "p", "--tensor", "x"], "dataflow: --tensor: expected NAME:DATATYPE"),
        (["inspect"], "dataflow: give a reference or --topic"),
        (["inspect", "p..x"], "dataflow: bad reference 'p..x'"),
        (["kafka", "restart"], "dataflow: bad value 'restart' for VERB: "),
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(line), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SELDON_UPSTREAM_PORT", "70000")
    assert run(["engine"]) == 2
    assert capsys.readouterr().err.startswith(
        "dataflow: bad value '70000' for SELDON_UPSTREAM_PORT: "
    )


def test_a_secret_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SELDON_KAFKA_SASL_PASSWORD", "hunter2")
    assert run(["engine", f"--kafka-sasl-password-path={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "--kafka-sasl-password-path" in err


def test_flags_beat_env_which_beats_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SELDON_UPSTREAM_PORT=1111\nSELDON_UPSTREAM_HOST=from-dotenv\nKAFKA_IMAGE=x\n"
        "SELDON_PROXY_PORT=5555\n"
    )
    monkeypatch.setenv("SELDON_UPSTREAM_PORT", "2222")
    engine = get_subcommand(parse(Dataflow, ["engine"]))
    assert isinstance(engine, EngineCommand)
    assert (engine.upstream_port, engine.upstream_host) == (2222, "from-dotenv")
    engine = get_subcommand(parse(Dataflow, ["engine", "--upstream-port", "3333"]))
    assert isinstance(engine, EngineCommand) and engine.upstream_port == 3333
    proxy = get_subcommand(parse(Dataflow, ["proxy", "--pipelines", "a", "b"]))
    assert isinstance(proxy, ProxyCommand)
    assert (proxy.port, proxy.pipelines) == (5555, [Path("a"), Path("b")])


def test_the_reference_flags_are_the_engine_flags() -> None:
    engine = parse(
        EngineCommand,
        [
            "--kafka-bootstrap-servers=localhost:9092",
            "--upstream-host=localhost",
            "--upstream-port=10101",
            "--num-cores=2",
        ],
    )
    assert (engine.upstream_host, engine.upstream_port, engine.num_cores) == (
        "localhost",
        10101,
        2,
    )


def test_tool_flags_keep_their_commas_and_repeat() -> None:
    infer = parse(
        InferCommand,
        ["p", "--tensor", "A:INT32:1,2:1,2", "--tensor", "B:BYTES:2:a,b", "--header", "x=1,2"],
    )
    assert infer.tensor == ["A:INT32:1,2:1,2", "B:BYTES:2:a,b"]
    assert infer.header == ["x=1,2"]
    assert infer.json_ is False and parse(InferCommand, ["p", "--json"]).json_ is True
    model = parse(ModelCommand, ["--name", "m", "--rename", "A=B", "--rename", "C=D", "-v"])
    assert (model.rename, model.verbose) == ({"A": "B", "C": "D"}, True)


def test_status_takes_an_optional_name() -> None:
    assert parse(StatusCommand, []).name == ""
    status = parse(StatusCommand, ["p1", "--json", "--watch", "--interval", "0.5"])
    assert (status.name, status.json_, status.watch, status.interval) == ("p1", True, True, 0.5)


def test_kafka_outside_a_checkout_points_to_the_script(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("dataflow.cli.tools.checkout_script", lambda name: None)
    assert run(["kafka", "status"]) == 2
    err = capsys.readouterr().err
    assert "scripts/kafka" in err and len(err.splitlines()) == 1
    assert parse(KafkaCommand, ["logs", "20"]).lines == 20


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "dataflow", "--help"],
        ["-m", "dataflow", "status", "--help"],
        ["-m", "dataflow.proxy", "status", "--help"],
        ["scripts/model.py", "--help"],
    ],
)
def test_the_module_entry_points_answer_help(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_the_bare_module_runs_the_engine_with_its_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dataflow", "--upstream-port=abc"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("dataflow: bad value 'abc' for --upstream-port")


# -- rendering (pure) ------------------------------------------------------------------------------


def _record(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "name": "p1",
        "version": 2,
        "uid": "u2",
        "state": "Ready",
        "reason": "pipeline data streams: ready",
        "summary": "1/2 ready, 1/2 creating, 0/2 failed",
        "source": "p1.yaml",
        "streams": {
            "engine-b": {"state": "Unknown", "op": None, "success": None, "reason": ""},
            "engine-a": {"state": "Ready", "op": "Create", "success": True, "reason": "ok"},
        },
        "retiring": [{"version": 1, "uid": "u1", "state": "deleting", "streams": {}}],
    }
    record.update(changes)
    return record


def test_render_table_and_one_pipeline() -> None:
    assert render.table([]) == "no pipelines"
    assert render.table([_record()]) == (
        "p1  v2  Ready  pipeline data streams: ready  "
        "[acked: engine-a Ready; waiting: engine-b; retiring: v1 deleting]"
    )
    assert render.pipeline(_record()).splitlines() == [
        "p1 v2 (uid u2)",
        "  state:    Ready - pipeline data streams: ready",
        "  engines:  1/2 ready, 1/2 creating, 0/2 failed",
        "  source:   p1.yaml",
        "  engine-a  Ready (Create ok) - ok",
        "  engine-b  waiting",
        "  retiring: v1 (uid u1) deleting",
    ]
    assert "no dataflow engines" in render.pipeline(_record(streams={}, retiring=[]))


# -- describe: wired to ControlClient.describe and dataflow.describe's renderers -----------------


def test_describe_prints_text_json_or_dot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataflow.proxy.client import ControlClient

    fake = types.ModuleType("dataflow.describe")
    fake.render_text = lambda d: f"{d['name']}: 2 steps"  # type: ignore[attr-defined]
    fake.render_dot = lambda d: f'digraph "{d["name"]}" {{}}\n'  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dataflow.describe", fake)
    asked: list[tuple[str, str]] = []

    def describe(self: ControlClient, name: str) -> dict[str, object]:
        asked.append((self.url, name))
        return {"name": name, "steps": []}

    monkeypatch.setattr(ControlClient, "describe", describe, raising=False)
    url = ["--url", "http://127.0.0.1:1"]
    assert run(["describe", "p1", *url]) == 0
    assert capsys.readouterr().out == "p1: 2 steps\n"
    assert run(["describe", "p1", "--json", *url]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "p1", "steps": []}
    assert run(["describe", "p1", "--dot", *url]) == 0
    assert capsys.readouterr().out == 'digraph "p1" {}\n'
    assert asked == [("http://127.0.0.1:1", "p1")] * 3
    assert run(["describe", "p1", "--json", "--dot"]) == 2
    assert capsys.readouterr().err == "dataflow: give --json or --dot, not both\n"
