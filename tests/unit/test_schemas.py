"""Every shipped schema parses, documents each field, and each version of a family is
BACKWARD compatible with the previous one (new reader reads old data)."""

from __future__ import annotations

import io
import itertools
from typing import Any

import fastavro
import pytest

from streamscore.serde import schemas
from streamscore.serde.wire import parse

FAMILIES = schemas.families()


def test_expected_families_are_shipped() -> None:
    assert set(FAMILIES) >= {"event", "prediction", "telemetry", "model_envelope", "feedback"}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_field_is_documented(family: str) -> None:
    for version in schemas.versions(family):
        schema = schemas.load(family, version)
        assert schema.get("doc"), f"{family} v{version} has no doc"
        for f in schema["fields"]:
            assert f.get("doc"), f"{family} v{version} field {f['name']} has no doc"


def _fields_by_name(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_versions_follow_the_evolution_rules(family: str) -> None:
    vs = schemas.versions(family)
    for old_v, new_v in itertools.pairwise(vs):
        old, new = (
            _fields_by_name(schemas.load(family, old_v)),
            _fields_by_name(schemas.load(family, new_v)),
        )
        # a field never disappears: it stays, or it moves unchanged into a nested record
        nested = {
            g["name"]: g
            for f in new.values()
            if isinstance(f["type"], dict) and f["type"].get("type") == "record"
            for g in f["type"]["fields"]
        }
        for name in set(old) - set(new):
            assert name in nested, f"{family} v{new_v} removed field {name}"
            assert nested[name]["type"] == old[name]["type"], f"{family} v{new_v}: {name} changed"
            assert "default" in nested[name], f"{family} v{new_v}: moved {name} has no default"
        for name in set(new) - set(old):
            assert "default" in new[name], f"{family} v{new_v}: new field {name} has no default"


def _minimal_record(schema: dict[str, Any]) -> dict[str, Any]:
    samples = {"string": "x", "long": 1, "int": 1, "double": 1.5, "boolean": True, "bytes": b"x"}
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        t = f["type"]
        if "default" in f:
            out[f["name"]] = f["default"]
        elif isinstance(t, str):
            out[f["name"]] = samples[t]
        elif isinstance(t, list):
            out[f["name"]] = samples[next(x for x in t if x != "null")]
        elif t["type"] == "enum":
            out[f["name"]] = t["symbols"][0]
        elif t["type"] in samples:
            out[f["name"]] = samples[t["type"]]
        elif t["type"] == "record":
            out[f["name"]] = _minimal_record(t)
        else:
            raise AssertionError(f"add a sample for {t}")
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_new_reader_reads_data_of_every_older_version(family: str) -> None:
    vs = schemas.versions(family)
    latest = parse(schemas.load(family, vs[-1]))
    for v in vs:
        old = schemas.load(family, v)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parse(old), _minimal_record(old))
        buf.seek(0)
        record = fastavro.schemaless_reader(buf, parse(old), latest)
        assert set(record) == {f["name"] for f in schemas.load(family, vs[-1])["fields"]}


def test_event_v2_adds_optional_c() -> None:
    assert schemas.versions("event") == [1, 2]
    fields = schemas.record_fields(schemas.load("event", 2))
    assert fields["c"] == "double?"
    assert fields["a"] == "double"
    assert "c" not in schemas.record_fields(schemas.load("event", 1))


#: the column types a JDBC sink writes (Kafka Connect's primitive schema types, and the
#: Avro logical timestamp); arrays, maps and records have no column type
_SCALARS = {"null", "boolean", "int", "long", "float", "double", "string", "enum"}


def _scalar(t: Any) -> bool:
    if isinstance(t, list):
        return all(_scalar(b) for b in t) and len([b for b in t if b != "null"]) == 1
    if isinstance(t, dict):
        return t.get("type") in _SCALARS
    return t in _SCALARS


def test_the_latest_prediction_projects_flat_onto_a_jdbc_table() -> None:
    """Every top-level field of the answer record is a column type (a scalar, an enum, a
    timestamp, a nullable one of those) except the one nested ``detail`` record, which a
    sink drops (``ReplaceField$Value`` exclude=detail) or flattens; it leads with the
    fields an analyst reads."""
    schema = schemas.load("prediction")
    fields = schema["fields"]
    not_flat = [f["name"] for f in fields if not _scalar(f["type"])]
    assert not_flat == ["detail"]
    assert [f["name"] for f in fields[:9]] == [
        "event_id",
        "event_time",
        "model_name",
        "model_version",
        "role",
        "score",
        "label",
        "degraded",
        "late",
    ]
    (detail,) = [f for f in fields if f["name"] == "detail"]
    assert {g["name"] for g in detail["type"]["fields"]} == {
        "probabilities",
        "classes",
        "feature_names",
        "features",
        "inputs",
    }
    # the older versions were not flat: the arrays and the map sat at the top level
    v2 = [f["name"] for f in schemas.load("prediction", 2)["fields"] if not _scalar(f["type"])]
    assert set(v2) == {"probabilities", "classes", "feature_names", "features", "inputs"}
