"""Download, start and stop a real single-node Kafka (KRaft) + Apicurio Registry on loopback.

No Docker: both servers are plain JVM processes fetched once with Maven into
``settings.cache_dir`` and verified against a sha256 manifest.

Layout of ``cache_dir`` (downloads, shared by every cluster on the machine)::

    kafka-<ver>/libs/*.jar           Kafka and its runtime dependencies (+ log4j2 binding)
    kafka-<ver>/MANIFEST.json        sha256 + size of every installed file
    apicurio-<ver>/...               the extracted apicurio-registry-app ``-all`` tarball
    apicurio-<ver>/MANIFEST.json
    run/                             the default run dir (``settings.run_dir``)

Layout of the run dir (one per cluster: a private cluster has its own, and its own ports)::

    kafka.pid, registry.pid          pid files
    server.properties, log4j2.properties   generated on every start
    kafka-data/                      the broker's log.dirs (formatted once)
    registry-db/                     the registry's H2 *file* database (Apicurio SQL storage)
    kafka.log, registry.log          server output of the current start (``.log.1``: the
                                     start before)

Both servers keep their data across ``down``/``up`` and across an ``up`` after a crash:
topics, offsets and transactions survive, and schema ids stay the same. Only
:meth:`LocalCluster.reset` (``streamscore cluster reset``) wipes them.

Every JVM we start carries ``-Dstreamscore.localcluster=<run dir>#<role>`` on its command
line. ``down()`` only signals processes whose ``/proc/<pid>/cmdline`` carries that marker
(found through the pid files or, after a crash that lost them, by scanning the process
table), so it never kills a foreign process that happens to reuse a pid.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import ClusterSettings, TopicSettings
from ..core.errors import (
    ClusterError,
    DownloadError,
    JavaMissingError,
    KafkaIOError,
    PortInUseError,
    ServerStartError,
)

log = logging.getLogger(__name__)

MIN_JAVA = 17
LOG4J_VERSION = "2.24.3"
#: Resolves Kafka's dependency tree (``copy-dependencies``).
DEPENDENCY_PLUGIN = "3.8.1"
#: Copies the Apicurio tarball. Plugin 3.x reads the artifact's POM first, and the parent
#: POM of ``apicurio-registry-app`` 3.0.x is not published, so it fails; 2.8 resolves the
#: bare artifact (checksums are still verified with ``--strict-checksums``).
DEPENDENCY_PLUGIN_COPY = "2.8"
MANIFEST = "MANIFEST.json"
MARKER_PROP = "streamscore.localcluster"
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 20
KAFKA = "kafka"
REGISTRY = "registry"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: Apicurio properties that make the ccompat API behave like a Confluent registry and keep
#: the JVM small. The Confluent API lives under ``/apis/ccompat/v7``.
APICURIO_PROPERTIES: Mapping[str, str] = {
    # Look schemas up by canonical form, as Confluent does (whitespace / key order do not
    # change the identity of a schema on lookup or re-registration).
    "apicurio.ccompat.use-canonical-hash": "true",
    # Confluent ids are content ids (the default, explicit here): the same schema under
    # two subjects gets one id.
    "apicurio.ccompat.legacy-id-mode.enabled": "false",
    # DELETE /subjects/... is refused by Apicurio 3 unless deletions are enabled.
    "apicurio.rest.deletion.artifact.enabled": "true",
    "apicurio.rest.deletion.artifact-version.enabled": "true",
    "apicurio.rest.deletion.group.enabled": "true",
    # The default pool pre-opens 20 H2 connections; a test registry needs few.
    "apicurio.datasource.jdbc.initial-size": "2",
    "apicurio.datasource.jdbc.min-size": "2",
    "apicurio.datasource.jdbc.max-size": "20",
    # One INFO line per HTTP request (every readiness probe) is noise in registry.log.
    "quarkus.http.access-log.enabled": "false",
}

#: Where Apicurio's SQL storage (the default ``apicurio.storage.kind=sql`` on
#: ``apicurio.storage.sql.kind=h2``) keeps its tables: an embedded H2 database in a file
#: under the run dir instead of the default ``jdbc:h2:mem:``, so schemas and their ids
#: survive a restart. ``WRITE_DELAY=0`` writes each commit at once (a crash loses nothing
#: acknowledged).
REGISTRY_DB = "registry-db"


def registry_storage_properties(run_dir: Path) -> dict[str, str]:
    url = f"jdbc:h2:file:{run_dir / REGISTRY_DB / 'registry'};WRITE_DELAY=0"
    return {
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        "apicurio.datasource.url": url,
        # create the tables on first start, use them as they are afterwards
        "apicurio.sql.init": "true",
    }


# ------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class ClusterStatus:
    kafka_pid: int | None
    registry_pid: int | None
    kafka_ready: bool
    registry_ready: bool
    bootstrap_servers: str
    registry_url: str
    kafka_log: Path
    registry_log: Path

    @property
    def running(self) -> bool:
        return self.kafka_ready and self.registry_ready


# ------------------------------------------------------------------------- pure helpers


def parse_java_version(text: str) -> int:
    """The major version from ``java -version`` output (``1.8.0_x`` -> 8, ``17.0.2`` -> 17).

    Raises ``ValueError`` when no version can be found.
    """
    m = re.search(r'version\s+"(\d+)(?:\.(\d+))?', text)
    if m is None:
        m = re.search(r"^\S+\s+(\d+)(?:\.(\d+))?", text.strip())
    if m is None:
        raise ValueError(f"no java version in {text!r}")
    major = int(m.group(1))
    if major == 1 and m.group(2) is not None:
        major = int(m.group(2))
    return major


def check_java(java: str | None = None) -> str:
    """The path of a ``java`` >= 17, or :class:`JavaMissingError`."""
    exe = java or shutil.which("java")
    if exe is None:
        raise JavaMissingError(
            f"no 'java' on PATH: the local cluster needs a Java {MIN_JAVA}+ runtime "
            "(e.g. apt-get install openjdk-17-jre-headless)"
        )
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaMissingError(f"cannot run {exe} -version: {e}") from e
    try:
        major = parse_java_version(out.stderr + out.stdout)
    except ValueError as e:
        raise JavaMissingError(f"cannot tell the version of {exe}: {e}") from e
    if major < MIN_JAVA:
        raise JavaMissingError(
            f"{exe} is Java {major}; the local cluster needs Java {MIN_JAVA} or newer"
        )
    return exe


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` (we cannot bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def render_server_properties(settings: ClusterSettings, data_dir: Path) -> str:
    """``server.properties`` for a single-node KRaft broker+controller."""
    h = settings.host
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{h}:{settings.controller_port}",
        "listeners": f"PLAINTEXT://{h}:{settings.kafka_port},CONTROLLER://{h}:{settings.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{h}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": settings.partitions,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 10,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Room for a model bundle plus record/batch overhead.
        "message.max.bytes": settings.model_topic_max_bytes + 1024 * 1024,
        "replica.fetch.max.bytes": settings.model_topic_max_bytes + 1024 * 1024,
        "num.network.threads": 3,
        "num.io.threads": 8,
        "log.retention.hours": 168,
    }
    lines = ["# Generated by streamscore.localcluster; rewritten on every start."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


LOG4J2_PROPERTIES = """\
# Generated by streamscore.localcluster: Kafka logs to stdout, which goes to kafka.log.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, url-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` into ``root/MANIFEST.json`` (written last)."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    if not files:
        raise DownloadError(f"nothing was installed into {root}")
    manifest: dict[str, Any] = {**(extra or {}), "files": files}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(root / MANIFEST)
    return manifest


def verify_manifest(root: Path) -> str | None:
    """``None`` when ``root`` matches its manifest, else why not."""
    mpath = root / MANIFEST
    if not mpath.is_file():
        return f"no {MANIFEST} in {root}"
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {mpath}: {e}"
    if not files:
        return f"empty {mpath}"
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            return f"missing {p}"
        if p.stat().st_size != meta["size"]:
            return f"size mismatch for {p}"
        if sha256_file(p) != meta["sha256"]:
            return f"sha256 mismatch for {p}"
    return None


def read_pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or ``None``."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            # state is the field after the parenthesised command name
            if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
                return None
            raw = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        return args or None
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(
            ["ps", "-ww", "-o", "stat=,args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def list_pids() -> list[int]:
    if Path("/proc/self").exists():
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid="], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is a live java process that carries our ``marker`` argument."""
    args = process_cmdline(pid)
    if not args:
        return False
    return Path(args[0]).name.startswith("java") and marker in args


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


# ----------------------------------------------------------------------------- cluster

# Popen handles of the servers this Python process started, so that they are reaped
# (no zombies) when we stop them from the same process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class _Server:
    role: str
    pid_file: Path
    log: Path
    marker: str


class LocalCluster:
    """One local Kafka + registry pair: downloads in ``settings.cache_dir`` (shared),
    state in ``settings.run_path`` (its own)."""

    def __init__(self, settings: ClusterSettings, topics: TopicSettings) -> None:
        self.settings = settings
        self.topics = topics
        self.cache_dir = Path(settings.cache_dir).expanduser().absolute()
        self.kafka_home = self.cache_dir / f"kafka-{settings.kafka_version}"
        self.registry_home = self.cache_dir / f"apicurio-{settings.apicurio_version}"
        self.run_dir = settings.run_path
        self.data_dir = self.run_dir / "kafka-data"
        self.registry_db_dir = self.run_dir / REGISTRY_DB
        self._servers = {
            role: _Server(
                role=role,
                pid_file=self.run_dir / f"{role}.pid",
                log=self.run_dir / f"{role}.log",
                marker=f"-D{MARKER_PROP}={self.run_dir}#{role}",
            )
            for role in (KAFKA, REGISTRY)
        }
        self._lock_depth: dict[Path, int] = {}
        self._lock_fd: dict[Path, int] = {}

    @property
    def bootstrap_servers(self) -> str:
        return self.settings.bootstrap_servers

    @property
    def registry_url(self) -> str:
        return self.settings.registry_url

    # ------------------------------------------------------------------ public API

    def install(self) -> None:
        """Download and verify both servers once; a no-op when the cache verifies."""
        with self._locked(self.cache_dir):
            self._install()

    def up(self) -> ClusterStatus:
        """Start whatever is not running (on the data of the previous run, if any), wait
        until both answer, create the topics."""
        with self._locked(self.run_dir):
            st = self.status()
            if st.running:
                log.info(
                    "local cluster already running (kafka pid %s, registry pid %s)",
                    st.kafka_pid,
                    st.registry_pid,
                )
                return st
            with self._locked(self.cache_dir):
                self._install()
            java = check_java()
            started: list[str] = []
            try:
                t0 = time.monotonic()
                if st.kafka_pid is None:
                    self._check_ports(
                        KAFKA, [self.settings.kafka_port, self.settings.controller_port]
                    )
                if st.registry_pid is None:
                    self._check_ports(REGISTRY, [self.settings.registry_port])
                if st.kafka_pid is None:
                    self._start_kafka(java)
                    started.append(KAFKA)
                if st.registry_pid is None:
                    self._start_registry(java)
                    started.append(REGISTRY)
                self._wait_ready(t0, (KAFKA, REGISTRY))
                self.create_topics()
                log.info("local cluster up in %.1fs", time.monotonic() - t0)
            except BaseException:
                for role in started:
                    self._stop(self._servers[role])
                raise
            return self.status()

    def down(self) -> None:
        """Stop both servers (SIGTERM, then SIGKILL after a grace period). Their data
        stays: the next ``up`` goes on from it."""
        with self._locked(self.run_dir):
            for role in (REGISTRY, KAFKA):
                self._stop(self._servers[role])

    def reset(self) -> None:
        """Stop both servers and wipe the broker's data and the registry's database: the
        next ``up`` starts an empty cluster (a new cluster id, schema ids from 1)."""
        with self._locked(self.run_dir):
            for role in (REGISTRY, KAFKA):
                self._stop(self._servers[role])
            for d in (self.data_dir, self.registry_db_dir):
                if d.exists():
                    shutil.rmtree(d)

    # One server alone (tests of outages): start waits until it answers.

    def stop_kafka(self, *, kill: bool = False) -> None:
        """Stop the broker alone: SIGTERM (a clean shutdown), or SIGKILL (a crash)."""
        with self._locked(self.run_dir):
            self._stop(self._servers[KAFKA], kill=kill)

    def start_kafka(self) -> None:
        """Start the broker alone on its kept data; returns once it answers metadata
        requests (:class:`ServerStartError` after ``start_timeout_s``)."""
        self._start_one(KAFKA)

    def stop_registry(self, *, kill: bool = False) -> None:
        with self._locked(self.run_dir):
            self._stop(self._servers[REGISTRY], kill=kill)

    def start_registry(self) -> None:
        """Start the registry alone on its kept database; returns once it answers."""
        self._start_one(REGISTRY)

    def _start_one(self, role: str) -> None:
        with self._locked(self.run_dir):
            if self._pid(self._servers[role]) is not None:
                raise ClusterError(f"the local {role} of {self.run_dir} is already running")
            java = check_java()
            t0 = time.monotonic()
            if role == KAFKA:
                self._check_ports(KAFKA, [self.settings.kafka_port, self.settings.controller_port])
                self._start_kafka(java)
            else:
                self._check_ports(REGISTRY, [self.settings.registry_port])
                self._start_registry(java)
            try:
                self._wait_ready(t0, (role,))
            except BaseException:
                self._stop(self._servers[role])
                raise

    def status(self) -> ClusterStatus:
        return ClusterStatus(
            kafka_pid=self._pid(self._servers[KAFKA]),
            registry_pid=self._pid(self._servers[REGISTRY]),
            kafka_ready=self._kafka_ready(),
            registry_ready=self._registry_ready(),
            bootstrap_servers=self.settings.bootstrap_servers,
            registry_url=self.settings.registry_url,
            kafka_log=self._servers[KAFKA].log,
            registry_log=self._servers[REGISTRY].log,
        )

    def create_topics(self) -> None:
        """Create every topic of ``topics.all()``
        (:func:`~streamscore.kafka.admin.standard_topics`); topics that already exist are
        fine."""
        from confluent_kafka.admin import AdminClient

        from ..kafka.admin import create_topics, standard_topics

        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers, "log_level": 0})
        specs = standard_topics(
            self.topics,
            partitions=self.settings.partitions,
            model_topic_max_bytes=self.settings.model_topic_max_bytes,
        )
        try:
            create_topics(admin, specs, wait_for_leaders=False)
        except KafkaIOError as e:
            raise ClusterError(str(e)) from e

    # ------------------------------------------------------------------- install

    def _install(self) -> None:
        t0 = time.monotonic()
        ver = self.settings
        if (why := verify_manifest(self.kafka_home)) is not None:
            log.info("installing kafka %s (%s)", ver.kafka_version, why)
            self._install_into(self.kafka_home, self._fetch_kafka)
        if (why := verify_manifest(self.registry_home)) is not None:
            log.info("installing apicurio registry %s (%s)", ver.apicurio_version, why)
            self._install_into(self.registry_home, self._fetch_registry)
        log.info("install checked in %.1fs", time.monotonic() - t0)

    def _install_into(self, final: Path, fetch: Any) -> None:
        """Fetch into a temp dir next to ``final``, then swap it in with a rename, so an
        interrupted download never looks installed."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.cache_dir))
        try:
            fetch(staging)
            write_manifest(staging, {"name": final.name})
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _mvn(self, args: Sequence[str], cwd: Path) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DownloadError(
                "no 'mvn' on PATH: the local cluster is downloaded with Maven "
                "(e.g. apt-get install maven)"
            )
        cmd = [mvn, "-B", "-q", "--strict-checksums", "-Dstyle.color=never", *args]
        log.debug("running %s", " ".join(cmd))
        try:
            out = subprocess.run(
                cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=1800
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DownloadError(f"mvn failed: {e}") from e
        if out.returncode != 0:
            text = _ANSI.sub("", out.stdout + out.stderr)
            lines = [ln for ln in text.splitlines() if ln.strip()][-15:]
            raise DownloadError(f"mvn exited with {out.returncode}:\n" + "\n".join(lines))

    def _write_pom(self, staging: Path) -> Path:
        template = (
            resources.files(__package__ or "streamscore")  # resources/ sits beside this module
            .joinpath("resources/cluster-pom.xml")
            .read_text(encoding="utf-8")
        )
        pom = (
            template.replace("@KAFKA_VERSION@", self.settings.kafka_version)
            .replace("@LOG4J_VERSION@", LOG4J_VERSION)
            .replace("@DEPENDENCY_PLUGIN_VERSION@", DEPENDENCY_PLUGIN)
        )
        path = staging / ".pom" / "pom.xml"
        path.parent.mkdir(parents=True)
        path.write_text(pom, encoding="utf-8")
        return path

    def _fetch_kafka(self, staging: Path) -> None:
        pom = self._write_pom(staging)
        libs = staging / "libs"
        self._mvn(
            [
                "-f",
                str(pom),
                f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN}"
                ":copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            cwd=pom.parent,
        )
        shutil.rmtree(pom.parent)
        if not any(libs.glob(f"kafka_2.13-{self.settings.kafka_version}.jar")):
            raise DownloadError(f"mvn did not produce kafka_2.13 in {libs}")

    def _fetch_registry(self, staging: Path) -> None:
        pom = self._write_pom(staging)
        dl = staging / ".download"
        v = self.settings.apicurio_version
        self._mvn(
            [
                "-f",
                str(pom),
                f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN_COPY}:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{v}:tar.gz:all",
                f"-DoutputDirectory={dl}",
            ],
            cwd=pom.parent,
        )
        tarballs = list(dl.glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise DownloadError(f"mvn did not produce the apicurio tarball in {dl}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(staging, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extractall(staging)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DownloadError(f"cannot extract {tarballs[0].name}: {e}") from e
        shutil.rmtree(dl)
        shutil.rmtree(pom.parent)
        self._registry_jar(staging)  # fails now rather than at start time

    def _registry_jar(self, home: Path) -> Path:
        for cand in (home / "quarkus-app" / "quarkus-run.jar", home / "quarkus-run.jar"):
            if cand.is_file():
                return cand
        runners = sorted(home.glob("*-runner.jar"))
        if runners:
            return runners[0]
        raise DownloadError(f"no quarkus-run.jar or *-runner.jar in {home}")

    # --------------------------------------------------------------------- start

    def _check_ports(self, role: str, ports: Sequence[int]) -> None:
        for port in ports:
            if port_in_use(self.settings.host, port):
                raise PortInUseError(
                    f"port {self.settings.host}:{port} (needed by the local {role}) is "
                    "already in use by another process; stop it or choose other ports",
                    port=port,
                )

    def _jvm_base(self, java: str, server: _Server, heap: str) -> list[str]:
        return [
            java,
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            *self.settings.jvm_opts,
            server.marker,
        ]

    @staticmethod
    def _rotate_log(server: _Server) -> None:
        """Keep the previous start's output (``.log.1``: why it crashed), start afresh."""
        if server.log.exists():
            server.log.replace(server.log.with_name(server.log.name + ".1"))
        server.log.write_bytes(b"")

    def _spawn(self, server: _Server, cmd: Sequence[str], cwd: Path) -> int:
        with server.log.open("ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        tmp = server.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(server.pid_file)
        log.info("started %s (pid %d), log %s", server.role, proc.pid, server.log)
        return proc.pid

    def _start_kafka(self, java: str) -> None:
        server = self._servers[KAFKA]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        props.write_text(render_server_properties(self.settings, self.data_dir))
        log4j = self.run_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        self._rotate_log(server)
        base = [
            *self._jvm_base(java, server, self.settings.kafka_heap),
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            str(self.kafka_home / "libs" / "*"),
        ]
        if (self.data_dir / "meta.properties").is_file():
            # formatted by an earlier start: go on with its data and cluster id
            self._spawn(server, [*base, "kafka.Kafka", str(props)], cwd=self.run_dir)
            return
        # An empty data dir (first start, or after reset): format it with a new cluster id.
        fmt = [
            *base,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            random_cluster_id(),
            "-c",
            str(props),
        ]
        with server.log.open("ab") as out:
            res = subprocess.run(
                fmt,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self.settings.start_timeout_s,
                check=False,
            )
        if res.returncode != 0:
            raise ServerStartError(
                f"formatting kafka storage failed (exit {res.returncode}); "
                f"log {server.log}:\n{tail(server.log)}",
                log_path=str(server.log),
            )
        self._spawn(server, [*base, "kafka.Kafka", str(props)], cwd=self.run_dir)

    def _start_registry(self, java: str) -> None:
        server = self._servers[REGISTRY]
        jar = self._registry_jar(self.registry_home)
        self.registry_db_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "quarkus.http.host": self.settings.host,
            "quarkus.http.port": str(self.settings.registry_port),
            **APICURIO_PROPERTIES,
            **registry_storage_properties(self.run_dir),
        }
        self._rotate_log(server)
        cmd = [
            *self._jvm_base(java, server, self.settings.registry_heap),
            *(f"-D{k}={v}" for k, v in props.items()),
            "-jar",
            str(jar),
        ]
        self._spawn(server, cmd, cwd=jar.parent)

    def _wait_ready(self, t0: float, roles: Sequence[str]) -> None:
        deadline = t0 + self.settings.start_timeout_s
        checks = {KAFKA: self._kafka_ready, REGISTRY: self._registry_ready}
        pending = {role: checks[role] for role in roles}
        while pending:
            for role, ready in list(pending.items()):
                server = self._servers[role]
                if self._pid(server) is None:
                    code = self._exit_code(server)
                    raise ServerStartError(
                        f"local {role} exited during start (exit {code}); "
                        f"log {server.log}:\n{tail(server.log)}",
                        log_path=str(server.log),
                    )
                if ready():
                    log.info("%s ready after %.1fs", role, time.monotonic() - t0)
                    del pending[role]
            if not pending:
                return
            if time.monotonic() > deadline:
                role = next(iter(pending))
                server = self._servers[role]
                raise ServerStartError(
                    f"local {role} not ready after {self.settings.start_timeout_s:.0f}s; "
                    f"log {server.log}:\n{tail(server.log)}",
                    log_path=str(server.log),
                )
            time.sleep(0.25)

    def _exit_code(self, server: _Server) -> int | str:
        proc = _CHILDREN.get(read_pid_file(server.pid_file) or -1)
        if proc is not None and proc.poll() is not None:
            return proc.returncode
        return "unknown"

    # ---------------------------------------------------------------------- stop

    def _pid(self, server: _Server) -> int | None:
        """The live pid of ``server`` (pid file first, else a process-table scan)."""
        pid = read_pid_file(server.pid_file)
        if pid is not None and is_ours(pid, server.marker):
            return pid
        found = self._scan(server)
        return found[0] if found else None

    def _scan(self, server: _Server) -> list[int]:
        me = os.getpid()
        return [p for p in list_pids() if p != me and is_ours(p, server.marker)]

    def _stop(self, server: _Server, *, kill: bool = False) -> None:
        pids = set(self._scan(server))
        pid = read_pid_file(server.pid_file)
        if pid is not None and is_ours(pid, server.marker):
            pids.add(pid)
        for p in pids:
            log.info("stopping %s (pid %d)%s", server.role, p, " with SIGKILL" if kill else "")
            self._signal(p, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + (0 if kill else STOP_GRACE_S)
        while pids and time.monotonic() < deadline:
            self._reap()
            pids = {p for p in pids if is_ours(p, server.marker)}
            if pids:
                time.sleep(0.1)
        for p in pids if not kill else ():
            log.warning("%s (pid %d) ignored SIGTERM, killing it", server.role, p)
            self._signal(p, signal.SIGKILL)
        end = time.monotonic() + 10
        while pids and time.monotonic() < end:
            self._reap()
            pids = {p for p in pids if is_ours(p, server.marker)}
            if pids:
                time.sleep(0.05)
        if pids:
            raise ClusterError(f"could not stop local {server.role} (pids {sorted(pids)})")
        server.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            # start_new_session made the server its own process-group leader
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _reap() -> None:
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[pid]

    # --------------------------------------------------------------- readiness

    def _admin(self, timeout_ms: int = 30_000) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "socket.timeout.ms": timeout_ms,
                "log_level": 0,  # no connection-refused noise on stderr while starting
            }
        )

    def _kafka_ready(self) -> bool:
        if not port_answers(self.settings.host, self.settings.kafka_port):
            return False
        from confluent_kafka import KafkaException

        try:
            md = self._admin(timeout_ms=2000).list_topics(timeout=2)
        except KafkaException:
            return False
        return bool(md.brokers)

    def _registry_ready(self) -> bool:
        if not port_answers(self.settings.host, self.settings.registry_port):
            return False
        try:
            with urllib.request.urlopen(
                self.settings.registry_url + "/subjects", timeout=2
            ) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    # ------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self, where: Path) -> Iterator[None]:
        """Serialise, across processes, installs into ``cache_dir`` (``where`` is the
        cache dir) or starts/stops of one cluster (``where`` is its run dir)."""
        depth = self._lock_depth.get(where, 0)
        if depth == 0:
            where.mkdir(parents=True, exist_ok=True)
            fd = os.open(where / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd[where] = fd
        self._lock_depth[where] = depth + 1
        try:
            yield
        finally:
            self._lock_depth[where] -= 1
            if self._lock_depth[where] == 0:
                fd = self._lock_fd.pop(where)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


# -------------------------------------------------------------------------------- CLI


def format_status(st: ClusterStatus) -> str:
    def line(name: str, pid: int | None, ready: bool, where: str, logp: Path) -> str:
        state = "ready" if ready else ("starting/unresponsive" if pid else "stopped")
        pid_s = f"pid {pid}" if pid else "no process"
        return f"  {name:<9} {state:<22} {pid_s:<12} {where}  (log {logp})"

    head = "local cluster: running" if st.running else "local cluster: not running"
    return "\n".join(
        [
            head,
            line("kafka", st.kafka_pid, st.kafka_ready, st.bootstrap_servers, st.kafka_log),
            line("registry", st.registry_pid, st.registry_ready, st.registry_url, st.registry_log),
        ]
    )


def main_cluster(action: str, cluster: LocalCluster) -> int:
    """``streamscore cluster install|up|down|reset|status``. Exit codes: 0 ok, 1 error,
    2 unknown action, 3 ``status`` of a cluster that is not (fully) running."""
    t0 = time.monotonic()
    try:
        if action == "install":
            cluster.install()
            print(f"local cluster installed in {cluster.cache_dir} ({time.monotonic() - t0:.1f}s)")
            return 0
        if action == "up":
            st = cluster.up()
            print(format_status(st))
            print(f"(took {time.monotonic() - t0:.1f}s)")
            return 0
        if action == "down":
            cluster.down()
            print(f"local cluster stopped (its data stays in {cluster.run_dir})")
            return 0
        if action == "reset":
            cluster.reset()
            print(
                "local cluster stopped and its broker data and registry store wiped; "
                "`streamscore cluster up` starts it empty"
            )
            return 0
        if action == "status":
            st = cluster.status()
            print(format_status(st))
            return 0 if st.running else 3
    except ClusterError as e:
        first = e.message.splitlines()[0] if e.message else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        if isinstance(e, ServerStartError) and e.log_path:
            print(f"last lines of {e.log_path}:", file=sys.stderr)
            print(tail(Path(e.log_path)), file=sys.stderr)
        return 1
    print(
        f"error: unknown cluster action {action!r} (install, up, down, reset, status)",
        file=sys.stderr,
    )
    return 2
