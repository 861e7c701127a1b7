"""`dataflow proxy` (run the proxy scheduler) and the commands that talk to a running one:
`load`, `unload`, `status`, `describe`.

The bearer token is never a flag (command lines are visible to every user of the host):
`SELDON_PROXY_TOKEN` in the environment or `.env`, or a file (`--token-path`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import (
    CliImplicitFlag,
    CliPositionalArg,
    CliSuppress,
    CliVariadicArg,
    NoDecode,
)

from dataflow.cli import render
from dataflow.cli.base import Command
from dataflow.cli.base import run as run_command
from dataflow.proxy.settings import ProxySettings
from dataflow.proxy.settings import env_name as proxy_env

if TYPE_CHECKING:
    from dataflow.proxy.client import ControlClient
    from dataflow.proxy.database import StateDatabase

_PROXY_FIELDS = ProxySettings.model_fields


class ProxyCommand(ProxySettings):
    """Run the proxy scheduler for dataflow engines. It serves seldon.mlops.chainer.Chainer
    (SubscribePipelineUpdates, PipelineUpdateEvent) for engines and an HTTP control API:
    GET/POST /pipelines, GET/DELETE /pipelines/{name}, GET /subscribers. Pipelines, versions,
    uids and acks are kept in --state-dir across restarts. Options come from flags, then
    SELDON_PROXY_* environment variables, then .env; the control API's bearer token from
    SELDON_PROXY_TOKEN or --token-path."""

    # Not flags: a token on a command line is visible to every user; the URL is the clients'.
    token: CliSuppress[SecretStr] = Field(SecretStr(""), description="bearer token")
    url: CliSuppress[str] = Field(_PROXY_FIELDS["url"].default, description="control API URL")
    pipelines: CliVariadicArg[Annotated[list[Path], NoDecode]] = Field(
        default_factory=list, description=_PROXY_FIELDS["pipelines"].description
    )

    def cli_cmd(self) -> None:
        configure_logging(self.log_level)
        raise SystemExit(_run(serve(self)))


def configure_logging(level: str) -> None:
    """One readable line per event on stderr."""
    from loguru import logger

    logger.remove()
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}",
    )


async def serve(settings: ProxySettings) -> int:
    """Run the proxy until SIGINT or SIGTERM.

    Returns:
        0 after a clean stop, 1 if a server cannot start or the state cannot be used, 2 for a
        bad pipeline file, token or TLS file.
    """
    from loguru import logger

    from dataflow.proxy.database import StateDatabase, StateError

    try:
        token = settings.bearer_token()
        tls = _tls(settings)
    except (ValueError, OSError, ssl.SSLError) as e:
        logger.error("{}", e)
        return 2
    try:
        database = StateDatabase.open(settings.state_dir)
    except StateError as e:
        logger.error("{}", e)
        return 1
    try:
        return await _serve(settings, database, token, tls)
    finally:
        database.close()


def _tls(settings: ProxySettings) -> ssl.SSLContext | None:
    """The Chainer service's TLS context, None for plaintext.

    Raises:
        ValueError: a file that cannot be used (one line naming it).
    """
    from dataflow.chainer import server_context

    if not settings.tls_cert_path:
        return None
    ca = Path(settings.tls_client_ca_path) if settings.tls_client_ca_path else None
    try:
        return server_context(Path(settings.tls_cert_path), Path(settings.tls_key_path), ca)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        files = ", ".join(
            p
            for p in (settings.tls_cert_path, settings.tls_key_path, settings.tls_client_ca_path)
            if p
        )
        raise ValueError(f"cannot use the TLS files ({files}): {reason}") from None


async def _serve(
    settings: ProxySettings, database: StateDatabase, token: str | None, tls: ssl.SSLContext | None
) -> int:
    from loguru import logger

    from dataflow.proxy.database import StateError
    from dataflow.proxy.server import ProxyServer
    from dataflow.specs import SpecError

    try:
        proxy = ProxyServer(
            host=settings.host,
            port=settings.port,
            control_port=settings.control_port,
            default_namespace=settings.namespace,
            prefix=settings.topic_prefix,
            database=database,
            token=token,
            tls=tls,
            engine_urls=settings.engine_urls,
        )
        proxy.load_paths(settings.pipelines)
    except SpecError as e:
        logger.error("{}", e)
        return 2
    except StateError as e:
        logger.error("{}", e)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
    except OSError as e:
        logger.error("cannot start the proxy: {}", e)
        return 1
    await stop.wait()
    logger.info("stopping (signal)")
    await proxy.stop()
    return 0


def _run(coroutine: Any) -> int:
    try:
        import uvloop
    except ImportError:
        result: int = asyncio.run(coroutine)
        return result
    code: int = uvloop.run(coroutine)
    return code


# -- clients of a running proxy ------------------------------------------------------------------


class _Client(Command):
    """A command that calls the control API of a running proxy."""

    ENV: ClassVar[dict[str, str]] = {"url": proxy_env("url"), "token_path": proxy_env("token_path")}

    url: str = Field(_PROXY_FIELDS["url"].default, description=_PROXY_FIELDS["url"].description)
    token_path: str = Field("", description=_PROXY_FIELDS["token_path"].description)

    def client(self) -> ControlClient:
        """The control API client with the URL and token of these flags, the environment and
        `.env` (flags first).

        Raises:
            SystemExit: 2 with one line for a bad setting or token file.
        """
        from pydantic import ValidationError

        from dataflow.proxy.client import ControlClient

        given = {k: getattr(self, k) for k in ("url", "token_path") if k in self.model_fields_set}
        try:
            settings = ProxySettings(**given)
            token = settings.bearer_token()
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            print(f"error: {field} ({proxy_env(field)}): {first['msg']}", file=sys.stderr)
            raise SystemExit(2) from None
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return ControlClient(settings.url, token=token)

    def call(self, work: Callable[[ControlClient], int]) -> None:
        """Run `work` with the client; a refused call or an unreachable proxy is one line and
        exit 1."""
        from dataflow.proxy.client import ClientError
        from dataflow.specs import SpecError

        client = self.client()
        try:
            code = work(client)
        except (ClientError, SpecError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        raise SystemExit(code)


class LoadCommand(_Client):
    """Load pipeline spec files (or folders of *.yaml) into a running proxy."""

    files: CliPositionalArg[list[Path]] = Field(description="spec file or folder")
    wait: float = Field(
        0.0,
        ge=0,
        description="wait this many seconds until the pipeline is Ready (exit 1 if "
        "Failed or on timeout; 0: do not wait)",
    )

    def cli_cmd(self) -> None:
        self.call(self._load)

    def _load(self, client: ControlClient) -> int:
        from dataflow.specs import spec_files

        for path in spec_files(self.files):
            result = client.load(path.read_text(encoding="utf-8"), str(path))
            record = result["pipeline"]
            print(f"{path}: {result['outcome']}: {render.line(record)} - {record['reason'] or '-'}")
            if result.get("warning"):
                print(f"warning: {result['warning']}", file=sys.stderr)
            if self.wait > 0:
                record = client.wait(record["name"], {"Ready"}, self.wait)
                print(
                    f"{render.line(record)} - {record['reason'] or '-'} ({render.streams(record)})"
                )
                if record["state"] != "Ready":
                    return 1
        return 0


class UnloadCommand(_Client):
    """Unload a pipeline: Delete to every engine, then Terminating -> Terminated."""

    name: CliPositionalArg[str] = Field(description="pipeline name")
    wait: float = Field(
        0.0,
        ge=0,
        description="wait this many seconds until the pipeline is Terminated (exit 1 "
        "if Failed or on timeout; 0: do not wait)",
    )

    def cli_cmd(self) -> None:
        self.call(self._unload)

    def _unload(self, client: ControlClient) -> int:
        result = client.unload(self.name)
        record = result["pipeline"]
        print(f"{result['outcome']}: {render.line(record)} - {record['reason'] or '-'}")
        if self.wait > 0:
            record = client.wait(self.name, {"Terminated"}, self.wait)
            print(f"{render.line(record)} - {record['reason'] or '-'} ({render.streams(record)})")
            return 0 if record["state"] == "Terminated" else 1
        return 0


class StatusCommand(_Client):
    """Show the pipelines of a running proxy: one line each (name, version, state, last reason,
    engines' acks), or one pipeline in detail with NAME. --watch prints it again whenever it
    changes, until Ctrl-C."""

    name: CliPositionalArg[str] = Field("", description="one pipeline, in detail")
    json_: CliImplicitFlag[bool] = Field(
        False, alias="json", description="print the JSON of the control API"
    )
    watch: CliImplicitFlag[bool] = Field(False, description="print again on every change")
    interval: float = Field(2.0, gt=0, description="seconds between two looks of --watch")

    def cli_cmd(self) -> None:
        self.call(self._status)

    def _text(self, client: ControlClient) -> str:
        if self.name:
            record = client.pipeline(self.name)
            return json.dumps(record, indent=2) if self.json_ else render.pipeline(record)
        records = client.pipelines()
        return json.dumps(records, indent=2) if self.json_ else render.table(records)

    def _status(self, client: ControlClient) -> int:
        text = self._text(client)
        print(text, flush=True)
        while self.watch:
            time.sleep(self.interval)
            latest = self._text(client)
            if latest != text:
                text = latest
                print(
                    ("" if self.json_ else f"-- {time.strftime('%H:%M:%S')}\n") + text, flush=True
                )
        return 0


class DescribeCommand(_Client):
    """Describe a loaded pipeline as the engines run it: each step with its sources, tensor
    selections and renames, joins, triggers, batch, sink, consumer group and state topics, with
    the engines' live figures. Text by default, --json, or --dot (Graphviz)."""

    name: CliPositionalArg[str] = Field(description="pipeline name")
    json_: CliImplicitFlag[bool] = Field(False, alias="json", description="print the JSON")
    dot: CliImplicitFlag[bool] = Field(False, description="print the graph in Graphviz dot")

    def cli_cmd(self) -> None:
        from dataflow.cli.base import UsageError

        if self.json_ and self.dot:
            raise UsageError("give --json or --dot, not both")
        self.call(self._describe)

    def _describe(self, client: ControlClient) -> int:
        import importlib

        # Imported when used, so that `dataflow --help` stays quick.
        describe = importlib.import_module("dataflow.describe")
        described = client.describe(self.name)
        if self.json_:
            print(json.dumps(described, indent=2))
            return 0
        text = (describe.render_dot if self.dot else describe.render_text)(described)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0


# -- `python -m dataflow.proxy` and `dataflow-proxy`: the same commands under one program ------

PROG = "python -m dataflow.proxy"
_CLIENT_COMMANDS: dict[str, type[Command]] = {
    "load": LoadCommand,
    "unload": UnloadCommand,
    "status": StatusCommand,
    "describe": DescribeCommand,
}
_EPILOG = (
    "commands:\n"
    "  serve (default)   run the proxy scheduler with the options above\n"
    "  load FILE...      load spec files or folders into a running proxy\n"
    "  unload NAME       unload a pipeline (Delete to every engine)\n"
    "  status [NAME]     one line per pipeline: name, version, state, reason, streams\n"
    "  describe NAME     a pipeline's steps, topics and live figures\n"
    f"  they take --url URL [env {proxy_env('url')}, default: "
    f"{ProxyCommand.model_fields['url'].default}]; see '{PROG} COMMAND --help'.\n"
    "  The same commands: dataflow proxy, dataflow load, dataflow status, ..."
)


def proxy_run(argv: Sequence[str], prog: str = PROG) -> int:
    """Run one command line (without the program name) and return the exit code."""
    args = list(argv)
    if args and args[0] in _CLIENT_COMMANDS:
        return run_command(_CLIENT_COMMANDS[args[0]], args[1:], f"{prog} {args[0]}")
    if args and args[0] == "serve":
        args = args[1:]
    return run_command(ProxyCommand, args, prog, epilog=_EPILOG.replace(PROG, prog))


def proxy_main() -> None:
    """Entry point of `python -m dataflow.proxy` and `dataflow-proxy`."""
    script = Path(sys.argv[0]).name == "dataflow-proxy"
    sys.exit(proxy_run(sys.argv[1:], "dataflow-proxy" if script else PROG))
