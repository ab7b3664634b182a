"""Message keys as ``[events] key_format`` says (string, bytes, Avro with a key schema in
the registry): decoded once per batch, used for canary routing and the predictions'
``key``; the outputs keep the event's key bytes; a key that does not decode is
dead-lettered with its typed reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema

from streamscore.core.config import EventFields, KeyFormat, ScoringSettings
from streamscore.core.errors import KeyDecodeError, RegistryUnavailableError
from streamscore.core.records import Role
from streamscore.models.runtime import LoadedModel
from streamscore.models.store import ModelStore, canary_mask
from streamscore.score.batch import BatchScorer, InMessage
from streamscore.score.keys import BytesKeys, StringKeys, key_decoder
from streamscore.serde.keys import AvroKeyDecoder
from streamscore.serde.wire import HEADER, MAGIC_BYTE, WriterSchemaCache
from tests.unit.kafka_fakes import FlakyRegistry
from tests.unit.test_scoring import _fit, decode_prediction, env, make_messages, v1

__all__ = ["env", "make_messages", "v1"]  # fixtures shared with test_scoring

STRING_KEY = "string"
RECORD_KEY = {
    "type": "record",
    "name": "AccountKey",
    "namespace": "acme",
    "fields": [{"name": "region", "type": "string"}, {"name": "account", "type": "long"}],
}


def avro_key(registry: Any, schema: Any, value: Any, subject: str = "events-key") -> bytes:
    import io

    import fastavro

    from streamscore.serde.wire import parse

    schema_id = registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, parse(schema) if isinstance(schema, dict) else schema, value)
    return buf.getvalue()


def test_string_and_bytes_keys() -> None:
    assert StringKeys().decode_keys([b"a", None, "é".encode()]) == (["a", None, "é"], {})
    keys, errors = StringKeys().decode_keys([b"ok", b"\xff\xfe", None])
    assert keys == ["ok", None, None]
    assert list(errors) == [1]
    assert isinstance(errors[1], KeyDecodeError) and errors[1].reason == "bad_key"
    assert "not UTF-8 text (2 bytes, invalid at byte 0)" in str(errors[1])
    assert BytesKeys().decode_keys([b"\xff\x00", None]) == (["ff00", None], {})
    with pytest.raises(Exception, match="needs the registry's key decoder"):
        key_decoder(KeyFormat.AVRO)


def test_avro_keys_primitive_record_and_bad(env: dict[str, Any]) -> None:
    reg = env["reg"]
    dec = AvroKeyDecoder(WriterSchemaCache(reg))
    s = avro_key(reg, STRING_KEY, "acct-1")
    r = avro_key(reg, RECORD_KEY, {"region": "eu", "account": 42}, "events-acme.AccountKey")
    unknown = HEADER.pack(MAGIC_BYTE, 999_999) + b"\x02a"
    keys, errors = dec.decode_keys([s, r, None, b"plain-text", s[:6], unknown, s])
    assert keys[:3] == ["acct-1", '{"account":42,"region":"eu"}', None]
    assert keys[6] == "acct-1"
    assert sorted(errors) == [3, 4, 5]
    assert all(isinstance(e, KeyDecodeError) and e.reason == "bad_key" for e in errors.values())
    assert "key_format is 'avro'): bad_magic_byte" in str(errors[3])
    assert "unknown_schema_id" in str(errors[5])


def test_avro_keys_registry_away_is_raised_not_dead_lettered(env: dict[str, Any]) -> None:
    s = avro_key(env["reg"], STRING_KEY, "acct-1")
    dec = AvroKeyDecoder(WriterSchemaCache(FlakyRegistry(env["reg"], down=1)))
    with pytest.raises(RegistryUnavailableError):
        dec.decode_keys([s])
    assert dec.decode_keys([s]) == (["acct-1"], {})


def test_scorer_routes_and_keys_by_the_decoded_avro_key(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    reg = env["reg"]
    msgs = make_messages(300, with_c=False)
    keyed = [
        InMessage(m.value, avro_key(reg, STRING_KEY, f"acct-{i}"), m.topic, 0, i, m.timestamp_ms)
        for i, m in enumerate(msgs)
    ]
    keyed[7] = InMessage(keyed[7].value, b"\xff not avro", "events", 0, 7, keyed[7].timestamp_ms)
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.CANARY, _fit(False, 3))
    scorer = BatchScorer(
        env["dec"],
        env["pred"],
        ScoringSettings(canary_fraction=0.3),
        clock_ms=lambda: 1_000_500,
        events=EventFields(key_format=KeyFormat.AVRO),
        keys=AvroKeyDecoder(WriterSchemaCache(reg)),
    )
    out = scorer.score(keyed, store.snapshot())
    assert [(d.message.offset, d.error.reason) for d in out.dead_letters] == [(7, "bad_key")]
    assert out.n_scored == 299
    preds = [(k, decode_prediction(v)) for k, v in out.predictions]
    by_id = {m.offset: m for m in keyed}
    for raw, p in preds:
        offset = int(p["key"].removeprefix("acct-"))
        assert raw == by_id[offset].key  # the output's key: the event's key bytes
    texts = [p["key"] for _k, p in preds]
    in_canary = canary_mask(texts, 0.3)
    assert [p["role"] for _k, p in preds] == ["canary" if c else "primary" for c in in_canary]
    assert 0 < int(in_canary.sum()) < len(texts)


def test_scorer_dead_letters_a_non_utf8_string_key(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    msgs = make_messages(20, with_c=False)
    msgs[3] = InMessage(msgs[3].value, b"\xc3\x28", "events", 0, 3, msgs[3].timestamp_ms)
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    out = BatchScorer(env["dec"], env["pred"], ScoringSettings()).score(msgs, store.snapshot())
    assert [(d.message.offset, type(d.error)) for d in out.dead_letters] == [(3, KeyDecodeError)]
    assert out.n_scored == 19
    # bytes keys: the same message is scored, its key shown as hex
    out = BatchScorer(
        env["dec"], env["pred"], ScoringSettings(), events=EventFields(key_format=KeyFormat.BYTES)
    ).score(msgs, store.snapshot())
    assert out.dead_letters == [] and out.n_scored == 20
    assert decode_prediction(out.predictions[3][1])["key"] == "c328"
