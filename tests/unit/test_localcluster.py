"""Pure parts of the local cluster: no broker, no JVM, no download."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streamscore.core.config import ClusterSettings, TopicSettings
from streamscore.core.errors import (
    ClusterError,
    DownloadError,
    JavaMissingError,
    PortInUseError,
    ServerStartError,
)
from streamscore.dev import cluster_cli as ccli
from streamscore.dev import cluster_config as cconf
from streamscore.dev import cluster_install as inst
from streamscore.dev import cluster_processes as procs
from streamscore.dev import localcluster as lc
from tests.processes import wait_until


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    s = ClusterSettings(
        cache_dir=tmp_path,
        kafka_port=29092,
        controller_port=29093,
        partitions=3,
        model_topic_max_bytes=1000,
    )
    p = _props(cconf.render_server_properties(s, tmp_path / "data"))
    assert p["process.roles"] == "broker,controller"
    assert p["node.id"] == "1"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert p["controller.listener.names"] == "CONTROLLER"
    assert p["log.dirs"] == str(tmp_path / "data")
    assert p["num.partitions"] == "3"
    assert p["offsets.topic.replication.factor"] == "1"
    assert p["transaction.state.log.replication.factor"] == "1"
    assert p["transaction.state.log.min.isr"] == "1"
    assert p["group.initial.rebalance.delay.ms"] == "0"
    assert p["auto.create.topics.enable"] == "false"
    assert int(p["message.max.bytes"]) > 1000


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_292"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ('Picked up JAVA_TOOL_OPTIONS: -Xss1m\nopenjdk version "25-ea" 2025', 25),
    ],
)
def test_parse_java_version(text: str, major: int) -> None:
    assert procs.parse_java_version(text) == major


def test_parse_java_version_garbage() -> None:
    with pytest.raises(ValueError):
        procs.parse_java_version("")


def _fake_java(tmp_path: Path, version_line: str) -> str:
    exe = tmp_path / "java"
    exe.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    exe.chmod(0o755)
    return str(exe)


def test_check_java_too_old(tmp_path: Path) -> None:
    with pytest.raises(JavaMissingError, match="Java 8"):
        procs.check_java(_fake_java(tmp_path, 'java version "1.8.0_292"'))


def test_check_java_ok(tmp_path: Path) -> None:
    exe = _fake_java(tmp_path, 'openjdk version "17.0.1" 2021-10-19')
    assert procs.check_java(exe) == exe


def test_check_java_missing(tmp_path: Path) -> None:
    with pytest.raises(JavaMissingError):
        procs.check_java(str(tmp_path / "no-such-java"))


def test_port_in_use_detects_a_bound_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert procs.port_in_use("127.0.0.1", port)
        assert procs.port_answers("127.0.0.1", port)
    assert not procs.port_in_use("127.0.0.1", port)


def test_up_refuses_a_port_taken_by_someone_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lc, "PORT_RELEASE_GRACE_S", 0.3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cluster = lc.LocalCluster(
            ClusterSettings(cache_dir=tmp_path, kafka_port=port), TopicSettings()
        )
        with pytest.raises(PortInUseError) as ei:
            cluster._check_ports("kafka", [port])
        assert ei.value.port == port
        assert str(port) in str(ei.value)


def test_a_port_released_within_the_grace_is_taken(tmp_path: Path) -> None:
    """A server stopped a moment ago may still hold its port while its files close: the
    start waits for it (up to PORT_RELEASE_GRACE_S) instead of refusing."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path, kafka_port=port), TopicSettings())
    closer = threading.Timer(0.5, s.close)
    closer.start()
    try:
        cluster._check_ports("kafka", [port])  # returns once the port is free
        assert not procs.port_in_use("127.0.0.1", port)
    finally:
        closer.cancel()
        s.close()


def test_manifest_roundtrip_and_corruption(tmp_path: Path) -> None:
    root = tmp_path / "kafka"
    (root / "libs").mkdir(parents=True)
    (root / "libs" / "a.jar").write_bytes(b"a" * 100)
    (root / "libs" / "b.jar").write_bytes(b"b" * 100)
    assert inst.verify_manifest(root) is not None  # no manifest yet
    inst.write_manifest(root)
    assert inst.verify_manifest(root) is None

    (root / "libs" / "a.jar").write_bytes(b"x" * 100)  # same size, other bytes
    assert "sha256 mismatch" in (inst.verify_manifest(root) or "")

    inst.write_manifest(root)
    (root / "libs" / "b.jar").write_bytes(b"b" * 10)  # truncated
    assert "size mismatch" in (inst.verify_manifest(root) or "")

    inst.write_manifest(root)
    (root / "libs" / "b.jar").unlink()  # partial
    assert "missing" in (inst.verify_manifest(root) or "")

    (root / inst.MANIFEST).write_text("{not json")
    assert "unreadable" in (inst.verify_manifest(root) or "")


def test_write_manifest_refuses_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        inst.write_manifest(tmp_path)


def test_install_redoes_a_corrupted_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    fetched: list[str] = []

    def fake_kafka(staging: Path) -> None:
        fetched.append("kafka")
        (staging / "libs").mkdir()
        (staging / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"jar")

    def fake_registry(staging: Path) -> None:
        fetched.append("registry")
        (staging / "apicurio-runner.jar").write_bytes(b"jar")

    def fake_s3proxy(staging: Path) -> None:
        fetched.append("s3proxy")
        (staging / "s3proxy-2.6.0-jar-with-dependencies.jar").write_bytes(b"jar")

    def fake_avro(staging: Path) -> None:
        fetched.append("avro")
        (staging / "libs").mkdir()
        (staging / "libs" / f"avro-{inst.AVRO_VERSION}.jar").write_bytes(b"jar")

    monkeypatch.setattr(cluster.installer, "_fetch_kafka", fake_kafka)
    monkeypatch.setattr(cluster.installer, "_fetch_registry", fake_registry)
    monkeypatch.setattr(cluster.installer, "_fetch_s3proxy", fake_s3proxy)
    monkeypatch.setattr(cluster.installer, "_fetch_avro", fake_avro)
    cluster.install()
    assert fetched == ["kafka", "registry", "s3proxy", "avro"]
    cluster.install()  # verified: nothing fetched again
    assert cluster.avro_jar().read_bytes() == b"jar"
    assert fetched == ["kafka", "registry", "s3proxy", "avro"]

    (cluster.kafka_home / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"bad")
    (cluster.installer.s3proxy_jar()).write_bytes(b"bad")
    cluster.install()
    assert fetched == ["kafka", "registry", "s3proxy", "avro", "kafka", "s3proxy"]
    assert inst.verify_manifest(cluster.kafka_home) is None
    assert inst.verify_manifest(cluster.installer.s3proxy_home) is None
    # no staging leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "apicurio-3.0.9",
        f"avro-{inst.AVRO_VERSION}",
        "kafka-4.1.1",
        "s3proxy-2.6.0",
    ]


def test_interrupted_fetch_never_looks_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())

    def broken(staging: Path) -> None:
        (staging / "libs").mkdir()
        (staging / "libs" / "half.jar").write_bytes(b"x")
        raise DownloadError("network went away")

    monkeypatch.setattr(cluster.installer, "_fetch_kafka", broken)
    with pytest.raises(DownloadError):
        cluster.install()
    assert not cluster.kafka_home.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_mvn_missing_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    with pytest.raises(DownloadError, match="mvn"):
        cluster.installer._mvn(["-v"], cwd=tmp_path)


def test_mvn_failure_carries_output_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "mvn"
    fake.write_text("#!/bin/sh\necho '[ERROR] Could not resolve kafka_2.13'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    with pytest.raises(DownloadError, match=r"Could not resolve kafka_2\.13"):
        cluster.installer._mvn(["x"], cwd=tmp_path)


def test_pid_file_staleness(tmp_path: Path) -> None:
    cluster = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    server = cluster._servers[lc.KAFKA]
    cluster.run_dir.mkdir(parents=True)
    assert server.pid() is None  # no pid file

    server.pid_file.write_text("garbage")
    assert server.pid() is None

    # a live process that is not ours (our own pytest process): never treated as ours
    server.pid_file.write_text(str(os.getpid()))
    assert not procs.is_ours(os.getpid(), server.marker)
    assert server.pid() is None

    # a dead pid
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    server.pid_file.write_text(str(proc.pid))
    assert server.pid() is None

    # down() with stale pid files cleans them up and does not fail
    cluster._servers[lc.REGISTRY].pid_file.write_text("999999999")
    cluster.down()
    assert not server.pid_file.exists()
    assert not cluster._servers[lc.REGISTRY].pid_file.exists()


def test_is_ours_needs_java_and_marker(tmp_path: Path) -> None:
    marker = f"-D{lc.MARKER_PROP}={tmp_path}#kafka"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        args = procs.process_cmdline(proc.pid)
        assert args is not None and marker in args
        assert not procs.is_ours(proc.pid, marker)  # carries the marker but is not java
    finally:
        proc.kill()
        proc.wait()
    assert procs.process_cmdline(proc.pid) is None


def test_cluster_id_shape() -> None:
    for _ in range(50):
        cid = cconf.random_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_tail(tmp_path: Path) -> None:
    p = tmp_path / "x.log"
    p.write_text("".join(f"line {i}\n" for i in range(100)))
    out = procs.tail(p, 3)
    assert out == "line 97\nline 98\nline 99"
    assert procs.tail(tmp_path / "missing.log") == "(no log)"


def test_status_of_a_stopped_cluster(tmp_path: Path) -> None:
    s = ClusterSettings(cache_dir=tmp_path, kafka_port=_free_port(), registry_port=_free_port())
    st = lc.LocalCluster(s, TopicSettings()).status()
    assert not st.running and st.kafka_pid is None and st.registry_pid is None
    assert st.kafka_log == tmp_path / "run" / "kafka.log"
    assert st.bootstrap_servers == s.bootstrap_servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_main_cluster_prints_errors_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Boom(lc.LocalCluster):
        def up(self) -> lc.ClusterStatus:
            raise ServerStartError("local kafka exited during start\nmore", log_path="/x")

        def install(self) -> None:
            raise ClusterError("nope")

    c = Boom(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    assert ccli.main_cluster("install", c) == 1
    assert capsys.readouterr().err.strip() == "error: nope"
    assert ccli.main_cluster("up", c) == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: local kafka exited during start"
    assert ccli.main_cluster("frobnicate", c) == 2


# ------------------------------------------------------------- run dir and kept data


def test_run_dir_defaults_under_the_cache_and_can_be_moved(tmp_path: Path) -> None:
    c = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    assert c.run_dir == tmp_path / "run"
    assert c.data_dir == tmp_path / "run" / "kafka-data"
    assert c.registry_db_dir == tmp_path / "run" / "registry-db"
    private = lc.LocalCluster(
        ClusterSettings(cache_dir=tmp_path, run_dir=tmp_path / "mine"), TopicSettings()
    )
    # the downloads are shared, the state is not
    assert private.kafka_home == c.kafka_home and private.registry_home == c.registry_home
    assert private.run_dir == tmp_path / "mine"
    assert private.data_dir == tmp_path / "mine" / "kafka-data"
    assert private._servers["kafka"].marker != c._servers["kafka"].marker


def test_registry_storage_is_an_h2_file_in_the_run_dir(tmp_path: Path) -> None:
    props = cconf.registry_storage_properties(tmp_path / "run")
    assert props["apicurio.storage.kind"] == "sql"
    assert props["apicurio.storage.sql.kind"] == "h2"
    url = props["apicurio.datasource.url"]
    assert url.startswith(f"jdbc:h2:file:{tmp_path / 'run' / 'registry-db'}/")
    assert ":mem:" not in url


class _Recording(lc.LocalCluster):
    """Records the commands it would run instead of starting JVMs."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(
            ClusterSettings(cache_dir=tmp_path, jvm_opts=("-XX:+UseSerialGC",)), TopicSettings()
        )
        self.spawned: list[list[str]] = []
        self.registry_home.mkdir(parents=True)
        (self.registry_home / "app-runner.jar").write_bytes(b"")
        self.run_dir.mkdir(parents=True)

    def _spawn(self, server: Any, cmd: Any, cwd: Path) -> int:
        self.spawned.append(list(cmd))
        return 1


def test_kafka_start_formats_only_an_empty_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats: list[list[str]] = []

    def run(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[bytes]:
        formats.append(cmd)
        (c.data_dir / "meta.properties").write_text("cluster.id=x\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(lc.subprocess, "run", run)
    c = _Recording(tmp_path)
    c._start_kafka("java")
    assert len(formats) == 1 and "format" in formats[0]
    (c.data_dir / "topic-0").mkdir()
    c._start_kafka("java")  # a restart: the data and the cluster id are kept
    assert len(formats) == 1
    assert (c.data_dir / "topic-0").is_dir()
    assert len(c.spawned) == 2 and all("kafka.Kafka" in cmd for cmd in c.spawned)
    assert "-XX:+UseSerialGC" in c.spawned[0]


def test_registry_start_uses_the_file_database_and_keeps_the_last_log(tmp_path: Path) -> None:
    c = _Recording(tmp_path)
    c._servers["registry"].log.write_text("why it crashed\n")
    c._start_registry("java")
    (cmd,) = c.spawned
    url = cconf.registry_storage_properties(c.run_dir)["apicurio.datasource.url"]
    assert f"-Dapicurio.datasource.url={url}" in cmd
    assert c.registry_db_dir.is_dir()
    assert (c.run_dir / "registry.log.1").read_text() == "why it crashed\n"
    assert c._servers["registry"].log.read_text() == ""


def test_down_keeps_the_data_and_reset_wipes_it(tmp_path: Path) -> None:
    s = ClusterSettings(
        cache_dir=tmp_path,
        kafka_port=_free_port(),
        controller_port=_free_port(),
        registry_port=_free_port(),
    )
    c = lc.LocalCluster(s, TopicSettings())
    for d in (c.data_dir, c.registry_db_dir):
        d.mkdir(parents=True)
        (d / "x").write_text("kept")
    c.down()
    assert (c.data_dir / "x").read_text() == "kept"
    assert (c.registry_db_dir / "x").read_text() == "kept"
    c.reset()
    assert not c.data_dir.exists() and not c.registry_db_dir.exists()
    assert (tmp_path / "run").is_dir()  # logs and configs stay


def test_main_cluster_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    class Rec(lc.LocalCluster):
        def reset(self) -> None:
            calls.append("reset")

        def down(self) -> None:
            calls.append("down")

    c = Rec(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    assert ccli.main_cluster("reset", c) == 0
    assert "wiped" in capsys.readouterr().out
    assert ccli.main_cluster("down", c) == 0
    assert str(c.run_dir) in capsys.readouterr().out
    assert calls == ["reset", "down"]


_SPAWNER = """
import sys, time
from pathlib import Path
from streamscore.dev.cluster_processes import ServerProcess
run = Path(sys.argv[1])
tied = sys.argv[2] == "1"
server = ServerProcess("sleeper", run / "s.pid", run / "s.log", "-Dx", stop_with_parent=tied)
print(server.spawn(["sleep", "300"], run), flush=True)
time.sleep(300)
"""


def _orphan_after_parent_killed(tmp_path: Path, stop_with_parent: bool) -> bool:
    """A process spawns a server (``sleep``, in a session of its own) and is SIGKILLed
    (no ``finally`` runs): does the server live on? Every process started is killed at
    the end."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPAWNER, str(tmp_path), "1" if stop_with_parent else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # the server runs (under ``setpriv`` until it execs the command: same pid)
        wait_until(lambda: procs.process_cmdline(child) == ["sleep", "300"], 10, "the server")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while procs.process_cmdline(child) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return procs.process_cmdline(child) is not None
    finally:
        parent.kill()
        parent.wait()
        if child is not None and procs.process_cmdline(child) is not None:
            os.kill(child, signal.SIGKILL)


def test_a_test_clusters_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """``stop_with_parent`` (a test's private cluster): the kernel kills the server when
    the process that started it ends however it ends (a session killed by ``timeout``),
    where it would otherwise live on in its own session."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _orphan_after_parent_killed(tmp_path / "a", stop_with_parent=False)
    assert not _orphan_after_parent_killed(tmp_path / "b", stop_with_parent=True)
    assert (
        lc.LocalCluster(ClusterSettings(cache_dir=tmp_path, stop_with_parent=True), TopicSettings())
        ._servers[lc.KAFKA]
        .stop_with_parent
    )


def test_a_spawn_whose_pid_file_cannot_be_written_leaves_nothing_running(tmp_path: Path) -> None:
    server = procs.ServerProcess("sleeper", tmp_path / "gone" / "s.pid", tmp_path / "s.log", "-Dx")
    before = set(procs._CHILDREN)
    with pytest.raises(FileNotFoundError):
        server.spawn(["sleep", "300"], tmp_path)
    (proc,) = [p for pid, p in procs._CHILDREN.items() if pid not in before]
    assert proc.returncode is not None and procs.process_cmdline(proc.pid) is None


def test_down_stops_every_server_even_when_stopping_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that fails or is interrupted (a test's timeout in a teardown) does not
    leave the other servers running; the first error is raised after."""
    c = lc.LocalCluster(ClusterSettings(cache_dir=tmp_path), TopicSettings())
    stopped: list[str] = []

    def stop(server: procs.ServerProcess, *, kill: bool = False) -> None:
        stopped.append(server.role)
        if server.role == lc.REGISTRY:
            raise KeyboardInterrupt

    def s3_stop(self: Any) -> None:
        stopped.append("s3proxy")
        raise ClusterError("could not stop local s3proxy")

    monkeypatch.setattr(c, "_stop", stop)
    monkeypatch.setattr(lc.S3Proxy, "stop", s3_stop)
    with pytest.raises(ClusterError, match="s3proxy"):
        c.down()
    assert stopped == ["s3proxy", lc.REGISTRY, lc.KAFKA]
    stopped.clear()
    with pytest.raises(KeyboardInterrupt):
        c.reset()
    assert stopped == [lc.REGISTRY, lc.KAFKA]


def test_stray_servers_are_this_sessions_marked_java_processes_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "private"
    table = {
        1: ["/usr/bin/java", f"-D{lc.MARKER_PROP}={run}#kafka", "kafka.Kafka"],
        2: ["/usr/bin/java", f"-Ds3.marker={run}/s3", "-jar", "s3proxy.jar"],
        3: ["/usr/bin/java", f"-D{lc.MARKER_PROP}={tmp_path}/private-other#kafka"],  # not ours
        4: ["python", f"-D{lc.MARKER_PROP}={run}#kafka"],  # not a java
        5: ["/usr/bin/java", f"-D{lc.MARKER_PROP}=/root/.cache/streamscore/run#kafka"],  # shared
    }
    monkeypatch.setattr(procs, "list_pids", lambda: list(table))
    monkeypatch.setattr(procs, "process_cmdline", table.get)
    assert procs.stray_servers([run], [lc.MARKER_PROP, "s3.marker"]) == [1, 2]
    assert procs.stray_servers([], [lc.MARKER_PROP]) == []
