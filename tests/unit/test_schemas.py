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
        assert set(old) <= set(new), f"{family} v{new_v} removed fields"
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
