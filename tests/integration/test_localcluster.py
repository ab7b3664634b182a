"""The cluster the integration tier runs on: a real broker and a real registry."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from streamscore.core.config import ClusterSettings, TopicSettings
from streamscore.dev.localcluster import LocalCluster

# ``Endpoints`` (from conftest): ``bootstrap_servers`` and ``registry_url``.
Endpoints = Any


@pytest.fixture
def local_only(cluster_kind: str, local_cluster: LocalCluster) -> LocalCluster:
    """The local JVM cluster the session runs on (conftest deselects these tests when the
    session runs on another kind of cluster)."""
    assert cluster_kind == "local"
    return local_cluster


def test_status_shows_ready(local_only: LocalCluster, cluster_endpoints: Endpoints) -> None:
    st = local_only.status()
    assert st.kafka_ready and st.registry_ready and st.running
    assert st.bootstrap_servers == cluster_endpoints.bootstrap_servers
    assert st.registry_url == cluster_endpoints.registry_url


def test_up_while_running_is_idempotent(
    local_only: LocalCluster, cluster_endpoints: Endpoints
) -> None:
    before = local_only.status()
    again = LocalCluster(ClusterSettings(), TopicSettings()).up()
    assert again.running
    assert (again.kafka_pid, again.registry_pid) == (before.kafka_pid, before.registry_pid)


def test_topics_exist_and_models_topic_is_compacted(
    admin: Any, cluster_endpoints: Endpoints
) -> None:
    topics = TopicSettings()
    settings = ClusterSettings()
    md = admin.list_topics(timeout=10)
    for name in topics.all():
        assert name in md.topics, name
        assert len(md.topics[name].partitions) == settings.partitions
    res = ConfigResource(ResourceType.TOPIC, topics.models)
    conf = admin.describe_configs([res])[res].result(timeout=10)
    assert conf["cleanup.policy"].value == "compact"
    assert int(conf["max.message.bytes"].value) == settings.model_topic_max_bytes


def test_produce_consume_round_trip(
    cluster_endpoints: Endpoints, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(partitions=2)
    p = Producer(
        {"bootstrap.servers": cluster_endpoints.bootstrap_servers, "enable.idempotence": True}
    )
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}
    for k, v in sent.items():
        p.produce(topic, key=k, value=v)
    assert p.flush(30) == 0

    c = Consumer(
        {
            "bootstrap.servers": cluster_endpoints.bootstrap_servers,
            "group.id": unique_name("group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    got: dict[bytes, bytes] = {}
    try:
        c.subscribe([topic])
        for _ in range(60):
            for msg in c.consume(num_messages=100, timeout=1.0):
                assert msg.error() is None, msg.error()
                key, value = msg.key(), msg.value()
                assert key is not None and value is not None
                got[key] = value
            if len(got) == len(sent):
                break
    finally:
        c.close()
    assert got == sent


def test_large_message_fits_the_models_topic(
    cluster_endpoints: Endpoints, make_topic: Callable[..., str]
) -> None:
    settings = ClusterSettings()
    size = 8 * 1024 * 1024
    topic = make_topic(
        partitions=1, cleanup_policy="compact", max_message_bytes=settings.model_topic_max_bytes
    )
    p = Producer(
        {
            "bootstrap.servers": cluster_endpoints.bootstrap_servers,
            "message.max.bytes": settings.model_topic_max_bytes,
            "compression.type": "none",
        }
    )
    errors: list[Any] = []
    p.produce(
        topic, key=b"model", value=b"\0" * size, on_delivery=lambda err, _msg: errors.append(err)
    )
    assert p.flush(30) == 0
    assert errors == [None]


def test_registry_answers(cluster_endpoints: Endpoints) -> None:
    with urllib.request.urlopen(cluster_endpoints.registry_url + "/subjects", timeout=10) as r:
        assert r.status == 200
        assert isinstance(json.loads(r.read()), list)


def test_registry_confluent_client_round_trip(
    cluster_endpoints: Endpoints, unique_name: Callable[[str], str]
) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": cluster_endpoints.registry_url})
    subject = unique_name("subj") + "-value"
    v1 = {
        "type": "record",
        "name": "E",
        "namespace": "t",
        "fields": [{"name": "a", "type": "long"}],
    }
    v2 = {**v1, "fields": [*v1["fields"], {"name": "b", "type": "string", "default": ""}]}
    bad = {**v1, "fields": [*v1["fields"], {"name": "c", "type": "string"}]}
    client.set_compatibility(subject, "BACKWARD")
    id1 = client.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    # same schema, other formatting: same id (lookup by canonical form)
    assert client.register_schema(subject, Schema(json.dumps(v1, indent=2), "AVRO")) == id1
    assert json.loads(client.get_schema(id1).schema_str or "") == v1
    found = client.lookup_schema(subject, Schema(json.dumps(v1, indent=1), "AVRO"))
    assert found.schema_id == id1 and found.version == 1
    id2 = client.register_schema(subject, Schema(json.dumps(v2), "AVRO"))
    assert id2 != id1
    with pytest.raises(SchemaRegistryError) as ei:
        client.register_schema(subject, Schema(json.dumps(bad), "AVRO"))
    assert ei.value.http_status_code == 409
    assert client.get_compatibility(subject) == "BACKWARD"
    assert client.get_versions(subject) == [1, 2]
    client.delete_subject(subject)
