"""One local cluster's lifecycle: a real single-node Kafka (KRaft) + Apicurio Registry on
loopback, installed, started, waited for, stopped and reset (:class:`LocalCluster`).

No Docker: both servers are plain JVM processes fetched once with Maven into
``settings.cache_dir`` and verified against a sha256 manifest. This module sequences the
steps, under a lock per directory; the parts live next to it:
:mod:`~streamscore.dev.cluster_install` (download and verify),
:mod:`~streamscore.dev.cluster_config` (the servers' configuration, rendered),
:mod:`~streamscore.dev.cluster_processes` (finding, starting and stopping our server
processes, never a foreign one), :mod:`~streamscore.dev.cluster_cli` (``streamscore
cluster`` and its status lines); its topics are created by :mod:`streamscore.kafka.admin`.

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

One concern, hence its length: the local cluster's life cycle (install, up, down,
reset, status).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ClusterSettings, TopicSettings
from ..core.errors import ClusterError, KafkaIOError, PortInUseError, ServerStartError
from .cluster_config import (
    APICURIO_PROPERTIES,
    LOG4J2_PROPERTIES,
    REGISTRY_DB,
    random_cluster_id,
    registry_storage_properties,
    render_server_properties,
)
from .cluster_install import Installer
from .cluster_processes import ServerProcess, check_java, port_answers, port_in_use, tail
from .cluster_secure import (
    SecureFiles,
    acl_bindings,
    apply_acls,
    client_properties,
    ensure_material,
    process_acls,
    scram_format_args,
    secure_broker_properties,
    secure_registry_properties,
)
from .s3proxy import S3Endpoint, S3Proxy

log = logging.getLogger(__name__)

MARKER_PROP = "streamscore.localcluster"
KAFKA = "kafka"
REGISTRY = "registry"
#: the order ``down`` and ``reset`` stop the servers in
STOP_ORDER = (REGISTRY, KAFKA)
#: how long a start waits for a port a just-stopped server may still hold
PORT_RELEASE_GRACE_S = 10.0


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


class LocalCluster:
    """One local Kafka + registry pair: downloads in ``settings.cache_dir`` (shared),
    state in ``settings.run_path`` (its own)."""

    def __init__(self, settings: ClusterSettings, topics: TopicSettings) -> None:
        self.settings = settings
        self.topics = topics
        self.cache_dir = Path(settings.cache_dir).expanduser().absolute()
        self.installer = Installer(settings, self.cache_dir)
        self.kafka_home = self.installer.kafka_home
        self.registry_home = self.installer.registry_home
        self.run_dir = settings.run_path
        self.data_dir = self.run_dir / "kafka-data"
        self.registry_db_dir = self.run_dir / REGISTRY_DB
        self._servers = {
            role: ServerProcess(
                role=role,
                pid_file=self.run_dir / f"{role}.pid",
                log=self.run_dir / f"{role}.log",
                marker=f"-D{MARKER_PROP}={self.run_dir}#{role}",
                stop_with_parent=settings.stop_with_parent,
            )
            for role in (KAFKA, REGISTRY)
        }
        #: the secured profile's CA, certificates and users (None: a plain cluster)
        self.secure_files: SecureFiles | None = (
            SecureFiles(self.run_dir / "secure") if settings.secure else None
        )
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
        """Download and verify both servers once, and the Apache Avro jar the tests' Java
        reader uses; a no-op when the cache verifies."""
        with self._locked(self.cache_dir):
            self.installer.install()
            self.installer.install_avro()

    def avro_jar(self) -> Path:
        """The Apache Avro jar, installed first if the cache lacks it."""
        with self._locked(self.cache_dir):
            self.installer.install_avro()
        return self.installer.avro_jar

    def up(self) -> ClusterStatus:
        """Start whatever is not running (on the data of the previous run, if any), wait
        until both answer, create the topics (on a running cluster too: those of another
        project file)."""
        with self._locked(self.run_dir):
            st = self.status()
            if st.running:
                log.info(
                    "local cluster already running (kafka pid %s, registry pid %s)",
                    st.kafka_pid,
                    st.registry_pid,
                )
                self.create_topics()
                return st
            with self._locked(self.cache_dir):
                self.installer.install()
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
                # noted before the start: a failure after the spawn stops it too
                if st.kafka_pid is None:
                    started.append(KAFKA)
                    self._start_kafka(java)
                if st.registry_pid is None:
                    started.append(REGISTRY)
                    self._start_registry(java)
                self._wait_ready(t0, (KAFKA, REGISTRY))
                self.create_topics()
                if self.secure_files is not None:
                    self.grant_defaults()
                log.info("local cluster up in %.1fs", time.monotonic() - t0)
            except BaseException:
                self._stop_all(self._stops(started))
                raise
            return self.status()

    def down(self) -> None:
        """Stop both servers and the S3 server (SIGTERM, then SIGKILL after a grace
        period). Their data stays: the next ``up`` goes on from it. Each is stopped even
        when stopping another failed (or was interrupted); the first error is raised
        after."""
        with self._locked(self.run_dir):
            self._stop_all([self.s3.stop, *self._stops(STOP_ORDER)])

    def _stops(self, roles: Sequence[str]) -> list[Callable[[], None]]:
        return [functools.partial(self._stop, self._servers[r]) for r in roles]

    @staticmethod
    def _stop_all(stops: Sequence[Callable[[], None]]) -> None:
        """Call every one of ``stops``, whatever the others raise (a KeyboardInterrupt
        too); then raise the first error."""
        first: BaseException | None = None
        for stop in stops:
            try:
                stop()
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    @property
    def s3(self) -> S3Proxy:
        """The cluster's S3 API server (S3Proxy), on ``settings.s3_port``."""
        return S3Proxy(
            self.installer.s3proxy_home / self.installer.s3proxy_jar_name,
            self.run_dir,
            host=self.settings.host,
            port=self.settings.s3_port,
            stop_with_parent=self.settings.stop_with_parent,
        )

    def up_s3(self) -> S3Endpoint:
        """Start the S3 server (installed with the rest) unless it runs; its endpoint."""
        with self._locked(self.run_dir):
            with self._locked(self.cache_dir):
                self.installer.install()
            return self.s3.start(heap=self.settings.s3_heap)

    def reset(self) -> None:
        """Stop both servers and wipe the broker's data and the registry's database: the
        next ``up`` starts an empty cluster (a new cluster id, schema ids from 1)."""
        with self._locked(self.run_dir):
            self._stop_all(self._stops(STOP_ORDER))
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
            if self._servers[role].pid() is not None:
                raise ClusterError(f"the local {role} of {self.run_dir} is already running")
            java = check_java()
            t0 = time.monotonic()
            if role == KAFKA:
                self._check_ports(KAFKA, [self.settings.kafka_port, self.settings.controller_port])
            else:
                self._check_ports(REGISTRY, [self.settings.registry_port])
            try:  # a failure after the spawn (or an interrupt) stops it too
                if role == KAFKA:
                    self._start_kafka(java)
                else:
                    self._start_registry(java)
                self._wait_ready(t0, (role,))
            except BaseException:
                self._stop(self._servers[role])
                raise

    def status(self) -> ClusterStatus:
        return ClusterStatus(
            kafka_pid=self._servers[KAFKA].pid(),
            registry_pid=self._servers[REGISTRY].pid(),
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

        admin = AdminClient({**self.client_config(), "log_level": 0})
        specs = standard_topics(
            self.topics,
            partitions=self.settings.partitions,
            model_topic_max_bytes=self.settings.model_topic_max_bytes,
        )
        try:
            create_topics(admin, specs, wait_for_leaders=False)
        except KafkaIOError as e:
            raise ClusterError(str(e)) from e

    def client_config(self, user: str = "admin") -> dict[str, Any]:
        """librdkafka properties of a client of this cluster (secured: as ``user``)."""
        if self.secure_files is None:
            return {"bootstrap.servers": self.settings.bootstrap_servers}
        return dict(client_properties(self.settings, self.secure_files, user))

    def grant_defaults(self) -> None:
        """The secured profile's ACLs for the default topics and groups: each process
        (score, feedback, publisher) under its own principal."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.client_config(), "log_level": 0})
        groups = {
            "score": "streamscore-score",
            "feedback": "streamscore-feedback",
            "publisher": "-",
        }
        for role, group in groups.items():
            grants = process_acls(role, self.topics, group)
            apply_acls(admin, acl_bindings(role, grants))
            if self.settings.mtls_port is not None:  # the same process by its certificate
                apply_acls(admin, acl_bindings(f"CN={role}", grants))

    # --------------------------------------------------------------------- start

    def _check_ports(self, role: str, ports: Sequence[int]) -> None:
        # a server stopped a moment ago may still be closing its sockets (its command
        # line is gone before its files are closed, and a JVM has many): a short grace
        deadline = time.monotonic() + PORT_RELEASE_GRACE_S
        for port in ports:
            while port_in_use(self.settings.host, port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if port_in_use(self.settings.host, port):
                raise PortInUseError(
                    f"port {self.settings.host}:{port} (needed by the local {role}) is "
                    "already in use by another process; stop it or choose other ports",
                    port=port,
                )

    def _jvm_base(self, java: str, server: ServerProcess, heap: str) -> list[str]:
        return [
            java,
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            *self.settings.jvm_opts,
            server.marker,
        ]

    def _spawn(self, server: ServerProcess, cmd: Sequence[str], cwd: Path) -> int:
        return server.spawn(cmd, cwd)

    def _start_kafka(self, java: str) -> None:
        server = self._servers[KAFKA]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        overrides: dict[str, str] = {}
        scram: list[str] = []
        if self.secure_files is not None:
            files = ensure_material(self.run_dir, self.settings.host)
            overrides = secure_broker_properties(self.settings, files)
            scram = scram_format_args(files)
        props.write_text(render_server_properties(self.settings, self.data_dir, overrides))
        log4j = self.run_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        server.rotate_log()
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
            *scram,  # the secured profile's SCRAM users, created with the storage
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
        jar = self.installer.registry_jar(self.registry_home)
        self.registry_db_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "quarkus.http.host": self.settings.host,
            "quarkus.http.port": str(self.settings.registry_port),
            **APICURIO_PROPERTIES,
            **registry_storage_properties(self.run_dir),
        }
        if self.secure_files is not None:
            files = ensure_material(self.run_dir, self.settings.host)
            props.update(secure_registry_properties(self.settings, files))
        server.rotate_log()
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
                if server.pid() is None:
                    code = server.exit_code()
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

    # ---------------------------------------------------------------------- stop

    def _stop(self, server: ServerProcess, *, kill: bool = False) -> None:
        server.stop(kill=kill)

    # --------------------------------------------------------------- readiness

    def _admin(self, timeout_ms: int = 30_000) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient(
            {
                **self.client_config(),
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
        context = None
        if self.secure_files is not None:
            import ssl

            if not self.secure_files.ca.is_file():
                return False
            context = ssl.create_default_context(cafile=str(self.secure_files.ca))
        try:
            with urllib.request.urlopen(
                self.settings.registry_url + "/subjects", timeout=2, context=context
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
