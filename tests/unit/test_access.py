"""The start check's output topics (streamscore.kafka.access.check_access, must_exist):
a topic a process writes to that does not exist stops it with a MissingTopicError that
names each missing topic and the setting that names it, before anything is consumed."""

from __future__ import annotations

import pytest

from streamscore.core.config import KafkaSettings, TopicSettings, topic_setting
from streamscore.core.errors import ConfigError, MissingTopicError, StreamscoreError
from streamscore.kafka import access
from tests.unit.kafka_fakes import FakeAdmin

TOPICS = TopicSettings(
    events="in",
    predictions="out",
    predictions_shadow="out.shadow",
    telemetry="tele",
    dlq="dead",
)
OUTPUTS = ["predictions", "predictions_shadow", "telemetry", "dlq"]


def check(monkeypatch: pytest.MonkeyPatch, existing: set[str], outputs: list[str]) -> FakeAdmin:
    admin = FakeAdmin(existing)
    monkeypatch.setattr(access, "AdminClient", admin)
    access.check_access(
        KafkaSettings(bootstrap_servers="broker:9092"),
        read=[TOPICS.events, TOPICS.models],
        write=[getattr(TOPICS, n) for n in outputs],
        group="g",
        must_exist=TOPICS.where_set(outputs),
        timeout_s=5,
    )
    return admin


def test_every_output_present_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = check(monkeypatch, {"in", "out", "out.shadow", "tele", "dead"}, OUTPUTS)
    assert set(admin.described) == {"in", "streamscore.models", "out", "out.shadow", "tele", "dead"}


def test_a_missing_input_is_left_to_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the outputs must exist: an events or model topic not there yet is waited for."""
    check(monkeypatch, {"out", "out.shadow", "tele", "dead"}, OUTPUTS)


def test_a_missing_predictions_topic_is_refused_naming_its_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(MissingTopicError) as err:
        check(monkeypatch, {"in", "out.shadow", "tele", "dead"}, OUTPUTS)
    assert err.value.topics == ("out",)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, StreamscoreError)
    text = str(err.value)
    assert "topic this process writes to does not exist on the Kafka cluster (broker:9092)" in text
    assert "'out' (predictions (STREAMSCORE_TOPIC_PREDICTIONS / [topics] predictions))" in text
    assert "nothing was consumed" in text
    assert err.value.reason == "topic_missing"


def test_every_missing_output_is_named_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingTopicError) as err:
        check(monkeypatch, {"in", "out"}, [*OUTPUTS, "late"])
    assert err.value.topics == ("out.shadow", "tele", "dead", "events.late")
    text = str(err.value)
    assert text.startswith("4 topics this process writes to do not exist")
    assert "'out.shadow' (predictions_shadow (--shadow-topic / " in text
    assert "STREAMSCORE_TOPIC_PREDICTIONS_SHADOW / [topics] shadow" in text
    assert "'dead' (dlq (STREAMSCORE_TOPIC_DLQ / [topics] dlq))" in text
    assert "'events.late' (late (STREAMSCORE_TOPIC_LATE / [topics] late))" in text


def test_one_topic_named_by_two_settings_says_both() -> None:
    topics = TopicSettings(telemetry="shared", dlq="shared")
    assert topics.where_set(["telemetry", "dlq"]) == {
        "shared": f"telemetry ({topic_setting('telemetry')}) and dlq ({topic_setting('dlq')})"
    }
    assert topic_setting("events") == "STREAMSCORE_TOPIC_EVENTS / [events] topic"
