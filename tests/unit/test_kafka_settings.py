"""Any librdkafka property for every client or one kind of client (issue 14, point 1):
the project file's ``[kafka]`` tables under the ``STREAMSCORE_KAFKA_*`` environment,
secrets from files, the properties streamscore owns refused, secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamscore import cli
from streamscore.cli import settings_from_env
from streamscore.core.config import KafkaSettings, ScoringSettings, Secret
from streamscore.core.errors import ConfigError, ProjectFileError
from streamscore.core.project import FileRef, parse_project
from streamscore.core.redact import RedactingFilter, is_secret_property, redact_urls
from streamscore.kafka.clients import (
    admin_config,
    feedback_consumer,
    model_watcher_consumer,
    plain_producer,
    router_consumer,
    score_consumer,
    score_producer,
)

PROJECT = """
[kafka]
bootstrap_servers = "file-broker:9092"
security.protocol = "SASL_SSL"          # a dotted key: nested tables in TOML
"sasl.mechanism" = "SCRAM-SHA-512"
"client.id" = "from-file"
"socket.keepalive.enable" = true
"fetch.wait.max.ms" = 40
"sasl.password" = { file = "PASSWORD_FILE" }

[kafka.consumer]
"fetch.wait.max.ms" = 20
"isolation.level" = "read_committed"    # streamscore's own value: accepted

[kafka.producer]
"linger.ms" = 7
"""


def _project(tmp_path: Path) -> object:
    pw = tmp_path / "kafka.password"
    pw.write_text("s3cret-from-file\n")
    return parse_project(PROJECT.replace("PASSWORD_FILE", str(pw)), "p.toml")


def test_the_project_file_reads_any_property_per_scope_with_dotted_keys_flattened(
    tmp_path: Path,
) -> None:
    p = _project(tmp_path)
    common = p.kafka["*"]  # type: ignore[attr-defined]
    assert common["bootstrap.servers"] == "file-broker:9092"  # bootstrap_servers: an alias
    assert common["security.protocol"] == "SASL_SSL"
    assert common["socket.keepalive.enable"] == "true"
    assert common["fetch.wait.max.ms"] == "40"
    assert isinstance(common["sasl.password"], FileRef)  # read by the CLI, not the parser
    assert p.kafka["consumer"]["fetch.wait.max.ms"] == "20"  # type: ignore[attr-defined]
    assert p.bootstrap_servers == "file-broker:9092"  # type: ignore[attr-defined]


def test_layering_file_then_environment_and_kind_over_common(tmp_path: Path) -> None:
    env = settings_from_env(
        {
            "STREAMSCORE_KAFKA_CLIENT_ID": "from-env",  # env over file, same scope
            "STREAMSCORE_KAFKA_PRODUCER_LINGER_MS": "9",  # env over file, producer scope
            "STREAMSCORE_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
            "STREAMSCORE_KAFKA_ADMIN_REQUEST_TIMEOUT_MS": "1234",
        },
        _project(tmp_path),  # type: ignore[arg-type]
    )
    k = env.kafka
    consumer = score_consumer(k, ScoringSettings())
    producer = score_producer(k, ScoringSettings())
    admin = admin_config(k)
    for conf in (consumer, producer, admin):
        assert conf["bootstrap.servers"] == "file-broker:9092"
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.password"] == "s3cret-from-file"  # the file's content, stripped
        assert conf["ssl.ca.location"] == "/etc/ca.pem"
        assert conf["client.id"] == "from-env"
    assert consumer["fetch.wait.max.ms"] == "20"  # [kafka.consumer] over [kafka]
    assert plain_producer(k)["fetch.wait.max.ms"] == "40"  # only [kafka] for producers
    assert producer["linger.ms"] == "9"
    assert admin["request.timeout.ms"] == "1234"
    assert "request.timeout.ms" not in consumer  # an admin property stays with admins
    # streamscore's own settings are still there
    assert consumer["enable.auto.commit"] is True
    assert consumer["isolation.level"] == "read_committed"
    assert producer["enable.idempotence"] is True


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2-from-env-file\n")
    key_pw = tmp_path / "key-pw"
    key_pw.write_text("keypass")
    k = settings_from_env(
        {
            "STREAMSCORE_KAFKA_SASL_PASSWORD_FILE": str(pw),
            "STREAMSCORE_KAFKA_CONSUMER_SSL_KEY_PASSWORD_FILE": str(key_pw),
            "STREAMSCORE_KAFKA_SASL_USERNAME": "score",
        }
    ).kafka
    assert k.client_config()["sasl.password"] == "hunter2-from-env-file"
    assert model_watcher_consumer(k, 1 << 20)["ssl.key.password"] == "keypass"
    assert isinstance(k.extra["sasl.password"], Secret)
    assert isinstance(k.consumer["ssl.key.password"], Secret)
    shown = repr(k) + str(k)
    assert "hunter2" not in shown and "keypass" not in shown
    assert "score" in shown
    assert k.origins["*:sasl.password"] == "STREAMSCORE_KAFKA_SASL_PASSWORD_FILE"
    # a file that cannot be read is named, its content never
    with pytest.raises(ConfigError, match=r"STREAMSCORE_KAFKA_SASL_PASSWORD_FILE at .*nope"):
        settings_from_env({"STREAMSCORE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "nope")})


def test_the_older_variables_still_work_and_the_new_ones_win() -> None:
    old = settings_from_env(
        {
            "STREAMSCORE_BOOTSTRAP": "old:1",
            "STREAMSCORE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STREAMSCORE_SASL_MECHANISM": "PLAIN",
            "STREAMSCORE_SASL_USERNAME": "u",
            "STREAMSCORE_SASL_PASSWORD": "p",
        }
    ).kafka
    conf = old.client_config()
    assert (conf["bootstrap.servers"], conf["security.protocol"]) == ("old:1", "SASL_PLAINTEXT")
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "PLAIN",
        "u",
        "p",
    )
    assert old.origins["*:sasl.password"] == "STREAMSCORE_SASL_PASSWORD"
    new = settings_from_env(
        {"STREAMSCORE_BOOTSTRAP": "old:1", "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS": "new:2"}
    ).kafka
    assert new.bootstrap_servers == "new:2"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("STREAMSCORE_KAFKA_CONSUMER_ENABLE_AUTO_COMMIT", "false", "enable.auto.commit"),
        ("STREAMSCORE_KAFKA_ISOLATION_LEVEL", "read_uncommitted", "isolation.level"),
        ("STREAMSCORE_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE", "false", "enable.idempotence"),
        ("STREAMSCORE_KAFKA_PRODUCER_ACKS", "1", "acks"),
        ("STREAMSCORE_KAFKA_CONSUMER_GROUP_ID", "mine", "group.id"),
        (
            "STREAMSCORE_KAFKA_METADATA_RECOVERY_STRATEGY",
            "rebootstrap",
            "metadata.recovery.strategy",
        ),
        # not set by streamscore for this kind of client, but aimed at it: refused too
        ("STREAMSCORE_KAFKA_CONSUMER_ENABLE_PARTITION_EOF", "true", "enable.partition.eof"),
    ],
)
def test_a_property_streamscore_owns_is_refused_naming_it_and_its_origin(
    variable: str, value: str, named: str
) -> None:
    k = settings_from_env({variable: value}).kafka
    with pytest.raises(ConfigError) as err:
        score_consumer(k, ScoringSettings())
        score_producer(k, ScoringSettings())
    assert f"Kafka property {named!r} from {variable} cannot be set" in str(err.value)


def test_a_transactional_id_is_refused_at_once_and_an_owned_value_that_agrees_is_fine(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"'transactional.id' from \[kafka.producer\]"):
        KafkaSettings(producer={"transactional.id": "mine"})
    # the same value as streamscore's, or an owned property of other clients given for
    # every client (isolation.level reaches consumers, not producers), is accepted
    k = KafkaSettings(extra={"isolation.level": "READ_COMMITTED", "enable.idempotence": "true"})
    assert score_consumer(k, ScoringSettings())["isolation.level"] == "read_committed"
    assert "isolation.level" not in score_producer(k, ScoringSettings())
    assert score_producer(k, ScoringSettings())["enable.idempotence"] is True
    # the feedback consumer commits explicitly: auto-commit on is refused for it only
    on = KafkaSettings(consumer={"enable.auto.commit": "true"})
    assert score_consumer(on, ScoringSettings())["enable.auto.commit"] is True
    with pytest.raises(ConfigError, match=r"'enable\.auto\.commit'"):
        feedback_consumer(on, "g", "c")


def test_a_file_property_refused_names_the_file_and_table(tmp_path: Path) -> None:
    p = parse_project('[kafka.consumer]\n"enable.auto.commit" = false\n', "proj.toml")
    k = settings_from_env({}, p).kafka
    with pytest.raises(ConfigError, match=r"from proj\.toml \[kafka.consumer\] enable.auto.commit"):
        score_consumer(k, ScoringSettings())


def test_project_file_mistakes_in_kafka_tables() -> None:
    with pytest.raises(ProjectFileError, match=r"\[kafka.producer\]: must be a table"):
        parse_project("[kafka]\nproducer = 3\n", "p.toml")
    with pytest.raises(ProjectFileError, match=r"\[kafka\] ssl.ca.location: must be a string"):
        parse_project("[kafka]\nssl.ca.location = [1]\n", "p.toml")


def test_secret_properties_are_recognised_and_masked_in_log_lines() -> None:
    for name in (
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "ssl.key.pem",
        "basic.auth.user.info",
    ):
        assert is_secret_property(name), name
    for name in ("ssl.ca.location", "sasl.username", "client.id", "bootstrap.servers"):
        assert not is_secret_property(name), name
    line = "conf {'sasl.username': 'score', 'sasl.password': 'hunter2', 'ssl.key.password'=abc}"
    clean = redact_urls(line)
    assert "hunter2" not in clean and "abc" not in clean and "'score'" in clean
    record = logging.LogRecord(
        "x", logging.ERROR, "f", 1, "failed with %s", ("sasl.password=pw1",), None
    )
    RedactingFilter().filter(record)
    assert "pw1" not in record.getMessage()


def test_an_unknown_librdkafka_property_is_one_clear_line() -> None:
    from confluent_kafka import Producer

    k = settings_from_env({"STREAMSCORE_KAFKA_NO_SUCH_PROPERTY": "1"}).kafka
    with pytest.raises(Exception) as err:
        Producer(plain_producer(k))
    message = cli._bad_client_setting(err.value)
    assert message is not None
    assert "no.such.property" in message and "STREAMSCORE_KAFKA_*" in message


#: librdkafka's own defaults for the prefetch bounds
_QUEUED_MIN_MESSAGES, _QUEUED_MAX_KBYTES = 100_000, 65_536


@pytest.mark.parametrize("which", ["feedback", "router", "score"])
def test_a_consumer_with_a_small_prefetch_fetches_again_promptly(which: str) -> None:
    """A prefetch bounded below librdkafka's defaults is refilled soon after the loop
    takes from it: with the default ``fetch.queue.backoff.ms`` (1 s) each refill waited a
    second, which capped the consumers at one prefetch-full per second."""
    kafka = KafkaSettings(bootstrap_servers="b:9092")
    conf = {
        "feedback": lambda: feedback_consumer(kafka, "g", "c"),
        "router": lambda: router_consumer(kafka, "g", "c"),
        "score": lambda: score_consumer(kafka, ScoringSettings()),
    }[which]()
    small = (
        int(conf.get("queued.min.messages", _QUEUED_MIN_MESSAGES)) < _QUEUED_MIN_MESSAGES
        or int(conf.get("queued.max.messages.kbytes", _QUEUED_MAX_KBYTES)) < _QUEUED_MAX_KBYTES
    )
    assert small  # (every group consumer's prefetch is bounded: what this test is about)
    assert int(conf.get("fetch.queue.backoff.ms", 1000)) <= 50
