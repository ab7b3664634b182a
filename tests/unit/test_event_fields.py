"""The event's own id, time and key by the configured names: each time encoding converted
vectorised, bad values as typed per-event errors, and the scorer using them."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
import pytest

from streamscore.core.columns import EventColumns
from streamscore.core.config import EventFields, LatePolicy, ScoringSettings, TimeEncoding
from streamscore.core.errors import BadEventTimeError, MissingFieldError, WrongTypeError
from streamscore.core.records import Role
from streamscore.features.event_fields import event_ids, event_keys, event_times_ms
from streamscore.models.container import sign_bundle
from streamscore.models.runtime import verify_and_load
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, parse, registry_client

from .payments_world import SCHEMA, payments, payments_bundle

T = TimeEncoding


def _cols(values: Any) -> EventColumns:
    return EventColumns(len(values), {"at": values})


def _dicts(values: list[Any]) -> list[dict[str, Any]]:
    return [{"at": v} for v in values]


@pytest.mark.parametrize("shape", [_cols, _dicts])
def test_millis_encodings_are_the_integers_as_they_are(shape: Any) -> None:
    for enc in (T.TIMESTAMP_MILLIS, T.EPOCH_MILLIS):
        times, bad = event_times_ms(shape([1, -5, 1_780_000_000_123]), "at", enc)
        assert times.dtype == np.int64
        assert times.tolist() == [1, -5, 1_780_000_000_123]
        assert bad == {}


def test_an_int_array_column_is_taken_without_a_copy() -> None:
    col = np.array([1, 2, 3], dtype=np.int64)
    times, bad = event_times_ms(_cols(col), "at", T.TIMESTAMP_MILLIS)
    assert times is col and bad == {}


@pytest.mark.parametrize("shape", [_cols, _dicts])
def test_micros_are_floored_to_millis(shape: Any) -> None:
    micros = [1_780_000_000_123_999, 1_000, 999, 0, -1, -1_001]
    times, bad = event_times_ms(shape(micros), "at", T.TIMESTAMP_MICROS)
    assert times.tolist() == [1_780_000_000_123, 1, 0, 0, -1, -2]
    assert bad == {}


def test_micros_from_a_numpy_column() -> None:
    col = np.array([1_500, 2_999_999, -1_500], dtype=np.int64)
    times, bad = event_times_ms(_cols(col), "at", T.TIMESTAMP_MICROS)
    assert times.tolist() == [1, 2_999, -2]
    assert bad == {}


@pytest.mark.parametrize("enc", [T.TIMESTAMP_MILLIS, T.TIMESTAMP_MICROS, T.EPOCH_MILLIS])
def test_bad_integer_times_are_typed_errors_by_row(enc: TimeEncoding) -> None:
    times, bad = event_times_ms(_cols([5_000, None, "5000", 2.5, True, 2**64, 7_000]), "at", enc)
    assert sorted(bad) == [1, 2, 3, 4, 5]
    assert isinstance(bad[1], MissingFieldError)
    assert str(bad[1]) == "the event has no time (field 'at')"
    assert isinstance(bad[2], WrongTypeError)
    assert str(bad[2]) == f"event time 'at' is str, not an integer ({enc.value})"
    assert isinstance(bad[3], WrongTypeError) and isinstance(bad[4], WrongTypeError)
    assert isinstance(bad[5], BadEventTimeError)
    assert str(bad[5]) == f"event time 'at' is out of range: {2**64}"
    assert all(e.field == "at" for e in bad.values())
    scale = 1000 if enc is T.TIMESTAMP_MICROS else 1
    assert times[0] == 5_000 // scale and times[6] == 7_000 // scale


def test_iso_8601_with_offsets() -> None:
    values = [
        "2026-11-29T23:00:00Z",
        "2026-11-29T23:00:00.123+00:00",
        "2026-11-30T00:00:00.123456+01:00",
        "1969-12-31T23:59:59.999Z",
    ]
    times, bad = event_times_ms(_cols(values), "at", T.ISO_8601)
    base = 1_795_993_200_000
    assert times.tolist() == [base, base + 123, base + 123, -1]
    assert bad == {}


def test_bad_iso_8601_times_are_typed_errors_by_row() -> None:
    long_junk = "x" * 200
    times, bad = event_times_ms(
        _dicts(["2026-11-29T23:00:00Z", "yesterday", "2026-11-29T23:00:00", None, 17, long_junk]),
        "at",
        T.ISO_8601,
    )
    assert times[0] == 1_795_993_200_000
    assert sorted(bad) == [1, 2, 3, 4, 5]
    assert isinstance(bad[1], BadEventTimeError)
    assert bad[1].reason == "bad_event_time"
    assert str(bad[1]) == "event time 'at' is not an ISO-8601 time: 'yesterday'"
    assert str(bad[2]) == (
        "event time 'at' has no UTC offset (add Z or +00:00): '2026-11-29T23:00:00'"
    )
    assert isinstance(bad[3], MissingFieldError)
    assert isinstance(bad[4], WrongTypeError)
    assert str(bad[5]) == f"event time 'at' is not an ISO-8601 time: {'x' * 64 + '...'!r}"


def test_a_schema_without_the_time_or_id_field_fails_every_event() -> None:
    events = EventColumns(2, {"other": [1, 2]})
    _times, bad = event_times_ms(events, "at", T.TIMESTAMP_MILLIS)
    assert sorted(bad) == [0, 1] and isinstance(bad[0], MissingFieldError)
    ids, bad_ids = event_ids(events, "pid")
    assert ids == ["", ""] and str(bad_ids[1]) == "the event has no id (field 'pid')"


def test_ids_are_strings_and_a_null_id_is_an_error() -> None:
    ids, bad = event_ids(EventColumns(3, {"pid": ["a", None, "c"]}), "pid")
    assert ids == ["a", "", "c"]
    assert list(bad) == [1] and isinstance(bad[1], MissingFieldError) and bad[1].field == "pid"
    ids, bad = event_ids(EventColumns(2, {"pid": np.array([7, 8])}), "pid")
    assert ids == ["7", "8"] and bad == {}
    assert event_keys([{"acct": 5}, {"acct": None}, {"acct": "x"}], "acct") == ["5", None, "x"]


# ------------------------------------------------------------------ the scorer

KEY = b"unit-test-key"
FIELDS = EventFields(
    id_field="payment_id", time_field="created_at", time_encoding=T.TIMESTAMP_MICROS
)


NOW_MS = 1_780_000_100_000


def _setup(
    *, key_field: str | None = None, settings: ScoringSettings | None = None
) -> tuple[Any, BatchScorer, ModelStore]:
    reg = registry_client({"url": f"mock://payments-{id(object())}"})
    enc = AvroSerializer(reg, "payments-value", SCHEMA)
    dec = AvroDeserializer(WriterSchemaCache(reg), SCHEMA)
    pred = AvroSerializer(reg, "predictions-value", schemas.load("prediction"))
    b = payments_bundle()
    signed = sign_bundle(b.to_bytes(), KEY, "k")
    store = ModelStore()
    store.offer(Role.PRIMARY, verify_and_load(signed.payload, signed.signature, "k", {"k": KEY}))
    fields = EventFields(
        id_field=FIELDS.id_field,
        time_field=FIELDS.time_field,
        time_encoding=FIELDS.time_encoding,
        key_field=key_field,
    )
    scorer = BatchScorer(
        dec, pred, settings or ScoringSettings(), clock_ms=lambda: NOW_MS, events=fields
    )
    return enc, scorer, store


def _prediction(data: bytes) -> dict[str, Any]:
    parsed = parse(schemas.load("prediction"))
    return fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed)  # type: ignore[no-any-return]


def test_the_scorer_reads_the_configured_id_and_time_and_dead_letters_a_null_time() -> None:
    enc, scorer, store = _setup()
    events = list(payments(50, seed=3))
    events[7]["created_at"] = None
    msgs = [
        InMessage(enc(e), f"mk-{i}".encode(), "payments", 0, i, 0) for i, e in enumerate(events)
    ]
    out = scorer.score(msgs, store.snapshot())
    assert [dl.message.offset for dl in out.dead_letters] == [7]
    err = out.dead_letters[0].error
    assert isinstance(err, MissingFieldError) and err.field == "created_at"
    preds = [_prediction(v) for _, v in out.predictions]
    good = [e for i, e in enumerate(events) if i != 7]
    assert [p["event_id"] for p in preds] == [e["payment_id"] for e in good]
    assert [p["event_time"] for p in preds] == [e["created_at"] // 1000 for e in good]
    assert out.event_times_ms.tolist() == [e["created_at"] // 1000 for e in good]
    assert [p["key"] for p in preds] == [f"mk-{i}" for i in range(50) if i != 7]
    # the configured envelope is not repeated among the prediction's inputs
    assert {k for p in preds for k in p["detail"]["inputs"]} == {"account"}
    assert preds[0]["detail"]["feature_names"] == ["amount", "n_items"]


def test_the_key_field_gives_the_key() -> None:
    enc, scorer, store = _setup(key_field="account")
    events = list(payments(20, seed=4))
    msgs = [InMessage(enc(e), None, "payments", 0, i, 0) for i, e in enumerate(events)]
    out = scorer.score(msgs, store.snapshot())
    assert out.dead_letters == []
    assert [k for k, _ in out.predictions] == [e["account"].encode() for e in events]
    assert [_prediction(v)["key"] for _, v in out.predictions] == [e["account"] for e in events]


def test_late_policy_uses_the_converted_time() -> None:
    enc, scorer, store = _setup(
        settings=ScoringSettings(late_after_ms=60_000, late_policy=LatePolicy.ROUTE)
    )
    fresh = next(payments(1, seed=5, start_us=(NOW_MS - 1_000) * 1000))
    old = next(payments(1, seed=6, start_us=(NOW_MS - 120_000) * 1000))
    msgs = [InMessage(enc(e), b"k", "payments", 0, i, 0) for i, e in enumerate([fresh, old])]
    out = scorer.score(msgs, store.snapshot())
    assert [m.offset for m in out.late_routed] == [1]
    assert [_prediction(v)["event_id"] for _, v in out.predictions] == [fresh["payment_id"]]
