"""The Confluent schema-registry wire format (spec 4.12), as Seldon's engine reads and writes it.

With `kafka.schema.registry.config.path` set (`SELDON_KAFKA_SCHEMA_REGISTRY_CONFIG_PATH`, a
directory holding `.confluent-schema.yaml`):

- every consumed value of at least 6 bytes whose first byte is 0x00 loses its first 6 bytes
  (magic byte 0, 4-byte schema id, message index [0] as one byte); other values are unchanged
  (a protobuf message never starts with 0x00: field number 0 does not exist);
- outputs to `...inputs` topics are written framed as `inferenceSchema.ModelInferRequest`,
  to `...outputs` topics as `inferenceSchema.ModelInferResponse`, with the schema id the
  registry gives when the schema is registered under `<topic>-value` (auto-register,
  normalised), once per topic and cached; other topics (errors, changelogs) stay raw, and a
  topic whose registration fails is written raw (logged), as the reference's serializer does.

The registry must answer at start-up, or the engine stops with one line.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_FILE = ".confluent-schema.yaml"
MAGIC = b"\x00"
#: Bytes of the framing the reference drops: magic, schema id, one message-index byte.
FRAME_BYTES = 6
#: Seconds for one registry request.
REQUEST_TIMEOUT = 10.0
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """The registry's configuration is bad or the registry does not answer; str() is one line."""


def unframe(value: bytes | None) -> bytes | None:
    """`value` without its Confluent framing; unchanged when it is not framed."""
    if value is not None and len(value) >= FRAME_BYTES and value[0] == 0:
        return value[FRAME_BYTES:]
    return value


def frame(schema_id: int) -> bytes:
    """The framing of a value of the first message of schema `schema_id`."""
    return MAGIC + schema_id.to_bytes(4, "big") + b"\x00"


def config_file(directory: str) -> str:
    """The registry's settings file in `directory`."""
    return os.path.join(directory, CONFIG_FILE)


@dataclass(frozen=True)
class RegistryConfig:
    """`schemaRegistry.client` of `.confluent-schema.yaml`."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def auth(self) -> str:
        """The Authorization header value (basic `user:password`), or empty."""
        if not self.username and not self.password:
            return ""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"


def load_config(directory: str) -> RegistryConfig:
    """Read `<directory>/.confluent-schema.yaml`.

    Raises:
        RegistryError: a missing or unreadable file, or no URL.
    """
    import yaml

    path = config_file(directory)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise RegistryError(f"{path} is not valid YAML{at}") from None
    client = (data.get("schemaRegistry") or {}).get("client") if isinstance(data, dict) else None
    if not isinstance(client, dict):
        raise RegistryError(f"{path}: schemaRegistry.client is missing")
    url = str(client.get("URL") or client.get("url") or "").strip().rstrip("/")
    if not url:
        raise RegistryError(f"{path}: Schema registry URL is required (schemaRegistry.client.URL)")
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"{path}: bad schema registry URL {url!r}: http(s):// expected")
    return RegistryConfig(url, str(client.get("username") or ""), str(client.get("password") or ""))


def schema_for(topic: str) -> tuple[str, str] | None:
    """(message name, schema text) that values of `topic` are framed as; None: written raw."""
    suffix = topic.rsplit(".", 1)[-1]
    if suffix == "inputs":
        return "ModelInferRequest", REQUEST_SCHEMA
    if suffix == "outputs":
        return "ModelInferResponse", RESPONSE_SCHEMA
    return None


class Registry:
    """A client of the registry's Confluent-compatible REST API, with a cache per topic.

    Args:
        config: where the registry is and how to log in.
    """

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._prefixes: dict[str, bytes] = {}
        self._session: Any = None

    async def start(self) -> None:
        """Open the HTTP session and check that the registry answers.

        Raises:
            RegistryError: the registry does not answer, or refuses the credentials.
        """
        import aiohttp

        headers = {"Accept": CONTENT_TYPE}
        if self.config.auth:
            headers["Authorization"] = self.config.auth
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        try:
            await self._request("GET", "/subjects")
        except RegistryError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp

        url = self.config.url + path
        try:
            async with self._session.request(
                method, url, json=body, headers={"Content-Type": CONTENT_TYPE}
            ) as response:
                text = await response.text()
                if response.status >= 300:
                    raise RegistryError(
                        f"schema registry {self.config.url}: {method} {path}: "
                        f"HTTP {response.status} {text.strip()[:200]}"
                    )
                import orjson

                return orjson.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise RegistryError(
                f"schema registry {self.config.url} unreachable: {reason}"
            ) from None

    async def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it if new (normalised)."""
        from urllib.parse import quote

        body = {"schemaType": "PROTOBUF", "schema": schema}
        answer = await self._request(
            "POST", f"/subjects/{quote(subject, safe='')}/versions?normalize=true", body
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise RegistryError(f"schema registry {self.config.url}: no id in {answer!r}")
        return int(answer["id"])

    async def prefix(self, topic: str) -> bytes:
        """The framing of values written to `topic` (empty: raw), registered on first use.

        Raises:
            RegistryError: the registration failed (the caller writes raw values).
        """
        cached = self._prefixes.get(topic)
        if cached is not None:
            return cached
        schema = schema_for(topic)
        prefix = b""
        if schema is not None:
            prefix = frame(await self.register(f"{topic}-value", schema[1]))
        self._prefixes[topic] = prefix
        return prefix


# The schemas registered for framed values: the V2 messages of `protos/v2_dataplane.proto` in
# package `inferenceSchema`, each one self-contained (the shared types nested), so that the
# message is the file's first (index [0], the 6th byte of the framing).
_SHARED = """
  message InferParameter {
    oneof parameter_choice {
      bool bool_param = 1;
      int64 int64_param = 2;
      string string_param = 3;
    }
  }

  message InferTensorContents {
    repeated bool bool_contents = 1;
    repeated int32 int_contents = 2;
    repeated int64 int64_contents = 3;
    repeated uint32 uint_contents = 4;
    repeated uint64 uint64_contents = 5;
    repeated float fp32_contents = 6;
    repeated double fp64_contents = 7;
    repeated bytes bytes_contents = 8;
  }
"""

_TENSOR = """
    string name = 1;
    string datatype = 2;
    repeated int64 shape = 3;
    map<string, InferParameter> parameters = 4;
    InferTensorContents contents = 5;
"""

REQUEST_SCHEMA = f"""syntax = "proto3";
package inferenceSchema;

message ModelInferRequest {{{_SHARED}
  message InferInputTensor {{{_TENSOR}  }}

  message InferRequestedOutputTensor {{
    string name = 1;
    map<string, InferParameter> parameters = 2;
  }}

  string model_name = 1;
  string model_version = 2;
  string id = 3;
  map<string, InferParameter> parameters = 4;
  repeated InferInputTensor inputs = 5;
  repeated InferRequestedOutputTensor outputs = 6;
  repeated bytes raw_input_contents = 7;
}}
"""

RESPONSE_SCHEMA = f"""syntax = "proto3";
package inferenceSchema;

message ModelInferResponse {{{_SHARED}
  message InferOutputTensor {{{_TENSOR}  }}

  string model_name = 1;
  string model_version = 2;
  string id = 3;
  map<string, InferParameter> parameters = 4;
  repeated InferOutputTensor outputs = 5;
  repeated bytes raw_output_contents = 6;
}}
"""


async def framing(registry: Registry, topic: str, log: Any) -> bytes:
    """The framing of `topic`'s values; raw (empty) when the registry refuses (spec 4.12)."""
    try:
        return await registry.prefix(topic)
    except RegistryError as exc:
        log.warning("values to {} written without framing: {}", topic, exc)
        return b""
