"""The registry's conventions on the real registry (Apicurio's ccompat API): a worker with
registration off (``auto_register = false``) writing to pre-created subjects named by the
record and topic-record strategies, events whose schema references a type registered
under its own subject, and Avro keys with their own key schema. No subject or version
appears that was not there before; a missing subject stops the worker with a line that
names the subject and the setting."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
from confluent_kafka.schema_registry import Schema, SchemaReference

from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer
from streamscore.serde.wire import (
    HEADER,
    MAGIC_BYTE,
    WriterSchemaCache,
    inline_references,
    parse,
)

from .stack import Stack, WorkerProcess

DEVICE = {
    "type": "record",
    "name": "Device",
    "namespace": "acme.shared",
    "fields": [{"name": "os", "type": "string"}, {"name": "model", "type": "string"}],
}
DEVICE_VALUE = {"os": "linux", "model": "x1"}


def _register(stack: Stack, subject: str, schema: Any, refs: list[Any] | None = None) -> int:
    return int(
        stack.registry.register_schema(subject, Schema(json.dumps(schema), "AVRO", refs or []))
    )


def _fresh_subject(stack: Stack, subject: str) -> None:
    """Delete ``subject`` (soft, then for good) if it exists: a record-strategy subject is
    global to the registry, and a registry kept across runs may hold versions that an
    earlier build of the schema registered there."""
    if subject in set(stack.registry.get_subjects()):
        stack.registry.delete_subject(subject)
        stack.registry.delete_subject(subject, permanent=True)


def _versions(stack: Stack, subjects: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    everything = set(stack.registry.get_subjects())
    for s in subjects:
        out[s] = sorted(stack.registry.get_versions(s)) if s in everything else []
    return out


def _wire(schema_id: int, parsed: Any, value: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, parsed, value)
    return buf.getvalue()


def test_registration_off_record_and_topic_record_subjects_references_and_avro_keys(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    t = stack.topics
    pred_subject = "streamscore.Prediction"  # record strategy
    tele_subject = f"{t.telemetry}-streamscore.Telemetry"  # topic-record strategy
    # the subject's latest version is a later one than the worker's (one more field, with
    # a default): the worker writes with it (its id in every prediction), not its own
    later = copy.deepcopy(schemas.load("prediction"))
    later["fields"].append({"name": "region", "type": "string", "default": "eu"})
    _fresh_subject(stack, pred_subject)  # the subject is global (one per record name)
    later_id = _register(stack, pred_subject, later)
    _register(stack, tele_subject, schemas.load("telemetry"))

    # the events' schema references Device, registered under its own subject
    device_subject = f"{t.events}-acme.shared.Device"
    _register(stack, device_subject, DEVICE)
    event = copy.deepcopy(schemas.load("event", 1))
    event["fields"].append({"name": "device", "type": "acme.shared.Device"})
    ref = SchemaReference("acme.shared.Device", device_subject, 1)
    event_id = _register(stack, f"{t.events}-value", event, [ref])
    event_parsed = parse(inline_references(event, {"acme.shared.Device": DEVICE}))
    # keys: an Avro string under <events>-key
    key_id = _register(stack, f"{t.events}-key", "string")

    watched = [pred_subject, tele_subject, f"{t.predictions}-value", f"{t.telemetry}-value"]
    before = _versions(stack, watched)
    subjects_before = set(stack.registry.get_subjects())

    project = stack.tmp / "streamscore.toml"
    project.write_text(
        '[events]\nkey_format = "avro"\n\n'
        '[registry]\nauto_register = false\nsubject_strategy = "record"\n\n'
        '[registry.subject_strategies]\ntelemetry = "topic-record"\n'
    )
    stack.publish("ab", 1)
    w = make_worker("conv", "--config", str(project))

    rng = np.random.default_rng(5)
    sent: dict[str, bytes] = {}
    items: list[tuple[bytes | None, bytes | None]] = []
    for e, _y in synthetic.events(400, rng, with_c=False):
        e = {**e, "device": DEVICE_VALUE}
        k = _wire(key_id, "string", f"acct-{e['key']}")
        sent[e["event_id"]] = k
        items.append((k, _wire(event_id, event_parsed, e)))
    bad_key_event = {**next(synthetic.events(1, rng, with_c=False))[0], "device": DEVICE_VALUE}
    items.append((b"not-avro", _wire(event_id, event_parsed, bad_key_event)))
    stack.produce_raw(items)

    preds = stack.read(t.predictions, until=lambda got: len(got) >= len(sent))
    dlq = stack.read(t.dlq, until=lambda got: len(got) >= 1)
    tele = stack.read(t.telemetry, until=lambda got: len(got) >= 1)
    dec = stack.decoder("prediction")
    decoded = [(m.key(), m.value(), dec(m.value())) for m in preds]
    assert len(decoded) == len(sent)
    pred_id = stack.registry.get_latest_version(pred_subject).schema_id
    tele_id = stack.registry.get_latest_version(tele_subject).schema_id
    for raw_key, value, p in decoded:
        assert raw_key == sent[p["event_id"]]  # the output keeps the event's key bytes
        assert p["key"] == raw_key[6:].decode()  # the Avro string, decoded
        assert p["key"].startswith("acct-")
        assert HEADER.unpack(value[:5])[1] == pred_id  # the pre-created subject's schema
    assert {HEADER.unpack(m.value()[:5])[1] for m in tele} == {tele_id}
    assert pred_id == later_id
    written = WriterSchemaCache(stack.registry).get(pred_id)[0]
    assert "region" in {f["name"] for f in written["fields"]}
    # read as they were written (no reader default to fill in): the default was written
    as_written = AvroDeserializer(WriterSchemaCache(stack.registry), None)
    assert {as_written(v)["region"] for _k, v, _p in decoded} == {"eu"}

    assert len(dlq) == 1
    headers = {k: v.decode() for k, v in dlq[0].headers() or []}
    assert headers["streamscore.error.reason"] == "bad_key"
    assert dlq[0].key() == b"not-avro"

    assert w.terminate() == 0
    # registration was off: nothing new in the registry
    assert _versions(stack, watched) == before
    new = set(stack.registry.get_subjects()) - subjects_before
    assert not {s for s in new if t.predictions in s or t.telemetry in s or "streamscore." in s}


def test_a_missing_subject_with_registration_off_stops_the_worker(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", 1)
    w = make_worker(
        "nosubj",
        wait=False,
        env={
            "STREAMSCORE_REGISTRY_AUTO_REGISTER": "false",
            "STREAMSCORE_REGISTRY_SUBJECT_STRATEGY_PREDICTIONS": "topic-record",
        },
    )
    code = w.proc.wait(120)
    subject = f"{stack.topics.predictions}-streamscore.Prediction"
    assert code != 0
    log = w.log()
    assert f"subject {subject!r} does not exist in the schema registry" in log
    assert "STREAMSCORE_REGISTRY_AUTO_REGISTER" in log
    assert "Traceback" not in log
    assert subject not in stack.registry.get_subjects()


def test_registration_off_the_shadow_topic_subject_must_exist_too(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    """The shadow predictions' subject (named by the predictions' strategy) is an output
    subject like the others: with registration off and only the answers' subject there,
    the worker stops at start naming the shadow's; once it exists (here a later version,
    one more field with a default), the worker runs, registers nothing, and each topic's
    records carry the schema id of its own subject's latest version."""
    t = stack.topics
    _register(stack, f"{t.predictions}-value", schemas.load("prediction"))
    _register(stack, f"{t.telemetry}-value", schemas.load("telemetry"))
    stack.publish("ab", 1)
    off = {"STREAMSCORE_REGISTRY_AUTO_REGISTER": "false"}
    w = make_worker("noshadow", wait=False, env=off)
    assert w.proc.wait(120) != 0
    log = w.log()
    shadow = f"{t.predictions_shadow}-value"
    assert f"subject {shadow!r} does not exist in the schema registry" in log
    assert "Traceback" not in log
    assert shadow not in stack.registry.get_subjects()

    later = copy.deepcopy(schemas.load("prediction"))
    later["fields"].append({"name": "region", "type": "string", "default": "eu"})
    _register(stack, shadow, schemas.load("prediction"))
    shadow_id = _register(stack, shadow, later)
    pred_id = stack.registry.get_latest_version(f"{t.predictions}-value").schema_id
    assert shadow_id != pred_id
    stack.publish("abc", 2, role=Role.SHADOW)
    watched = [f"{t.predictions}-value", shadow, f"{t.telemetry}-value"]
    before = _versions(stack, watched)
    w2 = make_worker("withshadow", env=off)
    stack.produce_events(20, with_c=True)
    answers = stack.read(t.predictions, until=lambda got: len(got) >= 20)
    shadows = stack.read(t.predictions_shadow, until=lambda got: len(got) >= 20)
    assert len(answers) == len(shadows) == 20
    assert {HEADER.unpack(m.value()[:5])[1] for m in answers} == {pred_id}
    assert {HEADER.unpack(m.value()[:5])[1] for m in shadows} == {shadow_id}
    as_written = AvroDeserializer(WriterSchemaCache(stack.registry), None)
    assert {(as_written(m.value())["role"], as_written(m.value())["region"]) for m in shadows} == {
        ("shadow", "eu")
    }
    assert w2.terminate() == 0
    assert _versions(stack, watched) == before
