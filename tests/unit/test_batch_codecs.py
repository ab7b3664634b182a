"""The scorer's batch-codec interface (``streamscore.score.codecs``): the Avro codecs are
taken as they are, any other implementation is used through the protocol alone, plain
callables are wrapped, and the predictions come out byte for byte the same every way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from streamscore.core import errors
from streamscore.core.columns import RecordColumns
from streamscore.core.config import ScoringSettings
from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage, MessageBatch
from streamscore.score.codecs import (
    BatchDecoder,
    BatchEncoder,
    Decoded,
    PerMessageDecoder,
    RowEncoder,
    batch_decoder,
    batch_encoder,
    decode_batch,
)
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client

from .test_scoring import _fit


@pytest.fixture
def codecs() -> dict[str, Any]:
    reg = registry_client({"url": f"mock://batch-codecs-{id(object())}"})
    return {
        "enc": AvroSerializer(reg, "events-value", schemas.load("event", 2)),
        "dec": AvroDeserializer(WriterSchemaCache(reg), schemas.load("event", 2)),
        "pred": AvroSerializer(reg, "predictions-value", schemas.load("prediction")),
    }


def _messages(enc: AvroSerializer, n: int) -> list[InMessage]:
    rng = np.random.default_rng(3)
    out = []
    for i, (e, _y) in enumerate(synthetic.events(n, rng, with_c=True, event_time_ms=1_000_000)):
        value = enc(e)
        if i % 9 == 0:
            value = value[:7]  # truncated: a dead letter
        out.append(InMessage(value, e["key"].encode(), "events", 0, i, 1_000_000))
    return out


class CountingDecoder:
    """A batch decoder that is not an AvroDeserializer."""

    def __init__(self, dec: AvroDeserializer) -> None:
        self.dec = dec
        self.batches = 0
        self.singles = 0

    def __call__(self, data: bytes | None, /) -> Mapping[str, Any]:
        self.singles += 1
        return self.dec(data)

    def decode_many(self, values: Sequence[bytes | None]) -> Decoded:
        self.batches += 1
        return self.dec.decode_many(values)


class RecordingEncoder:
    """A batch encoder that is not an AvroSerializer: keeps what it was given."""

    def __init__(self, pred: AvroSerializer) -> None:
        self.pred = pred
        self.given: list[RecordColumns] = []

    def encode_columns(self, cols: RecordColumns) -> list[bytes]:
        self.given.append(cols)
        return self.pred.encode_many(cols.rows())


def test_the_avro_codecs_are_batch_codecs_and_plain_callables_are_wrapped(
    codecs: dict[str, Any],
) -> None:
    dec, pred = codecs["dec"], codecs["pred"]
    assert batch_decoder(dec) is dec and isinstance(dec, BatchDecoder)
    assert batch_encoder(pred) is pred and isinstance(pred, BatchEncoder)
    plain_dec = batch_decoder(lambda v: dec(v))
    plain_enc = batch_encoder(pred.encode_many)  # a bound method is a plain callable
    assert isinstance(plain_dec, PerMessageDecoder) and isinstance(plain_enc, RowEncoder)
    values = [m.value for m in _messages(codecs["enc"], 40)]
    got, want = plain_dec.decode_many(values), dec.decode_many(values)
    assert got[0] == want[0] and list(got[1]) == list(want[1])
    assert [(i, type(e), str(e)) for i, e in got[2]] == [(i, type(e), str(e)) for i, e in want[2]]
    cols = RecordColumns(2, {"x": 1}, {"y": [1, 2]})
    seen: list[list[dict[str, Any]]] = []
    assert RowEncoder(lambda rows: seen.append(rows) or [b"a", b"b"]).encode_columns(cols) == [
        b"a",
        b"b",
    ]
    assert seen == [[{"x": 1, "y": 1}, {"x": 1, "y": 2}]]


def test_the_scorer_uses_any_batch_codec_through_the_protocol_alone(
    codecs: dict[str, Any],
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, _fit(False, 1))
    store.offer(Role.SHADOW, _fit(True, 2))
    msgs = _messages(codecs["enc"], 120)
    decoder, encoder = CountingDecoder(codecs["dec"]), RecordingEncoder(codecs["pred"])
    settings = ScoringSettings()

    def clock() -> int:
        return 1_000_500

    custom = BatchScorer(decoder, encoder, settings, clock_ms=clock)
    avro = BatchScorer(codecs["dec"], codecs["pred"], settings, clock_ms=clock)
    plain = BatchScorer(
        lambda v: codecs["dec"](v), codecs["pred"].encode_many, settings, clock_ms=clock
    )
    got = custom.score(MessageBatch.of(msgs), store.snapshot())
    assert (decoder.batches, decoder.singles) == (1, 0)  # one call for the whole batch
    n = got.n_scored
    assert n > 90 and [c.n for c in encoder.given] == [n, n]  # column-wise: primary, shadow
    assert all(
        isinstance(c.columns["detail"].columns["features"], np.ndarray) for c in encoder.given
    )
    for other in (avro, plain):
        want = other.score(MessageBatch.of(msgs), store.snapshot())
        assert got.predictions == want.predictions
        assert [(d.message.offset, type(d.error), str(d.error)) for d in got.dead_letters] == [
            (d.message.offset, type(d.error), str(d.error)) for d in want.dead_letters
        ]
    assert len(got.predictions) == 2 * n and len(got.dead_letters) == 120 - n
    serde_errors = [
        d.message.offset for d in got.dead_letters if isinstance(d.error, errors.SerdeError)
    ]
    assert serde_errors == list(range(0, 120, 9))  # the cut-short ones


class _Away:
    def __call__(self, data: bytes | None, /) -> Mapping[str, Any]:
        raise AssertionError("never decoded alone")

    def __init__(self, how: str) -> None:
        self.how = how

    def decode_many(self, values: Sequence[bytes | None]) -> Decoded:
        err = errors.RegistryUnavailableError("registry away")
        if self.how == "raised":
            raise err
        return [], [], [(0, err)]


@pytest.mark.parametrize("how", ["raised", "returned"])
def test_an_infrastructure_error_from_a_batch_decoder_is_raised_not_a_dead_letter(
    how: str,
) -> None:
    with pytest.raises(errors.RegistryUnavailableError):
        decode_batch(_Away(how), [b"x"])


def test_a_batch_decoder_that_fails_otherwise_falls_back_to_one_message_at_a_time(
    codecs: dict[str, Any],
) -> None:
    class Broken(CountingDecoder):
        def decode_many(self, values: Sequence[bytes | None]) -> Decoded:
            raise ValueError("a bug")

    values = [m.value for m in _messages(codecs["enc"], 20)]
    broken = Broken(codecs["dec"])
    good, events, failed = decode_batch(broken, values)
    want = codecs["dec"].decode_many(values)
    assert broken.singles == 20
    assert good == want[0] and list(events) == list(want[1])
    assert [(i, type(e)) for i, e in failed] == [(i, type(e)) for i, e in want[2]]


def test_shadow_predictions_carry_their_own_topics_schema_id(codecs: dict[str, Any]) -> None:
    """The shadow's predictions are encoded by the shadow topic's serializer: with
    registration off, the id of the latest version of its own subject, not the
    predictions subject's (here a later version, with a field of its own)."""
    import json

    from confluent_kafka.schema_registry import Schema

    from streamscore.serde.wire import split_header

    reg = codecs["pred"]._registry
    pred = schemas.load("prediction")
    later = {
        **pred,
        "fields": [*pred["fields"], {"name": "site", "type": "string", "default": "x"}],
    }
    shadow_id = reg.register_schema("predictions.shadow-value", Schema(json.dumps(later), "AVRO"))
    shadow = AvroSerializer(reg, "predictions.shadow-value", pred, auto_register=False)
    store = ModelStore()
    store.offer(Role.PRIMARY, _fit(False, 1))
    store.offer(Role.SHADOW, _fit(True, 2))
    scorer = BatchScorer(codecs["dec"], codecs["pred"], ScoringSettings(), shadow_encoder=shadow)
    got = scorer.score(MessageBatch.of(_messages(codecs["enc"], 60)), store.snapshot())
    answers, shadows = got.predictions[: got.n_answers], got.predictions[got.n_answers :]
    assert answers and shadows
    assert {split_header(v)[0] for _k, v in answers} == {codecs["pred"].schema_id}
    assert {split_header(v)[0] for _k, v in shadows} == {shadow_id} != {codecs["pred"].schema_id}
    read = AvroDeserializer(WriterSchemaCache(reg), later)
    assert {(r["role"], r["site"]) for r in (read(v) for _k, v in shadows)} == {("shadow", "x")}
