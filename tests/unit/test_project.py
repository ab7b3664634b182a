"""The project file: parsing with precise errors, and where it sits in the precedence
(flags > environment > project file > defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamscore import cli
from streamscore.core.config import EventFields, TimeEncoding, TopicSettings
from streamscore.core.errors import ConfigError, ProjectFileError
from streamscore.core.project import ProjectFile, parse_project

FULL = """
[events]
topic = "payments"
id_field = "payment_id"
time_field = "created_at"
time_encoding = "timestamp-micros"
key_field = "account"

[topics]
predictions = "payments.scores"
dlq = "payments.dlq"

[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"

[registry]
url = "http://registry:8081"
"""


def test_a_full_file_is_read_into_typed_settings() -> None:
    p = parse_project(FULL, "proj/streamscore.toml")
    assert p.events == EventFields(
        id_field="payment_id",
        time_field="created_at",
        time_encoding=TimeEncoding.TIMESTAMP_MICROS,
        key_field="account",
    )
    assert p.events_topic == "payments"
    assert dict(p.topics) == {"predictions": "payments.scores", "dlq": "payments.dlq"}
    assert p.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert p.registry_url == "http://registry:8081"


def test_an_empty_file_is_the_defaults() -> None:
    p = parse_project("", "s.toml")
    assert p == ProjectFile(path="s.toml")
    assert p.events == EventFields()
    assert p.events.time_encoding is TimeEncoding.TIMESTAMP_MILLIS
    assert p.events.key_field is None


@pytest.mark.parametrize(
    ("text", "table", "key", "message"),
    [
        (
            "[event]\nid_field = 'x'\n",
            None,
            None,
            "cfg.toml: unknown table 'event' (did you mean 'events'?); "
            "expected one of: events, topics, kafka, registry, groundtruth, labels, train, "
            "features",
        ),
        (
            "name = 'x'\n",
            None,
            None,
            "cfg.toml: unknown key 'name'; expected one of: events, topics, kafka, registry, "
            "groundtruth, labels, train, features",
        ),
        (
            "[events]\nid_feild = 'x'\n",
            "events",
            "id_feild",
            "cfg.toml: [events] id_feild: unknown key 'id_feild' (did you mean 'id_field'?); "
            "expected one of: topic, id_field, time_field, time_encoding, key_field, key_format, "
            "subject, copy_headers",
        ),
        (
            "[events]\ntime_field = 3\n",
            "events",
            "time_field",
            "cfg.toml: [events] time_field: must be a string, not an integer (3)",
        ),
        (
            "[events]\nkey_field = true\n",
            "events",
            "key_field",
            "cfg.toml: [events] key_field: must be a string, not a boolean (True)",
        ),
        (
            "[events]\ntime_encoding = 'timestamp-nanos'\n",
            "events",
            "time_encoding",
            "cfg.toml: [events] time_encoding: unknown time encoding 'timestamp-nanos' "
            "(did you mean 'timestamp-micros'?); expected one of: timestamp-millis, "
            "timestamp-micros, epoch-millis, iso-8601",
        ),
        (
            "[events]\nid_field = 'payment id'\n",
            "events",
            "id_field",
            "cfg.toml: [events] id_field: 'payment id' is not a valid Avro field name",
        ),
        (
            "[events]\nid_field = ''\n",
            "events",
            "id_field",
            "cfg.toml: [events] id_field: must not be empty",
        ),
        (
            "[events]\nid_field = 'at'\ntime_field = 'at'\n",
            "events",
            "time_field",
            "cfg.toml: [events] time_field: the event id and time fields are both 'at'",
        ),
        (
            "[events]\ntopic = 'pay ments'\n",
            "events",
            "topic",
            "cfg.toml: [events] topic: 'pay ments' is not a valid Kafka topic name "
            "(letters, digits, '.', '_', '-'; at most 249)",
        ),
        (
            "[topics]\nevents = 'x'\n",
            "topics",
            "events",
            "cfg.toml: [topics] events: the events topic is set by [events] topic",
        ),
        (
            "[topics]\npredictons = 'x'\n",
            "topics",
            "predictons",
            "cfg.toml: [topics] predictons: unknown key 'predictons' (did you mean "
            "'predictions'?); expected one of: predictions, telemetry, models, feedback, "
            "dlq, late, shadow",
        ),
        (
            "[kafka]\nbootstrap_servers = ['a:1', 'b:2']\n",
            "kafka",
            "bootstrap_servers",
            "cfg.toml: [kafka] bootstrap_servers: must be a string, a number, a boolean or "
            "{ file = \"<path>\" }, not an array (['a:1', 'b:2'])",
        ),
        (
            "[kafka]\nBootstrap = 'a:1'\n",
            "kafka",
            "Bootstrap",
            "cfg.toml: [kafka] Bootstrap: is not a librdkafka property name (lower case, "
            "dotted: ssl.ca.location)",
        ),
        (
            "[kafka.consumer]\n'bootstrap.servers' = 'a:1'\n",
            "kafka.consumer",
            "bootstrap.servers",
            "cfg.toml: [kafka.consumer] bootstrap.servers: goes in [kafka] (every client)",
        ),
        (
            "registry = 'http://r'\n",
            None,
            None,
            "cfg.toml: unknown key 'registry'",  # checked below: a table is expected
        ),
        (
            "[registry]\nurl = 1.5\n",
            "registry",
            "url",
            "cfg.toml: [registry] url: must be a string, not a float (1.5)",
        ),
    ],
)
def test_each_mistake_gets_its_precise_error(
    text: str, table: str | None, key: str | None, message: str
) -> None:
    with pytest.raises(ProjectFileError) as err:
        parse_project(text, "cfg.toml")
    if text.startswith("registry ="):  # a known table name given as a plain key
        assert str(err.value) == "cfg.toml: [registry]: must be a table, not str"
    else:
        assert str(err.value) == message
    assert isinstance(err.value, ConfigError)
    assert err.value.path == "cfg.toml"
    assert err.value.table == (table or ("registry" if text.startswith("registry =") else None))
    assert err.value.key == key


def test_invalid_toml_names_the_file_and_the_line() -> None:
    with pytest.raises(ProjectFileError, match=r"^p\.toml: not valid TOML: .*line 2"):
        parse_project("[events]\nid_field = \n", "p.toml")


def test_a_file_that_cannot_be_read_is_a_project_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ProjectFileError, match=r"nope\.toml: cannot read it: No such file"):
        cli.read_project(str(missing))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProjectFileError, match=r"bin\.toml: is not UTF-8 text"):
        cli.read_project(str(binary))


def _project(tmp_path: Path) -> ProjectFile:
    f = tmp_path / "streamscore.toml"
    f.write_text(FULL)
    return cli.read_project(str(f))


def test_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    env = cli.settings_from_env({}, _project(tmp_path))
    assert env.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert env.registry.url == "http://registry:8081"
    defaults = TopicSettings()
    assert env.topics == TopicSettings(
        events="payments",
        predictions="payments.scores",
        telemetry=defaults.telemetry,
        models=defaults.models,
        feedback=defaults.feedback,
        dlq="payments.dlq",
        late=defaults.late,
        predictions_shadow="payments.scores.shadow",  # follows predictions
    )
    assert env.events.id_field == "payment_id"
    assert env.events.time_encoding is TimeEncoding.TIMESTAMP_MICROS


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    env = cli.settings_from_env(
        {
            "STREAMSCORE_BOOTSTRAP": "env-broker:9092",
            "STREAMSCORE_REGISTRY_URL": "http://env-registry:8081",
            "STREAMSCORE_TOPIC_EVENTS": "env-events",
            "STREAMSCORE_TOPIC_DLQ": "env-dlq",
        },
        _project(tmp_path),
    )
    assert env.kafka.bootstrap_servers == "env-broker:9092"
    assert env.registry.url == "http://env-registry:8081"
    assert env.topics.events == "env-events"
    assert env.topics.dlq == "env-dlq"
    assert env.topics.predictions == "payments.scores"  # the file, where env is silent


def test_no_file_is_exactly_today() -> None:
    assert cli.settings_from_env({}) == cli.settings_from_env({}, None)
    env = cli.settings_from_env({})
    assert env.events == EventFields()
    assert env.topics == TopicSettings()
    assert env.kafka.bootstrap_servers == "127.0.0.1:19092"


def test_config_flag_wins_over_the_environment_variable() -> None:
    assert cli.project_path("a.toml", {"STREAMSCORE_CONFIG": "b.toml"}) == "a.toml"
    assert cli.project_path(None, {"STREAMSCORE_CONFIG": "b.toml"}) == "b.toml"
    assert cli.project_path(None, {"STREAMSCORE_CONFIG": ""}) is None
    assert cli.project_path(None, {}) is None


def _subcommands(parser: object) -> list[list[str]]:
    """Every subcommand path of the CLI (``["feedback"]``, ``["model"]``, ...)."""
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    out: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append([name])
                out.extend([name, *rest] for rest in _subcommands(child))
    return out


def test_every_subcommand_takes_config_before_or_after_it() -> None:
    parser = cli.build_parser()
    paths = _subcommands(parser)
    assert ["score"] in paths and ["feedback"] in paths
    required = {"cluster": ["status"], "model": ["list"]}
    for path in paths:
        extra = required.get(path[0], []) if len(path) == 1 else []
        after = parser.parse_known_args([*path, *extra, "--config", "after.toml"])[0]
        assert after.config == "after.toml", path
        before = parser.parse_known_args(["--config", "before.toml", *path, *extra])[0]
        assert before.config == "before.toml", path
    assert parser.parse_known_args(["score"])[0].config is None


def test_main_reports_a_bad_project_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "streamscore.toml"
    bad.write_text("[events]\ntime_encoding = 'unix'\n")
    assert cli.main(["--config", str(bad), "cluster", "status"]) == 1
    err = capsys.readouterr().err
    assert f"ProjectFileError: {bad}: [events] time_encoding: unknown time encoding 'unix'" in err


def test_the_shadow_topic_and_copied_headers_are_read_from_the_file(tmp_path: Path) -> None:
    got = parse_project(
        '[events]\ncopy_headers = ["traceparent", "tracestate"]\n'
        '[topics]\npredictions = "p"\nshadow = "p.mirror"\n',
        "cfg.toml",
    )
    assert got.events.copy_headers == ("traceparent", "tracestate")
    assert got.topics["predictions_shadow"] == "p.mirror"
    base = {"STREAMSCORE_BOOTSTRAP": "b:9092", "STREAMSCORE_REGISTRY_URL": "http://r:8081"}
    env = cli.settings_from_env(base, got)
    assert (
        env.topics.predictions_shadow == "p.mirror" and env.events.copy_headers[0] == "traceparent"
    )
    # the environment wins over the file; without either the shadow follows predictions
    over = {"STREAMSCORE_TOPIC_PREDICTIONS_SHADOW": "env.shadow"}
    assert cli.settings_from_env(base | over, got).topics.predictions_shadow == "env.shadow"
    only = parse_project('[topics]\npredictions = "answers"\n', "cfg.toml")
    assert cli.settings_from_env(base, only).topics.predictions_shadow == "answers.shadow"
    assert cli.settings_from_env(base).topics.predictions_shadow == "predictions.shadow"
    # the flag wins over everything
    args = cli.build_parser().parse_args(["score", "--shadow-topic", "flag.shadow"])
    assert args.shadow_topic == "flag.shadow"
    fb = cli.build_parser().parse_args(["feedback", "--shadow-topic", "flag.shadow"])
    assert fb.shadow_topic == "flag.shadow"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"traceparent"', "must be a list of header names (strings)"),
        ('["a b"]', "'a b' is not a header name"),
        ('["x", "x"]', "a header is named twice"),
        ('["streamscore.event.id"]', "streamscore.* headers are the worker's own"),
        (str([f"h{i}" for i in range(17)]), "at most 16 header names"),
    ],
)
def test_copy_headers_mistakes_are_precise(value: str, message: str) -> None:
    with pytest.raises(ProjectFileError) as err:
        parse_project(f"[events]\ncopy_headers = {value}\n", "cfg.toml")
    assert message in str(err.value) and err.value.key == "copy_headers"


def test_the_score_workers_reader_schema_file_subject_or_each_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--reader-schema FILE`` wins; else ``[events] subject`` (its latest version);
    else None: each event is read with the schema it was written with."""
    from streamscore import cli_project

    plain = cli.settings_from_env({}, parse_project("[events]\ntopic = 'pay'\n", "p.toml"))
    assert plain.events.subject is None
    assert cli.events_reader_schema(None, plain) is None
    named = parse_project("[events]\ntopic = 'pay'\nsubject = 'payments-value'\n", "p.toml")
    env = cli.settings_from_env({}, named)
    assert env.events.subject == "payments-value"
    record = {"type": "record", "name": "P", "fields": [{"name": "x", "type": "double"}]}
    asked: list[str] = []

    def latest(_env: object, subject: str) -> tuple[dict[str, object], str]:
        asked.append(subject)
        return record, f"subject {subject} version 3"

    monkeypatch.setattr(cli_project, "latest_record", latest)
    assert cli.events_reader_schema(None, env) == record and asked == ["payments-value"]
    avsc = tmp_path / "p.avsc"
    avsc.write_text('{"type": "record", "name": "Q", "fields": []}')
    assert cli.events_reader_schema(str(avsc), env) == {"type": "record", "name": "Q", "fields": []}
    assert asked == ["payments-value"]  # the file wins: the registry is not asked
    with pytest.raises(ProjectFileError, match=r"\[events\] subject: must be a string"):
        parse_project("[events]\nsubject = 3\n", "p.toml")


def test_the_ground_truth_label_column_is_the_label_field_unless_overridden() -> None:
    import argparse

    from streamscore.cli_feedback import row_fields

    labels = (
        "[events]\nid_field = 'pid'\ntime_field = 'at'\n"
        "[labels]\ntopic = 'cb'\nid_field = 'ref'\nlabel_field = 'is_fraud'\ntask = 'binary'\n"
        "positive = 'true'\n"
    )
    env = cli.settings_from_env({}, parse_project(labels, "p.toml"))
    got = row_fields(argparse.Namespace(label_field=None), env)
    assert (got.id_field, got.time_field, got.label_field) == ("pid", "at", "is_fraud")
    assert row_fields(argparse.Namespace(label_field="y"), env).label_field == "y"
    bare = cli.settings_from_env({}, parse_project("", "p.toml"))
    assert row_fields(argparse.Namespace(label_field=None), bare).label_field == "label"


def test_the_feedback_batch_size_is_a_flag_refused_below_one() -> None:
    from streamscore import cli_feedback
    from streamscore.core.config import FEEDBACK_BATCH

    assert cli.build_parser().parse_args(["feedback"]).batch_size == FEEDBACK_BATCH
    args = cli.build_parser().parse_args(["feedback", "--batch-size", "0"])
    env = cli.settings_from_env({"STREAMSCORE_BOOTSTRAP": "b:9092"})
    with pytest.raises(ConfigError, match="--batch-size must be >= 1, got 0"):
        cli_feedback.cmd_feedback(args, env)
