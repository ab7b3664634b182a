from __future__ import annotations

import logging

import pytest

from streamscore.cli import settings_from_env
from streamscore.core.config import KafkaSettings, ScoringSettings, Secret, SigningSettings
from streamscore.core.errors import ConfigError


def test_secret_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret("hunter2")
    k = KafkaSettings(sasl_username="u", sasl_password=s)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s %r", k, k)
    assert "hunter2" not in caplog.text
    assert "hunter2" not in repr(k) and "hunter2" not in str(k)
    assert k.client_config()["sasl.password"] == "hunter2"


def test_settings_from_env_reads_everything_and_hides_secrets(
    tmp_path: pytest.TempPathFactory,
) -> None:
    keyring = tmp_path / "keys"  # type: ignore[operator]
    keyring.write_text("old=old-secret\n# comment\n")
    env = settings_from_env(
        {
            "STREAMSCORE_BOOTSTRAP": "b:9092",
            "STREAMSCORE_REGISTRY_URL": "http://r:8081",
            "STREAMSCORE_SASL_PASSWORD": "pw-123",
            "STREAMSCORE_SIGNING_KEY": "new-secret",
            "STREAMSCORE_SIGNING_KEY_ID": "new",
            "STREAMSCORE_KEYRING_FILE": str(keyring),
            "STREAMSCORE_TOPIC_EVENTS": "in",
        }
    )
    assert env.kafka.bootstrap_servers == "b:9092"
    assert env.topics.events == "in" and env.topics.dlq == "events.dlq"
    assert env.keyring == {"new": b"new-secret", "old": b"old-secret"}
    assert "pw-123" not in repr(env.kafka) and "new-secret" not in repr(env.signing)


def test_missing_signing_key_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING_KEY"):
        SigningSettings().require_key()


def test_unreadable_key_file_names_the_file_not_the_content() -> None:
    with pytest.raises(ConfigError, match="/nonexistent/key"):
        settings_from_env({"STREAMSCORE_SIGNING_KEY_FILE": "/nonexistent/key"})


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"batch_wait_ms": -1}, {"canary_fraction": 1.5}]
)
def test_scoring_settings_refuse_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ScoringSettings(**kwargs)  # type: ignore[arg-type]


def test_clients_reconnect_to_known_brokers_instead_of_re_bootstrapping() -> None:
    # librdkafka 2.16's re-bootstrap after a whole-cluster outage wedges producers (#5511)
    assert KafkaSettings().client_config()["metadata.recovery.strategy"] == "none"
    extra = KafkaSettings(extra={"metadata.recovery.strategy": "rebootstrap"})
    assert extra.client_config()["metadata.recovery.strategy"] == "rebootstrap"
