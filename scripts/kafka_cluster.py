"""A Kafka cluster on loopback for fault tests: N nodes (3) in KRaft combined mode.

Every node is a broker and a controller (`process.roles=broker,controller`) of one static
N-voter quorum, started from the jars `scripts/kafka fetch` caches (KAFKA_CACHE, default
~/.cache/dataflow/kafka-$KAFKA_VERSION). Replication 3 by default (`default.replication.factor`,
`min.insync.replicas=2`, no unclean leader election; the offsets and transaction state topics at
replication 3, min ISR 2), no topic auto-creation, the message sizes of scripts/kafka's broker.
Node n listens on 127.0.0.1:<client port n> (clients) and :<controller port n> (the quorum).

    scripts/kafka-cluster start|stop|status|kill N|start-node N|pause N|resume N
    scripts/kafka-cluster leader TOPIC PARTITION|controller|bootstrap|logs N [LINES]

The CLI keeps its cluster in KAFKA_CLUSTER_DIR (default <repo>/.run/kafka-cluster: cluster.json,
node<n>/ with server.properties, data, broker.log, pid), client ports KAFKA_CLUSTER_PORT ..
+N-1 (default 29092), controller ports the next N. The chaos suite (scripts/chaos.py
--cluster 3) drives a `KafkaCluster` of its own in-process: a temporary folder, free ports,
the brokers killed with their harness (parent-death signal, atexit, `close`).

Faults: `kill` sends SIGKILL to a node's process group, `pause`/`resume` SIGSTOP/SIGCONT;
`leader` names a partition's leader (topic metadata from the live nodes), `controller` the
active controller (a DescribeQuorum request; in KRaft the controller id of a Metadata response
is a random broker, not the active controller).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

STARTED = "Kafka Server started"
DEFAULT_PORT = 29092
DEFAULT_HEAP = "448m"


def kafka_version() -> str:
    return os.environ.get("KAFKA_VERSION", "4.1.1")


def kafka_cache() -> Path:
    default = Path.home() / ".cache" / "dataflow" / f"kafka-{kafka_version()}"
    return Path(os.environ.get("KAFKA_CACHE") or default)


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise RuntimeError("no java on PATH (a JDK 17 or newer is needed)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.5) -> bool:
    """Something accepts connections on 127.0.0.1:`port` (a paused JVM still does: the kernel
    completes the handshake)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _libc_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _proc_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T: stopped, Z: zombie), '' if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# -- DescribeQuorum on the wire (aiokafka has no such request) -------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _skip_tags(buf: bytes, pos: int) -> int:
    count, pos = _read_uvarint(buf, pos)
    for _ in range(count):
        _, pos = _read_uvarint(buf, pos)
        size, pos = _read_uvarint(buf, pos)
        pos += size
    return pos


def describe_quorum_request(correlation: int = 1) -> bytes:
    """DescribeQuorum v0 (API 55, flexible: request header v2) for __cluster_metadata[0]."""
    client = b"kafka-cluster"
    header = struct.pack(">hhih", 55, 0, correlation, len(client)) + client + b"\x00"
    topic = b"__cluster_metadata"
    body = (
        _uvarint(2)  # topics: compact array of 1
        + _uvarint(len(topic) + 1)
        + topic
        + _uvarint(2)  # partitions: compact array of 1
        + struct.pack(">i", 0)
        + b"\x00"  # partition tags
        + b"\x00"  # topic tags
        + b"\x00"  # request tags
    )
    return header + body


def parse_describe_quorum(buf: bytes) -> tuple[int, int]:
    """(leader id, leader epoch) of a DescribeQuorum v0 response (after its size prefix)."""
    pos = _skip_tags(buf, 4)  # correlation id, response header v1 tags
    (error,) = struct.unpack_from(">h", buf, pos)
    if error:
        raise RuntimeError(f"DescribeQuorum error code {error}")
    _, pos = _read_uvarint(buf, pos + 2)  # topics
    size, pos = _read_uvarint(buf, pos)
    pos += size - 1  # topic name
    _, pos = _read_uvarint(buf, pos)  # partitions
    _, p_error, leader, epoch = struct.unpack_from(">ihii", buf, pos)
    if p_error:
        raise RuntimeError(f"DescribeQuorum partition error code {p_error}")
    return leader, epoch


def describe_quorum(port: int, timeout: float = 3.0) -> tuple[int, int]:
    """(active controller id, epoch) as the node on 127.0.0.1:`port` (either listener) knows."""
    request = describe_quorum_request()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)

        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("connection closed")
                data += chunk
            return data

        (size,) = struct.unpack(">i", read(4))
        return parse_describe_quorum(read(size))


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Layout:
    """What a cluster is, kept in <dir>/cluster.json for later commands."""

    nodes: int
    client_ports: list[int]
    controller_ports: list[int]
    cluster_id: str
    heap: str = DEFAULT_HEAP
    extra: dict[str, str] = field(default_factory=dict)


def server_properties(layout: Layout, node: int, data_dir: Path) -> str:
    """server.properties of node `node` (1-based)."""
    n = layout.nodes
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(layout.controller_ports))
    port, cport = layout.client_ports[node - 1], layout.controller_ports[node - 1]
    rf, isr = min(3, n), min(2, n)
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(isr),
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": "67108864",
        "replica.fetch.max.bytes": "67108864",
        "socket.request.max.bytes": "134217728",
        "delete.topic.enable": "true",
        # A small machine runs N of these: fewer threads than the defaults (3 and 8).
        "num.network.threads": "2",
        "num.io.threads": "4",
        **layout.extra,
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
"""


class KafkaCluster:
    """N KRaft nodes (broker + controller each) under `dir`, node ids 1..N.

    `tie=True` (the chaos suite): the brokers get SIGKILL when the thread that started them
    dies (Linux parent-death signal; start them from the main thread) and at interpreter exit
    (atexit), so none outlives its harness. The CLI starts them untied: they outlive it.
    """

    _live: set[KafkaCluster] = set()

    def __init__(
        self,
        dir: Path,
        nodes: int = 3,
        base_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        tie: bool = False,
        say: Callable[[str], None] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(dir)
        self.tie = tie
        self.say = say or (lambda text: print(f"kafka-cluster: {text}", flush=True))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log_offsets: dict[int, int] = {}
        self.paused: set[int] = set()
        self.killed: set[int] = set()
        saved = self.dir / "cluster.json"
        if saved.exists():
            self.layout = Layout(**json.loads(saved.read_text()))
            return
        if nodes < 1:
            raise ValueError("a cluster needs 1 or more nodes")
        if base_port is None:
            clients, controllers = self._free_ports(nodes)
        else:
            clients = [base_port + i for i in range(nodes)]
            controllers = [base_port + nodes + i for i in range(nodes)]
        self.layout = Layout(
            nodes=nodes,
            client_ports=clients,
            controller_ports=controllers,
            cluster_id="",
            heap=heap,
            extra=dict(extra or {}),
        )

    @staticmethod
    def _free_ports(nodes: int) -> tuple[list[int], list[int]]:
        ports: list[int] = []
        while len(ports) < 2 * nodes:
            port = free_port()
            if port not in ports:
                ports.append(port)
        return ports[:nodes], ports[nodes:]

    @classmethod
    def temporary(cls, nodes: int = 3, heap: str = DEFAULT_HEAP, **kw: Any) -> KafkaCluster:
        """A cluster in a new temporary folder on free ports, tied to this process."""
        folder = Path(tempfile.mkdtemp(prefix="kafka-cluster-"))
        return cls(folder, nodes=nodes, heap=heap, tie=True, **kw)

    # -- layout ---------------------------------------------------------------------------

    @property
    def nodes(self) -> list[int]:
        return list(range(1, self.layout.nodes + 1))

    def node_dir(self, node: int) -> Path:
        return self.dir / f"node{node}"

    def log_path(self, node: int) -> Path:
        return self.node_dir(node) / "broker.log"

    def client_port(self, node: int) -> int:
        return self.layout.client_ports[node - 1]

    def controller_port(self, node: int) -> int:
        return self.layout.controller_ports[node - 1]

    @property
    def bootstrap(self) -> str:
        """Every node's client listener (what engines and clients get)."""
        return ",".join(f"127.0.0.1:{p}" for p in self.layout.client_ports)

    def live_nodes(self) -> list[int]:
        """Nodes running and not paused (as far as this object or /proc knows)."""
        return [n for n in self.nodes if self.state(n) == "running"]

    def live_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(n)}" for n in self.live_nodes())

    # -- preparing ------------------------------------------------------------------------

    def fetch(self) -> Path:
        """The broker jars, fetched by `scripts/kafka fetch` into its cache when missing."""
        libs = kafka_cache() / "libs"
        result = subprocess.run(
            [str(REPO / "scripts" / "kafka"), "fetch"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        if result.returncode != 0 or not any(libs.glob("kafka_*.jar")):
            raise RuntimeError(
                f"scripts/kafka fetch failed ({result.returncode}); no broker jars in {libs}:\n"
                f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
        return libs

    def classpath(self) -> str:
        return str(kafka_cache() / "libs" / "*")

    def configure(self) -> None:
        """Write every node's configuration; format the storages not formatted yet (in
        parallel, one cluster id); save the layout."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.layout.cluster_id:
            self.layout.cluster_id = self._random_uuid()
        (self.dir / "cluster.json").write_text(json.dumps(asdict(self.layout), indent=2) + "\n")
        formats: list[tuple[int, subprocess.Popen[bytes]]] = []
        for node in self.nodes:
            folder = self.node_dir(node)
            (folder / "data").mkdir(parents=True, exist_ok=True)
            props = folder / "server.properties"
            props.write_text(server_properties(self.layout, node, folder / "data"))
            (folder / "log4j2.yaml").write_text(LOG4J2)
            if (folder / "data" / "meta.properties").exists():
                continue
            with (folder / "format.log").open("wb") as log:
                formats.append(
                    (
                        node,
                        subprocess.Popen(
                            [
                                *(java_bin(), "-Xmx256m", "-cp", self.classpath()),
                                *("kafka.tools.StorageTool", "format"),
                                *("-t", self.layout.cluster_id, "-c", str(props)),
                            ],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                        ),
                    )
                )
        for node, proc in formats:
            if proc.wait(120) != 0:
                text = (self.node_dir(node) / "format.log").read_text(errors="replace")
                raise RuntimeError(f"formatting node {node} failed:\n{text[-2000:]}")

    def _random_uuid(self) -> str:
        """A Kafka cluster id (base64url of a random UUID, as StorageTool random-uuid)."""
        import base64

        while True:  # not starting with '-': StorageTool would take it for an option
            text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not text.startswith("-"):
                return text

    def check_ports_free(self) -> None:
        busy = [p for p in self.layout.client_ports + self.layout.controller_ports if listening(p)]
        if busy:
            raise RuntimeError(
                f"ports {busy} on 127.0.0.1 are in use (another cluster? scripts/kafka-cluster "
                "status; or set KAFKA_CLUSTER_PORT)"
            )

    # -- processes ------------------------------------------------------------------------

    def _pid_file(self, node: int) -> Path:
        return self.node_dir(node) / "broker.pid"

    def _marker(self, node: int) -> str:
        return f"kafka.Kafka {self.node_dir(node) / 'server.properties'}"

    def pid(self, node: int) -> int | None:
        """The node's broker process (this object's child, or found by its pid file and
        command line), None when it is not running."""
        proc = self.procs.get(node)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        try:
            pid = int(self._pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None
        if self._marker(node) in _cmdline(pid) and _proc_state(pid) not in ("", "Z"):
            return pid
        return None

    def state(self, node: int) -> str:
        """running, paused (SIGSTOP) or down."""
        pid = self.pid(node)
        if pid is None:
            return "down"
        return "paused" if _proc_state(pid) in ("T", "t") or node in self.paused else "running"

    def spawn(self, node: int) -> int:
        """Start node `node`'s broker (not waiting for it); its pid. In a tied cluster call it
        from the thread the cluster should die with (the main thread)."""
        if self.pid(node) is not None:
            raise RuntimeError(f"node {node} is already running (pid {self.pid(node)})")
        folder = self.node_dir(node)
        log = self.log_path(node)
        self.log_offsets[node] = log.stat().st_size if log.exists() else 0
        args = [
            java_bin(),
            "-Xms128m",
            f"-Xmx{self.layout.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={folder / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={folder}",
            "-cp",
            self.classpath(),
            "kafka.Kafka",
            str(folder / "server.properties"),
        ]
        preexec = None
        if self.tie:
            prctl, parent = _libc_prctl(), os.getpid()

            def preexec() -> None:  # in the child, between fork and exec
                if prctl is not None:
                    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
                if os.getppid() != parent:
                    os._exit(1)

            KafkaCluster._live.add(self)
        with log.open("ab") as handle:
            banner = f"\n===== kafka-cluster: start node {node} at {time.ctime()} =====\n"
            handle.write(banner.encode())
            handle.flush()
            self.log_offsets[node] = handle.tell()
            proc = subprocess.Popen(
                args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group (pgid = pid); no terminal signals
                preexec_fn=preexec,
                cwd=folder,
            )
        self.procs[node] = proc
        self._pid_file(node).write_text(f"{proc.pid}\n")
        self.killed.discard(node)
        self.paused.discard(node)
        return proc.pid

    def started(self, node: int) -> bool:
        """The node logged `Kafka Server started` since its latest start, and takes clients."""
        try:
            with self.log_path(node).open("rb") as handle:
                handle.seek(self.log_offsets.get(node, 0))
                text = handle.read().decode(errors="replace")
        except OSError:
            return False
        if self.log_offsets.get(node) is None:  # not started by this object: the last start
            text = text.rsplit("===== kafka-cluster: start node", 1)[-1]
        return STARTED in text and listening(self.client_port(node))

    def wait_up(self, node: int, timeout: float = 90.0) -> float:
        """Wait until node `node` started; seconds waited. Raises if it exits or times out."""
        t0 = time.monotonic()
        while not self.started(node):
            if self.pid(node) is None:
                raise RuntimeError(f"node {node} exited while starting:\n{self.tail(node)}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(
                    f"node {node} not started after {timeout:g}s:\n{self.tail(node)}"
                )
            time.sleep(0.2)
        return time.monotonic() - t0

    def tail(self, node: int, lines: int = 30) -> str:
        try:
            text = self.log_path(node).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, node: int, sig: int) -> int:
        pid = self.pid(node)
        if pid is None:
            raise RuntimeError(f"node {node} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        return pid

    def kill(self, node: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> float:
        """Send `sig` (SIGKILL) to node `node`'s process group and wait for it to exit (a
        paused node is continued first unless SIGKILL); seconds until it exited."""
        t0 = time.monotonic()
        pid = self._signal(node, sig)
        if sig != signal.SIGKILL and self.state(node) == "paused":
            self._signal(node, signal.SIGCONT)
        self.killed.add(node)
        self.paused.discard(node)
        proc = self.procs.get(node)
        deadline = t0 + timeout
        while True:
            if proc is not None:
                if proc.poll() is not None:
                    break
            elif _proc_state(pid) in ("", "Z"):
                break
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise RuntimeError(f"node {node} (pid {pid}) did not exit after SIGKILL")
                self.say(f"node {node} still alive {timeout:g}s after signal {sig}: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
            time.sleep(0.05)
        self._pid_file(node).unlink(missing_ok=True)
        return time.monotonic() - t0

    def pause(self, node: int) -> None:
        self._signal(node, signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: int) -> None:
        self._signal(node, signal.SIGCONT)
        self.paused.discard(node)

    # -- whole cluster --------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> float:
        """Fetch the jars, configure and format, start every node not running, wait until all
        started and every broker is in the metadata; seconds taken."""
        t0 = time.monotonic()
        down = [n for n in self.nodes if self.pid(n) is None]
        if not down:
            return 0.0
        if len(down) == len(self.nodes):
            self.check_ports_free()
        self.fetch()
        self.configure()
        for node in down:
            self.spawn(node)
        for node in down:
            self.wait_up(node, max(1.0, timeout - (time.monotonic() - t0)))
        asyncio.run(self.wait_brokers(timeout=max(5.0, timeout - (time.monotonic() - t0))))
        return time.monotonic() - t0

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every running node at once (controlled shutdown), SIGKILL after `timeout`."""
        pids = {}
        for node in self.nodes:
            pid = self.pid(node)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGTERM)
            pids[node] = pid
        deadline = time.monotonic() + timeout
        while pids:
            for node in list(pids):
                if self.pid(node) is None:
                    del pids[node]
                    self._pid_file(node).unlink(missing_ok=True)
            if pids and time.monotonic() > deadline:
                for node, pid in pids.items():
                    self.say(f"node {node} still alive after {timeout:g}s, killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
            time.sleep(0.1)
        self.paused.clear()
        KafkaCluster._live.discard(self)

    def close(self, keep_logs: Path | None = None, remove: bool = True) -> None:
        """Kill every node (SIGKILL: fast, safe in any finally), copy the broker logs to
        `keep_logs` (as broker-<n>.log), remove the folder (`remove`)."""
        for node in self.nodes:
            pid = self.pid(node)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        KafkaCluster._live.discard(self)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for node in self.nodes:
                with contextlib.suppress(OSError):
                    shutil.copy(self.log_path(node), keep_logs / f"broker-{node}.log")
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def close_all(cls) -> None:
        for cluster in list(cls._live):
            with contextlib.suppress(Exception):
                cluster.close(remove=True)

    # -- metadata -------------------------------------------------------------------------

    async def _admin_call(self, call: Callable[[Any], Any], timeout: float = 15.0) -> Any:
        """`call(admin)` with an admin client of the live nodes, retried until `timeout`."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            servers = self.live_bootstrap()
            if not servers:
                raise RuntimeError("no node of the cluster is running")
            admin = AIOKafkaAdminClient(
                bootstrap_servers=servers, request_timeout_ms=5000, metadata_max_age_ms=1000
            )
            try:
                await asyncio.wait_for(admin.start(), 10)
                return await asyncio.wait_for(call(admin), 10)
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(0.5)
        raise RuntimeError(f"cluster metadata not available after {timeout:g}s: {last!r}")

    async def brokers(self) -> list[int]:
        """The broker ids in the cluster's metadata (registered and not fenced)."""

        async def call(admin: Any) -> list[int]:
            described = await admin.describe_cluster()
            return sorted(int(b["node_id"]) for b in described["brokers"])

        return list(await self._admin_call(call))

    async def wait_brokers(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.brokers() == self.nodes:
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every broker of {self.nodes} in the metadata")
            await asyncio.sleep(0.5)

    async def partitions(
        self, topics: list[str] | None = None
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """Per (topic, partition) of `topics` (None: every topic, the internal ones too):
        leader (-1: none), replicas, isr."""

        async def call(admin: Any) -> dict[tuple[str, int], dict[str, Any]]:
            out: dict[tuple[str, int], dict[str, Any]] = {}
            for d in await admin.describe_topics(topics):
                if d["error_code"]:
                    raise RuntimeError(f"describe {d['topic']}: error {d['error_code']}")
                for p in d["partitions"]:
                    out[(d["topic"], p["partition"])] = {
                        "leader": p["leader"],
                        "replicas": list(p["replicas"]),
                        "isr": list(p["isr"]),
                    }
            return out

        return dict(await self._admin_call(call))

    async def leader(self, topic: str, partition: int) -> int | None:
        info = (await self.partitions([topic])).get((topic, partition))
        if info is None:
            raise RuntimeError(f"{topic}[{partition}] not found")
        return None if info["leader"] < 0 else int(info["leader"])

    async def under_replicated(self, topics: list[str] | None = None) -> list[str]:
        """`topic[p]` of the partitions whose in-sync replicas are fewer than their replicas."""
        return [
            f"{t}[{p}]"
            for (t, p), info in sorted((await self.partitions(topics)).items())
            if len(info["isr"]) < len(info["replicas"])
        ]

    async def wait_in_sync(self, topics: list[str] | None = None, timeout: float = 60.0) -> float:
        """Wait until every partition of `topics` (None: all) has all its replicas in sync; seconds
        waited. Raises RuntimeError (naming the partitions) after `timeout`."""
        t0 = time.monotonic()
        while True:
            short = await self.under_replicated(topics)
            if not short:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"not in sync after {timeout:g}s: {', '.join(short[:10])}")
            await asyncio.sleep(0.5)

    def controller(self, timeout: float = 15.0) -> int:
        """The active controller's node id (DescribeQuorum to a live node's controller
        listener), retried until `timeout`."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            for node in self.live_nodes():
                try:
                    leader, _ = describe_quorum(self.controller_port(node))
                except (OSError, RuntimeError, struct.error, IndexError) as exc:
                    last = exc
                    continue
                if leader in self.nodes and self.state(leader) == "running":
                    return leader
                last = RuntimeError(f"node {node} names controller {leader}")
            time.sleep(0.3)
        raise RuntimeError(f"no active controller found in {timeout:g}s: {last!r}")

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "node": n,
                "state": self.state(n),
                "pid": self.pid(n),
                "client": f"127.0.0.1:{self.client_port(n)}",
                "controller": f"127.0.0.1:{self.controller_port(n)}",
            }
            for n in self.nodes
        ]


atexit.register(KafkaCluster.close_all)


# -- command line ---------------------------------------------------------------------------


def cli_cluster() -> KafkaCluster:
    folder = Path(os.environ.get("KAFKA_CLUSTER_DIR") or REPO / ".run" / "kafka-cluster")
    port = int(os.environ.get("KAFKA_CLUSTER_PORT") or DEFAULT_PORT)
    nodes = int(os.environ.get("KAFKA_CLUSTER_NODES") or 3)
    heap = os.environ.get("KAFKA_HEAP") or DEFAULT_HEAP
    return KafkaCluster(folder, nodes=nodes, base_port=port, heap=heap)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/kafka-cluster",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog=(
            "environment: KAFKA_CLUSTER_DIR (default <repo>/.run/kafka-cluster), "
            "KAFKA_CLUSTER_PORT "
            f"(first client port, default {DEFAULT_PORT}; controllers after the clients), "
            "KAFKA_CLUSTER_NODES (3), KAFKA_HEAP (per node, "
            f"{DEFAULT_HEAP}), KAFKA_VERSION, KAFKA_CACHE (the jars of scripts/kafka fetch)"
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start every node (format on first start) and wait")
    sub.add_parser("stop", help="stop every node (SIGTERM, then SIGKILL after 30 s)")
    sub.add_parser("status", help="each node: running / paused / down")
    sub.add_parser("bootstrap", help="print the bootstrap servers")
    sub.add_parser("controller", help="print the active controller's node id")
    for name, text in (
        ("kill", "kill -9 node N"),
        ("start-node", "start node N again and wait for it"),
        ("pause", "SIGSTOP node N"),
        ("resume", "SIGCONT node N"),
    ):
        sub.add_parser(name, help=text).add_argument("node", type=int)
    leader = sub.add_parser("leader", help="print the node id leading TOPIC[PARTITION]")
    leader.add_argument("topic")
    leader.add_argument("partition", type=int)
    logs = sub.add_parser("logs", help="the last LINES of node N's broker log")
    logs.add_argument("node", type=int)
    logs.add_argument("lines", type=int, nargs="?", default=100)
    purge = sub.add_parser("purge", help="stop, then delete KAFKA_CLUSTER_DIR")
    purge.set_defaults()
    args = p.parse_args(argv)
    cluster = cli_cluster()
    node = getattr(args, "node", None)
    if node is not None and node not in cluster.nodes:
        p.error(f"node must be one of {cluster.nodes}")
    try:
        if args.command == "start":
            if all(cluster.pid(n) is not None for n in cluster.nodes):
                cluster.say(f"already running: {cluster.bootstrap}")
                return 0
            took = cluster.start()
            cluster.say(f"up in {took:.1f}s: {cluster.bootstrap} (data in {cluster.dir})")
        elif args.command == "stop":
            cluster.stop()
            cluster.say("stopped")
        elif args.command == "purge":
            cluster.stop()
            shutil.rmtree(cluster.dir, ignore_errors=True)
            cluster.say(f"stopped; {cluster.dir} removed")
        elif args.command == "status":
            rows = cluster.status()
            for row in rows:
                print(
                    f"node {row['node']}: {row['state']:<7} pid {row['pid'] or '-':<8} "
                    f"{row['client']} (controller {row['controller']})"
                )
            return 0 if all(r["state"] == "running" for r in rows) else 3
        elif args.command == "bootstrap":
            print(cluster.bootstrap)
        elif args.command == "controller":
            print(cluster.controller())
        elif args.command == "leader":
            found = asyncio.run(cluster.leader(args.topic, args.partition))
            print(found if found is not None else "none")
            return 0 if found is not None else 1
        elif args.command == "kill":
            took = cluster.kill(node)
            cluster.say(f"node {node} killed (exited in {took:.2f}s)")
        elif args.command == "start-node":
            cluster.spawn(node)
            took = cluster.wait_up(node)
            cluster.say(f"node {node} up in {took:.1f}s")
        elif args.command == "pause":
            cluster.pause(node)
            cluster.say(f"node {node} paused (SIGSTOP)")
        elif args.command == "resume":
            cluster.resume(node)
            cluster.say(f"node {node} resumed (SIGCONT)")
        elif args.command == "logs":
            print(cluster.tail(node, args.lines))
    except RuntimeError as exc:
        print(f"kafka-cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
