"""Poison messages on the real cluster (issue 10, cases 1, 3 and 9, and the fuzz test):
each ends in the dead-letter topic with its reason, every valid event around it is scored
exactly once, and no worker of the group stops."""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamscore.dev import synthetic
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from tests.avro_poison import (
    NESTED_WRITER,
    NULL_ARRAY_WRITER,
    NULLABLE_A_WRITER,
    RICH,
    chain,
    corrupt,
    deep_tree,
    event_with,
    null_array_bomb,
    random_value,
    rich_value,
    varint,
)

from .stack import Stack, WorkerProcess, wait_group_settled
from .test_score_worker import _headers, _primary_ids

PARTITIONS = 4  # the stack's events topic


def keys_for_every_partition(prefix: str) -> list[bytes]:
    """One key per partition of the events topic, under the producer's default
    partitioner (librdkafka's consistent_random: CRC32 of the key)."""
    found: dict[int, bytes] = {}
    i = 0
    while len(found) < PARTITIONS:
        key = f"{prefix}-{i}".encode()
        found.setdefault(zlib.crc32(key) % PARTITIONS, key)
        i += 1
    return [found[p] for p in range(PARTITIONS)]


def event_dicts(n: int, seed: int) -> list[dict[str, Any]]:
    return [e for e, _y in synthetic.events(n, np.random.default_rng(seed), with_c=False)]


def run_mixed(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    *,
    valid_under_writer: list[tuple[str, bytes, bytes]],
    poison: list[bytes],
    reason: str,
    error_class: str,
) -> None:
    """Valid v1 events, then valid events of the poison's writer schema and the poison
    messages (keys on every partition), then more valid v1 events, through two workers
    of one group; every count checked exactly."""
    stack.publish("ab", version=1)
    workers = [make_worker("p1"), make_worker("p2")]
    wait_group_settled(workers, PARTITIONS)
    ids = stack.produce_events(600, seed=21)
    keys = keys_for_every_partition("poison")
    mixed: list[tuple[bytes, bytes]] = []
    for i, value in enumerate(poison):
        mixed.append((keys[i % PARTITIONS], value))
        mixed.extend((k, v) for _id, k, v in valid_under_writer[i :: len(poison)])
    stack.produce_raw(mixed)
    ids += [event_id for event_id, _k, _v in valid_under_writer]
    ids += stack.produce_events(600, seed=22)
    total = len(ids) + len(poison)

    preds = stack.read(
        stack.topics.predictions, until=lambda got: set(ids) <= set(_primary_ids(stack, got))
    )
    stack.read(stack.topics.dlq, until=lambda got: len(got) >= len(poison))
    consumed = wait_consumed(workers, total)
    preds = stack.read_to_end(stack.topics.predictions)
    dlq = stack.read_to_end(stack.topics.dlq)

    for w in workers:
        assert w.proc.poll() is None, w.log()  # both still up
    scored = _primary_ids(stack, preds)
    assert scored == dict.fromkeys(ids, 1)  # every valid event once, nothing else
    assert len(dlq) == len(poison)
    assert {_headers(m)["streamscore.error.reason"] for m in dlq} == {reason}
    assert {_headers(m)["streamscore.error.class"] for m in dlq} == {error_class}
    assert sorted(m.value() for m in dlq) == sorted(poison)  # the original bytes
    assert {_headers(m)["streamscore.source.partition"] for m in dlq} == {"0", "1", "2", "3"}
    # each worker met poison on its own partitions, dead-lettered it and went on
    dead = [w.sample("streamscore_dead_letters_total", {"reason": reason}) for w in workers]
    assert all(d > 0 for d in dead) and sum(dead) == len(poison), dead
    predicted = sum(w.sample("streamscore_predictions_total", {"role": "primary"}) for w in workers)
    assert (consumed, predicted) == (total, len(ids))
    for w in workers:
        assert w.terminate() == 0


def wait_consumed(workers: list[WorkerProcess], total: int, timeout: float = 120.0) -> int:
    """Until the workers have consumed ``total`` messages (then no more come)."""
    deadline = time.monotonic() + timeout
    while True:
        consumed = int(sum(w.sample("streamscore_events_consumed_total") for w in workers))
        if consumed >= total or time.monotonic() > deadline:
            return consumed
        time.sleep(0.2)


def serializer(stack: Stack, name: str, writer: dict[str, Any]) -> AvroSerializer:
    """Registers ``writer`` in the real registry under a subject of its own."""
    return AvroSerializer(stack.registry, f"{stack.topics.events}-{name}", writer)


#: per case of the issue: the poison's writer schema, a valid record of it (for event i),
#: the poison message (from an event, with the writer's serializer), its reason and class
CASES: dict[str, tuple[Any, ...]] = {
    # case 1: fastavro alone overflows the C stack on it (SIGSEGV, on every restart)
    "case1-nested-20000-levels": (
        NESTED_WRITER,
        lambda i, e: {**e, "tree": chain(i % 12)},
        lambda ser, e: deep_tree(ser(e), 20_000),
        "too_deep",
        "NestingTooDeepError",
    ),
    # case 3: a short event whose array<null> claims 2**62 items (fastavro alone: 100 %
    # CPU for ever, offsets stuck)
    "case3-array-bomb": (
        NULL_ARRAY_WRITER,
        lambda i, e: {**e, "pad": [None] * (i % 5)},
        lambda ser, e: null_array_bomb(ser({**e, "pad": []})),
        "bad_count",
        "ClaimedCountTooLargeError",
    ),
    # case 9: writer a: ["null", "double"], reader a: double: only the nulls fail
    "case9-nullable-writer-field": (
        NULLABLE_A_WRITER,
        lambda i, e: e,
        lambda ser, e: ser({**e, "a": None}),
        "unexpected_null",
        "UnexpectedNullError",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_poison_message_is_dead_lettered_and_the_group_goes_on(
    stack: Stack, make_worker: Callable[..., WorkerProcess], case: str
) -> None:
    writer, make_valid, make_poison, reason, error_class = CASES[case]
    ser = serializer(stack, case, writer)
    valid = [
        (e["event_id"], e["key"].encode(), ser(make_valid(i, e)))
        for i, e in enumerate(event_dicts(80, seed=23))
    ]
    poison = [make_poison(ser, e) for e in event_dicts(12, seed=24)]
    run_mixed(
        stack,
        make_worker,
        valid_under_writer=valid,
        poison=poison,
        reason=reason,
        error_class=error_class,
    )


# ------------------------------------------------------------------------------- fuzz

FUZZ_MESSAGES = 10_000
HUGE = 16  # valid events with a string of 100 KB to 900 KB (each also cut short once)
V1_TYPES = {f["name"]: f["type"] for f in schemas.load("event", 1)["fields"]}
MUTABLE_TYPES: list[Any] = [
    "string",
    "long",
    "int",
    "float",
    "boolean",
    "bytes",
    ["null", "double"],
    ["string", "double"],
    ["null", "string"],
]


def mutated_writers(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """The v1 event schema with a field retyped, dropped or added, or renamed."""
    out = []
    for i in range(n):
        s = event_with(f"mutant-{i}")
        fields = s["fields"]
        kind = i % 4
        j = int(rng.integers(len(fields)))
        if kind == 0:
            fields[j]["type"] = MUTABLE_TYPES[int(rng.integers(len(MUTABLE_TYPES)))]
            fields[j].pop("default", None)
        elif kind == 1:
            del fields[j]
        elif kind == 2:
            t = MUTABLE_TYPES[int(rng.integers(len(MUTABLE_TYPES)))]
            fields.insert(j, {"name": f"extra{i}", "type": t})
        else:
            s["name"] = f"Renamed{i}"
        out.append(s)
    return out


def flip_bit(value: bytes, rng: np.random.Generator) -> bytes:
    v = bytearray(value)
    at = int(rng.integers(5, len(v)))
    v[at] ^= 1 << int(rng.integers(8))
    return bytes(v)


def test_fuzz_10000_mutated_messages_every_one_predicted_or_dead_lettered(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    """Valid events of several writer schemas (flat, nested, repeating, nullable, mutated),
    their bytes mutated (bit flips, byte changes, insertions, deletions, huge claimed
    lengths, truncation), schema ids swapped, deep nesting, array bombs and huge strings,
    through one worker: it never stops, and consumed = predicted + dead-lettered, exactly
    (counted on the topics and on /metrics). Seeded: a failure reproduces."""
    rng = np.random.default_rng(20261129)
    stack.publish("ab", version=1)
    w = make_worker("fuzz")
    writers: dict[str, dict[str, Any]] = {
        "v1": schemas.load("event", 1),
        "v2": schemas.load("event", 2),
        "nested": NESTED_WRITER,
        "null-array": NULL_ARRAY_WRITER,
        "nullable-a": NULLABLE_A_WRITER,
        "rich": RICH,
    }
    for i, s in enumerate(mutated_writers(rng, 8)):
        writers[f"mutant-{i}"] = s
    sers = {name: serializer(stack, f"fuzz-{name}", s) for name, s in writers.items()}
    ids = sorted({s.schema_id for s in sers.values()})
    names = list(sers)
    base_events = event_dicts(FUZZ_MESSAGES, seed=28)

    def valid(i: int, name: str) -> bytes:
        e = base_events[i]
        if name == "nested":
            return sers[name]({**e, "tree": chain(int(rng.integers(0, 40)))})
        if name == "null-array":
            return sers[name]({**e, "pad": [None] * int(rng.integers(0, 4))})
        if name == "nullable-a":
            return sers[name]({**e, "a": None if rng.random() < 0.3 else e["a"]})
        if name == "rich":
            return sers[name]({**e, **rich_value(rng)})
        if name.startswith("mutant"):  # the event's values where the types are v1's
            return sers[name](
                {
                    f["name"]: e[f["name"]]
                    if V1_TYPES.get(f["name"]) == f["type"]
                    else random_value(f["type"], rng)
                    for f in writers[name]["fields"]
                }
            )
        return sers[name]({**e, "c": float(rng.normal())} if name == "v2" else e)

    items: list[tuple[bytes | None, bytes | None]] = []
    clean: list[str] = []  # event ids of untouched events that must be scored
    for i in range(FUZZ_MESSAGES - 2 * HUGE):
        name = names[int(rng.integers(len(names)))]
        value = valid(i, name)
        r = rng.random()
        if r < 0.30:
            if name in ("v1", "v2", "nested", "null-array", "rich"):
                clean.append(base_events[i]["event_id"])
        elif r < 0.50:
            value = corrupt(value, rng, kinds=5)  # changed, inserted, deleted, huge length, cut
        elif r < 0.65:
            value = flip_bit(value, rng)
        elif r < 0.72:
            value = value[: int(rng.integers(0, len(value)))]
        elif r < 0.78:  # another schema's id on these bytes, or an unknown one
            sid = ids[int(rng.integers(len(ids)))] if rng.random() < 0.8 else 10**6 + i
            value = value[:1] + int(sid).to_bytes(4, "big") + value[5:]
        elif r < 0.86:
            depth = int(rng.integers(60, 30_000))
            value = deep_tree(sers["nested"]({**base_events[i], "tree": None}), depth)
        elif r < 0.92:
            count = int(rng.integers(2**20, 2**63 - 1))
            value = null_array_bomb(sers["null-array"]({**base_events[i], "pad": []}), count)
        elif r < 0.97:  # a huge claimed string length in the event id
            value = value[:5] + varint(int(rng.integers(2**20, 2**62))) + value[6:]
        else:
            value = None if rng.random() < 0.5 else b""
        key = None if rng.random() < 0.05 else base_events[i]["key"].encode()
        items.append((key, value))
    for j in range(HUGE):  # huge strings: valid, and the same cut short
        e = base_events[FUZZ_MESSAGES - 1 - j]
        big = sers["v1"]({**e, "segment": "s" * int(rng.integers(100_000, 900_000))})
        clean.append(e["event_id"])
        items.append((e["key"].encode(), big))
        items.append((e["key"].encode(), big[: int(rng.integers(5, len(big)))]))
    order = rng.permutation(len(items))
    items = [items[k] for k in order.tolist()]
    assert len(items) == FUZZ_MESSAGES
    stack.produce_raw(items)

    consumed = wait_consumed([w], FUZZ_MESSAGES)
    assert w.proc.poll() is None, w.log()
    preds = stack.read_to_end(stack.topics.predictions)
    dlq = stack.read_to_end(stack.topics.dlq)
    scored = _primary_ids(stack, preds)
    predicted = sum(scored.values())
    assert consumed == FUZZ_MESSAGES
    assert predicted + len(dlq) == FUZZ_MESSAGES, (predicted, len(dlq))
    assert w.sample("streamscore_predictions_total", {"role": "primary"}) == predicted
    assert w.sample("streamscore_dead_letters_total") == len(dlq)
    assert set(clean) <= set(scored)
    reasons = Counter(_headers(m)["streamscore.error.reason"] for m in dlq)
    # the bounds each caught something, each with its own reason
    for reason in ("too_deep", "bad_count", "bad_length", "unexpected_null", "truncated"):
        assert reasons[reason] > 0, reasons
    assert w.proc.poll() is None, w.log()
    assert w.terminate() == 0
