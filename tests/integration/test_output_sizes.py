"""Issue 10, case 2: messages larger than the output topics take, on the real cluster.

The events topic takes 4 MB records; the dead-letter and predictions topics Kafka's
default (about 1 MB). A 3 MB event that is not valid is dead-lettered cut to
fit, with headers saying so; a valid event carrying a 2 MB string (a field the model
does not use, which its prediction carries in ``inputs``) is dead-lettered as
``output_too_large``. Every valid event around them is scored exactly once, and both
workers of the group stay up."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from .stack import Stack, WorkerProcess, wait_group_settled
from .test_score_worker import _headers, _primary_ids

EVENTS_MAX = 4 * 1024 * 1024
KAFKA_DEFAULT = 1_048_588  # Kafka's default message.max.bytes


def _event(i: int, *, segment: str, a: float) -> dict[str, Any]:
    return {
        "event_id": f"big-{i}",
        "key": f"big-key-{i}",
        "event_time": int(time.time() * 1000),
        "a": a,
        "b": 40.0,
        "segment": segment,
    }


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_oversized_inputs_and_predictions_are_dead_lettered_and_nothing_else_changes(
    stack: Stack,
    make_topic: Callable[..., str],
    make_worker: Callable[..., WorkerProcess],
    mode: str,
) -> None:
    # the local broker's own default is large (it serves the model topic): the outputs
    # are given Kafka's default limit, the events topic a larger one
    stack.topics = dataclasses.replace(
        stack.topics,
        events=make_topic(4, max_message_bytes=EVENTS_MAX),
        predictions=make_topic(4, max_message_bytes=KAFKA_DEFAULT),
        dlq=make_topic(1, max_message_bytes=KAFKA_DEFAULT),
    )
    stack.publish("ab", version=1)
    args = ["--exactly-once"] if mode == "exactly-once" else []
    w1 = make_worker("big1", *args)
    w2 = make_worker("big2", *args)
    # both own a share before traffic starts (else the first may drain it all alone)
    wait_group_settled([w1, w2], 4)

    valid = stack.produce_events(1000, seed=11)
    ser = stack.event_serializer(1)
    # (a) 3 MB events that are not valid (a out of range): dead letters too large whole
    invalid = [ser(_event(i, segment="x" * 3_000_000, a=1e6)) for i in range(3)]
    # (b) valid events with a 2 MB string: their predictions are too large
    too_large = [ser(_event(10 + i, segment="y" * 2_000_000, a=-30.0)) for i in range(3)]
    originals = {f"big-key-{i}".encode(): v for i, v in enumerate(invalid)}
    originals |= {f"big-key-{10 + i}".encode(): v for i, v in enumerate(too_large)}
    stack.produce_raw(originals.items(), max_message_bytes=EVENTS_MAX + 65_536)
    valid += stack.produce_events(1000, seed=12)

    dlq = stack.read(stack.topics.dlq, until=lambda got: len(got) >= 6, timeout=180)
    preds = stack.read(
        stack.topics.predictions,
        until=lambda got: len(got) >= len(valid),
        timeout=180,
    )
    for w in (w1, w2):
        assert w.proc.poll() is None, w.log()  # both still up

    ids = _primary_ids(stack, preds)
    assert set(ids) == set(valid)
    assert max(ids.values()) == 1  # exactly once each: nothing re-produced
    assert len(preds) == len(valid)

    assert len(dlq) == 6
    reasons = Counter(_headers(m)["streamscore.error.reason"] for m in dlq)
    assert reasons == {"out_of_range": 3, "output_too_large": 3}
    for m in dlq:
        h = _headers(m)
        original = originals[m.key()]
        # too large to dead-letter whole: cut to fit the 1 MB topic, and said so
        assert h["streamscore.truncated"] == "true"
        assert int(h["streamscore.original.size"]) == len(original)
        assert 0 < len(m.value()) < KAFKA_DEFAULT
        assert original.startswith(m.value())
        assert h["streamscore.source.topic"] == stack.topics.events
        assert 0 <= int(h["streamscore.source.partition"]) < 4
        assert int(h["streamscore.source.offset"]) >= 0
    too_large_dl = [m for m in dlq if _headers(m)["streamscore.error.reason"] == "output_too_large"]
    assert {m.key() for m in too_large_dl} == {f"big-key-{10 + i}".encode() for i in range(3)}
    assert all(
        _headers(m)["streamscore.error.class"] == "OutputTooLargeError" for m in too_large_dl
    )

    # /metrics: consumed = predicted + dead-lettered, exactly
    total = len(valid) + 6
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        consumed = sum(w.sample("streamscore_events_consumed_total") for w in (w1, w2))
        if consumed >= total:
            break
        time.sleep(0.2)
    assert consumed == total
    predicted = sum(
        w.sample("streamscore_predictions_total", {"role": "primary"}) for w in (w1, w2)
    )
    dead = {
        r: sum(w.sample("streamscore_dead_letters_total", {"reason": r}) for w in (w1, w2))
        for r in ("out_of_range", "output_too_large")
    }
    assert predicted == len(valid)
    assert dead == {"out_of_range": 3, "output_too_large": 3}
    assert all(w.sample("streamscore_events_consumed_total") > 0 for w in (w1, w2))
    # the limits were read from the topics (the DLQ keeps the broker's default)
    logs = w1.log_path.read_text() + w2.log_path.read_text()
    assert f"'{stack.topics.dlq}': {KAFKA_DEFAULT}" in logs
    assert w1.terminate() == 0
    assert w2.terminate() == 0
