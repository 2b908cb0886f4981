"""A real Apache Kafka (KRaft) on 127.0.0.1 for development and tests (`refstream kafka up`).

The broker jars come from Maven Central: Maven resolves `org.apache.kafka:kafka_2.13` and its
runtime dependencies into a git-ignored cache, which later runs reuse. Each node runs in
combined mode (broker + controller). Storage is formatted once; restarting keeps the data.

Kafka 3.9.1 is the version: the last 3.x line, KRaft-only here, and it still speaks every
protocol version aiokafka 0.14 and faust-streaming 0.15 send (Kafka 4.0 removed several).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "3.9.1"
SCALA = "2.13"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.refstream</groupId>
  <artifactId>refstream-local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-storage</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


class KafkaError(RuntimeError):
    """Something stands in the way of the local broker; the message says what and the fix."""


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    override = os.environ.get("REFSTREAM_CACHE_DIR")
    return Path(override) if override else project_root() / ".cache"


def default_data_dir() -> Path:
    base = os.environ.get("REFSTREAM_DATA_DIR", "").strip() or ".data"
    return Path(base).resolve() / "kafka"


def _need(tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise KafkaError(f"`{tool}` was not found on PATH. {fix}")
    return path


def resolve_jars(*, quiet: bool = True) -> Path:
    """Return the folder of broker jars, resolving them with Maven on first use."""
    libs = cache_dir() / "kafka" / f"{SCALA}-{KAFKA_VERSION}" / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = _need("mvn", "Install Apache Maven (e.g. `apt-get install maven`); it fetches the broker.")
    _need("java", "Install Java 17 or newer (e.g. `apt-get install openjdk-17-jre-headless`).")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(scala=SCALA, version=KAFKA_VERSION))
    tmp = work / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]
    if quiet:
        cmd.insert(2, "-q")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise KafkaError(
            "Maven could not resolve the Kafka broker jars "
            f"(org.apache.kafka:kafka_{SCALA}:{KAFKA_VERSION}). Check that Maven Central is "
            f"reachable (proxy settings in ~/.m2/settings.xml).\n{tail}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    done.write_text(KAFKA_VERSION)
    return libs


@dataclass(frozen=True, slots=True)
class Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "broker.log"

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"


@dataclass(frozen=True, slots=True)
class Cluster:
    """A local cluster: node i listens on port+2i (clients) and port+2i+1 (controller)."""

    data_dir: Path
    port: int = 9092
    brokers: int = 1

    @property
    def nodes(self) -> list[Node]:
        return [
            Node(i + 1, self.port + 2 * i, self.port + 2 * i + 1, self.data_dir / f"node-{i + 1}")
            for i in range(self.brokers)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]


def _properties(cluster: Cluster, node: Node) -> str:
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes)
    rf = min(3, cluster.brokers)
    min_isr = 2 if cluster.brokers >= 3 else 1
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.dir / "logs"),
        "num.partitions": "1",
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "10",
        # Tests start many consumer groups; waiting 3 s for more members only slows them.
        "group.initial.rebalance.delay.ms": "0",
        "log.flush.interval.messages": "9223372036854775807",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _read_pid(node: Node) -> int | None:
    try:
        pid = int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid, node) else None


def _is_our_broker(pid: int, node: Node) -> bool:
    # Only a process whose command line names this node's properties file is ours: a
    # recycled pid must never be killed by `down`.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(node.properties).encode() in cmdline


def _cluster_id(cluster: Cluster) -> str:
    f = cluster.data_dir / "cluster.id"
    if f.exists():
        return f.read_text().strip()
    cid = "-"
    # one id in 64 starts with "-" and reads as an option to kafka-storage (Kafka's own
    # random ids avoid that too)
    while cid.startswith("-"):
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    f.write_text(cid)
    return cid


def _java() -> str:
    return _need("java", "Install Java 17 or newer (e.g. `apt-get install openjdk-17-jre-headless`).")


def _format(libs: Path, cluster: Cluster, node: Node) -> None:
    if (node.dir / "logs" / "meta.properties").exists():
        return
    cmd = [
        _java(), "-cp", f"{libs}/*", f"-Dlog4j.configuration=file:{node.dir / 'log4j.properties'}",
        "kafka.tools.StorageTool", "format", "-t", _cluster_id(cluster),
        "-c", str(node.properties), "--ignore-formatted",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise KafkaError(
            f"Formatting KRaft storage in {node.dir} failed: {result.stderr.strip()[-800:]}\n"
            f"If the folder holds another cluster's data, remove it or pick another --data-dir."
        )


def start_node(cluster: Cluster, node: Node, libs: Path) -> int:
    """Start one node in its own session (so Ctrl-C of a parent does not stop it)."""
    heap = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g").split()
    cmd = [
        _java(), *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{node.dir / 'log4j.properties'}",
        "-cp", f"{libs}/*", "kafka.Kafka", str(node.properties),
    ]
    out = open(node.dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=node.dir,
    )
    out.close()
    node.pid_file.write_text(str(proc.pid))
    return proc.pid


def _ready(cluster: Cluster, timeout_s: float) -> None:
    """Wait until every node answers a metadata request with the full broker list."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError as AIOKafkaError

    async def probe() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            desc = await admin.describe_cluster()
            return len(desc.get("brokers", []))
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            # the pid file, not the command line: right after fork the child may not have
            # exec'd java yet
            try:
                pid = int(node.pid_file.read_text().strip())
            except (OSError, ValueError):
                pid = -1
            if pid < 0 or not _alive(pid):
                raise KafkaError(
                    f"The broker (node {node.node_id}) exited during start-up. Its log: "
                    f"{node.log_file} and {node.dir / 'stdout.log'}"
                )
        if all(_port_open(n.port) for n in cluster.nodes):
            try:
                # its own thread and loop: `up` is also called from async code (benchmarks)
                with ThreadPoolExecutor(max_workers=1) as pool:
                    brokers = pool.submit(asyncio.run, probe()).result()
                if brokers >= cluster.brokers:
                    return
            except (AIOKafkaError, OSError) as exc:
                last = exc
        time.sleep(0.25)
    raise KafkaError(
        f"The broker did not answer within {timeout_s:.0f}s (last error: {last}). "
        f"See {cluster.nodes[0].log_file}."
    )


def running(cluster: Cluster) -> dict[int, int]:
    """Node id → pid of the cluster's nodes that run now, started from its data dir."""
    return {n.node_id: pid for n in cluster.nodes if (pid := _read_pid(n)) is not None}


def _listener_port(node: Node) -> int | None:
    """The client port a node was started with (from the properties file it runs on)."""
    try:
        lines = node.properties.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("listeners="):
            for listener in line.split("=", 1)[1].split(","):
                if listener.startswith("PLAINTEXT://"):
                    return int(listener.rsplit(":", 1)[1])
    return None


def broker_on_port(port: int) -> tuple[int, Path] | None:
    """(pid, data dir) of a broker started by `refstream kafka up` that listens on `port`
    for clients or its controller, from any data dir; None if there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # java … kafka.Kafka <node dir>/server.properties
        if len(args) < 3 or args[-3] != b"kafka.Kafka" or not args[-2].endswith(b"server.properties"):
            continue
        properties = Path(args[-2].decode(errors="replace"))
        try:
            lines = properties.read_text().splitlines()
        except OSError:
            continue
        listeners = [line for line in lines if line.startswith("listeners=")]
        if any(re.search(rf"127\.0\.0\.1:{port}(?![0-9])", line) for line in listeners):
            return int(entry.name), properties.parent.parent
    return None


def _port_taken(port: int) -> KafkaError:
    other = broker_on_port(port)
    if other is not None:
        pid, data_dir = other
        return KafkaError(
            f"Port {port} on 127.0.0.1 is in use by another refstream broker (pid {pid}, data dir "
            f"{data_dir}). Use it (REFSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:{port}), stop it with "
            f"`refstream kafka down --data-dir {data_dir}`, or choose another port with --port N."
        )
    return KafkaError(
        f"Port {port} on 127.0.0.1 is in use by another program. Stop it, or "
        f"choose another port with `refstream kafka up --port N`."
    )


@contextlib.contextmanager
def _starting(data_dir: Path) -> Iterator[None]:
    """One `up` at a time per data dir: two at once would both start the same nodes."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(cluster: Cluster, *, timeout_s: float = 90.0) -> list[int]:
    """Start the cluster's nodes that are not running and wait until every node answers.
    Returns the ids of the nodes this call started (none when all were running); a node
    that was already running is never stopped by it, not even when start-up fails."""
    with _starting(cluster.data_dir):
        already = running(cluster)
        for node in cluster.nodes:
            if node.node_id in already:
                was = _listener_port(node)
                if was is not None and was != node.port:
                    raise KafkaError(
                        f"The broker of {cluster.data_dir} (node {node.node_id}, pid "
                        f"{already[node.node_id]}) already runs on port {was}, not {node.port}. Use it "
                        f"(--port {was - 2 * (node.node_id - 1)}), or stop it first with "
                        f"`refstream kafka down --data-dir {cluster.data_dir}`."
                    )
                continue
            for port in (node.port, node.controller_port):
                if not _port_free(port):
                    raise _port_taken(port)
        todo = [n for n in cluster.nodes if n.node_id not in already]
        if todo:
            libs = resolve_jars()
        started: list[int] = []
        try:
            for node in todo:
                node.dir.mkdir(parents=True, exist_ok=True)
                node.properties.write_text(_properties(cluster, node))
                (node.dir / "log4j.properties").write_text(_LOG4J.format(log=node.log_file))
                _format(libs, cluster, node)
                start_node(cluster, node, libs)
                started.append(node.node_id)
            _ready(cluster, timeout_s)
        except BaseException:
            down(cluster.data_dir, only=started)
            raise
        return started


def up(cluster: Cluster, *, timeout_s: float = 90.0) -> str:
    """Start the cluster's nodes that are not running; return the bootstrap string."""
    start(cluster, timeout_s=timeout_s)
    return cluster.bootstrap


def stop_node(node: Node, *, hard: bool = False, timeout_s: float = 30.0) -> bool:
    pid = _read_pid(node)
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    node.pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        # a zombie child of ours counts as gone
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def down(data_dir: Path, *, only: Iterable[int] | None = None) -> list[int]:
    """Stop the nodes started from `data_dir` (or only the node ids `only` names); anything
    else is left alone."""
    wanted = None if only is None else set(only)
    stopped = []
    for node_dir in sorted(data_dir.glob("node-*")):
        try:
            node_id = int(node_dir.name.split("-", 1)[1])
        except ValueError:
            continue
        if wanted is not None and node_id not in wanted:
            continue
        node = Node(node_id, 0, 0, node_dir)
        if stop_node(node):
            stopped.append(node_id)
    return stopped


def describe(cluster: Cluster) -> Sequence[str]:
    return [f"node {n.node_id}: 127.0.0.1:{n.port} ({n.dir})" for n in cluster.nodes]


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(up(Cluster(default_data_dir())), file=sys.stderr)
