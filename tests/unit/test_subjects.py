"""Output subjects: the name strategy, registration on or off (the subject's latest
version, checked to read what streamscore writes), the typed errors, and byte-for-byte
agreement with confluent-kafka's own AvroSerializer."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamscore.core.config import RegistrySettings, SubjectStrategy
from streamscore.core.errors import (
    ConfigError,
    SchemaRegistrationError,
    SubjectIncompatibleError,
    SubjectMissingError,
)
from streamscore.serde import schemas
from streamscore.serde.message import (
    AvroDeserializer,
    check_output_subjects,
    topic_serializer,
    topic_serializers,
)
from streamscore.serde.wire import (
    WriterSchemaCache,
    registry_client,
    split_header,
    unreadable_by,
    writer_schema,
)
from tests.unit.test_fast_encode import prediction_columns


class NoRegistration:
    """A registry that forbids registration (as production ones do): every
    ``register_schema`` is refused (403) and counted; lookups go to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.register_calls = 0

    def register_schema(
        self, subject_name: str, schema: Any, normalize_schemas: bool = False
    ) -> int:
        self.register_calls += 1
        exc = Exception("registration is forbidden")
        exc.http_status_code = 403  # type: ignore[attr-defined]
        raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://subjects-{id(object())}"})


def _register(registry: Any, subject: str, schema: dict[str, Any]) -> int:
    return int(registry.register_schema(subject, Schema(json.dumps(schema), "AVRO")))


REC = {
    "type": "record",
    "name": "Out",
    "namespace": "t",
    "fields": [
        {"name": "a", "type": "long"},
        {"name": "b", "type": "string"},
        {"name": "c", "type": {"type": "enum", "name": "Color", "symbols": ["R", "G"]}},
    ],
}


def _with(fields: list[dict[str, Any]], base: dict[str, Any] = REC) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out["fields"] = fields
    return out


def test_unreadable_by_names_the_field() -> None:
    assert unreadable_by(REC, REC) is None
    wider = _with([{"name": "a", "type": "double"}, *REC["fields"][1:]])
    assert unreadable_by(REC, wider) is None  # long -> double: a promotion
    assert unreadable_by(wider, REC) == ("a", "double cannot be read as long")
    extra = _with([*REC["fields"], {"name": "d", "type": "int"}])
    assert unreadable_by(REC, extra) == ("d", "a field the writer does not have, without a default")
    defaulted = _with([*REC["fields"], {"name": "d", "type": ["null", "int"], "default": None}])
    assert unreadable_by(REC, defaulted) is None
    fewer = _with(REC["fields"][:2])
    assert unreadable_by(REC, fewer) is None  # a reader may ignore fields
    one_color = _with(
        [
            *REC["fields"][:2],
            {"name": "c", "type": {"type": "enum", "name": "Color", "symbols": ["R"]}},
        ]
    )
    assert unreadable_by(REC, one_color) == ("c", "enum symbols ['G'] are unknown to the reader")
    optional = _with([{"name": "a", "type": ["null", "long"]}, *REC["fields"][1:]])
    assert unreadable_by(REC, optional) is None
    assert unreadable_by(optional, REC) == ("a", "null cannot be read as long")
    nested_w = _with([{"name": "n", "type": {"type": "array", "items": REC}}], {**REC, "name": "W"})
    nested_r = _with(
        [{"name": "n", "type": {"type": "array", "items": wider}}], {**REC, "name": "W"}
    )
    assert unreadable_by(nested_w, nested_r) is None
    assert unreadable_by(nested_r, nested_w) == ("n[].a", "double cannot be read as long")


def test_registration_off_uses_the_latest_version(registry: Any) -> None:
    strict = NoRegistration(registry)
    subject = "preds-value"
    with pytest.raises(SubjectMissingError) as err:
        writer_schema(strict, subject, REC, auto_register=False)
    assert err.value.subject == subject
    assert "subject 'preds-value' does not exist" in str(err.value)
    assert "[registry] auto_register (STREAMSCORE_REGISTRY_AUTO_REGISTER) = false" in str(err.value)
    assert isinstance(err.value, ConfigError)

    _register(registry, subject, REC)
    later = _with([*REC["fields"], {"name": "d", "type": "int", "default": 7}])
    latest_id = _register(registry, subject, later)
    got = writer_schema(strict, subject, REC, auto_register=False)
    assert got.schema_id == latest_id and got.version == 2
    assert got.schema == later
    assert strict.register_calls == 0

    # records are written with the latest version (its default filled in)
    ser = topic_serializer(
        strict, RegistrySettings(auto_register=False), "predictions", "preds", REC
    )
    value = ser({"a": 1, "b": "x", "c": "G"})
    dec = AvroDeserializer(WriterSchemaCache(registry), later)
    assert dec(value) == {"a": 1, "b": "x", "c": "G", "d": 7}
    assert strict.register_calls == 0

    # a latest version that cannot read the records: typed, names subject, version, field
    _register(registry, subject, _with([*REC["fields"], {"name": "e", "type": "string"}]))
    with pytest.raises(SubjectIncompatibleError) as inc:
        writer_schema(strict, subject, REC, auto_register=False)
    assert inc.value.subject == subject and inc.value.field == "e"
    assert "the latest version (3, schema id" in str(inc.value)
    assert "a field the writer does not have, without a default" in str(inc.value)


def test_registration_on_refused_is_typed(registry: Any) -> None:
    with pytest.raises(SchemaRegistrationError, match="status 403"):
        writer_schema(NoRegistration(registry), "x-value", REC, auto_register=True)


@pytest.mark.parametrize("strategy", list(SubjectStrategy))
def test_strategies_name_the_output_subjects(registry: Any, strategy: SubjectStrategy) -> None:
    settings = RegistrySettings(subject_strategies={"predictions": strategy})
    pred = schemas.load("prediction")
    ser = topic_serializer(registry, settings, "predictions", "preds", pred)
    want = {
        SubjectStrategy.TOPIC: "preds-value",
        SubjectStrategy.RECORD: "streamscore.Prediction",
        SubjectStrategy.TOPIC_RECORD: "preds-streamscore.Prediction",
    }[strategy]
    assert ser.subject == want
    ser.prepare()
    assert registry.get_subjects() == [want]
    # telemetry keeps the default strategy
    tele = topic_serializer(registry, settings, "telemetry", "tele", schemas.load("telemetry"))
    assert tele.subject == "tele-value"


@pytest.mark.parametrize("strategy", list(SubjectStrategy))
def test_the_shadow_topic_subject_follows_the_predictions_strategy(
    registry: Any, strategy: SubjectStrategy
) -> None:
    """The shadow predictions carry the predictions' records: their topic's subject is
    named by the predictions' strategy; each topic has its own serializer (one shared
    when the strategy names one subject for both topics), its records its subject's id."""
    settings = RegistrySettings(subject_strategies={"predictions": strategy})
    pred = schemas.load("prediction")
    main, shadow = topic_serializers(
        registry, settings, "predictions", ["preds", "preds.shadow"], pred
    )
    want = {
        SubjectStrategy.TOPIC: ["preds-value", "preds.shadow-value"],
        SubjectStrategy.RECORD: ["streamscore.Prediction", "streamscore.Prediction"],
        SubjectStrategy.TOPIC_RECORD: [
            "preds-streamscore.Prediction",
            "preds.shadow-streamscore.Prediction",
        ],
    }[strategy]
    assert [main.subject, shadow.subject] == want
    assert (main is shadow) == (strategy is SubjectStrategy.RECORD)
    check_output_subjects(main, shadow)
    assert sorted(registry.get_subjects()) == sorted(set(want))
    assert main.schema_id == _register(registry, want[0], pred)
    assert shadow.schema_id == _register(registry, want[1], pred)


@pytest.mark.parametrize("strategy", [SubjectStrategy.TOPIC, SubjectStrategy.TOPIC_RECORD])
def test_registration_off_each_topic_is_written_with_its_own_subjects_id(
    registry: Any, strategy: SubjectStrategy
) -> None:
    """Registration off: a missing shadow subject stops the process at start like a missing
    predictions subject (check_output_subjects), naming it; once registered (here a later
    version than the predictions subject's), the shadow records carry its id, looked up,
    never registered."""
    pred = schemas.load("prediction")
    settings = RegistrySettings(auto_register=False, subject_strategies={"predictions": strategy})
    main_subject = strategy.subject("preds", pred)
    shadow_subject = strategy.subject("preds.shadow", pred)
    main_id = _register(registry, main_subject, pred)
    strict = NoRegistration(registry)

    def serializers() -> list[Any]:
        return topic_serializers(strict, settings, "predictions", ["preds", "preds.shadow"], pred)

    with pytest.raises(SubjectMissingError) as err:
        check_output_subjects(*serializers())
    assert err.value.subject == shadow_subject
    assert f"subject {shadow_subject!r} does not exist" in str(err.value)
    later = {
        **pred,
        "fields": [*pred["fields"], {"name": "site", "type": "string", "default": "x"}],
    }
    _register(registry, shadow_subject, pred)
    shadow_id = _register(registry, shadow_subject, later)
    assert shadow_id != main_id
    main, shadow = serializers()
    check_output_subjects(main, shadow)
    assert (main.schema_id, shadow.schema_id) == (main_id, shadow_id)
    cols = prediction_columns(5, np.random.default_rng(1), classifier=True)
    assert {split_header(v)[0] for v in shadow.encode_columns(cols)} == {shadow_id}
    assert {split_header(v)[0] for v in main.encode_columns(cols)} == {main_id}
    assert strict.register_calls == 0


@pytest.mark.parametrize("auto_register", [True, False])
@pytest.mark.parametrize("classifier", [True, False])
def test_same_bytes_as_confluents_serializer(
    registry: Any, auto_register: bool, classifier: bool
) -> None:
    """The batch encoder (column-wise and per record) writes exactly what confluent-kafka's
    AvroSerializer writes for the same records, registration on or off
    (``use.latest.version``), with the record subject name strategy."""
    pred = schemas.load("prediction")
    subject = "streamscore.Prediction"
    if not auto_register:
        _register(registry, subject, pred)
    strict = registry if auto_register else NoRegistration(registry)
    ours = topic_serializer(
        strict,
        RegistrySettings(auto_register=auto_register, subject_strategy=SubjectStrategy.RECORD),
        "predictions",
        "preds",
        pred,
    )
    theirs = ConfluentAvroSerializer(
        strict,
        json.dumps(pred),
        conf={
            "auto.register.schemas": auto_register,
            "use.latest.version": not auto_register,
            "subject.name.strategy": lambda ctx, record_name: record_name,
        },
    )
    cols = prediction_columns(50, np.random.default_rng(3), classifier=classifier)
    ctx = SerializationContext("preds", MessageField.VALUE)
    want = [theirs(r, ctx) for r in cols.rows()]
    assert ours.encode_columns(cols) == want
    assert ours.encode_many(cols.rows()) == want
    assert [ours(r) for r in cols.rows()] == want
    if not auto_register:
        assert strict.register_calls == 0
