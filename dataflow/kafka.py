"""Kafka clients for the engine: security and sizes from the settings, topic creation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import (
    CreateTopicsRequest_v3,
    CreateTopicsResponse_v3,
)
from aiokafka.protocol.api import Request, RequestStruct, Response

from dataflow.settings import Settings

# Kafka error codes met when creating topics that are fine for us.
_TOPIC_ALREADY_EXISTS = 36

#: Replication factor meaning "the broker's `default.replication.factor`" (KIP-464).
CLUSTER_DEFAULT = -1


class _CreateTopicsResponseV4(Response):  # type: ignore[misc]
    API_KEY = 19
    API_VERSION = 4
    SCHEMA = CreateTopicsResponse_v3.SCHEMA


class _CreateTopicsRequestV4(RequestStruct):  # type: ignore[misc]
    """CreateTopics v4: v3's layout, and a replication factor of -1 takes the broker's default
    (KIP-464, Kafka 2.4). aiokafka stops at v3, where -1 is refused."""

    API_KEY = 19
    API_VERSION = 4
    RESPONSE_TYPE = _CreateTopicsResponseV4
    SCHEMA = CreateTopicsRequest_v3.SCHEMA


class NewTopic(NamedTuple):
    """A topic to create (aiokafka's `NewTopic` refuses the replication factor -1)."""

    name: str
    partitions: int
    replication: int = CLUSTER_DEFAULT
    configs: dict[str, str] | None = None


class _CreateTopics(Request[_CreateTopicsRequestV4]):  # type: ignore[misc]
    API_KEY = 19

    def __init__(self, topics: list[NewTopic], timeout_ms: int) -> None:
        self.topics = topics
        self.timeout_ms = timeout_ms

    def build(self, request_struct_class: type[_CreateTopicsRequestV4]) -> _CreateTopicsRequestV4:
        requests: list[tuple[Any, ...]] = [
            (t.name, t.partitions, t.replication, [], list((t.configs or {}).items()))
            for t in self.topics
        ]
        return request_struct_class(requests, self.timeout_ms, False)


async def create_topics(
    admin: AIOKafkaAdminClient, topics: list[NewTopic], timeout_ms: int
) -> list[tuple[str, int, str]]:
    """Ask the controller to create `topics`; a replication factor of `CLUSTER_DEFAULT` (-1)
    takes the cluster's `default.replication.factor`.

    Returns:
        (topic, Kafka error code, message) per topic.
    """
    response = await admin._send_to_controller(_CreateTopics(topics, timeout_ms))
    return [(name, code, message or "") for name, code, message in response.topic_errors]


def replication_of(settings: Settings) -> int:
    """The replication factor to create topics with: the setting, else the cluster's default."""
    return settings.kafka_replication_factor or CLUSTER_DEFAULT


class TopicError(RuntimeError):
    """Topics could not be created or did not become visible."""


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol (spec 2.1)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = settings.kafka_tls_broker_ca_path or settings.kafka_tls_client_ca_path or None
        context = create_ssl_context(
            cafile=cafile,
            certfile=settings.kafka_tls_client_cert_path or None,
            keyfile=settings.kafka_tls_client_key_path or None,
        )
        context.check_hostname = settings.kafka_tls_endpoint_identification_algorithm == "https"
        options["ssl_context"] = context
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value()
        if settings.kafka_sasl_password_path:
            password = Path(settings.kafka_sasl_password_path).read_text().strip()
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password,
        )
    return options


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"dataflow-{settings.dataflow_replica_id}",
        **security_options(settings),
    }


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """The one shared producer: idempotent, acks from all in-sync replicas."""
    return AIOKafkaProducer(
        **_common(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.kafka_producer_linger_ms,
        max_batch_size=settings.kafka_producer_batch_bytes,
        max_request_size=settings.kafka_max_message_size_bytes,
        request_timeout_ms=settings.kafka_producer_timeout_ms,
    )


def make_transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    """A producer of one task in exactly-once mode (`dataflow.transactions`): transactional
    (hence idempotent), otherwise sized as the shared one."""
    return AIOKafkaProducer(
        **_common(settings),
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=settings.kafka_producer_linger_ms,
        max_batch_size=settings.kafka_producer_batch_bytes,
        max_request_size=settings.kafka_max_message_size_bytes,
        request_timeout_ms=settings.kafka_producer_timeout_ms,
    )


def make_consumer(
    settings: Settings, group_id: str, instance: str | None = None, **extra: Any
) -> AIOKafkaConsumer:
    """A step consumer: manual commits, sizes from the settings, range assignment, and static
    membership as `instance` (see `dataflow.membership`) when given."""
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    fetch_max = min(settings.kafka_max_message_size_bytes, 2**31 - 1)
    if settings.kafka_schema_registry_config_path:  # values lose their Confluent framing
        from dataflow.confluent import unframe

        extra.setdefault("value_deserializer", unframe)
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.kafka_auto_offset_reset,
        max_partition_fetch_bytes=fetch_max,
        fetch_max_bytes=max(fetch_max, 52428800),
        partition_assignment_strategy=(RangePartitionAssignor,),
        isolation_level="read_committed",
        group_instance_id=instance,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
        **extra,
    )


async def stop_producer(producer: AIOKafkaProducer, timeout: float) -> bool:
    """Stop `producer` within `timeout` seconds; False when it had to be forced.

    `AIOKafkaProducer.stop` waits for every batch it holds to be delivered; with a broker that
    does not answer (paused, partitioned) that is forever, and cancelling it leaves the
    producer half-stopped: its connections open and a task waiting on its batches pending
    until the process exits. Past `timeout` the batches are failed, the sender stopped and the
    connections closed here instead.
    """
    try:
        await asyncio.wait_for(producer.stop(), timeout)
        return True
    except Exception as exc:  # TimeoutError, or the failure a dead sender left
        reason = exc
    producer._message_accumulator.fail_all(KafkaError(f"producer stopped: {reason!r}"))
    task = producer._sender.sender_task if producer._sender is not None else None
    if task is not None and not task.done():
        task.cancel()  # ends once its requests in flight fail with the connections below
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), 1)
    if task is not None:
        await asyncio.wait({task}, timeout=1)
    return False


def make_offsets_client(settings: Settings, group_id: str | None) -> AIOKafkaConsumer:
    """A consumer that reads and commits a group's offsets (or, without a group, reads assigned
    partitions) and never joins the group."""
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


async def read_latest(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[bytes, bytes | None]:
    """The latest value per key of the partitions `tps` (a compacted changelog), read from the
    beginning to the end offsets taken first; `consumer` is started here and stopped."""
    await consumer.start()
    latest: dict[bytes, bytes | None] = {}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10000)
            for records in batch.values():
                for r in records:
                    latest[r.key] = r.value
    finally:
        await consumer.stop()
    return latest


def make_admin(settings: Settings) -> AIOKafkaAdminClient:
    """An admin client for topic creation."""
    return AIOKafkaAdminClient(
        **_common(settings), request_timeout_ms=settings.topic_create_timeout_millis
    )


def make_restore_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer without a group, for reading a changelog back (assigned by hand)."""
    fetch_max = min(settings.kafka_max_message_size_bytes, 2**31 - 1)
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=fetch_max,
        fetch_max_bytes=max(fetch_max, 52428800),
        isolation_level="read_committed",
    )


class Topics(NamedTuple):
    """What `ensure_topics` did: the topics it created, and every topic's partition count."""

    created: list[str]
    partitions: dict[str, int]


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    topics: Sequence[str],
    *,
    partitions: int,
    replication: int = CLUSTER_DEFAULT,
    configs: dict[str, str] | None = None,
    create_timeout_ms: int = 30_000,
    attempts: int = 150,
    delay_s: float = 0.2,
    describe_timeout_s: float | None = None,
) -> Topics:
    """Create `topics` if missing, then poll until all are visible (spec 3.3). The engine's
    (with `topic_options`) and the tools' (with `tool_admin`) topics are made here.

    Args:
        admin: a started admin client.
        topics: the topics (duplicates are created once).
        partitions: partitions of the topics created.
        replication: their replication factor (`CLUSTER_DEFAULT`: the cluster's default).
        configs: their topic configs.
        create_timeout_ms: how long the controller may take to create them.
        attempts: describes before giving up, `delay_s` apart.
        delay_s: seconds between two describes.
        describe_timeout_s: longest one describe may take (None: no limit).

    Raises:
        TopicError: a creation error other than "already exists", or topics still invisible
            after `attempts` describes.
    """
    names = list(dict.fromkeys(topics))
    if not names:
        return Topics([], {})
    errors = await create_topics(
        admin,
        [NewTopic(name, partitions, replication, configs) for name in names],
        create_timeout_ms,
    )
    for name, code, message in errors:
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise TopicError(f"cannot create topic {name}: error {code} {message}".strip())
    created = [name for name, code, _ in errors if code == 0]
    counts: dict[str, int] = {}
    missing = set(names)
    for _ in range(attempts):
        describe = admin.describe_topics(sorted(missing))
        described = await (
            describe
            if describe_timeout_s is None
            else asyncio.wait_for(describe, describe_timeout_s)
        )
        for entry in described:
            if entry.get("error_code", 0) == 0 and entry.get("partitions"):
                counts[entry["topic"]] = len(entry["partitions"])
                missing.discard(entry["topic"])
        if not missing:
            return Topics(created, counts)
        await asyncio.sleep(delay_s)
    raise TopicError(f"topics not visible after creation: {', '.join(sorted(missing))}")


def topic_options(
    settings: Settings, *, partitions: int | None = None, configs: dict[str, str] | None = None
) -> dict[str, Any]:
    """`ensure_topics`' options for the engine's topics: partitions (default
    `kafka_partitions_default`), replication, the message size and `configs`, and the create
    and describe timings of the settings."""
    return {
        "partitions": partitions or settings.kafka_partitions_default,
        "replication": replication_of(settings),
        "configs": {
            "max.message.bytes": str(settings.kafka_max_message_size_bytes),
            **(configs or {}),
        },
        "create_timeout_ms": settings.topic_create_timeout_millis,
        "attempts": settings.topic_describe_retry_attempts,
        "delay_s": settings.topic_describe_retry_delay_millis / 1000,
        "describe_timeout_s": settings.topic_describe_timeout_millis / 1000 * 5,
    }


@contextlib.asynccontextmanager
async def tool_admin(
    bootstrap: str, security_protocol: str = "PLAINTEXT"
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client of the command-line tools (closed on exit)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, security_protocol=security_protocol)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


class Replication(NamedTuple):
    """How a set of topics is replicated: each figure is the weakest partition's or topic's."""

    replicas: int
    in_sync: int
    min_insync: int
    brokers: int
    weakest: str

    def note(self) -> tuple[str, str]:
        """(log level, one line): WARNING when losing one broker would stop writes to a topic
        (acks=all needs `min.insync.replicas` in sync) or lose its records; INFO otherwise,
        and on a single-broker cluster, which has no broker to lose."""
        text = (
            f"replication {self.replicas} ({self.in_sync} in sync), "
            f"min.insync.replicas {self.min_insync}, {self.brokers} broker"
            + ("s" if self.brokers != 1 else "")
        )
        if self.brokers > 1 and self.in_sync - 1 < self.min_insync:
            return "WARNING", (
                f"{text}: losing one broker stops writes to {self.weakest} or loses its records "
                "(raise the broker's default.replication.factor or SELDON_KAFKA_REPLICATION_FACTOR)"
            )
        return "INFO", text


async def replication(admin: AIOKafkaAdminClient, topics: list[str]) -> Replication:
    """How `topics` are replicated, asked of the cluster (two requests).

    Raises:
        TopicError: a broker answered for a topic it does not know yet (its metadata lags
            the controller's just after a create) or had no partitions for one.
    """
    described = await admin.describe_topics(topics)
    replicas, in_sync, weakest = 2**31, 2**31, ""
    for topic in described:
        if topic.get("error_code") or not topic.get("partitions"):
            raise TopicError(f"{topic.get('topic')}: error {topic.get('error_code')}")
        for part in topic["partitions"]:
            replicas = min(replicas, len(part["replicas"]))
            if len(part["isr"]) < in_sync:
                in_sync, weakest = len(part["isr"]), topic["topic"]
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
        for name in topics
    ]
    min_insync = 1
    for response in await admin.describe_configs(resources):
        for code, _message, _type, name, entries in response.resources:
            if code:
                raise TopicError(f"{name}: error {code} describing its configs")
            for entry in entries:
                if entry[0] == "min.insync.replicas" and entry[1]:
                    min_insync = max(min_insync, int(entry[1]))
    brokers = len(admin._client.cluster.brokers())
    return Replication(replicas, in_sync, min_insync, brokers, weakest)


async def delete_groups(admin: AIOKafkaAdminClient, groups: list[str]) -> dict[str, int]:
    """Delete consumer groups (their committed offsets), each at its coordinator.

    aiokafka's admin client has no call for it. A group that still has members is left alone
    (error 68, GroupNotEmpty); an unknown one is fine (69).

    Returns:
        Kafka's error code per group (0: deleted).
    """
    from aiokafka.protocol.admin import DeleteGroupsRequest

    codes: dict[str, int] = {}
    for group in groups:
        node = await admin.find_coordinator(group)
        response = await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
        for name, code in response.results:
            codes[name] = code
    return codes
