"""Score workers against the real broker and registry: reconciliation, bad input, crashes,
rebalances and metrics."""

from __future__ import annotations

import copy
import math
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer

from .stack import Stack, WorkerProcess


def _headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


_primary_ids = Stack.primary_ids


def test_two_workers_score_100k_events_and_counts_reconcile(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    w1 = make_worker("w1")
    w2 = make_worker("w2")
    valid_ids = stack.produce_events(100_000)
    bad = [(b"k", b"\x00\x00\x00\x00"), (b"k", b"not avro at all")] * 50
    stack.produce_raw(bad)
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 100_000)
    dlq = stack.read(stack.topics.dlq, until=lambda got: len(got) >= 100)

    ids = _primary_ids(stack, preds)
    assert set(ids) == set(valid_ids)
    assert max(ids.values()) == 1  # no crash, so no duplicate either
    assert len(dlq) == 100
    assert Counter(_headers(m)["streamscore.error.class"] for m in dlq) == {
        "TruncatedMessageError": 50,
        "MagicByteError": 50,
    }
    # both workers took part (4 partitions, 2 members)
    consumed = [w.sample("streamscore_events_consumed_total") for w in (w1, w2)]
    assert all(c > 0 for c in consumed), consumed
    # /metrics over HTTP matches the reconciled counts: consumed = predicted + dead-lettered
    assert sum(consumed) == 100_100
    predicted = sum(
        w.sample("streamscore_predictions_total", {"role": "primary"}) for w in (w1, w2)
    )
    dead = sum(w.sample("streamscore_dead_letters_total") for w in (w1, w2))
    assert predicted == 100_000
    assert dead == 100
    assert w1.terminate() == 0
    assert w2.terminate() == 0


def _writer_without(field: str) -> dict[str, Any]:
    s = copy.deepcopy(schemas.load("event", 1))
    s["fields"] = [f for f in s["fields"] if f["name"] != field]
    s["name"] = "EventWithout" + field.upper()
    return s


def _writer_with_type(field: str, avro_type: str) -> dict[str, Any]:
    s = copy.deepcopy(schemas.load("event", 1))
    next(f for f in s["fields"] if f["name"] == field)["type"] = avro_type
    s["name"] = "EventWrong" + field.upper()
    return s


def test_fuzz_every_kind_of_bad_input_lands_in_the_dlq_with_its_class(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    w = make_worker("fuzz")
    per_kind = 1000
    base = {
        "event_id": "x",
        "key": "k",
        "event_time": int(time.time() * 1000),
        "a": -30.0,
        "b": 40.0,
        "segment": None,
    }
    v1 = stack.event_serializer(1)
    no_b = AvroSerializer(stack.registry, f"{stack.topics.events}-nob", _writer_without("b"))
    a_str = AvroSerializer(
        stack.registry, f"{stack.topics.events}-astr", _writer_with_type("a", "string")
    )
    good_body = v1(base)
    kinds: dict[str, Callable[[int], bytes]] = {
        "MagicByteError": lambda i: bytes([1 + i % 200]) + good_body[1:],
        "TruncatedMessageError": lambda i: good_body[: 5 + i % (len(good_body) - 6)],
        "UnknownSchemaError": lambda i: b"\x00" + struct.pack(">I", 900_000 + i) + good_body[5:],
        "WriterTypeMismatchError": lambda i: a_str({**base, "event_id": f"t{i}", "a": f"{i}"}),
        "WriterMissingFieldError": lambda i: no_b(
            {k: v for k, v in {**base, "event_id": f"m{i}"}.items() if k != "b"}
        ),
        "NonFiniteError": lambda i: v1(
            {**base, "event_id": f"n{i}", "a": [math.nan, math.inf, -math.inf][i % 3]}
        ),
        "OutOfRangeError": lambda i: v1({**base, "event_id": f"r{i}", "a": 1e6 + i}),
        "EmptyMessageError": lambda i: b"",
    }
    items: list[tuple[bytes, bytes]] = []
    for i in range(per_kind):
        for make in kinds.values():
            items.append((b"fuzz", make(i)))
    stack.produce_raw(items)
    valid_ids = stack.produce_events(2000, seed=5)
    expected_bad = per_kind * len(kinds)
    dlq = stack.read(stack.topics.dlq, until=lambda got: len(got) >= expected_bad)
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 2000)

    assert w.proc.poll() is None, w.log()  # still up
    by_class = Counter(_headers(m)["streamscore.error.class"] for m in dlq)
    # a cut right after a string's length byte: that length is past the end (a kind of
    # truncation, with its own reason)
    assert 0 < by_class["ClaimedLengthTooLargeError"] < per_kind // 4
    by_class["TruncatedMessageError"] += by_class.pop("ClaimedLengthTooLargeError")
    assert by_class == {k: per_kind for k in kinds}
    assert set(_primary_ids(stack, preds)) == set(valid_ids)
    # original bytes untouched, source coordinates present
    sample = dlq[0]
    h = _headers(sample)
    assert h["streamscore.source.topic"] == stack.topics.events
    assert int(h["streamscore.source.offset"]) >= 0
    assert h["streamscore.model.version"] == "1"
    originals = {v for _k, v in items}
    assert all((m.value() or b"") in originals for m in dlq)
    fields = {
        _headers(m).get("streamscore.error.field")
        for m in dlq
        if _headers(m)["streamscore.error.class"] == "WriterMissingFieldError"
    }
    assert fields == {"b"}
    assert w.sample("streamscore_invalid_events_total", {"reason": "non_finite"}) == per_kind
    assert w.terminate() == 0


def _crash_and_restart(
    stack: Stack, make_worker: Callable[..., WorkerProcess], *args: str
) -> tuple[list[str], Counter[str]]:
    stack.publish("ab", version=1)
    w = make_worker("crashy", *args)
    ids = stack.produce_events(30_000, seed=1)
    # let it get going, then SIGKILL mid-stream
    deadline = time.monotonic() + 60
    while w.sample("streamscore_events_consumed_total") < 5_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.kill()
    ids += stack.produce_events(10_000, seed=2)
    w2 = make_worker("crashy", *args)  # same worker id: fences the zombie in EOS mode
    preds = stack.read(
        stack.topics.predictions,
        until=lambda got: set(ids) <= set(_primary_ids(stack, got)),
        timeout=120,
    )
    assert w2.terminate() == 0
    return ids, _primary_ids(stack, preds)


def test_sigkill_at_least_once_loses_nothing(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    ids, got = _crash_and_restart(stack, make_worker)
    assert set(ids) <= set(got)


def test_sigkill_exactly_once_loses_nothing_and_duplicates_nothing(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    ids, got = _crash_and_restart(stack, make_worker, "--exactly-once")
    assert set(ids) == set(got)
    dupes = {k: v for k, v in got.items() if v > 1}
    assert dupes == {}


def test_rebalance_second_worker_joins_and_leaves(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    w1 = make_worker("r1")
    ids = stack.produce_events(20_000, seed=3)
    w2 = make_worker("r2")
    ids += stack.produce_events(20_000, seed=4)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (w1.owned_partitions() and w2.owned_partitions()):
        time.sleep(0.5)
    o1, o2 = w1.owned_partitions(), w2.owned_partitions()
    assert o1 and o2, (o1, o2)
    assert not o1 & o2  # lag series only for the partitions each one owns
    assert o1 | o2 == {"0", "1", "2", "3"}
    assert w2.terminate() == 0  # leaves: its partitions go back to w1
    ids += stack.produce_events(20_000, seed=6)
    preds = stack.read(
        stack.topics.predictions,
        until=lambda got: set(ids) <= set(_primary_ids(stack, got)),
    )
    assert set(ids) <= set(_primary_ids(stack, preds))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and w1.owned_partitions() != {"0", "1", "2", "3"}:
        time.sleep(0.5)
    assert w1.owned_partitions() == {"0", "1", "2", "3"}
    assert w1.terminate() == 0
