"""The container files, checked without Docker.

- compose/docker-compose.yaml against the Compose Specification's JSON schema (vendored in
  tests/unit/schemas/, see its README), after compose's own `${VAR:-default}` interpolation;
- every `SELDON_*` name in the compose file and in .env.example is a real setting (a field of
  `dataflow.settings.Settings`, or of `dataflow.proxy.settings.ProxySettings` for
  `SELDON_PROXY_*`), and .env.example lists every setting with the field's default;
- compose/Dockerfile: COPY sources exist and are not ignored, exec-form ENTRYPOINT, pinned base
  image, non-root user.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from dataflow.proxy.settings import ProxySettings
from dataflow.settings import Settings
from tests.conftest import REPO

COMPOSE = REPO / "compose" / "docker-compose.yaml"
DOCKERFILE = REPO / "compose" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMAS = Path(__file__).parent / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"

ENGINE_PREFIX = "SELDON_"
PROXY_PREFIX = "SELDON_PROXY_"
SERVICES = {"kafka", "proxy", "engine", "demo", "prometheus", "grafana"}
OURS = {"proxy", "engine", "demo"}  # built from compose/Dockerfile
DEMO_TOPICS_IN = (
    "seldon.some-namespace.some-model-1.outputs,seldon.some-namespace.some-model-3.outputs"
)
DEMO_TOPICS_OUT = (
    "seldon.some-namespace.some-model-2.inputs,seldon.some-namespace.some-model-4.inputs"
)


# --------------------------------------------------------------------------- helpers


def settings_class(env_name: str) -> type[BaseSettings]:
    """The settings class an environment name belongs to, by its prefix."""
    return ProxySettings if env_name.startswith(PROXY_PREFIX) else Settings


def field_of(env_name: str) -> str:
    """The settings field an environment name sets (`SELDON_PROXY_PORT` -> `port`)."""
    prefix = PROXY_PREFIX if env_name.startswith(PROXY_PREFIX) else ENGINE_PREFIX
    return env_name[len(prefix) :].lower()


def unknown_settings(names: Iterable[str]) -> list[str]:
    """The `SELDON_*` names that are no setting of the engine or the proxy, in order."""
    return [
        name
        for name in names
        if name.startswith(ENGINE_PREFIX)
        and field_of(name) not in settings_class(name).model_fields
    ]


def _default(cls: type[BaseSettings], field: str) -> Any:
    return cls.model_fields[field].get_default(call_default_factory=True)


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def default_mismatches(values: Mapping[str, str]) -> dict[str, tuple[Any, Any]]:
    """Settings whose value in `values` (env name -> text) parses to something else than the
    field's default: name -> (parsed, default). Unknown names are left to `unknown_settings`.

    Needs an environment without other `SELDON_*` values (see the `clean_env` fixture).
    """
    wrong: dict[str, tuple[Any, Any]] = {}
    for name, text in values.items():
        cls, field = settings_class(name), field_of(name)
        if field not in cls.model_fields:
            continue
        parsed = getattr(cls(_env_file=None, **{field: text}), field)
        if _plain(parsed) != _plain(_default(cls, field)):
            wrong[name] = (_plain(parsed), _plain(_default(cls, field)))
    return wrong


_ASSIGNMENT = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def parse_env_file(text: str) -> tuple[dict[str, str], set[str]]:
    """The assignments of a .env file: (name -> value of active lines, names commented out).

    A commented-out assignment is a line `# NAME=...`; prose comments are skipped.
    """
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if not match:
            continue
        name = match["name"]
        if match["comment"] is not None:
            commented.add(name)
        else:
            assert name not in active, f"{name} set twice"
            active[name] = match["value"].strip()
    return active, commented


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$")


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match["escaped"]:
        return "$"
    if match["named"]:
        return env.get(match["named"], "")
    braced = _BRACED.match(match["braced"])
    assert braced, f"bad substitution ${{{match['braced']}}}"
    name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
    value = env.get(name)
    unset_or_empty = not value if op and op.startswith(":") else value is None
    if op in (":-", "-"):
        return arg if unset_or_empty else str(value)
    if op in (":?", "?"):
        assert not unset_or_empty, f"required variable {name}: {arg}"
        return str(value)
    if op in (":+", "+"):
        return "" if unset_or_empty else arg
    return value or ""


def interpolate(data: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation of every string in a loaded compose file."""
    if isinstance(data, str):
        return _VARIABLE.sub(lambda m: _substitute(m, env), data)
    if isinstance(data, list):
        return [interpolate(item, env) for item in data]
    if isinstance(data, dict):
        return {key: interpolate(value, env) for key, value in data.items()}
    return data


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, list):
        for item in data:
            yield from _strings(item)
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(key)
            yield from _strings(value)


def compose_variables(data: Any) -> dict[str, str | None]:
    """The variables a loaded compose file substitutes: name -> default (None: no default)."""
    found: dict[str, str | None] = {}
    for text in _strings(data):
        for match in _VARIABLE.finditer(text):
            if match["named"]:
                found.setdefault(match["named"], None)
            elif match["braced"] is not None:
                braced = _BRACED.match(match["braced"])
                assert braced, f"bad substitution in {text!r}"
                default = braced["arg"] if braced["op"] in (":-", "-") else None
                found[braced["name"]] = default
    return found


def schema_errors(data: Any) -> list[str]:
    """Where `data` breaks the Compose Specification's schema (empty when it conforms)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(data)
    )


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict (compose allows a mapping or a list of K=V)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def compose_seldon_names(data: Mapping[str, Any]) -> list[str]:
    """Every `SELDON_*` name the compose file sets or substitutes."""
    names = [
        name
        for service in data["services"].values()
        for name in service_environment(service)
        if name.startswith(ENGINE_PREFIX)
    ]
    names += [name for name in compose_variables(data) if name.startswith(ENGINE_PREFIX)]
    return names


def demo_commands(service: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The demo service's two commands (producer, then consumer) split into words."""
    [script] = service["command"]
    producer, consumer = script.split(" && ")
    return producer.split(), consumer.split()


def compose_raw_kafka_image() -> str:
    image = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["image"]
    assert isinstance(image, str)
    return image


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not logical):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def is_exec_form(arguments: str) -> bool:
    """True when an ENTRYPOINT/CMD is a JSON array of strings (exec form)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def copy_sources(text: str) -> list[str]:
    """The build-context sources of the COPY/ADD instructions (not `--from=` stage copies)."""
    sources: list[str] = []
    for instruction, arguments in dockerfile_instructions(text):
        if instruction not in ("COPY", "ADD"):
            continue
        words = arguments.split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources += paths[:-1]
    return sources


def ignored(path: str, patterns: Iterable[str]) -> bool:
    """True when a .dockerignore excludes `path` (or a parent of it); `!` re-includes."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates) or any(
            fnmatch.fnmatchcase(p, pattern) for p in parts
        ):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `SELDON_*` variables and no .env in the working directory."""
    for name in list(os.environ):
        if name.startswith(ENGINE_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose_raw(compose_text: str) -> dict[str, Any]:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as `docker compose` sees it without a .env: every default applied."""
    result = interpolate(compose_raw, {})
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def env_example() -> tuple[dict[str, str], set[str]]:
    return parse_env_file(ENV_EXAMPLE.read_text())


# --------------------------------------------------------------------------- the schema


def test_vendored_schema_is_the_one_its_readme_names() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest in readme
    jsonschema.Draft202012Validator.check_schema(json.loads(COMPOSE_SCHEMA.read_text()))


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_compose_file_follows_the_specification_with_the_example_env(
    compose_raw: dict[str, Any], env_example: tuple[dict[str, str], set[str]]
) -> None:
    assert schema_errors(interpolate(compose_raw, env_example[0])) == []


@pytest.mark.parametrize(
    "path",
    [
        ("services", "engine", "healthcheck", "intervall"),
        ("services", "kafka", "imag"),
        ("netwrks",),
    ],
)
def test_an_unknown_key_fails_the_schema(compose: dict[str, Any], path: tuple[str, ...]) -> None:
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "5s"
    errors = schema_errors(broken)
    assert errors, f"{'.'.join(path)} was accepted"
    assert any(repr(path[-1]) in error for error in errors), errors


def test_a_wrong_type_fails_the_schema(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["engine"]["depends_on"] = 42
    assert schema_errors(broken)


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}", env) == "v/d/d/"
    assert interpolate("$SET $$SET ${SET:+alt} ${UNSET:+alt}", env) == "v $SET alt "
    with pytest.raises(AssertionError):
        interpolate("${UNSET:?needed}", env)


# --------------------------------------------------------------------------- the stack


def test_services_and_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert services["demo"]["profiles"] == ["demo"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert all("profiles" not in services[s] for s in ("kafka", "proxy", "engine"))

    engine = services["engine"]
    env = service_environment(engine)
    assert env["SELDON_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["SELDON_UPSTREAM_HOST"] == "proxy"
    assert env["SELDON_UPSTREAM_PORT"] == "10101"
    assert engine["depends_on"]["kafka"]["condition"] == "service_healthy"
    probe = " ".join(engine["healthcheck"]["test"])
    assert (
        "urllib" in probe and "/ready" in probe and f":{env['SELDON_HEALTH_SERVER_PORT']}/" in probe
    )
    shutdown = _default(Settings, "shutdown_timeout_seconds")
    assert int(engine["stop_grace_period"].removesuffix("s")) > shutdown

    proxy = services["proxy"]
    assert proxy["entrypoint"] + proxy["command"] == [
        "python",
        "-m",
        "dataflow.proxy",
        "--pipelines",
        "/app/compose/pipelines",
    ]
    assert any(p.endswith(":10101") for p in proxy["ports"])
    assert service_environment(proxy)["SELDON_PROXY_PORT"] == "10101"
    assert list((REPO / "compose" / "pipelines").glob("*.yaml")), "no pipeline for the proxy"

    # One container runs the producer, then the consumer: `up --exit-code-from demo` ends
    # with the consumer's verdict (a separate producer's exit would stop the stack first).
    demo = services["demo"]
    assert demo["entrypoint"] == ["sh", "-ec"]
    producer, consumer = demo_commands(demo)
    assert producer[:2] == ["python", "/app/scripts/producer.py"]
    assert "--bootstrap-servers=kafka:9092" in producer
    assert f"--input-topics={DEMO_TOPICS_IN}" in producer
    assert consumer[:3] == ["exec", "python", "/app/scripts/consumer.py"]
    assert f"--output-topics={DEMO_TOPICS_OUT}" in consumer
    assert demo["depends_on"]["engine"]["condition"] == "service_healthy"


def test_ports_are_published_on_the_loopback_only(compose: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"kafka", "proxy", "engine", "prometheus", "grafana"}
    for name, port in published:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_proxy_listens_inside_the_network_and_keeps_its_state(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    env = service_environment(proxy)
    assert env["SELDON_PROXY_HOST"] == "0.0.0.0"  # the engine connects as proxy:10101
    assert _default(ProxySettings, "host") == "127.0.0.1"  # outside compose: this host only
    state = env["SELDON_PROXY_STATE_DIR"]
    assert f"proxy-state:{state}" in proxy["volumes"]
    assert "proxy-state" in compose["volumes"]
    probe = " ".join(proxy["healthcheck"]["test"])
    assert "/health" in probe  # answers without the control API's token
    dockerfile = DOCKERFILE.read_text()
    assert f"mkdir {state} && chown 10001:10001 {state}" in dockerfile


@pytest.mark.parametrize("tool", ["producer", "consumer"])
def test_demo_tool_flags_exist(compose: dict[str, Any], tool: str) -> None:
    source = (REPO / "scripts" / f"{tool}.py").read_text()
    producer, consumer = demo_commands(compose["services"]["demo"])
    for argument in producer if tool == "producer" else consumer:
        if argument.startswith("--"):
            flag = argument.split("=", 1)[0]
            assert f'"{flag}"' in source, f"{tool}.py has no {flag}"


def test_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    local = interpolate(compose_raw_kafka_image(), {"KAFKA_IMAGE": "dataflow-kafka-local"})
    assert local == "dataflow-kafka-local:4.1.1"
    env = service_environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_MESSAGE_MAX_BYTES"] == str(64 * 1024 * 1024)
    replication = [
        k for k in env if k.endswith(("REPLICATION_FACTOR", "MIN_ISR", "INSYNC_REPLICAS"))
    ]
    assert {
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
    } <= set(replication)
    assert all(env[k] == "1" for k in replication)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]
    # The engine never writes records larger than the broker takes.
    engine_env = service_environment(compose["services"]["engine"])
    assert int(engine_env["SELDON_KAFKA_MAX_MESSAGE_SIZE_BYTES"]) <= int(
        env["KAFKA_MESSAGE_MAX_BYTES"]
    )


def test_our_image_is_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for name in OURS:
        build = compose["services"][name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# --------------------------------------------------------------------------- SELDON_* names


def test_a_misspelt_setting_is_detected() -> None:
    assert unknown_settings(
        [
            "SELDON_KAFKA_BOOTSTRAP_SERVERS",
            "SELDON_KAFKA_BOOTSTRAP_SERVER",
            "SELDON_PROXY_PORT",
            "SELDON_PROXY_PORTS",
            "SELDON_UPSTREAM_PORT",
            "OTHER_VARIABLE",
        ]
    ) == ["SELDON_KAFKA_BOOTSTRAP_SERVER", "SELDON_PROXY_PORTS"]


def test_a_wrong_default_is_detected(clean_env: None) -> None:
    assert default_mismatches({"SELDON_UPSTREAM_PORT": "9008", "SELDON_PROXY_PORT": "10101"}) == {}
    assert default_mismatches({"SELDON_UPSTREAM_PORT": "9009"}) == {
        "SELDON_UPSTREAM_PORT": (9009, 9008)
    }


def test_compose_sets_only_real_settings(compose_raw: dict[str, Any]) -> None:
    names = compose_seldon_names(compose_raw)
    assert "SELDON_KAFKA_BOOTSTRAP_SERVERS" in names
    assert unknown_settings(names) == []


def test_compose_checker_sees_a_misspelt_name(compose_raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose_raw)
    broken["services"]["engine"]["environment"]["SELDON_KAFKA_BOOTSTRAP_SERVER"] = "kafka:9092"
    assert unknown_settings(compose_seldon_names(broken)) == ["SELDON_KAFKA_BOOTSTRAP_SERVER"]


def test_env_example_names_only_real_settings(
    env_example: tuple[dict[str, str], set[str]],
) -> None:
    active, commented = env_example
    assert unknown_settings([*active, *sorted(commented)]) == []


def test_env_example_lists_every_setting(env_example: tuple[dict[str, str], set[str]]) -> None:
    active, commented = env_example
    for cls, prefix in ((Settings, ENGINE_PREFIX), (ProxySettings, PROXY_PREFIX)):
        for field, info in cls.model_fields.items():
            name = prefix + field.upper()
            assert name in active or name in commented, f"{name} missing from .env.example"
            if name in commented:
                # Only settings without a fixed default may be left commented out.
                assert info.default_factory is not None or info.default is None, name
                assert name not in active, name


def test_env_example_values_are_the_defaults(
    clean_env: None, env_example: tuple[dict[str, str], set[str]]
) -> None:
    active, _ = env_example
    seldon = {k: v for k, v in active.items() if k.startswith(ENGINE_PREFIX)}
    assert default_mismatches(seldon) == {}


# Defaults that differ on every construction (a random part).
RANDOM_DEFAULTS = {"dataflow_replica_id"}


def test_env_example_loads_as_the_defaults(clean_env: None) -> None:
    for cls in (Settings, ProxySettings):
        from_file = cls(_env_file=ENV_EXAMPLE).model_dump(exclude=RANDOM_DEFAULTS)
        defaults = cls(_env_file=None).model_dump(exclude=RANDOM_DEFAULTS)
        assert {k: _plain(v) for k, v in from_file.items()} == {
            k: _plain(v) for k, v in defaults.items()
        }


def test_env_example_has_every_compose_variable_with_its_default(
    compose_raw: dict[str, Any], env_example: tuple[dict[str, str], set[str]]
) -> None:
    active, _ = env_example
    variables = compose_variables(compose_raw)
    for name, default in variables.items():
        assert name in active, f"compose variable {name} missing from .env.example"
        assert default is not None, f"compose variable {name} has no default"
        assert active[name] == default, name
    others = {n for n in active if not n.startswith(ENGINE_PREFIX)}
    assert others <= set(variables), f"unused in compose: {others - set(variables)}"


# --------------------------------------------------------------------------- the Dockerfile


def test_dockerfile_copy_sources_exist_and_are_sent() -> None:
    sources = copy_sources(DOCKERFILE.read_text())
    assert {"pyproject.toml", "dataflow", "scripts/producer.py", "compose/pipelines"} <= set(
        sources
    )
    patterns = dockerignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
        assert not ignored(source, patterns), f"COPY source {source} is in .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".kafka", ".git", ".env", "dataflow/__pycache__", ".mypy_cache"):
        assert ignored(path, patterns), path


def test_dockerfile_entrypoint_is_exec_form() -> None:
    entrypoints = [
        a for i, a in dockerfile_instructions(DOCKERFILE.read_text()) if i == "ENTRYPOINT"
    ]
    assert entrypoints == ['["python", "-m", "dataflow"]']
    assert is_exec_form(entrypoints[0])


def test_shell_form_entrypoint_is_detected() -> None:
    text = "FROM x\nENTRYPOINT python -m dataflow\nCOPY --from=b /a /b\nCOPY missing/ /app/\n"
    [(_, entrypoint)] = [(i, a) for i, a in dockerfile_instructions(text) if i == "ENTRYPOINT"]
    assert not is_exec_form(entrypoint)
    assert copy_sources(text) == ["missing/"]
    assert not (REPO / "missing").exists()


def test_dockerfile_stages_user_and_environment(compose: dict[str, Any]) -> None:
    instructions = list(dockerfile_instructions(DOCKERFILE.read_text()))
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert compose["services"]["engine"]["build"]["args"]["PYTHON_IMAGE"] == base
    stages = [a for i, a in instructions if i == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    runtime = instructions[[i for i, _ in instructions].index("FROM", 1) :]
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(a for i, a in runtime if i == "ENV")
    for setting in (
        "PYTHONUNBUFFERED=1",
        "MALLOC_MMAP_THRESHOLD_=16777216",
        "MALLOC_TRIM_THRESHOLD_=67108864",
    ):
        assert setting in env
    assert ("EXPOSE", str(_default(Settings, "health_server_port"))) in runtime
