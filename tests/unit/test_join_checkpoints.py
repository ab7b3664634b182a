"""Checkpoints change nothing the join decides: the same randomized join-topic messages
(new predictions, labels long after them, labels first, shadows and canaries,
re-delivered predictions, duplicate labels, numeric or class labels, the same event id
twice in a batch, broken predictions, entries expiring as the watermark passes them) fed
to a loop that checkpoints only at the end, to one that checkpoints often, and to one
whose ground-truth table is away at some of those checkpoints (each fails, and what it
sealed goes back), with the checkpoints waited for or left in flight while the next batch
is joined (as the worker runs them), give the same pairs, rows, unmatched labels and
evictions batch by batch, the same state, and the same table at the end."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from streamscore.core.records import Feedback
from streamscore.feedback.groundtruth import (
    GroundTruthStore,
    GroundTruthUnavailableError,
    Sealed,
    read_rows,
)
from streamscore.feedback.join import JoinOutput
from streamscore.feedback.router import KIND_HEADER
from streamscore.feedback.state import Entry
from streamscore.metrics.series import Metrics
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import registry_client
from tests.records import nest_detail, prediction_record

from .kafka_fakes import FakeConsumer, FakeMessage, feedback_loop

T0 = 1_700_000_000_000
JOIN = "ck.join"
WINDOW = 60_000
PARTS = (0, 1)


def _messages(registry: Any, seed: int, n_events: int) -> list[list[FakeMessage]]:
    """Random join-topic traffic over two partitions, cut into consumed batches."""
    rnd = random.Random(seed)
    enc_p = AvroSerializer(registry, "p-value", schemas.load("prediction"))
    enc_f = AvroSerializer(registry, "f-value", schemas.load("feedback"))
    todo: list[tuple[float, int, bytes, bytes, str]] = []  # (arrival, partition, kind, value, id)

    def pred(k: int, at: float, t: int, role: str = "primary", version: int = 1) -> None:
        rec = nest_detail(prediction_record(f"e{k}", event_time_ms=t))
        rec |= {"role": role, "model_version": version, "value": float(k % 11)}
        raw = enc_p(rec)
        if rnd.random() < 0.01:
            raw = raw[:-2]  # broken: dead-lettered
        todo.append((at, k % 2, b"prediction", raw, f"e{k}"))

    def label(k: int, at: float, t: int) -> None:
        # one kind of label per stream (the table's label column takes the first's type)
        y: float | str = float(rnd.randrange(5)) if seed % 2 else f"c{rnd.randrange(3)}"
        raw = enc_f({"event_id": f"e{k}", "label": y, "observed_time": t})
        todo.append((at, k % 2, b"label", raw, f"e{k}"))

    for k in range(n_events):
        at = k * 3 + rnd.uniform(0, 20)
        t = T0 + k * 1000 - (rnd.randrange(90_000) if rnd.random() < 0.05 else 0)
        if rnd.random() < 0.9:
            pred(k, at, t)
            if rnd.random() < 0.15:
                pred(k, at + rnd.uniform(0, 30), t, "shadow", 2)
            if rnd.random() < 0.05:
                pred(k, at + rnd.uniform(0, 30), t, "canary", 3)
            if rnd.random() < 0.05:
                pred(k, at + rnd.uniform(0, 300), t)  # re-delivered
        if rnd.random() < 0.85:
            r = rnd.random()
            if r < 0.15:
                lag = -rnd.uniform(1, 40)  # the label first
            elif r < 0.35:
                lag = rnd.uniform(0.5, 8)  # mostly in its prediction's batch
            else:
                lag = rnd.uniform(40, 400)  # a later batch; some past the window
            seen = t + rnd.randrange(5000)
            if rnd.random() < 0.1:  # observed long before its event time (a skewed clock)
                seen = t - rnd.randrange(120_000)
            label(k, at + lag, seen)
            if rnd.random() < 0.05:
                label(k, at + lag + rnd.uniform(1, 500), t + 1)  # a duplicate
    todo.sort(key=lambda x: x[0])
    offsets = dict.fromkeys(PARTS, 0)
    msgs: list[FakeMessage] = []
    for _at, part, kind, raw, eid in todo:
        msgs.append(
            FakeMessage(
                JOIN, part, offsets[part], raw, key=eid.encode(), headers=[(KIND_HEADER, kind)]
            )
        )
        offsets[part] += 1
    out: list[list[FakeMessage]] = []
    i = 0
    while i < len(msgs):
        size = rnd.choice((7, 40, 120))
        out.append(msgs[i : i + size])
        i += size
    return out


def _unplaced(lab: Feedback) -> Feedback:
    return dataclasses.replace(lab, position=None)


def _entry(e: Entry) -> tuple[Any, ...]:
    """An entry as the changelog holds it (not how it is held: decoded or not, read
    back from the store or not)."""
    lab = e.label
    # a written entry's predictions are kept by their keys only (encode_entry)
    preds = sorted(
        (r.value, v, b"" if e.written else bytes(slot[0] or b""))
        for (r, v), slot in e.preds.items()
    )
    held = None if lab is None else (lab.label, lab.observed_time_ms)
    return (e.event_id, e.expire_at, preds, held, e.joined, e.written)


class _Run:
    """One loop over the batches, recording what each batch produces; its table can be
    made to refuse writes (``flaky``: half of them, drawn in write order, so the same
    writes fail whenever the checkpoint thread runs them)."""

    def __init__(self, registry: Any, where: Path, *, rocks: bool) -> None:
        self.where = where
        self.store = GroundTruthStore(str(where / "gt"))
        self.store.open()
        stop = threading.Event()
        self.consumer = FakeConsumer([], stop, topic=JOIN, partitions=PARTS)
        self.loop = feedback_loop(
            registry,
            self.consumer,
            self.store,
            Metrics(CollectorRegistry()),
            stop,
            window_ms=WINDOW,
            heads=True,
            state_dir=(where / "state") if rocks else None,
            cache_entries=50,
            checkpoint_s=1e9,  # checkpoints only when the test asks
            max_changes=10**9,
        )
        self.loop.join._clock = lambda: T0  # rows' joined time: one fixed clock
        self.flaky = False
        self.failed = 0
        draws = random.Random(7)
        write = self.store.write

        def maybe_write(batch: Sealed) -> Any:
            if self.flaky and draws.random() < 0.5:
                self.failed += 1
                raise GroundTruthUnavailableError("the table is away (test)")
            return write(batch)

        self.store.write = maybe_write  # type: ignore[method-assign]
        self.outputs: list[Any] = []
        apply = self.loop._apply

        def record(out: JoinOutput) -> None:
            # a label read back from the store no longer knows where it was consumed
            pairs = [dataclasses.replace(p, label=_unplaced(p.label)) for p in out.pairs]
            rows = [dataclasses.replace(r, label=_unplaced(r.label)) for r in out.rows]
            unmatched = [_unplaced(lab) for lab in out.unmatched]
            self.outputs.append((pairs, rows, unmatched, out.evicted_predictions))
            apply(out)

        self.loop._apply = record  # type: ignore[method-assign]
        self.loop._on_assign(self.consumer, [TopicPartition(JOIN, p) for p in PARTS])

    def state(self) -> Any:
        """What the join holds and has counted, comparable between runs."""
        join = self.loop.join
        parts = [
            (tp, dataclasses.astuple(s.meta)[:1] + dataclasses.astuple(s.meta)[2:], entries)
            for tp, s in sorted(join.partitions().items())
            for entries in [sorted(map(_entry, s.items()))]
        ]  # the meta but its changelog offset (how many commits there were)
        st = self.loop.stats
        return parts, dataclasses.astuple(join.stats), (st.predictions, st.labels, st.undecodable)

    def table(self) -> list[str]:
        return sorted(str(sorted(r.items())) for r in read_rows(str(self.where / "gt")))


@pytest.mark.parametrize("wait", [True, False])
@pytest.mark.parametrize(("seed", "rocks"), [(1, False), (2, True), (3, True), (4, False)])
def test_where_checkpoints_fall_and_whether_they_fail_changes_nothing(
    tmp_path: Path, seed: int, rocks: bool, wait: bool
) -> None:
    registry = registry_client({"url": f"mock://checkpoints-{seed}-{rocks}"})
    batches = _messages(registry, seed, 1500)
    at_end, often, flaky = (
        _Run(registry, tmp_path / name, rocks=rocks) for name in ("end", "often", "flaky")
    )
    flaky.flaky = True
    rnd = random.Random(seed)
    for n, batch in enumerate(batches):
        commit = rnd.random() < 0.4
        wm = (rnd.random() < 0.03) and T0 + n * 2500  # a tool moving the watermark
        for r in (at_end, often, flaky):
            r.loop._handle(list(batch))
            r.loop._after_batch()
            if wm:
                r.loop._apply(r.loop.join.advance(wm))
            if commit and r is not at_end:
                r.loop.checkpoint(wait=wait)  # else finished by the next one
        assert often.outputs[-1] == at_end.outputs[-1], f"batch {n}"
        assert flaky.outputs[-1] == at_end.outputs[-1], f"batch {n}"
        assert often.state() == at_end.state() == flaky.state(), f"batch {n}"
    flaky.flaky = False
    for r in (at_end, often, flaky):
        r.loop.checkpoint()
    assert flaky.failed >= 5  # the failures happened, with changes sealed back each time
    assert at_end.outputs == often.outputs == flaky.outputs
    assert at_end.state() == often.state() == flaky.state()
    assert at_end.table() == often.table() == flaky.table()
    assert at_end.table()  # rows were written
    assert sum(len(o[2]) for o in at_end.outputs) > 0  # and labels left unmatched
    assert sum(o[3] for o in at_end.outputs) > 0  # and predictions evicted
    for r in (at_end, often, flaky):
        assert r.consumer.commits[-1] == at_end.consumer.commits[-1]  # all consumed
