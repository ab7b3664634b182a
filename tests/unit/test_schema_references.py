"""Writer schemas with references (named types registered under their own subjects):
fetched, bounded, inlined; the events then decode like any other (the real registry's
references are in tests/integration/test_registry_conventions.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaReference

from streamscore.core.errors import RegistryUnavailableError, SchemaReferenceError
from streamscore.serde.message import AvroDeserializer
from streamscore.serde.wire import (
    HEADER,
    MAGIC_BYTE,
    MAX_REFERENCES,
    WriterSchemaCache,
    inline_references,
)

ADDRESS = {
    "type": "record",
    "name": "Address",
    "namespace": "acme.common",
    "fields": [
        {"name": "city", "type": "string"},
        {"name": "country", "type": {"type": "enum", "name": "Country", "symbols": ["FR", "DE"]}},
    ],
}
EVENT = {
    "type": "record",
    "name": "Event",
    "namespace": "acme",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "home", "type": "acme.common.Address"},
        {"name": "work", "type": ["null", "acme.common.Address"], "default": None},
        {"name": "born", "type": "acme.common.Country"},
    ],
}


class RefRegistry:
    """Just enough of a registry: schema ids and subject versions, with references."""

    def __init__(self) -> None:
        self.by_id: dict[int, Schema] = {}
        self.versions: dict[tuple[str, int], RegisteredSchema] = {}
        self.fetches = 0
        self.away = False

    def add(self, subject: str, version: int, schema: Any, refs: list[SchemaReference]) -> int:
        schema_id = len(self.by_id) + 1
        s = Schema(json.dumps(schema), "AVRO", refs)
        self.by_id[schema_id] = s
        self.versions[(subject, version)] = RegisteredSchema(subject, version, schema_id, None, s)
        return schema_id

    def get_schema(self, schema_id: int) -> Schema:
        return self.by_id[schema_id]

    def get_version(self, subject: str, version: int) -> RegisteredSchema:
        self.fetches += 1
        if self.away:
            exc = Exception("away")
            exc.http_status_code = 503  # type: ignore[attr-defined]
            raise exc
        if (subject, version) not in self.versions:
            exc = Exception("not found")
            exc.http_status_code = 404  # type: ignore[attr-defined]
            raise exc
        return self.versions[(subject, version)]

    def register_schema(self, subject: str, schema: Any) -> int:
        raise AssertionError("not used")


def _encode(schema_id: int, full_schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(full_schema, named_schemas={}), record)
    return buf.getvalue()


RECORD = {
    "event_id": "e1",
    "home": {"city": "Paris", "country": "FR"},
    "work": {"city": "Berlin", "country": "DE"},
    "born": "DE",
}


def test_references_are_inlined_and_events_decode() -> None:
    reg = RefRegistry()
    reg.add("acme.common.Address", 1, ADDRESS, [])
    ref = SchemaReference("acme.common.Address", "acme.common.Address", 1)
    event_id = reg.add("events-value", 1, EVENT, [ref])
    full = inline_references(EVENT, {"acme.common.Address": ADDRESS})
    data = _encode(event_id, full, RECORD)
    dec = AvroDeserializer(WriterSchemaCache(reg), full)
    assert dec(data) == RECORD
    ok, records, failed = dec.decode_many([data] * 40)
    assert ok == list(range(40)) and failed == [] and list(records) == [RECORD] * 40
    # the nested enum, defined inside the referenced record, is found by name too
    assert "Country" in json.dumps(WriterSchemaCache(reg).get(event_id)[0])


def test_nested_references_and_bounds() -> None:
    reg = RefRegistry()
    # a chain: Event -> Address -> Country (each under its own subject)
    country = ADDRESS["fields"][1]["type"] | {"namespace": "acme.common"}
    reg.add("country", 1, country, [])
    address = {**ADDRESS, "fields": [ADDRESS["fields"][0], {"name": "country", "type": "Country"}]}
    reg.add("address", 1, address, [SchemaReference("acme.common.Country", "country", 1)])
    event_id = reg.add("ev", 1, EVENT, [SchemaReference("acme.common.Address", "address", 1)])
    entry = WriterSchemaCache(reg).get(event_id)
    data = _encode(event_id, entry[0], RECORD)
    assert AvroDeserializer(WriterSchemaCache(reg), entry[0])(data) == RECORD

    # a reference the registry does not hold: the writer schema is unreadable (typed)
    missing = reg.add("ev2", 1, EVENT, [SchemaReference("acme.common.Address", "gone", 3)])
    with pytest.raises(SchemaReferenceError, match="subject 'gone' version 3"):
        WriterSchemaCache(reg).get(missing)

    # more references than the bound: refused before they are all fetched
    for i in range(MAX_REFERENCES + 1):
        reg.versions[(f"s{i}", 1)] = reg.versions[("country", 1)]
    many = [SchemaReference(f"n{i}", f"s{i}", 1) for i in range(MAX_REFERENCES + 1)]
    wide = reg.add("wide", 1, EVENT, many)
    reg.fetches = 0
    with pytest.raises(SchemaReferenceError, match=f"more than {MAX_REFERENCES}"):
        WriterSchemaCache(reg).get(wide)
    assert reg.fetches <= MAX_REFERENCES

    # a registry away while fetching a reference: retried later, never a bad message
    reg.away = True
    with pytest.raises(RegistryUnavailableError, match="subject 'address' version 1"):
        WriterSchemaCache(reg).get(event_id)
