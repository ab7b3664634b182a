"""Factories for integration tests: a fresh set of topics per test, worker processes,
producers and readers against the real cluster. Imported by conftest.py."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamscore.core.config import SIGNING_ENV, KafkaSettings, TopicSettings
from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.dev.localcluster import LocalCluster
from streamscore.dev.synthetic import demo_bundle
from streamscore.kafka.admin import TopicSpec, create_topics
from streamscore.kafka.clients import read_to_end, reader_consumer
from streamscore.models.publish import ModelTopic
from streamscore.models.signing import Ed25519Signer, KeyPair, Verifier, keygen
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client
from tests.processes import WorkerProcess, free_port, launch, wait_until, worker_env

__all__ = [
    "Stack",
    "WorkerProcess",
    "compile_java",
    "free_port",
    "make_private_worker",
    "make_worker",
    "private_stack",
    "secure_env",
    "secure_stack",
    "stack",
    "topic_factory",
]

SIGNING_KEY_ID = "test"

#: the Java programs some tests run (``tests/integration/java``)
JAVA_DIR = Path(__file__).parent / "java"


def compile_java(
    cluster: LocalCluster, name: str, out: Path, extra_classpath: Sequence[Path] = ()
) -> str:
    """``java/<name>.java`` compiled into ``out`` with ``javac`` against the cluster's own
    Kafka client jars (and ``extra_classpath``); returns the classpath to run it with."""
    javac = shutil.which("javac")
    assert javac is not None, "javac (the JDK the local cluster runs on) is not on PATH"
    cp = ":".join([f"{cluster.kafka_home / 'libs'}/*", *map(str, extra_classpath)])
    out.mkdir()
    res = subprocess.run(
        [javac, "-d", str(out), "-cp", cp, str(JAVA_DIR / f"{name}.java")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return f"{out}:{cp}"


@functools.cache
def signing_keys() -> KeyPair:
    """The tests' Ed25519 key pair (id ``test``), made once per session in a private
    temporary directory that is removed at exit: the private key for publishers, the
    public key (a one-line keyring) for workers."""
    tmp = tempfile.TemporaryDirectory(prefix="streamscore-test-keys-")
    _KEEP.append(tmp)
    return keygen(Path(tmp.name), SIGNING_KEY_ID)


_KEEP: list[tempfile.TemporaryDirectory[str]] = []


def signing_key() -> Ed25519Signer:
    return Ed25519Signer.from_file(signing_keys().private_file)


@dataclass
class Stack:
    bootstrap: str
    registry_url: str
    topics: TopicSettings
    group_id: str
    tmp: Path
    registry: Any = None
    #: librdkafka connection properties of the test's own clients (the secured profile:
    #: its admin principal, SASL_SSL, the CA) beyond ``bootstrap.servers``
    client: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> Ed25519Signer:
        """The publishers' signer (key id ``test``)."""
        return signing_key()

    @property
    def verifier(self) -> Verifier:
        """What workers verify with: the public key only."""
        return self.key.verifier()

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, extra=self.client)

    def env(self, *, publisher: bool = False, **extra: str) -> dict[str, str]:
        """A process's environment: workers get the public key only (they cannot sign);
        ``publisher`` adds the private key (``train``, ``feedback --auto-promote``)."""
        keys = signing_keys()
        signing = {"STREAMSCORE_PUBLIC_KEY_FILE": str(keys.public_file)}
        if publisher:
            signing["STREAMSCORE_SIGNING_KEY_FILE"] = str(keys.private_file)
        return worker_env(
            {k: v for k, v in os.environ.items() if k not in SIGNING_ENV},
            self.bootstrap,
            self.registry_url,
            self.topics,
            **signing,
            **extra,
        )

    # ---- models
    def model_topic(self, max_message_bytes: int = 16 * 1024 * 1024) -> ModelTopic:
        schema = schemas.load("model_envelope")
        return ModelTopic(
            self.kafka,
            self.topics.models,
            encode=AvroSerializer(self.registry, f"{self.topics.models}-value", schema),
            decode=AvroDeserializer(WriterSchemaCache(self.registry), schema),
            max_message_bytes=max_message_bytes,
        )

    def publish(self, kind: str = "ab", version: int = 1, role: Role = Role.PRIMARY) -> None:
        data = demo_bundle(kind, version=version, seed=version).to_bytes()
        self.model_topic().publish(data, role, key=self.key, publisher="test")

    # ---- events
    def event_serializer(self, version: int) -> AvroSerializer:
        return AvroSerializer(
            self.registry, f"{self.topics.events}-value", schemas.load("event", version)
        )

    def produce_raw(
        self,
        items: Iterable[tuple[bytes | None, bytes | None]],
        topic: str | None = None,
        *,
        max_message_bytes: int = 1_000_000,
        headers: Sequence[list[tuple[str, bytes]]] | None = None,
    ) -> int:
        """``items`` produced in order (``headers``: each item's, when given)."""
        p = Producer(
            {
                **self.client,
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "message.max.bytes": max_message_bytes,
            }
        )
        n = 0
        for key, value in items:
            h = None if headers is None else headers[n]
            while True:
                try:
                    p.produce(topic or self.topics.events, value, key, headers=h)
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

    def produce_traced_events(
        self, n: int, n_keys: int, *, seed: int = 21
    ) -> list[list[tuple[str, bytes]]]:
        """``n`` schema-v2 events ``ev-0``.. on ``n_keys`` keys (the events past
        ``n_keys`` repeat earlier keys), each with a W3C ``traceparent`` header and another
        header; returns each event's headers."""
        ser = self.event_serializer(2)
        now = int(time.time() * 1000)
        rng = np.random.default_rng(seed)
        events = []
        for i in range(n):
            key = f"key-{i if i < n_keys else int(rng.integers(0, n_keys))}"
            event = {
                "event_id": f"ev-{i}",
                "key": key,
                "event_time": now,
                "a": float(rng.normal(-30, 6)),
                "b": float(rng.normal(40, 3)),
                "segment": None,
                "c": float(55 * rng.beta(5, 100)),
            }
            events.append((key.encode(), ser(event)))
        trace = [
            [("traceparent", f"00-{i:032x}-{i:016x}-01".encode()), ("x", b"y")] for i in range(n)
        ]
        self.produce_raw(events, headers=trace)
        return trace

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

    def read_to_end(self, topic: str, *, timeout: float = 120.0) -> list[Any]:
        """Every message of ``topic`` (read_committed) up to its current end."""
        c = Consumer(
            reader_consumer(
                self.kafka, f"reader-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
            )
        )
        try:
            return list(read_to_end(c, topic, deadline_s=timeout))
        finally:
            c.close()

    def decoder(self, family: str) -> AvroDeserializer:
        return AvroDeserializer(WriterSchemaCache(self.registry), schemas.load(family))

    def primary_ids(self, preds: list[Any]) -> Counter[str]:
        """How many primary predictions each event id has among ``preds``."""
        dec = self.decoder("prediction")
        ids: Counter[str] = Counter()
        for m in preds:
            p = dec(m.value())
            if p["role"] == "primary":
                ids[p["event_id"]] += 1
        return ids


@contextlib.contextmanager
def topic_factory(
    admin: Any, unique_name: Callable[[str], str], *, cleanup: bool = True
) -> Iterator[Callable[..., str]]:
    """``make(partitions=4, *, name=None, **config) -> name``: fresh topics, deleted at the
    end when ``cleanup``. Config keys may use underscores (``cleanup_policy="compact"``)."""
    created: list[str] = []

    def make(partitions: int = 4, *, name: str | None = None, **config: Any) -> str:
        topic = name or unique_name("topic")
        conf = {k.replace("_", "."): str(v) for k, v in config.items()}
        create_topics(
            admin, [TopicSpec(topic, partitions, conf, replication_factor=1)], exist_ok=False
        )
        created.append(topic)
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
    *,
    registry_conf: dict[str, str] | None = None,
) -> Stack:
    """Fresh topics for one test and a ``Stack`` on them."""
    topics = TopicSettings(
        events=make_topic(4),
        predictions=make_topic(4),
        predictions_shadow=make_topic(4),
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
        registry=registry_client({"url": registry_url, **(registry_conf or {})}),
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
def secure_stack(
    secure_cluster: LocalCluster, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Stack]:
    """A ``Stack`` on the session's secured cluster: fresh topics (made by ``admin``), the
    score worker's and the publisher's ACLs on them (group ``stack.group_id``), the test's
    own clients as ``admin``, the registry over TLS. Processes get their principal's
    environment from :func:`secure_env`."""
    from confluent_kafka.admin import AdminClient

    from streamscore.dev.cluster_secure import grant_process

    admin_conf = secure_cluster.client_config("admin")
    admin = AdminClient(admin_conf)
    files = secure_cluster.secure_files
    assert files is not None
    with topic_factory(admin, unique_name) as make:
        st = new_stack(
            secure_cluster.bootstrap_servers,
            secure_cluster.registry_url,
            make,
            unique_name,
            tmp_path,
            registry_conf={"ssl.ca.location": str(files.ca)},
        )
        st.client = {k: v for k, v in admin_conf.items() if k != "bootstrap.servers"}
        for role in ("score", "publisher"):
            grant_process(admin, role, st.topics, st.group_id)
        yield st


def secure_env(cluster: LocalCluster, user: str, **overrides: str) -> dict[str, str]:
    """The environment of a process of the secured cluster as ``user`` (password from its
    file, the private CA for Kafka and the registry), with ``overrides``."""
    from streamscore.dev.cluster_secure import client_env

    assert cluster.secure_files is not None
    return {**client_env(cluster.settings, cluster.secure_files, user), **overrides}


#: the demo world's reader schema: what the tests of the demo's events were written for
#: (resolution errors such as ``WriterMissingFieldError`` need one); a worker reads each
#: event as written only when no reader schema is given (the examples' tests)
DEMO_READER = ("--reader-schema", str(schemas.schema_dir() / "event.v2.avsc"))


@contextlib.contextmanager
def worker_launcher(stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(worker_id="w1", *args, wait=True, env=None)``: a ``streamscore score``
    process of ``stack``'s group; every one started is killed at the end. Without
    ``--config`` or ``--reader-schema`` in ``args`` it reads with :data:`DEMO_READER`."""
    started: list[WorkerProcess] = []

    def start(
        worker_id: str = "w1", *args: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        own = any(a in ("--config", "--reader-schema") for a in args)
        w = launch(
            "score",
            *(args if own else (*DEMO_READER, *args)),
            worker_id=worker_id,
            group_id=stack.group_id,
            env=stack.env(**(env or {})),
            log_path=stack.tmp / f"{worker_id}-{len(started)}.log",
        )
        started.append(w)
        if wait:
            w.wait_metrics()
        return w

    try:
        yield start
    finally:
        for w in started:
            w.close()


@pytest.fixture
def make_worker(stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_launcher(stack) as start:
        yield start


def three_role_worker(
    stack: Stack, make_worker: Callable[..., WorkerProcess], name: str, tmp_path: Path
) -> WorkerProcess:
    """A worker with a primary (v1), a canary (v2, 30 % of the keys) and a shadow (v3, its
    own feature spec) active, copying each event's ``traceparent`` to its predictions."""
    stack.publish("ab", version=1)
    stack.publish("ab", version=2, role=Role.CANARY)
    stack.publish("abc", version=3, role=Role.SHADOW)
    project = tmp_path / "streamscore.toml"
    project.write_text('[events]\ncopy_headers = ["traceparent"]\n')
    w = make_worker(name, "--canary-fraction", "0.3", "--config", str(project))
    for role, v in (("primary", "1"), ("canary", "2"), ("shadow", "3")):
        assert w.sample("streamscore_model_info", {"model_version": v, "role": role}) == 1
    return w


@pytest.fixture
def make_private_worker(private_stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    """``make_worker`` for workers of the private cluster's ``private_stack``."""
    with worker_launcher(private_stack) as start:
        yield start


def wait_group_settled(
    workers: list[WorkerProcess], partitions: int, timeout: float = 60.0
) -> None:
    """Until the workers own disjoint, non-empty shares of all ``partitions``."""
    everything = {str(p) for p in range(partitions)}
    owned: list[set[str]] = []

    def settled() -> bool:
        nonlocal owned
        owned = [w.owned_partitions() for w in workers]
        return (
            all(owned) and set().union(*owned) == everything and sum(map(len, owned)) == partitions
        )

    wait_until(settled, timeout, lambda: f"group not settled: {owned}")
