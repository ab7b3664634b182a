"""Factories for integration tests: a fresh set of topics per test, worker processes,
producers and readers against the real cluster. Imported by conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamscore import schemas, serde, synthetic
from streamscore.config import KafkaSettings, TopicSettings
from streamscore.kafka_clients import reader_consumer, wait_for_partition_leaders
from streamscore.localcluster import LocalCluster
from streamscore.publish import ModelTopic
from streamscore.records import Role
from streamscore.train import demo_bundle

SIGNING_KEY = "integration-test-signing-key-not-a-real-secret"


@dataclass
class Stack:
    bootstrap: str
    registry_url: str
    topics: TopicSettings
    group_id: str
    tmp: Path
    key: bytes = SIGNING_KEY.encode()
    registry: Any = None

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "STREAMSCORE_BOOTSTRAP": self.bootstrap,
                "STREAMSCORE_REGISTRY_URL": self.registry_url,
                "STREAMSCORE_SIGNING_KEY": SIGNING_KEY,
                "STREAMSCORE_SIGNING_KEY_ID": "test",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name in ("events", "predictions", "telemetry", "models", "feedback", "dlq", "late"):
            env[f"STREAMSCORE_TOPIC_{name.upper()}"] = getattr(self.topics, name)
        env.update(extra)
        return env

    # ---- models
    def model_topic(self) -> ModelTopic:
        schema = schemas.load("model_envelope")
        return ModelTopic(
            self.kafka,
            self.topics.models,
            encode=serde.AvroSerializer(self.registry, f"{self.topics.models}-value", schema),
            decode=serde.AvroDeserializer(serde.WriterSchemaCache(self.registry), schema),
            max_message_bytes=16 * 1024 * 1024,
        )

    def publish(self, kind: str = "ab", version: int = 1, role: Role = Role.PRIMARY) -> None:
        data = demo_bundle(kind, version=version, seed=version).to_bytes()
        self.model_topic().publish(data, role, key=self.key, key_id="test", publisher="test")

    # ---- events
    def event_serializer(self, version: int) -> serde.AvroSerializer:
        return serde.AvroSerializer(
            self.registry, f"{self.topics.events}-value", schemas.load("event", version)
        )

    def produce_raw(
        self, items: Iterable[tuple[bytes | None, bytes | None]], topic: str | None = None
    ) -> int:
        p = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        n = 0
        for key, value in items:
            while True:
                try:
                    p.produce(topic or self.topics.events, value, key)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 10_000 == 0:
                p.poll(0)
        assert p.flush(60) == 0
        return n

    def produce_events(self, n: int, *, with_c: bool = False, seed: int = 0) -> list[str]:
        ser = self.event_serializer(2 if with_c else 1)
        rng = np.random.default_rng(seed)
        ids: list[str] = []

        def items() -> Iterator[tuple[bytes, bytes]]:
            for e, _y in synthetic.events(n, rng, with_c=with_c):
                ids.append(e["event_id"])
                yield e["key"].encode(), ser(e)

        self.produce_raw(items())
        return ids

    # ---- reading outputs
    def read(
        self,
        topic: str,
        *,
        until: Callable[[list[Any]], bool],
        timeout: float = 120.0,
    ) -> list[Any]:
        """Messages of ``topic`` from the beginning (read_committed) until ``until`` holds."""
        c = Consumer(reader_consumer(self.kafka, f"reader-{uuid.uuid4().hex[:8]}"))
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                batch = c.consume(num_messages=5000, timeout=0.5)
                out.extend(m for m in batch if m.error() is None)
                if until(out):
                    break
        finally:
            c.close()
        return out

    def decoder(self, family: str) -> serde.AvroDeserializer:
        return serde.AvroDeserializer(serde.WriterSchemaCache(self.registry), schemas.load(family))

    def primary_ids(self, preds: list[Any]) -> Counter[str]:
        """How many primary predictions each event id has among ``preds``."""
        dec = self.decoder("prediction")
        ids: Counter[str] = Counter()
        for m in preds:
            p = dec(m.value())
            if p["role"] == "primary":
                ids[p["event_id"]] += 1
        return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    worker_id: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    _log: Any = field(repr=False, default=None)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += s.value
        return total

    def wait_metrics(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.sample("streamscore_model_loaded") == 1.0:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker never loaded a model:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def topic_factory(
    admin: Any, unique_name: Callable[[str], str], *, cleanup: bool = True
) -> Iterator[Callable[..., str]]:
    """``make(partitions=4, *, name=None, **config) -> name``: fresh topics, deleted at the
    end when ``cleanup``. Config keys may use underscores (``cleanup_policy="compact"``)."""
    from confluent_kafka.cimpl import NewTopic

    created: list[str] = []

    def make(partitions: int = 4, *, name: str | None = None, **config: Any) -> str:
        topic = name or unique_name("topic")
        conf = {k.replace("_", "."): str(v) for k, v in config.items()}
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=conf)],
            operation_timeout=30,
        )
        futures[topic].result()
        created.append(topic)
        wait_for_partition_leaders(admin, topic, partitions)
        return topic

    yield make
    if created and cleanup:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                fut.result()


def new_stack(
    bootstrap: str,
    registry_url: str,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Stack:
    """Fresh topics for one test and a ``Stack`` on them."""
    topics = TopicSettings(
        events=make_topic(4),
        predictions=make_topic(4),
        telemetry=make_topic(1),
        models=make_topic(1, cleanup_policy="compact", max_message_bytes=16 * 1024 * 1024 + 65536),
        feedback=make_topic(4),
        dlq=make_topic(1),
        late=make_topic(1),
    )
    return Stack(
        bootstrap,
        registry_url,
        topics,
        unique_name("group"),
        tmp_path,
        registry=serde.registry_client({"url": registry_url}),
    )


@pytest.fixture
def stack(
    cluster_endpoints: Any,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Stack:
    return new_stack(
        cluster_endpoints.bootstrap_servers,
        cluster_endpoints.registry_url,
        make_topic,
        unique_name,
        tmp_path,
    )


@pytest.fixture
def private_stack(
    private_cluster: LocalCluster, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Stack]:
    """A ``Stack`` on the module's private cluster (both servers started first if an
    earlier test left one stopped)."""
    from confluent_kafka.admin import AdminClient

    private_cluster.up()
    admin = AdminClient({"bootstrap.servers": private_cluster.bootstrap_servers})
    # no cleanup: the private cluster is thrown away, and its broker may be down by then
    with topic_factory(admin, unique_name, cleanup=False) as make:
        yield new_stack(
            private_cluster.bootstrap_servers,
            private_cluster.registry_url,
            make,
            unique_name,
            tmp_path,
        )


@pytest.fixture
def make_worker(stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_launcher(stack) as start:
        yield start


@pytest.fixture
def make_private_worker(private_stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    """``make_worker`` for workers of the private cluster's ``private_stack``."""
    with worker_launcher(private_stack) as start:
        yield start


@contextlib.contextmanager
def worker_launcher(stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(worker_id="w1", *args, wait=True)``: a ``streamscore score`` process of
    ``stack``'s group; every one started is killed at the end."""
    started: list[WorkerProcess] = []

    def start(worker_id: str = "w1", *args: str, wait: bool = True) -> WorkerProcess:
        port = free_port()
        log_path = stack.tmp / f"{worker_id}-{len(started)}.log"
        log = log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "streamscore.cli",
            "score",
            "--worker-id",
            worker_id,
            "--group-id",
            stack.group_id,
            "--metrics-port",
            str(port),
            *args,
        ]
        proc = subprocess.Popen(cmd, env=stack.env(), stdout=log, stderr=subprocess.STDOUT)
        w = WorkerProcess(worker_id, proc, port, log_path, log)
        started.append(w)
        if wait:
            w.wait_metrics()
        return w

    try:
        yield start
    finally:
        for w in started:
            w.kill()
            w._log.close()
