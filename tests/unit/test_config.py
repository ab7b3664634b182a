from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamscore.cli import settings_from_env
from streamscore.core.config import (
    KafkaSettings,
    ScoringSettings,
    Secret,
    SigningScheme,
    SigningSettings,
    TopicSettings,
)
from streamscore.core.errors import ConfigError
from streamscore.models.signing import (
    HmacSigner,
    HmacVerifier,
    keygen,
    publisher_keys,
    signer_from,
    worker_verifier,
)


def test_secret_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret("hunter2")
    k = KafkaSettings(sasl_username="u", sasl_password=s)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s %r", k, k)
    assert "hunter2" not in caplog.text
    assert "hunter2" not in repr(k) and "hunter2" not in str(k)
    assert k.client_config()["sasl.password"] == "hunter2"


def test_settings_from_env_reads_everything_and_hides_secrets(tmp_path: Path) -> None:
    pair = keygen(tmp_path, "new")
    old = keygen(tmp_path, "old")
    env = settings_from_env(
        {
            "STREAMSCORE_BOOTSTRAP": "b:9092",
            "STREAMSCORE_REGISTRY_URL": "http://r:8081",
            "STREAMSCORE_SASL_PASSWORD": "pw-123",
            "STREAMSCORE_SIGNING_KEY_FILE": str(pair.private_file),
            "STREAMSCORE_KEYRING_FILE": str(old.public_file),
            "STREAMSCORE_TOPIC_EVENTS": "in",
        }
    )
    assert env.kafka.bootstrap_servers == "b:9092"
    assert env.topics.events == "in" and env.topics.dlq == "events.dlq"
    assert env.signing.scheme is SigningScheme.ED25519
    signer, verifier = publisher_keys(env.signing)
    assert signer.key_id == "new" and verifier.key_ids() == ["new", "old"]
    # a worker verifies with the keyrings only: it never reads the private key
    assert worker_verifier(env.signing).key_ids() == ["old"]
    assert "pw-123" not in repr(env.kafka)
    pem = pair.private_file.read_text().split("-----BEGIN")[1]
    for shown in (repr(env.signing), repr(signer), repr(verifier), str(env)):
        assert pem not in shown and "PRIVATE KEY" not in shown


def test_every_topic_is_read_from_its_variable_and_given_to_children_the_same_way() -> None:
    base = {"STREAMSCORE_BOOTSTRAP": "b:9092", "STREAMSCORE_REGISTRY_URL": "http://r:8081"}
    assert settings_from_env(base).topics.predictions_shadow == "predictions.shadow"
    env = settings_from_env(base | {"STREAMSCORE_TOPIC_PREDICTIONS_SHADOW": "answers.shadow"})
    assert env.topics.predictions_shadow == "answers.shadow"
    assert env.topics.predictions == "predictions"
    assert "predictions.shadow" not in env.topics.all() and "answers.shadow" in env.topics.all()
    # what a parent (the demo, the tests) passes its workers reads back as the same topics
    mine = TopicSettings(**{f: f"t.{f}" for f in TopicSettings.__dataclass_fields__})
    assert mine.as_env()["STREAMSCORE_TOPIC_PREDICTIONS_SHADOW"] == "t.predictions_shadow"
    assert settings_from_env(base | mine.as_env()).topics == mine


def test_hmac_scheme_is_explicit_and_keeps_the_shared_secret_settings(tmp_path: Path) -> None:
    keyring = tmp_path / "keys"
    keyring.write_text("old=old-secret\n# comment\n")
    hmac_env = {
        "STREAMSCORE_SIGNING": "hmac",
        "STREAMSCORE_SIGNING_KEY": "new-secret",
        "STREAMSCORE_SIGNING_KEY_ID": "new",
        "STREAMSCORE_KEYRING_FILE": str(keyring),
    }
    env = settings_from_env(hmac_env)
    assert env.signing.scheme is SigningScheme.HMAC
    signer, verifier = publisher_keys(env.signing)
    assert isinstance(signer, HmacSigner) and isinstance(verifier, HmacVerifier)
    assert verifier.key_ids() == ["new", "old"]
    assert "new-secret" not in repr(env.signing) and "new-secret" not in repr(signer)
    # without STREAMSCORE_SIGNING=hmac, a shared secret is refused, saying what to do
    del hmac_env["STREAMSCORE_SIGNING"]
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING=hmac") as info:
        settings_from_env(hmac_env)
    assert "new-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="ed25519 or hmac"):
        settings_from_env({"STREAMSCORE_SIGNING": "rsa"})


def test_missing_signing_key_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING_KEY_FILE"):
        signer_from(SigningSettings())
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING_KEY"):
        signer_from(SigningSettings(scheme=SigningScheme.HMAC))
    with pytest.raises(ConfigError, match="STREAMSCORE_KEYRING_FILE"):
        worker_verifier(SigningSettings())


def test_unreadable_key_file_names_the_file_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="/nonexistent/key"):
        settings_from_env(
            {"STREAMSCORE_SIGNING": "hmac", "STREAMSCORE_SIGNING_KEY_FILE": "/nonexistent/key"}
        )
    env = settings_from_env({"STREAMSCORE_SIGNING_KEY_FILE": "/nonexistent/key"})
    with pytest.raises(ConfigError, match="/nonexistent/key"):
        signer_from(env.signing)
    # an old HMAC secret file under the Ed25519 default: refused, content never quoted
    legacy = tmp_path / "secret"
    legacy.write_text("the-old-shared-secret\n")
    env = settings_from_env({"STREAMSCORE_SIGNING_KEY_FILE": str(legacy)})
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING=hmac") as info:
        signer_from(env.signing)
    assert "the-old-shared-secret" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"batch_wait_ms": -1}, {"canary_fraction": 1.5}]
)
def test_scoring_settings_refuse_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ScoringSettings(**kwargs)  # type: ignore[arg-type]


def test_clients_reconnect_to_known_brokers_instead_of_re_bootstrapping() -> None:
    # librdkafka 2.16's re-bootstrap after a whole-cluster outage wedges producers (#5511)
    assert KafkaSettings().client_config()["metadata.recovery.strategy"] == "none"
    # streamscore relies on it: another value is refused, naming the property
    extra = KafkaSettings(extra={"metadata.recovery.strategy": "rebootstrap"})
    with pytest.raises(ConfigError, match=r"'metadata\.recovery\.strategy'"):
        extra.client_config()
