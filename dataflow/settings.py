"""The engine's settings: `SELDON_*` environment, `.env`, and `--kebab-case` flags.

Names follow the reference engine (`kafka.bootstrap.servers` is `SELDON_KAFKA_BOOTSTRAP_SERVERS`
and `--kafka-bootstrap-servers`). Precedence: flags, then the environment, then `.env`, then
defaults. The flags are read by the `engine` command (`dataflow.cli.engine`). The settings object
is frozen and built once in `__main__`; library modules never read `os.environ`.
"""

from __future__ import annotations

import secrets
import socket
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SELDON_"

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "WARN", "ERROR", "CRITICAL"]


def _replica_id() -> str:
    """The host name and 6 random hex digits: unique per process, even on one host."""
    return f"{socket.gethostname() or 'seldon-dataflow-engine'}-{secrets.token_hex(3)}"


class Settings(BaseSettings):
    """Every setting of the engine, with its default and meaning."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # Engine identity and control plane.
    dataflow_replica_id: str = Field(
        default_factory=_replica_id,
        min_length=1,
        description="subscriber name sent to the scheduler, unique per replica "
        "(default: host name and 6 random hex digits, new for every process)",
    )
    upstream_host: str = Field("0.0.0.0", description="scheduler (Chainer service) host")
    upstream_port: int = Field(9008, ge=1, le=65535, description="scheduler (Chainer) port")
    upstream_security_protocol: Literal["PLAINTEXT", "SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, or SSL: TLS to the scheduler (mutual with a cert)"
    )
    upstream_tls_ca_path: str = Field(
        "", description="CA of the scheduler's certificate (PEM; empty: the system CAs)"
    )
    upstream_tls_cert_path: str = Field(
        "", description="client certificate for the scheduler (PEM, mutual TLS)"
    )
    upstream_tls_key_path: str = Field(
        "",
        validate_default=True,
        description="private key of the client certificate (PEM, mutual TLS)",
    )
    pipeline_ctlops_threads: int = Field(
        8, ge=1, description="pipelines created or deleted at the same time"
    )
    pod_namespace: str = Field("", description="namespace, used in consumer group ids")
    health_server_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="port of /live, /ready, /startup and /metrics (0: any free port)",
    )
    health_server_host: str = Field(
        "0.0.0.0",
        min_length=1,
        description="address the health server binds (0.0.0.0: all interfaces, for probes)",
    )

    # Kafka.
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers")
    kafka_consumer_prefix: str = Field("", description="prefix of consumer group ids")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL (SASL_PLAINTEXT for local tests)"
    )
    kafka_partitions_default: int = Field(1, ge=1, description="partitions of created topics")
    kafka_replication_factor: int | None = Field(
        None,
        ge=1,
        description="replication of created topics; unset: the cluster's "
        "default.replication.factor",
    )
    kafka_join_window_millis: int = Field(
        60000, ge=1, description="join window when a step sets none"
    )
    join_grace_ms: int = Field(
        30000,
        ge=0,
        description="how long join and trigger windows keep a record after they close, for a "
        "partner delayed by a broker failover or a slow model",
    )
    kafka_max_message_size_bytes: int = Field(
        1_000_000_000, ge=1024, description="largest record produced or fetched"
    )
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new consumer group starts"
    )
    version_handover: Literal["offsets", "reset"] = Field(
        "offsets",
        description="offsets: a new pipeline version starts where the previous one stopped "
        "(its committed offsets and held state); reset: like a new pipeline "
        "(SELDON_KAFKA_AUTO_OFFSET_RESET)",
    )
    keep_previous_versions: bool = Field(
        False,
        description="keep the consumer groups and changelogs of a pipeline version replaced "
        "by a newer one (deleted by default once the old version is removed)",
    )
    kafka_producer_linger_ms: int = Field(2, ge=0, description="producer linger (batching)")
    kafka_producer_batch_bytes: int = Field(
        262144, ge=1024, description="largest record batch the producer builds, in bytes"
    )
    kafka_producer_timeout_ms: int = Field(
        30000, ge=100, description="wait for a send's ack or topic metadata before a retry"
    )
    kafka_default_error_topic: str = Field(
        "seldon.default.errors.errors",
        description="error topic for pipelines that name none",
    )
    kafka_tls_client_ca_path: str = Field("", description="CA of the broker certificate (PEM)")
    kafka_tls_client_key_path: str = Field("", description="client private key (PEM, mTLS)")
    kafka_tls_client_cert_path: str = Field("", description="client certificate (PEM, mTLS)")
    kafka_tls_broker_ca_path: str = Field("", description="broker CA (PEM), if not the client CA")
    kafka_tls_endpoint_identification_algorithm: str = Field(
        "", description="'https' to check the broker host name; empty: no check"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism"
    )
    kafka_sasl_username: str = Field("seldon", description="SASL user")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    kafka_sasl_password_path: str = Field("", description="file holding the SASL password")

    # Consumer groups (static membership, KIP-345).
    kafka_group_instance_id: str = Field(
        "",
        description="static member id of this engine's consumers; empty: the replica id if set, "
        "else the host name and a slot number free on this host (stable across restarts)",
    )
    kafka_session_timeout_ms: int = Field(
        10000, ge=1000, description="a consumer silent this long leaves its group"
    )
    kafka_heartbeat_interval_ms: int = Field(
        1000, ge=100, description="consumer heartbeats; rebalances are noticed this fast"
    )
    kafka_rebalance_timeout_ms: int = Field(
        10000, ge=1000, description="how long a rebalance waits for every member to rejoin"
    )
    broker_ready_timeout_ms: int = Field(
        5000, ge=100, description="/ready turns 503 after this long without reaching the broker"
    )

    # Step state (join windows, trigger gates, batches), per step.
    state_max_records: int = Field(
        500_000, ge=1, description="most records a step holds in state (then it stops fetching)"
    )
    state_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="most key and value bytes a step holds in state (then it stops fetching)",
    )

    # Processing guarantee (dataflow.transactions).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once, or exactly_once: each step's outputs, state writes and "
        "consumed offsets committed in one Kafka transaction per input partition",
    )
    transaction_interval_ms: int = Field(
        100, ge=1, le=60000, description="exactly_once: how often each step commits"
    )
    transaction_timeout_ms: int = Field(
        60000,
        ge=1000,
        le=900000,
        description="exactly_once: the broker aborts a transaction left open this long; longer "
        "than a broker failover, so that one does not abort transactions",
    )

    # Topic creation.
    topic_create_timeout_millis: int = Field(60000, ge=1, description="topic creation timeout")
    topic_describe_timeout_millis: int = Field(1000, ge=1, description="per describe call")
    topic_describe_retry_attempts: int = Field(60, ge=1, description="describe attempts")
    topic_describe_retry_delay_millis: int = Field(1000, ge=0, description="between describes")

    # Logging and shutdown.
    log_level_app: LogLevel = Field("INFO", description="engine log level")
    log_level_kafka: LogLevel = Field("WARNING", description="aiokafka and grpclib log level")
    log_format: Literal["text", "json"] = Field("text", description="text or json lines")
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, le=120, description="bound on a graceful shutdown"
    )

    # Schema registry (dataflow.confluent, spec 4.12). Tracing reads the standard OTEL_* env.
    kafka_schema_registry_config_path: str = Field(
        "",
        description="directory holding .confluent-schema.yaml (schemaRegistry.client.URL, "
        "username, password): read and write the Confluent wire format; empty: raw values",
    )

    # Worker processes (the 2022 demo's flag): above 1, a supervisor of that many engines.
    num_cores: int | None = Field(
        None,
        ge=1,
        description="engine processes on this host (empty or 1: one); above 1 a supervisor "
        "runs that many, one subscriber and one ack per pipeline to the scheduler",
    )
    # Accepted for compatibility with old manifests; not used.
    cores_count: int | None = Field(None, ge=1, description="ignored (old setting)")

    @field_validator("upstream_tls_ca_path", "upstream_tls_cert_path", "upstream_tls_key_path")
    @classmethod
    def _tls_needs_ssl(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("upstream_security_protocol") != "SSL":
            raise ValueError("only used with SELDON_UPSTREAM_SECURITY_PROTOCOL=SSL")
        cert = info.data.get("upstream_tls_cert_path")
        if info.field_name == "upstream_tls_key_path" and bool(value) != bool(cert):
            raise ValueError(
                "give SELDON_UPSTREAM_TLS_CERT_PATH and SELDON_UPSTREAM_TLS_KEY_PATH together"
            )
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for entry in value.split(","):
            entry = entry.strip()
            host, sep, port = entry.rpartition(":")
            if not entry or (sep and (not host or host.startswith("[") != host.endswith("]"))):
                raise ValueError(f"{entry!r} is not host:port")
            if sep and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"the port of {entry!r} is not a number from 1 to 65535")
        return value

    @field_validator("log_level_app", "log_level_kafka", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def group_base(self) -> str:
        """The group-id prefix of this engine: `[prefix-][namespace-]seldon-dataflow`."""
        parts = [p for p in (self.kafka_consumer_prefix, self.pod_namespace) if p]
        return "-".join([*parts, "seldon-dataflow"])

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for the start-up log line."""
        return self.model_dump(mode="json")
