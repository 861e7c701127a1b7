"""The proxy's settings: `SELDON_PROXY_*` environment, `.env`, and `--kebab-case` flags.

Precedence: flags, then the environment, then `.env`, then the defaults below. Built once in
`__main__`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dataflow.topics import check_prefix, check_topic

ENV_PREFIX = "SELDON_PROXY_"

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class ProxySettings(BaseSettings):
    """Every option of `python -m dataflow.proxy`, with its default and meaning."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    host: str = Field("0.0.0.0", description="address the gRPC server and the control API bind")
    port: int = Field(
        10101, ge=0, le=65535, description="Chainer gRPC port engines subscribe to (0: any)"
    )
    control_port: int = Field(10102, ge=0, le=65535, description="HTTP control API port (0: any)")
    pipelines: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="spec files or folders of *.yaml loaded at start (env: comma-separated)",
    )
    namespace: str = Field(
        "default", description="topic namespace of Pipeline resources without metadata.namespace"
    )
    topic_prefix: str = Field("seldon", description="topic prefix of Pipeline resources")
    log_level: LogLevel = Field("INFO", description="log level")
    url: str = Field(
        "http://127.0.0.1:10102",
        description="control API of the running proxy (load, unload, status)",
    )

    @field_validator("pipelines", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_topic(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def env_name(field: str) -> str:
    """The environment variable of a settings field, e.g. `SELDON_PROXY_PORT`."""
    return f"{ENV_PREFIX}{field.upper()}"
