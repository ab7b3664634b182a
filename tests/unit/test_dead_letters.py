"""The one dead-letter builder: its headers byte for byte, whatever the message came as."""

from __future__ import annotations

from streamscore.core import errors
from streamscore.kafka.dead_letters import (
    Consumed,
    dead_letter,
    fit,
    source_headers,
)
from streamscore.kafka.output_limits import wire_size
from streamscore.score.batch import InMessage

from .kafka_fakes import FakeMessage

_ERROR = errors.OutOfRangeError("a = 1000000.0 is above 100.0", field="a")

_EXPECTED = [
    ("streamscore.error.class", b"OutOfRangeError"),
    ("streamscore.error.reason", b"out_of_range"),
    ("streamscore.error.message", b"a = 1000000.0 is above 100.0"),
    ("streamscore.source.topic", b"events"),
    ("streamscore.source.partition", b"3"),
    ("streamscore.source.offset", b"42"),
    ("streamscore.source.timestamp", b"7"),
    ("streamscore.worker.id", b"w1"),
    ("streamscore.model.version", b"5"),
    ("streamscore.error.field", b"a"),
]


def test_a_scored_message_and_a_consumed_one_get_the_same_record() -> None:
    scored = InMessage(b"\x00body", b"k", "events", 3, 42, 7)
    consumed = FakeMessage("events", 3, 42, b"\x00body", key=b"k", timestamp_ms=7)
    for out in (
        dead_letter(scored, _ERROR, dlq_topic="dlq", worker_id="w1", model_version=5),
        dead_letter(Consumed(consumed), _ERROR, dlq_topic="dlq", worker_id="w1", model_version=5),
    ):
        assert (out.topic, out.key, out.value) == ("dlq", b"k", b"\x00body")
        assert out.headers == _EXPECTED


def test_no_model_version_no_field_and_a_long_message_cut_to_1000_bytes() -> None:
    err = errors.MagicByteError("x" * 5000, magic=1)
    consumed = Consumed(FakeMessage("labels", 0, 9, b"junk", timestamp_ms=11))
    out = dead_letter(consumed, err, dlq_topic="d", worker_id="fb")
    h = dict(out.headers or [])
    assert h["streamscore.model.version"] == b""
    assert "streamscore.error.field" not in h
    assert h["streamscore.error.message"] == b"x" * 1000
    assert out.key is None


def test_a_dead_letter_larger_than_the_limit_is_cut_with_headers_saying_so() -> None:
    src = InMessage(b"v" * 50_000, b"k", "events", 0, 1, 2)
    whole = dead_letter(src, _ERROR, dlq_topic="dlq", worker_id="w1", limit=None)
    assert whole.value == src.value
    cut = dead_letter(src, _ERROR, dlq_topic="dlq", worker_id="w1", limit=10_000)
    assert cut.value == src.value[: len(cut.value or b"")] and len(cut.value or b"") < 10_000
    h = dict(cut.headers or [])
    assert h["streamscore.truncated"] == b"true"
    assert h["streamscore.original.size"] == b"50000"
    assert wire_size(cut.key, cut.value, cut.headers) <= 10_000
    # the same as fitting the uncut record by hand
    assert (cut.key, cut.value, cut.headers) == fit(
        whole.key, whole.value, whole.headers or [], 10_000
    )


def test_source_headers_are_the_dead_letters_source_prefix() -> None:
    assert source_headers("events", 3, 42) == _EXPECTED[3:6]
