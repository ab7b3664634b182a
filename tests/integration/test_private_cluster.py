"""The local cluster keeps its data: the broker across a crash and across ``down``/``up``,
the registry's schemas (and their ids) across a restart; only ``reset`` wipes them.

All on a private cluster of this module (never the shared one other runs use).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streamscore.dev.localcluster import LocalCluster

from .stack import topic_factory


def _schema(name: str) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "namespace": "t",
            "fields": [{"name": "a", "type": "long"}],
        }
    )


def _registry(cluster: LocalCluster) -> SchemaRegistryClient:
    # a fresh client each time: no cache hides what the server returns
    return SchemaRegistryClient({"url": cluster.registry_url})


def _topic_with_messages(
    cluster: LocalCluster, unique_name: Callable[[str], str], partitions: int, n: int
) -> tuple[str, dict[bytes, bytes]]:
    """A new topic holding ``n`` messages (acknowledged): its name and the messages."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    with topic_factory(admin, unique_name, cleanup=False) as make_topic:
        topic = make_topic(partitions)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(n)}
    p = Producer({"bootstrap.servers": cluster.bootstrap_servers, "enable.idempotence": True})
    for k, v in sent.items():
        p.produce(topic, key=k, value=v)
    assert p.flush(60) == 0
    return topic, sent


def _read_all(cluster: LocalCluster, topic: str, partitions: int, n: int) -> dict[bytes, bytes]:
    c = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    got: dict[bytes, bytes] = {}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        for _ in range(240):
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error() is None:
                    got[m.key() or b""] = m.value() or b""
            if len(got) >= n:
                break
    finally:
        c.close()
    return got


def _committed(cluster: LocalCluster, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": group})
    try:
        (tp,) = c.committed([TopicPartition(topic, 0)], timeout=30)
        return int(tp.offset)
    finally:
        c.close()


def _commit(cluster: LocalCluster, group: str, topic: str, offset: int) -> None:
    c = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        c.close()


def test_registry_keeps_schemas_and_ids_across_a_restart(
    private_cluster: LocalCluster, unique_name: Callable[[str], str]
) -> None:
    subject = unique_name("subj") + "-value"
    first = _schema("Kept")
    sid = _registry(private_cluster).register_schema(subject, Schema(first, "AVRO"))

    private_cluster.stop_registry()
    assert not private_cluster.status().registry_ready
    private_cluster.start_registry()

    reg = _registry(private_cluster)
    assert json.loads(reg.get_schema(sid).schema_str or "") == json.loads(first)
    assert reg.get_versions(subject) == [1]
    assert reg.lookup_schema(subject, Schema(first, "AVRO")).schema_id == sid
    # new schemas get new ids: the id sequence was kept too, no id is handed out twice
    other = reg.register_schema(unique_name("subj") + "-value", Schema(_schema("New"), "AVRO"))
    assert other > sid
    assert json.loads(reg.get_schema(sid).schema_str or "") == json.loads(first)


def test_registry_keeps_schemas_across_a_crash(
    private_cluster: LocalCluster, unique_name: Callable[[str], str]
) -> None:
    subject = unique_name("subj") + "-value"
    sid = _registry(private_cluster).register_schema(subject, Schema(_schema("Crash"), "AVRO"))

    private_cluster.stop_registry(kill=True)  # SIGKILL: no clean shutdown
    private_cluster.start_registry()

    assert json.loads(_registry(private_cluster).get_schema(sid).schema_str or "") == json.loads(
        _schema("Crash")
    )


def test_broker_keeps_messages_and_offsets_across_a_crash(
    private_cluster: LocalCluster, unique_name: Callable[[str], str]
) -> None:
    topic, sent = _topic_with_messages(private_cluster, unique_name, 1, 50)
    group = unique_name("group")
    _commit(private_cluster, group, topic, 30)
    pid_before = private_cluster.status().kafka_pid

    private_cluster.stop_kafka(kill=True)  # SIGKILL: a crash
    assert private_cluster.status().kafka_pid is None
    private_cluster.start_kafka()

    st = private_cluster.status()
    assert st.kafka_ready and st.kafka_pid not in (None, pid_before)
    assert _read_all(private_cluster, topic, 1, len(sent)) == sent
    assert _committed(private_cluster, group, topic) == 30


def test_down_up_keeps_everything_and_reset_wipes_it(
    private_cluster: LocalCluster, unique_name: Callable[[str], str]
) -> None:
    topic, sent = _topic_with_messages(private_cluster, unique_name, 2, 40)
    subject = unique_name("subj") + "-value"
    sid = _registry(private_cluster).register_schema(subject, Schema(_schema("Both"), "AVRO"))

    private_cluster.down()
    assert not private_cluster.status().running
    private_cluster.up()

    assert _read_all(private_cluster, topic, 2, len(sent)) == sent
    assert _registry(private_cluster).get_versions(subject) == [1]
    found = _registry(private_cluster).lookup_schema(subject, Schema(_schema("Both"), "AVRO"))
    assert found.schema_id == sid

    private_cluster.reset()
    assert not private_cluster.data_dir.exists()
    assert not private_cluster.registry_db_dir.exists()
    private_cluster.up()

    admin = AdminClient({"bootstrap.servers": private_cluster.bootstrap_servers})
    assert topic not in admin.list_topics(timeout=30).topics
    with pytest.raises(SchemaRegistryError) as ei:
        _registry(private_cluster).get_versions(subject)
    assert ei.value.http_status_code == 404
