"""Schema evolution through the real registry (Apicurio's Confluent-compatible API)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema

from streamscore.core import errors
from streamscore.core.records import Role
from streamscore.models import envelope
from streamscore.models.envelope import ModelEnvelope
from streamscore.models.signing import HmacSigner, HmacVerifier
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client


@pytest.fixture
def registry(cluster_endpoints: Any) -> Any:
    return registry_client({"url": cluster_endpoints.registry_url})


@pytest.fixture
def subject(registry: Any, unique_name: Callable[[str], str]) -> str:
    name = f"{unique_name('events')}-value"
    registry.set_compatibility(subject_name=name, level="BACKWARD")
    return name


EVENT = {
    "event_id": "e-1",
    "key": "k",
    "event_time": 1_700_000_000_000,
    "a": -31.0,
    "b": 39.5,
    "segment": "pro",
}


def _reader(registry: Any, version: int) -> AvroDeserializer:
    return AvroDeserializer(WriterSchemaCache(registry), schemas.load("event", version))


def test_every_shipped_event_version_registers_in_order_under_backward(
    registry: Any, subject: str
) -> None:
    ids = []
    for v in schemas.versions("event"):
        ids.append(AvroSerializer(registry, subject, schemas.load("event", v)).schema_id)
    assert len(set(ids)) == len(ids)
    assert len(registry.get_versions(subject)) == len(ids)


def test_v1_data_read_by_v2_reader_and_v2_data_by_v1_reader(registry: Any, subject: str) -> None:
    v1 = AvroSerializer(registry, subject, schemas.load("event", 1))
    v2 = AvroSerializer(registry, subject, schemas.load("event", 2))
    old = v1(EVENT)
    new = v2({**EVENT, "c": 2.75})
    assert _reader(registry, 2)(old) == {**EVENT, "c": None}
    assert _reader(registry, 1)(new) == EVENT
    assert _reader(registry, 2)(new)["c"] == 2.75


def test_registry_refuses_an_incompatible_change(registry: Any, subject: str) -> None:
    assert AvroSerializer(registry, subject, schemas.load("event", 2)).schema_id > 0
    # a new required field without a default cannot read old data: not BACKWARD
    bad = copy.deepcopy(schemas.load("event", 2))
    bad["fields"].append({"name": "d", "type": "double", "doc": "required, no default"})
    with pytest.raises(errors.SchemaRegistrationError):
        assert AvroSerializer(registry, subject, bad).schema_id > 0
    # and so is changing a field's type incompatibly
    retyped = copy.deepcopy(schemas.load("event", 2))
    next(f for f in retyped["fields"] if f["name"] == "a")["type"] = "string"
    with pytest.raises(errors.SchemaRegistrationError):
        assert AvroSerializer(registry, subject, retyped).schema_id > 0
    assert len(registry.get_versions(subject)) == 1


def test_unknown_schema_id_from_the_real_registry(registry: Any, subject: str) -> None:
    data = AvroSerializer(registry, subject, schemas.load("event", 1))(EVENT)
    bogus = b"\x00\x7f\xff\xff\xf0" + data[5:]
    with pytest.raises(errors.UnknownSchemaError):
        _reader(registry, 2)(bogus)


def test_registry_compat_check_api_agrees(registry: Any, subject: str) -> None:
    assert AvroSerializer(registry, subject, schemas.load("event", 1)).schema_id > 0
    v2 = Schema(json.dumps(schemas.load("event", 2)), "AVRO")
    assert registry.test_compatibility(subject, v2) is True
    bad = copy.deepcopy(schemas.load("event", 2))
    bad["fields"].append({"name": "d", "type": "double", "doc": "required, no default"})
    assert registry.test_compatibility(subject, Schema(json.dumps(bad), "AVRO")) is False


def test_model_envelope_v2_evolves_backward_and_v1_records_are_refused_as_unsigned(
    registry: Any, unique_name: Callable[[str], str]
) -> None:
    """model_envelope v2 adds target_version and envelope_signature (with defaults): the
    registry takes v1 then v2 under BACKWARD; a v1 record read by today's worker has no
    envelope signature and is refused (republish it); old readers still read v2 records;
    a v2 without the defaults would not register."""
    subject = f"{unique_name('models')}-value"
    registry.set_compatibility(subject_name=subject, level="BACKWARD")
    shipped = schemas.versions("model_envelope")
    assert shipped[:2] == [1, 2]
    ids = [
        AvroSerializer(registry, subject, schemas.load("model_envelope", v)).schema_id
        for v in shipped
    ]
    assert len(set(ids)) == len(ids)
    key = b"schema-evolution-test-key"
    env = envelope.make(
        model_name="m",
        role=Role.PRIMARY,
        version=1,
        artifact=b"SSBUNDLE...",
        signature=b"sig",
        key_id="k",
        created_at_ms=1_700_000_000_000,
        published_at_ms=1_700_000_000_001,
        publisher="p",
        rollback=True,
        target_version=2,
        signer=HmacSigner(key, "k"),
    )
    v1_names = [f["name"] for f in schemas.load("model_envelope", 1)["fields"]]
    old_fields = {k: v for k, v in env.to_avro().items() if k in v1_names}

    def reader(v: int) -> AvroDeserializer:
        return AvroDeserializer(WriterSchemaCache(registry), schemas.load("model_envelope", v))

    old = AvroSerializer(registry, subject, schemas.load("model_envelope", 1))(old_fields)
    legacy = ModelEnvelope.from_avro(reader(2)(old))
    assert (legacy.target_version, legacy.envelope_signature) == (None, None)
    assert dataclasses.replace(legacy, target_version=2) == dataclasses.replace(
        env, envelope_signature=None
    )
    with pytest.raises(errors.UnsignedEnvelopeError):
        envelope.verify(legacy, HmacVerifier({"k": key}))
    new = AvroSerializer(registry, subject, schemas.load("model_envelope", 2))(env.to_avro())
    current = ModelEnvelope.from_avro(reader(2)(new))
    assert current == env
    envelope.verify(current, HmacVerifier({"k": key}))
    assert reader(1)(new) == old_fields
    no_default = copy.deepcopy(schemas.load("model_envelope", 2))
    no_default["fields"].append({"name": "required_later", "type": "long"})
    with pytest.raises(errors.SchemaRegistrationError):
        assert AvroSerializer(registry, subject, no_default).schema_id > 0


def test_prediction_v3_evolves_backward_on_the_real_registry(
    registry: Any, unique_name: Callable[[str], str]
) -> None:
    """prediction v3 (flat scalars first, the arrays and the map in the nested ``detail``)
    registers after v1 and v2 under BACKWARD; a v2 record read with v3 keeps its scalars
    (score null, detail empty); the registry's own check refuses a v3 whose ``detail`` has
    no default."""
    subject = f"{unique_name('predictions')}-value"
    registry.set_compatibility(subject_name=subject, level="BACKWARD")
    shipped = schemas.versions("prediction")
    assert shipped[-1] == 3

    def register(versions: list[int]) -> list[int]:
        return [
            AvroSerializer(registry, subject, schemas.load("prediction", v)).schema_id
            for v in versions
        ]

    ids = register([1, 2])
    # the registry's own check, against v2: v3 passes; without detail's default it fails
    v3 = schemas.load("prediction", 3)
    assert registry.test_compatibility(subject, Schema(json.dumps(v3), "AVRO")) is True
    no_default = copy.deepcopy(v3)
    (detail,) = [f for f in no_default["fields"] if f["name"] == "detail"]
    del detail["default"]
    assert registry.test_compatibility(subject, Schema(json.dumps(no_default), "AVRO")) is False
    with pytest.raises(errors.SchemaRegistrationError):
        assert AvroSerializer(registry, subject, no_default).schema_id > 0
    ids += register(shipped[2:])
    assert len(set(ids)) == len(ids) == len(shipped)
    v2_record = {
        "event_id": "e-1",
        "key": "k",
        "event_time": 1_700_000_000_000,
        "scored_time": 1_700_000_000_005,
        "model_name": "m",
        "model_version": 4,
        "role": "canary",
        "value": None,
        "label": "yes",
        "probabilities": [0.2, 0.8],
        "classes": ["no", "yes"],
        "degraded": False,
        "late": True,
        "feature_names": ["a"],
        "features": [1.5],
        "inputs": {"c": 2.0},
    }
    old = AvroSerializer(registry, subject, schemas.load("prediction", 2))(v2_record)
    read = AvroDeserializer(WriterSchemaCache(registry), v3)(old)
    assert read["score"] is None and read["label"] == "yes" and read["late"] is True
    assert (read["role"], read["model_version"], read["event_id"]) == ("canary", 4, "e-1")
    assert read["detail"] == {
        "probabilities": [],
        "classes": [],
        "feature_names": [],
        "features": [],
        "inputs": {},
    }
    # a v3 record read back whole, and by the v2 reader (forward): the scalars survive
    v3_record = {k: v2_record[k] for k in v2_record if k not in detail_names(v3)}
    v3_record |= {"score": 0.8, "detail": {k: v2_record[k] for k in detail_names(v3)}}
    new = AvroSerializer(registry, subject, v3)(v3_record)
    assert AvroDeserializer(WriterSchemaCache(registry), v3)(new)["detail"]["features"] == [1.5]
    back = AvroDeserializer(WriterSchemaCache(registry), schemas.load("prediction", 2))(new)
    assert (back["label"], back["role"], back["probabilities"]) == ("yes", "canary", [])


def detail_names(schema: dict[str, Any]) -> list[str]:
    (detail,) = [f for f in schema["fields"] if f["name"] == "detail"]
    return [f["name"] for f in detail["type"]["fields"]]
