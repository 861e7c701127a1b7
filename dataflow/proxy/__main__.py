"""`python -m dataflow.proxy`: run the proxy scheduler, or talk to a running one.

python -m dataflow.proxy [serve] [--pipelines PATH...] [--port 10101] [--control-port 10102]
                         [--state-dir .proxy-state] [--token-path FILE] [--tls-cert-path ...]
python -m dataflow.proxy load FILE... [--url URL] [--wait SECONDS] [--token-path FILE]
python -m dataflow.proxy unload NAME [--url URL] [--wait SECONDS] [--token-path FILE]
python -m dataflow.proxy status [--url URL] [--json] [--token-path FILE]

The bearer token is never a flag (command lines are visible to every user of the host):
`SELDON_PROXY_TOKEN` in the environment or `.env`, or a file (`--token-path`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from dataflow import __version__
from dataflow.chainer import server_context
from dataflow.proxy.client import ClientError, ControlClient
from dataflow.proxy.database import StateDatabase, StateError
from dataflow.proxy.server import ProxyServer
from dataflow.proxy.settings import ProxySettings, env_name
from dataflow.specs import SpecError, spec_files

PROG = "python -m dataflow.proxy"
SERVE_OPTIONS = (
    "host",
    "port",
    "control_port",
    "pipelines",
    "namespace",
    "topic_prefix",
    "state_dir",
    "token_path",
    "tls_cert_path",
    "tls_key_path",
    "tls_client_ca_path",
)
CLIENT_COMMANDS = ("load", "unload", "status")


def _help(field: str) -> str:
    info = ProxySettings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(map(str, default)) or "none"
    if default == "":
        default = "none"
    return f"{info.description} [env {env_name(field)}, default: {default}]"


def _option(parser: argparse.ArgumentParser, field: str, **kwargs: Any) -> None:
    flag = "--" + field.replace("_", "-")
    parser.add_argument(flag, dest=field, help=_help(field), **kwargs)


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    levels = ProxySettings.model_fields["log_level"].annotation.__args__  # type: ignore[union-attr]
    _option(parser, "log_level", metavar="LEVEL", type=str.upper, choices=levels)


def serve_parser() -> argparse.ArgumentParser:
    """The parser of the default command, `serve`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Proxy scheduler for dataflow engines. Serves seldon.mlops.chainer.Chainer\n"
            "(SubscribePipelineUpdates, PipelineUpdateEvent) for engines and an HTTP control\n"
            "API: GET/POST /pipelines, GET/DELETE /pipelines/{name}, GET /subscribers.\n"
            "Pipelines, versions, uids and acks are kept in --state-dir across restarts.\n"
            "Options come from flags, then SELDON_PROXY_* environment variables, then .env;\n"
            f"the control API's bearer token from {env_name('token')} or --token-path."
        ),
        epilog=(
            "commands:\n"
            "  serve (default)   run the proxy scheduler with the options above\n"
            "  load FILE...      load spec files or folders into a running proxy\n"
            "  unload NAME       unload a pipeline (Delete to every engine)\n"
            "  status            one line per pipeline: name, version, state, reason, streams\n"
            f"  load, unload and status take --url URL [env {env_name('url')}, default: "
            f"{ProxySettings.model_fields['url'].default}];\n"
            f"  see '{PROG} COMMAND --help'."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    _option(parser, "host", metavar="HOST")
    _option(parser, "port", metavar="PORT", type=int)
    _option(parser, "control_port", metavar="PORT", type=int)
    _option(parser, "pipelines", metavar="PATH", type=Path, nargs="+")
    _option(parser, "namespace", metavar="NS")
    _option(parser, "topic_prefix", metavar="PREFIX")
    _option(parser, "state_dir", metavar="DIR", type=Path)
    _option(parser, "token_path", metavar="FILE")
    _option(parser, "tls_cert_path", metavar="FILE")
    _option(parser, "tls_key_path", metavar="FILE")
    _option(parser, "tls_client_ca_path", metavar="FILE")
    _add_log_level(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def client_parser(command: str) -> argparse.ArgumentParser:
    """The parser of `load`, `unload` or `status`."""
    descriptions = {
        "load": "Load pipeline spec files (or folders of *.yaml) into a running proxy.",
        "unload": "Unload a pipeline: Delete to every engine, then Terminating -> Terminated.",
        "status": "One line per pipeline: name, version, state, last reason, streams' acks.",
    }
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {command}",
        description=descriptions[command],
        argument_default=argparse.SUPPRESS,
    )
    if command == "load":
        parser.add_argument("files", metavar="FILE", type=Path, nargs="+", help="spec file/folder")
    if command == "unload":
        parser.add_argument("name", metavar="NAME", help="pipeline name")
    if command in ("load", "unload"):
        target = "Ready" if command == "load" else "Terminated"
        parser.add_argument(
            "--wait",
            metavar="SECONDS",
            type=float,
            default=0.0,
            help=f"wait until the pipeline is {target} (exit 1 if Failed or on timeout)",
        )
    if command == "status":
        parser.add_argument(
            "--json", action="store_true", default=False, help="print the JSON of the API"
        )
    _option(parser, "url", metavar="URL")
    _option(parser, "token_path", metavar="FILE")
    return parser


def _settings(values: dict[str, Any]) -> ProxySettings | None:
    try:
        return ProxySettings(**values)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        print(f"error: {field} ({env_name(field)}): {first['msg']}", file=sys.stderr)
        return None


def _line(record: dict[str, Any]) -> str:
    return f"{record['name']} v{record['version']} (uid {record['uid']}): {record['state']}"


def _streams(record: dict[str, Any]) -> str:
    streams: dict[str, dict[str, Any]] = record["streams"]
    acked = [f"{name} {s['state']}" for name, s in streams.items() if s["op"] is not None]
    waiting = [name for name, s in streams.items() if s["op"] is None]
    parts = ([f"acked: {', '.join(acked)}"] if acked else []) + (
        [f"waiting: {', '.join(waiting)}"] if waiting else []
    )
    if not streams:
        parts = ["no dataflow engines"]
    retiring = [f"v{r['version']} {r['state']}" for r in record.get("retiring", [])]
    if retiring:
        parts.append(f"retiring: {', '.join(retiring)}")
    return "; ".join(parts)


def _load(client: ControlClient, args: argparse.Namespace) -> int:
    for path in spec_files(args.files):
        result = client.load(path.read_text(encoding="utf-8"), str(path))
        record = result["pipeline"]
        print(f"{path}: {result['outcome']}: {_line(record)} - {record['reason'] or '-'}")
        if result.get("warning"):
            print(f"warning: {result['warning']}", file=sys.stderr)
        if args.wait > 0:
            record = client.wait(record["name"], {"Ready"}, args.wait)
            print(f"{_line(record)} - {record['reason'] or '-'} ({_streams(record)})")
            if record["state"] != "Ready":
                return 1
    return 0


def _unload(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.unload(args.name)
    record = result["pipeline"]
    print(f"{result['outcome']}: {_line(record)} - {record['reason'] or '-'}")
    if args.wait > 0:
        record = client.wait(args.name, {"Terminated"}, args.wait)
        print(f"{_line(record)} - {record['reason'] or '-'} ({_streams(record)})")
        return 0 if record["state"] == "Terminated" else 1
    return 0


def _status(client: ControlClient, args: argparse.Namespace) -> int:
    records = client.pipelines()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no pipelines")
        return 0
    rows = [
        (r["name"], f"v{r['version']}", r["state"], r["reason"] or "-", _streams(r))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, version, state, reason, streams in rows:
        print(
            f"{name:<{widths[0]}}  {version:<{widths[1]}}  {state:<{widths[2]}}  "
            f"{reason}  [{streams}]"
        )
    return 0


_COMMANDS: dict[str, Callable[[ControlClient, argparse.Namespace], int]] = {
    "load": _load,
    "unload": _unload,
    "status": _status,
}


def _client(command: str, argv: Sequence[str]) -> int:
    args = client_parser(command).parse_args(argv)
    settings = _settings({k: getattr(args, k) for k in ("url", "token_path") if k in args})
    if settings is None:
        return 2
    try:
        token = settings.bearer_token()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[command](ControlClient(settings.url, token=token), args)
    except (ClientError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def configure_logging(level: str) -> None:
    """One readable line per event on stderr."""
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


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    result: int = uvloop.run(coroutine)
    return result


def run(argv: Sequence[str]) -> int:
    """Run one command line (without the program name) and return the exit code."""
    if argv and argv[0] in CLIENT_COMMANDS:
        return _client(argv[0], argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = serve_parser().parse_args(argv)
    settings = _settings(vars(args))
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    return _run(serve(settings))


def main() -> None:
    """Entry point of `python -m dataflow.proxy` and `dataflow-proxy`."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
