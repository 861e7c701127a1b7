"""The plumbing of every command line: pydantic-settings' `CliApp` on an argparse parser that
answers `--version`, prints one line on a bad flag, and names every setting's environment variable
in `--help`.

A command is a pydantic-settings model with a `cli_cmd` method (`CliApp` runs it); a value that
fails validation, a `UsageError` it raises or a bad flag ends the run with one line on stderr and
exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

from pydantic import BeforeValidator, SecretStr, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as LibrarySettingsError

from dataflow import __version__

T = TypeVar("T", bound=BaseSettings)

_ARGV: ContextVar[tuple[str, ...]] = ContextVar("argv", default=())


def _keep_commas(value: str) -> str:
    return value.replace(",", "\0")  # no argument holds a NUL: the escape cannot collide


def _split_kept(value: Any) -> Any:
    if isinstance(value, str):
        return [part.replace("\0", ",") for part in value.split(",")] if value else []
    return value


Repeated = Annotated[list[str], NoDecode, BeforeValidator(_split_kept)]
"""A repeatable flag whose values keep their commas (`--tensor A:FP32:1,2:1,2 --tensor ...`).

pydantic-settings splits list values on commas; for these fields the parser escapes the commas
of each value (see `annotate_help`) and the validator splits on the separators it joined with.
"""


class UsageError(Exception):
    """A command line that cannot run; str() is the one line to print (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with `--version` on every (sub)command and one-line errors.

    pydantic-settings builds the subcommands' parsers with the root parser's class, so every
    `dataflow COMMAND` gets the same two behaviours.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--version",
            action="version",
            version=f"%(prog)s {__version__}",
            help="print the version",
        )

    def error(self, message: str) -> NoReturn:
        command = self.prog
        argv = _ARGV.get()
        if argv and any(argv[0] in choices for choices in self._commands()):
            command = f"{self.prog} {argv[0]}"  # pydantic-settings reports leftovers at the root
        print(f"{self.prog}: {message} (see {command} --help)", file=sys.stderr)
        raise SystemExit(2)

    def _commands(self) -> Iterator[Mapping[str, argparse.ArgumentParser]]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield action.choices


class Command(BaseSettings):
    """A command whose options come from its flags only (no environment, no `.env`).

    `ENV` maps fields to the environment variables that also set them, for `--help`, when the
    command passes them on to a settings class (e.g. `url` -> `SELDON_PROXY_URL`).
    """

    model_config = SettingsConfigDict(extra="ignore")
    ENV: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def env_name(model: type[BaseSettings], field: str) -> str | None:
    """The environment variable of `field` of `model`, or None if none sets it."""
    if issubclass(model, Command):
        return model.ENV.get(field)
    prefix = model.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper() if prefix else None


def _default_text(model: type[BaseSettings], field: str) -> str:
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, SecretStr):
        return "(secret)" if default.get_secret_value() else "none"
    if isinstance(default, list | tuple):
        return ",".join(map(str, default)) or "none"
    if default is None or default == "" or default is PydanticUndefined:
        return "none"
    return str(default)


def sub_model(model: type[BaseSettings], field: str) -> type[BaseSettings] | None:
    """The command of subcommand `field` of `model` (`CliSubCommand[X]` is `X | None`)."""
    info = model.model_fields.get(field)
    if info is None:
        return None
    for candidate in (info.annotation, *typing.get_args(info.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseSettings):
            return candidate
    return None


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def annotate_help(
    parser: argparse.ArgumentParser, model: type[BaseSettings], prefix: str = ""
) -> None:
    """Complete the help that pydantic-settings wrote: `[env NAME, default: X]` for every flag a
    variable also sets, `(default: X)` for the others, a metavar from `json_schema_extra` (or the
    field's name for a list), and descriptions without their docstring indentation.

    pydantic-settings names the environment variables of the root model only; the commands here
    are settings of their own (`SELDON_*`, `SELDON_PROXY_*`), so their help is completed here.
    """
    if parser.description:
        parser.description = pyinspect.cleandoc(parser.description)
    for action in parser._actions:
        field = action.dest.removeprefix(prefix)
        hidden = action.help == argparse.SUPPRESS
        if hidden or not action.dest.startswith(prefix) or field not in model.model_fields:
            continue
        info = model.model_fields[field]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if NoDecode in info.metadata and any(
            isinstance(m, BeforeValidator) and m.func is _split_kept for m in info.metadata
        ):
            action.type = _keep_commas
        if "metavar" in extra:
            action.metavar = str(extra["metavar"])
        elif isinstance(action.metavar, str) and "[" in action.metavar:
            action.metavar = field.upper()
        description = info.description or ""
        env = env_name(model, field)
        if env is not None:
            action.help = f"{description} [env {env}, default: {_default_text(model, field)}]"
        elif info.is_required():
            action.help = f"{description} (required)" if action.option_strings else description
        else:
            action.help = f"{description} (default: {_default_text(model, field)})"
    for name, subparser in _subparsers(parser):
        command = sub_model(model, name.replace("-", "_"))
        if command is not None:
            annotate_help(subparser, command, f"{prefix}{name.replace('-', '_')}.")


def _flag_given(flag: str, argv: Sequence[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def given(model: type[BaseSettings], field: str) -> str:
    """Where the value of `field` came from: its `--flag` if the command line has it, else its
    environment variable (else the flag)."""
    flag = "--" + field.replace("_", "-")
    env = env_name(model, field)
    return flag if _flag_given(flag, _ARGV.get()) or env is None else env


def bad_value(error: ValidationError, model: type[BaseSettings], argv: Sequence[str]) -> str:
    """One line for the first validation error: the value and the flag or variable that gave it.

    Secrets are never printed.
    """
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    owner: type[BaseSettings] = model
    field = loc[-1] if loc else "?"
    for part in loc:  # walk down the subcommands to the model that owns the field
        command = sub_model(owner, part)
        if command is not None:
            owner = command
        elif part in owner.model_fields:
            field = part
            break
    flag = "--" + field.replace("_", "-")
    env = env_name(owner, field)
    # Not a flag on the command line: a variable's value, else a positional argument's.
    source = flag if _flag_given(flag, argv) else env or field.upper()
    info = owner.model_fields.get(field)
    secret = info is not None and info.annotation is SecretStr
    value = "(secret)" if secret else repr(first.get("input"))
    if first["type"] == "missing":
        return f"{source} is required"
    return f"bad value {value} for {source}: {first['msg']}"


def source(
    model: type[T], argv: Sequence[str], prog: str, description: str = "", epilog: str = ""
) -> CliSettingsSource[T]:
    """The CLI settings source of `model` on a `Parser` named `prog`, help completed."""
    parser = Parser(
        prog=prog,
        description=description or None,
        epilog=epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli: CliSettingsSource[T] = CliSettingsSource(
        model,
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_enforce_required=True,
        cli_exit_on_error=True,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    annotate_help(parser, model)
    return cli


def run(
    model: type[T],
    argv: Sequence[str],
    prog: str,
    description: str = "",
    name: str = "",
    epilog: str = "",
) -> int:
    """Parse `argv` into `model` and run its `cli_cmd`; returns the exit code.

    Args:
        model: The command (or the root with its subcommands).
        argv: The arguments, without the program name.
        prog: The program name in usage and help.
        description: The text under the usage line of `--help` (default: the model's doc).
        epilog: The text at the end of `--help`.
        name: The name of the one-line errors (default: `prog`).
    """
    name = name or prog
    args = list(argv)
    _ARGV.set(tuple(args))
    try:
        description = description or pyinspect.cleandoc(model.__doc__ or "")
        cli = source(model, args, prog, description, epilog)
        CliApp.run(model, cli_args=args, cli_settings_source=cli)
    except ValidationError as exc:
        print(f"{name}: {bad_value(exc, model, args)}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except LibrarySettingsError as exc:  # e.g. a value the CLI source cannot split
        print(f"{name}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
