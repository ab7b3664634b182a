"""Integration tier: a real Kafka broker and a real Confluent-compatible schema registry.

The cluster is chosen in this order:

1. an external cluster named by ``STREAMSCORE_TEST_BOOTSTRAP`` and
   ``STREAMSCORE_TEST_REGISTRY_URL``;
2. testcontainers with Confluent's Kafka and Schema Registry images, when a Docker engine
   answers ``docker info`` quickly;
3. otherwise the local JVM cluster (:class:`streamscore.dev.localcluster.LocalCluster`): reused
   if it is already running (and then left running), else started for the session and
   stopped at the end.

Tests that stop or start a broker or a registry never touch that shared cluster: they use
``private_cluster`` (a cluster of their own, per test module) and ``private_stack`` /
``make_private_worker`` on it.

These tests are never skipped for lack of Docker: option 3 needs only Java and Maven.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamscore.core.config import ClusterSettings, TopicSettings
from streamscore.dev.localcluster import LocalCluster
from streamscore.kafka.admin import create_topics, standard_topics

_HERE = Path(__file__).parent
CONFLUENT_VERSION = "7.6.1"


@dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    registry_url: str


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if item.path.is_relative_to(_HERE)]
    for item in mine:
        item.add_marker(pytest.mark.integration)
    # Tests of the local JVM cluster itself (fixture ``local_only``) only mean something
    # when the session runs on it; against an external or containerised cluster they are
    # deselected (reported as such), never skipped. On a machine without Docker and
    # without STREAMSCORE_TEST_* they always run.
    drop = [i for i in mine if "local_only" in getattr(i, "fixturenames", ())]
    if drop and _detect_cluster_kind() != "local":
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        res = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _start_containers(exits: ExitStack) -> Endpoints:  # pragma: no cover - needs Docker
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer

    network = exits.enter_context(Network())
    kafka = (
        KafkaContainer(f"confluentinc/cp-kafka:{CONFLUENT_VERSION}")
        .with_network(network)
        .with_network_aliases("kafka")
    )
    exits.enter_context(kafka)
    registry = (
        DockerContainer(f"confluentinc/cp-schema-registry:{CONFLUENT_VERSION}")
        .with_network(network)
        .with_env("SCHEMA_REGISTRY_HOST_NAME", "schema-registry")
        .with_env("SCHEMA_REGISTRY_LISTENERS", "http://0.0.0.0:8081")
        .with_env("SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS", "BROKER://kafka:9092")
        .with_exposed_ports(8081)
    )
    exits.enter_context(registry)
    wait_for_logs(registry, "Server started", timeout=120)
    host = registry.get_container_host_ip()
    port = registry.get_exposed_port(8081)
    return Endpoints(kafka.get_bootstrap_server(), f"http://{host}:{port}")


@pytest.fixture(scope="session")
def local_cluster() -> LocalCluster:
    """The local JVM cluster object (whether or not the session uses it). Servers it
    starts (only when the shared cluster was not running) die with the session."""
    return LocalCluster(ClusterSettings(stop_with_parent=True), TopicSettings())


@pytest.fixture(scope="session")
def cluster_kind() -> str:
    return _detect_cluster_kind()


@functools.cache
def _detect_cluster_kind() -> str:
    if os.environ.get("STREAMSCORE_TEST_BOOTSTRAP") and os.environ.get(
        "STREAMSCORE_TEST_REGISTRY_URL"
    ):
        return "external"
    if _docker_answers():
        return "testcontainers"
    return "local"


@pytest.fixture(scope="session")
def cluster_endpoints(cluster_kind: str, local_cluster: LocalCluster) -> Iterator[Endpoints]:
    topics = TopicSettings()
    settings = local_cluster.settings
    with ExitStack() as exits:
        if cluster_kind == "external":
            ep = Endpoints(
                os.environ["STREAMSCORE_TEST_BOOTSTRAP"],
                os.environ["STREAMSCORE_TEST_REGISTRY_URL"],
            )
        elif cluster_kind == "testcontainers":  # pragma: no cover - needs Docker
            ep = _start_containers(exits)
        else:
            if not local_cluster.status().running:
                # Registered before up(): a failed start is cleaned up too.
                exits.callback(local_cluster.down)
                local_cluster.up()
            ep = Endpoints(settings.bootstrap_servers, settings.registry_url)
        # every standard topic, also on a local cluster already running since before a
        # topic was added to TopicSettings (its ``up`` creates them only when it starts)
        from confluent_kafka.admin import AdminClient

        specs = standard_topics(
            topics,
            partitions=settings.partitions,
            model_topic_max_bytes=settings.model_topic_max_bytes,
        )
        create_topics(AdminClient({"bootstrap.servers": ep.bootstrap_servers}), specs)
        yield ep


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A factory of unique topic / group names: ``unique_name("events")``."""
    test = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def admin(cluster_endpoints: Endpoints) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": cluster_endpoints.bootstrap_servers})


@pytest.fixture
def make_topic(admin: Any, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=4, **config) -> name``: a fresh topic, deleted after the
    test. Config keys may use underscores (``cleanup_policy="compact"``) or dots."""
    with topic_factory(admin, unique_name) as make:
        yield make


# ------------------------------------------------------------------- S3 API server


@pytest.fixture(scope="session")
def s3(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 API server (S3Proxy, filesystem backend) of this test session: the
    cluster's cached jar, its own run dir and a free port on loopback, stopped at the
    end. Yields its :class:`~streamscore.dev.s3proxy.S3Endpoint` (bucket ``streamscore``
    exists; tables go under a unique prefix per test)."""
    from streamscore.dev.s3proxy import S3Proxy

    local_cluster.install()  # the jar comes with the cluster's downloads
    server = S3Proxy(
        local_cluster.installer.s3proxy_jar(),
        session_run_dir(tmp_path_factory.mktemp("s3proxy")),
        port=free_port(),
        stop_with_parent=True,
    )
    try:
        yield server.start(heap="192m")
    finally:
        server.stop()


# ----------------------------------------------------------------- private cluster


#: the run dirs of the servers this session starts: none may be running at its end
_SESSION_RUN_DIRS: list[Path] = []


def session_run_dir(run_dir: Path) -> Path:
    """``run_dir``, noted as the run dir of servers this session starts (checked by
    :func:`pytest_sessionfinish`)."""
    _SESSION_RUN_DIRS.append(run_dir)
    return run_dir


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture's teardown: no server of this session may still run. One that
    does (a teardown interrupted, a stop that failed) is killed here, and the session
    fails naming it. (A session killed outright runs no hook: its servers were started
    with ``stop_with_parent``, so the kernel kills them.)"""
    from streamscore.dev import localcluster, s3proxy
    from streamscore.dev.cluster_processes import kill_pids, process_cmdline, stray_servers

    props = (localcluster.MARKER_PROP, s3proxy.MARKER_PROP)
    strays = stray_servers(_SESSION_RUN_DIRS, props)
    if not strays:
        return
    named = {p: " ".join(process_cmdline(p) or [])[:300] for p in strays}
    kill_pids(strays)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = "\n".join(f"  pid {p}: {cmd}" for p, cmd in named.items())
    message = f"servers started by this session were still running at its end (killed):\n{text}"
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def private_cluster_settings(run_dir: Path) -> ClusterSettings:
    """A cluster of our own: the shared downloads, its own run dir, free ports, small
    heaps (two more JVMs on a shared machine), its servers dying with the session
    however it ends, its run dir checked at the end of the session."""
    shared = ClusterSettings()
    settings = ClusterSettings(
        cache_dir=shared.cache_dir,
        run_dir=session_run_dir(run_dir),
        stop_with_parent=True,
        kafka_port=free_port(),
        controller_port=free_port(),
        registry_port=free_port(),
        s3_port=free_port(),
        kafka_heap="320m",
        registry_heap="256m",
        partitions=2,
        jvm_opts=("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"),
    )
    # never the shared cluster's ports or run dir: other test runs use them right now
    ours = {settings.kafka_port, settings.controller_port, settings.registry_port}
    ours.add(settings.s3_port)
    theirs = {shared.kafka_port, shared.controller_port, shared.registry_port, shared.s3_port}
    assert not ours & theirs
    assert settings.run_path != shared.run_path
    return settings


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local cluster only this test module uses (a test may stop and start its broker
    or registry: ``stop_kafka()``, ``start_kafka()``, ``stop_registry()``,
    ``start_registry()``; endpoints ``bootstrap_servers``, ``registry_url``). Started once
    per module in a temporary run dir on free ports; always stopped at the end."""
    cluster = LocalCluster(
        private_cluster_settings(tmp_path_factory.mktemp("private-cluster")), TopicSettings()
    )
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The secured profile (``streamscore cluster up --secure``): SASL_SSL with SCRAM
    users ``admin`` (super user), ``score``, ``feedback``, ``publisher``, a private CA,
    the StandardAuthorizer with ACLs, the registry over TLS. Its own run dir and free
    ports; started once per session, by the first test that asks for it, and stopped at
    the end of the session. ``secure_files`` holds the CA and the users' password files."""
    import logging
    import time

    settings = dataclasses.replace(
        private_cluster_settings(tmp_path_factory.mktemp("secure-cluster")),
        secure=True,
        mtls_port=free_port(),
    )
    cluster = LocalCluster(settings, TopicSettings())
    try:
        t0 = time.monotonic()
        cluster.up()
        logging.getLogger(__name__).warning(
            "secured cluster started in %.1f s", time.monotonic() - t0
        )
        yield cluster
    finally:
        cluster.down()


# Factories for worker / stack tests (topics per test, worker processes, readers).
from .stack import (  # noqa: E402, F401
    free_port,
    make_private_worker,
    make_worker,
    private_stack,
    secure_stack,
    stack,
    topic_factory,
)
