"""Randomized join-topic traffic and a feedback loop that records what it decides, for the
tests that compare two ways of running the join over the same messages
(``test_join_checkpoints``: where checkpoints fall; ``test_join_moves``: partitions
handed over, restored from their changelog, workers killed)."""

from __future__ import annotations

import dataclasses
import random
import threading
from concurrent.futures import wait
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from streamscore.core.records import Feedback
from streamscore.feedback.groundtruth import (
    GroundTruthStore,
    GroundTruthUnavailableError,
    Sealed,
    read_rows,
    read_unmatched,
)
from streamscore.feedback.join import JoinOutput
from streamscore.feedback.router import KIND_HEADER
from streamscore.feedback.state import Entry
from streamscore.metrics.series import Metrics
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from tests.records import nest_detail, prediction_record

from .kafka_fakes import FakeChangelog, FakeConsumer, FakeMessage, feedback_loop

T0 = 1_700_000_000_000
JOIN = "ck.join"
WINDOW = 60_000
PARTS = (0, 1)


def messages(registry: Any, seed: int, n_events: int) -> list[list[FakeMessage]]:
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


def unplaced(lab: Feedback) -> Feedback:
    return dataclasses.replace(lab, position=None)


def entry_view(e: Entry) -> tuple[Any, ...]:
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


class JoinRun:
    """A feedback loop over the batches, recording what each batch produces (``outputs``;
    ``replayed``: what messages consumed again produced). Its table can be made to
    refuse writes (``flaky``: half of those sealed meanwhile, drawn as they are sealed,
    so the same writes fail whenever the checkpoint thread runs them). With a
    ``changelog``, the worker can be killed (:meth:`crash`), lose its partitions
    (:meth:`lose`) and hand them over (:meth:`hand_over`), to this worker again or to a
    new one on another host."""

    def __init__(
        self,
        registry: Any,
        where: Path,
        *,
        rocks: bool,
        changelog: FakeChangelog | None = None,
    ) -> None:
        self.registry, self.where, self.rocks, self.changelog = registry, where, rocks, changelog
        self.flaky = False
        self.failed = 0
        self._draws = random.Random(7)
        self.outputs: list[Any] = []
        self.replayed: list[Any] = []
        self._recording = self.outputs
        self.hosts = 0
        self._build()

    def _build(self) -> None:
        """A worker (store, consumer, loop) on a host of its own, assigned every partition."""
        state = self.where / f"state-{self.hosts}"
        self.hosts += 1
        # the store's wall clock is the join's: the rows it wrote are recent, as they are
        # in a worker (the rows a restart reads again are known written)
        self.store = GroundTruthStore(str(self.where / "gt"), wall_clock=lambda: T0)
        self.store.open()
        seal, write = self.store.seal, self.store.write
        doomed: set[int] = set()  # the sealed batches whose write will fail

        def sealing() -> Sealed:
            # drawn when the checkpoint starts (on this thread), not when its write runs
            # (on the checkpoint thread): the same writes fail in every run
            batch = seal()
            if self.flaky and self._draws.random() < 0.5:
                doomed.add(id(batch))
            return batch

        def maybe_write(batch: Sealed) -> Any:
            if id(batch) in doomed:
                doomed.discard(id(batch))
                self.failed += 1
                raise GroundTruthUnavailableError("the table is away (test)")
            return write(batch)

        self.store.seal = sealing  # type: ignore[method-assign]
        self.store.write = maybe_write  # type: ignore[method-assign]
        stop = threading.Event()
        self.consumer = FakeConsumer([], stop, topic=JOIN, partitions=PARTS)
        self.consumer.consumer_group_metadata = lambda: "group"  # type: ignore[attr-defined]
        self.loop = feedback_loop(
            self.registry,
            self.consumer,
            self.store,
            Metrics(CollectorRegistry()),
            stop,
            window_ms=WINDOW,
            heads=True,
            state_dir=state if self.rocks else None,
            changelog=self.changelog,
            cache_entries=50,
            checkpoint_s=1e9,  # checkpoints only when the test asks
            max_changes=10**9,
        )
        self.loop.join._clock = lambda: T0  # rows' joined time: one fixed clock
        apply = self.loop._apply

        def record(out: JoinOutput) -> None:
            # a label read back from the store no longer knows where it was consumed
            pairs = [dataclasses.replace(p, label=unplaced(p.label)) for p in out.pairs]
            rows = [dataclasses.replace(r, label=unplaced(r.label)) for r in out.rows]
            unmatched = [unplaced(lab) for lab in out.unmatched]
            self._recording.append((pairs, rows, unmatched, out.evicted_predictions))
            apply(out)

        self.loop._apply = record  # type: ignore[method-assign]
        self.loop._on_assign(self.consumer, self._all())

    @staticmethod
    def _all() -> list[TopicPartition]:
        return [TopicPartition(JOIN, p) for p in PARTS]

    def feed(self, batch: list[FakeMessage], *, replay: bool = False) -> None:
        """One consumed batch through the loop (``replay``: one consumed again)."""
        self._recording = self.replayed if replay else self.outputs
        try:
            self.loop._handle(list(batch))
            self.loop._after_batch()
        finally:
            self._recording = self.outputs

    def resumes(self) -> dict[int, int]:
        """Where each partition's state resumes (the beginning when it has none)."""
        parts = self.loop.join.partitions()
        return {p: max(0, parts[(JOIN, p)].meta.input_offset) for p in PARTS}

    def crash(self) -> None:
        """The worker killed, and a new one started on the same host (RocksDB) or a new
        one (in memory). What the checkpoint thread had done stays (the table's rows, the
        changelog's transaction); what the loop had not yet applied to the local stores
        is lost with it; the stores hold what was applied (flushed here: a store whose
        memtables were lost is only further behind its changelog)."""
        inflight = self.loop._inflight
        if inflight is not None:
            wait([inflight.future])
        self.loop._checkpoints.shutdown(wait=True)
        for s in self.loop.join.partitions().values():
            s.close()
        self.hosts -= 1  # the same host: its state directory
        self._build()

    def hand_over(self, *, new_host: bool) -> None:
        """A rebalance: every partition revoked (checkpointed, closed), then assigned
        again, to this worker or to a new one on another host (an empty state
        directory: restored from the changelog)."""
        self.loop._on_revoke(self.consumer, self._all())
        self._assign_again(new_host=new_host)

    def lose(self, *, new_host: bool) -> None:
        """Every partition lost (the session timed out: no checkpoint, the state rolled
        back to the last one), then assigned again, to this worker or to a new one."""
        self.loop._on_lost(self.consumer, self._all())
        self._assign_again(new_host=new_host)

    def _assign_again(self, *, new_host: bool) -> None:
        if new_host:
            self.loop._checkpoints.shutdown(wait=True)
            self._build()
        else:
            self.loop._on_assign(self.consumer, self._all())

    def state(self, *, counts: bool = True) -> Any:
        """What the join holds (and, with ``counts``, has counted), comparable between
        runs; the meta but its changelog offset (how many commits there were)."""
        join = self.loop.join
        parts = [
            (tp, dataclasses.astuple(s.meta)[:1] + dataclasses.astuple(s.meta)[2:], entries)
            for tp, s in sorted(join.partitions().items())
            for entries in [sorted(map(entry_view, s.items()))]
        ]
        if not counts:
            return parts
        st = self.loop.stats
        return parts, dataclasses.astuple(join.stats), (st.predictions, st.labels, st.undecodable)

    def table(self) -> list[str]:
        return sorted(str(sorted(r.items())) for r in read_rows(str(self.where / "gt")))

    def unmatched(self) -> list[str]:
        return sorted(str(sorted(r.items())) for r in read_unmatched(str(self.where / "gt")))
