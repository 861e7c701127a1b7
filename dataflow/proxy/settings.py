"""The proxy's settings: `SELDON_PROXY_*` environment, `.env`, and `--kebab-case` flags.

Precedence: flags, then the environment, then `.env`, then the defaults below. Built once in
`__main__`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
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

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the gRPC server and the control API bind (0.0.0.0: all interfaces)",
    )
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
    state_dir: Path = Field(
        Path(".proxy-state"),
        description="folder of the proxy's durable state (SQLite: pipelines, versions, uids, acks)",
    )
    token: SecretStr = Field(
        SecretStr(""),
        description="bearer token the control API requires, and the CLI sends (empty: none)",
    )
    token_path: str = Field(
        "", description="file holding the bearer token (instead of SELDON_PROXY_TOKEN)"
    )
    tls_cert_path: str = Field(
        "", description="certificate of the Chainer gRPC service (PEM; with the key: TLS)"
    )
    tls_key_path: str = Field(
        "", validate_default=True, description="private key of that certificate (PEM)"
    )
    tls_client_ca_path: str = Field(
        "", description="CA of the engines' client certificates (PEM; set: mutual TLS)"
    )
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="health servers of engines to describe besides those subscribed here "
        "(env: comma-separated, e.g. http://10.0.0.5:8000)",
    )
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

    @field_validator("engine_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_topic(value)

    @field_validator("token_path")
    @classmethod
    def _one_token(cls, value: str, info: ValidationInfo) -> str:
        token = info.data.get("token")
        if value and isinstance(token, SecretStr) and token.get_secret_value():
            raise ValueError("give SELDON_PROXY_TOKEN or SELDON_PROXY_TOKEN_PATH, not both")
        return value

    @field_validator("tls_key_path", "tls_client_ca_path")
    @classmethod
    def _tls_pairs(cls, value: str, info: ValidationInfo) -> str:
        cert = info.data.get("tls_cert_path")
        if info.field_name == "tls_key_path" and bool(value) != bool(cert):
            raise ValueError(
                "give SELDON_PROXY_TLS_CERT_PATH and SELDON_PROXY_TLS_KEY_PATH together"
            )
        if info.field_name == "tls_client_ca_path" and value and not cert:
            raise ValueError("mutual TLS needs SELDON_PROXY_TLS_CERT_PATH and _KEY_PATH too")
        return value

    def bearer_token(self) -> str | None:
        """The control API's token: `token`, or the first line of `token_path`; None if unset.

        Raises:
            ValueError: the token file cannot be read or is empty (one line).
        """
        if self.token_path:
            try:
                text = Path(self.token_path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ValueError(f"token file {self.token_path}: {reason}") from None
            lines = text.strip().splitlines()
            if not lines or not lines[0].strip():
                raise ValueError(f"token file {self.token_path}: empty")
            return lines[0].strip()
        return self.token.get_secret_value() or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def env_name(field: str) -> str:
    """The environment variable of a settings field, e.g. `SELDON_PROXY_PORT`."""
    return f"{ENV_PREFIX}{field.upper()}"
