"""`python -m dataflow.probe`: is a Kafka broker there, its topics, a topic's records.

What the scripts used kcat for, done by the project's own Python::

    python -m dataflow.probe HOST:PORT                  exit 0 if a broker answers, 1 if not
    python -m dataflow.probe HOST:PORT --brokers        the cluster's brokers, one a line
    python -m dataflow.probe HOST:PORT --topics PREFIX  topics (and partition counts) by prefix
    python -m dataflow.probe HOST:PORT --records TOPIC  `partition offset size` of every record

The check (`answers`) uses the standard library only, so `scripts/kafka` runs it with the
system's `python3` before any virtual environment exists (`PYTHONPATH=<repo>`); the other
modes read through aiokafka and need the project's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import struct
import sys
from collections.abc import Sequence

__all__ = ["answers", "brokers", "main", "records", "topics"]

#: ApiVersions (key 18) v0: every broker since 0.10 answers it, before any other request.
_API_VERSIONS = 18
_CLIENT_ID = b"dataflow-probe"
_correlation = itertools.count(1)


def _split(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]") or "127.0.0.1", int(port)))
    return out


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
    return data


def _api_versions(host: str, port: int, timeout: float) -> int:
    """Send ApiVersions v0 to one server; return the number of APIs it lists.

    Raises:
        OSError: no connection, a timeout, or an answer that is not Kafka's.
    """
    correlation = next(_correlation)
    header = struct.pack(">hhih", _API_VERSIONS, 0, correlation, len(_CLIENT_ID)) + _CLIENT_ID
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(header)) + header)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        if not 6 <= size <= 1 << 20:
            raise ConnectionError(f"not a Kafka answer (size {size})")
        body = _recv_exactly(sock, size)
    got, error = struct.unpack(">ih", body[:6])
    if got != correlation:
        raise ConnectionError("not a Kafka answer (correlation id)")
    # 35 (UNSUPPORTED_VERSION) still proves a broker: it lists what it supports.
    if error not in (0, 35):
        raise ConnectionError(f"ApiVersions error code {error}")
    return int(struct.unpack(">i", body[6:10])[0]) if len(body) >= 10 else 0


def answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a Kafka broker answers on one of the `host:port[,host:port...]` servers."""
    for host, port in _split(bootstrap):
        try:
            _api_versions(host, port, timeout)
            return True
        except (OSError, struct.error):
            continue
    return False


async def brokers(bootstrap: str) -> list[str]:
    """`node id host:port` of every broker of the cluster (aiokafka)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    controller = cluster.get("controller_id")
    return [
        f"{b['node_id']} {b['host']}:{b['port']}"
        + (" (controller)" if b["node_id"] == controller else "")
        for b in sorted(cluster["brokers"], key=lambda b: b["node_id"])
    ]


async def _partitions(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, of every topic (one metadata request, aiokafka)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        return {t: len(cluster.partitions_for_topic(t) or ()) for t in cluster.topics()}
    finally:
        await client.close()


async def topics(bootstrap: str, prefix: str = "") -> dict[str, int]:
    """Topic name -> partition count, of the topics whose name starts with `prefix`."""
    found = await _partitions(bootstrap)
    return {t: found[t] for t in sorted(found) if t.startswith(prefix)}


async def records(bootstrap: str, topic: str, timeout: float = 10.0) -> list[tuple[int, int, int]]:
    """`(partition, offset, value size)` of every record of a topic, from the beginning to the
    end it had when asked (no consumer group, nothing committed; [] for a missing topic)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    count = (await _partitions(bootstrap)).get(topic, 0)
    if not count:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[int, int, int]] = []
        todo = {tp for tp in parts if ends[tp] > await consumer.position(tp)}
        deadline = asyncio.get_running_loop().time() + timeout
        while todo and asyncio.get_running_loop().time() < deadline:
            for tp, batch in (await consumer.getmany(*todo, timeout_ms=500)).items():
                out.extend((tp.partition, r.offset, len(r.value or b"")) for r in batch)
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return sorted(r for r in out if r[1] < ends[TopicPartition(topic, r[0])])
    finally:
        await consumer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("bootstrap", help="host:port[,host:port...]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--brokers", action="store_true", help="list the brokers")
    mode.add_argument("--topics", metavar="PREFIX", help="list the topics with this prefix")
    mode.add_argument("--records", metavar="TOPIC", help="partition, offset, size per record")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to answer (2)")
    args = parser.parse_args(argv)
    if not answers(args.bootstrap, args.timeout):
        if args.brokers or args.topics is not None or args.records:
            print(f"probe: no Kafka broker answers on {args.bootstrap}", file=sys.stderr)
        return 1
    if args.brokers:
        for line in asyncio.run(brokers(args.bootstrap)):
            print(line)
    elif args.topics is not None:
        for name, n in asyncio.run(topics(args.bootstrap, args.topics)).items():
            print(f"{name} ({n} partition{'s' if n != 1 else ''})")
    elif args.records:
        for partition, offset, size in asyncio.run(records(args.bootstrap, args.records)):
            print(partition, offset, size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
