"""The publisher side of the model topic without a broker: what rollback, retire and
``--from-archive`` read from the topic and what they sign (``read_all``/``_send``
replaced by an in-memory list)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from streamscore.core.config import KafkaSettings
from streamscore.core.errors import ModelError
from streamscore.core.records import Role
from streamscore.models import envelope
from streamscore.models.container import Bundle
from streamscore.models.envelope import Action, ModelEnvelope
from streamscore.models.publish import ModelTopic
from streamscore.models.signing import HmacVerifier
from streamscore.models.topic_state import TopicState


class MemoryTopic(ModelTopic):
    def __init__(self) -> None:
        super().__init__(
            KafkaSettings(bootstrap_servers="127.0.0.1:1"),
            "models",
            encode=lambda d: b"",
            decode=lambda b: {},
            max_message_bytes=1 << 20,
        )
        self.records: list[ModelEnvelope] = []

    def read_all(self, timeout: float = 15.0) -> list[ModelEnvelope]:
        return list(self.records)

    def _send(self, envelopes: list[ModelEnvelope]) -> None:
        self.records.extend(envelopes)


@pytest.fixture
def topic() -> MemoryTopic:
    return MemoryTopic()


def publish(
    t: MemoryTopic, b: Bundle, keyring: Mapping[str, bytes], role: Role = Role.PRIMARY
) -> None:
    t.publish(b.to_bytes(), role, key=keyring["k1"], key_id="k1", publisher="t")


def test_every_published_record_is_signed_and_follows_the_ledger(
    topic: MemoryTopic, make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    b = {v: make_regressor_bundle(v) for v in (1, 2, 3)}
    publish(topic, b[1], keyring)
    publish(topic, b[2], keyring)
    publish(topic, b[3], keyring, Role.SHADOW)
    res = topic.rollback("m", Role.PRIMARY, key=keyring["k1"], key_id="k1", keyring=keyring)
    assert res.version == 1  # the previous primary, not the newer shadow v3
    assert topic.retire("m", Role.SHADOW, key=keyring["k1"], key_id="k1", publisher="t") == 3
    rb = topic.records[-2]
    assert (rb.rollback, rb.version, rb.target_version) == (True, 1, 2)
    state = TopicState(HmacVerifier(keyring))
    for e in topic.records:
        envelope.verify(e, HmacVerifier(keyring))
        assert state.admit(e) is (e.action is not Action.ARCHIVE)
    assert state.role("m", Role.PRIMARY).current == 1
    assert state.role("m", Role.SHADOW).current is None
    with pytest.raises(ModelError, match="not active"):
        topic.retire("m", Role.SHADOW, key=keyring["k1"], key_id="k1", publisher="t")
    with pytest.raises(ModelError, match="name the version"):
        topic.publish(
            b[1].to_bytes(), Role.PRIMARY, key=b"k", key_id="k1", publisher="t", rollback=True
        )


def test_forged_records_do_not_steer_what_the_publisher_replaces(
    topic: MemoryTopic, make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    publish(topic, make_regressor_bundle(1), keyring)
    publish(topic, make_regressor_bundle(2), keyring)
    v1 = topic.records[1]
    topic.records += [
        dataclasses.replace(v1, version=7),  # forged: bad signature
        v1,  # replayed: stale
        dataclasses.replace(topic.records[-1], envelope_signature=None),  # unsigned
    ]
    st = topic.state("m", keyring).role("m", Role.PRIMARY)
    assert (st.current, st.record is not None and st.record.version) == (2, 2)
    res = topic.rollback("m", Role.PRIMARY, key=keyring["k1"], key_id="k1", keyring=keyring)
    assert (res.version, topic.records[-1].target_version) == (1, 2)


def test_from_archive_republishes_records_from_before_envelope_signatures(
    topic: MemoryTopic, make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    publish(topic, make_regressor_bundle(1), keyring)
    legacy = [dataclasses.replace(e, envelope_signature=None) for e in topic.records]
    topic.records = legacy
    st = topic.state("m", keyring).role("m", Role.PRIMARY)
    assert st.current is None  # nothing signed yet: workers serve nothing from it
    data = topic.archived("m", 1, keyring)
    assert data == legacy[0].artifact
    topic.publish(data, Role.PRIMARY, key=keyring["k1"], key_id="k1", publisher="t")
    assert topic.state("m", keyring).role("m", Role.PRIMARY).current == 1
    with pytest.raises(ModelError, match="no archive"):
        topic.archived("m", 1, {"k1": b"another key"})
