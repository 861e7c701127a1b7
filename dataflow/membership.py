"""Static consumer-group membership (KIP-345): who this engine is to its groups, and leaving.

A static member (`group.instance.id`) that dies and comes back within the session timeout takes
its partitions back with no rebalance, and while it is away the other members keep theirs. The
instance id must be stable across restarts of one engine and unique across engines:

* `SELDON_KAFKA_GROUP_INSTANCE_ID` when set;
* else `SELDON_DATAFLOW_REPLICA_ID` when set explicitly (a StatefulSet pod name, say);
* else the host name and the lowest slot number no other live engine on this host holds (an
  advisory lock on a file in the temp folder, released by the kernel when the process dies, so a
  restarted engine gets its slot back and two engines on one host get two slots).

aiokafka skips LeaveGroup for static members (and speaks only LeaveGroup v0/v1, which Kafka 4
refuses), so a stopping static member would keep its partitions until its session expires:
`leave` sends LeaveGroup v3 naming the instance, used on a graceful stop so that the others take
over at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from dataflow.settings import Settings

__all__ = ["instance_id", "leave", "member_of", "stop_member"]

_MAX_SLOTS = 1024
_held: list[IO[bytes]] = []  # lock files kept open for the life of the process
_slot_taken: list[int] = []  # this process's slot, once taken


def instance_id(settings: Settings) -> str:
    """This engine's static member id (see the module docstring)."""
    if settings.kafka_group_instance_id:
        return settings.kafka_group_instance_id
    if "dataflow_replica_id" in settings.model_fields_set:
        return settings.dataflow_replica_id
    if not _slot_taken:
        _slot_taken.append(_slot())
    return f"{socket.gethostname() or 'dataflow'}-{_slot_taken[0]}"


def _slot() -> int:
    folder = Path(tempfile.gettempdir()) / f"dataflow-slots-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname() or "dataflow"
    for slot in range(_MAX_SLOTS):
        handle = (folder / f"{host}-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held.append(handle)
        return slot
    raise RuntimeError(f"no free engine slot in {folder}")


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _StaticLeaveGroup(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group: str, member_id: str, instance: str) -> None:
        self._group, self._member, self._instance = group, member_id, instance

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        return request_struct_class(self._group, [(self._member, self._instance)])


async def leave(client: Any, node: int, group: str, member_id: str, instance: str) -> int:
    """Leave `group` as static member `instance` (`member_id`) through `client`, a started
    aiokafka client (the engine's producer's), at the group coordinator `node`.

    Sent after the member's consumer stopped: a consumer still running would notice it is no
    longer a member and join again.

    Returns:
        Kafka's error code (0: left).

    Raises:
        KafkaError: the coordinator could not be reached.
    """
    response = await client.send(node, _StaticLeaveGroup(group, member_id, instance))
    return int(response.error_code)


def member_of(consumer: AIOKafkaConsumer) -> tuple[int, str] | None:
    """(coordinator node, member id) of a consumer in a group, or None."""
    coordinator: Any = consumer._coordinator
    if coordinator is None or coordinator.coordinator_id is None or not coordinator.member_id:
        return None
    return coordinator.coordinator_id, coordinator.member_id


async def stop_member(consumer: AIOKafkaConsumer, client: Any, log: Any) -> None:
    """Stop a step's consumer; a static member then leaves its group explicitly through
    `client` (the shared producer's), so that the others take its partitions now."""
    instance = consumer._group_instance_id
    group = consumer._group_id
    member = member_of(consumer)
    try:
        await consumer.stop()
    except Exception as exc:
        log.warning("consumer stop: {}", exc)
    if instance and group and member is not None:
        node, member_id = member
        try:
            code = await asyncio.wait_for(leave(client, node, group, member_id, instance), 5)
            if code:
                log.debug("leave group {}: error code {}", group, code)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.debug("leave group {}: {}", group, exc)
