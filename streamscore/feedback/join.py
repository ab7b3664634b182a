"""Label <-> prediction join for the feedback worker. Pure: no Kafka imports.

The feedback worker reads the **join topic** (predictions and labels re-keyed by event id,
:mod:`streamscore.feedback.router`). :class:`JoinState` matches them by event id:

* A label joins *every* prediction of its event (primary, canary, shadow) that arrives
  within the window, whatever the order: a label may come before its prediction, long
  after it (days, weeks: the window is a duration), or never; a prediction may never get
  a label.
* The window is measured in event time against a **watermark per join partition**: the
  largest prediction event time seen on that partition (the Kafka Streams "stream time"
  of a task). A prediction waits for its label until ``watermark > event_time + window``;
  a label that has found no prediction waits until ``watermark > observed_time + window``
  and is then *unmatched* (kept, never dropped: the caller writes it to the store's
  unmatched area). Labels do not move the watermark. Expiry is checked as each message
  is applied, so replaying a partition from a committed state gives the same results.
* The state of each partition lives in a :class:`~streamscore.feedback.state.PartitionState`
  (RocksDB on disk with a bounded in-memory cache, mirrored to a changelog topic): memory
  is bounded whatever the number of pending predictions.
* Exactly one ground-truth row per event id: it is built when the label meets the
  *answering* prediction (primary, or canary for canary keys) and carries that
  prediction's value, version, scored vector and the event's raw inputs. A label that
  met only shadow predictions gets its row (from the shadow) when its entry expires.
  Labels whose event id is already in the store (``already_written``) or already in the
  state are *duplicates*, not joined again; a re-delivered prediction is ignored. A label
  whose row the store has but whose entry holds no label (consumed again after a restart
  or a rollback) leaves its entry as it was when the row was made, joined and written:
  its predictions pair with it and none waits for a label.

Reconciliation (also exposed by :class:`JoinStats`)::

    labels received + restored == joined + unmatched + duplicate + released + pending labels

where *restored* counts the pending labels found in a partition's state when it was
opened, and *released* those handed over with a partition on a rebalance (they stay in
its state, for the next owner).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.records import (
    Feedback,
    JoinedRow,
    Position,
    Prediction,
    Role,
    make_joined_row,
    positional_maker,
)
from .state import DecodePrediction, Entry, PartitionState

DEFAULT_WINDOW_MS = 3_600_000
#: the partition of messages without a position (tests feeding the join directly)
NO_PARTITION: tuple[str, int] = ("", -1)


@dataclass(frozen=True, slots=True)
class JoinedPair:
    """One label matched with one prediction of its event."""

    label: Feedback
    prediction: Prediction
    #: True for the first pair of this label (label-level accounting: delay, counts).
    first_for_label: bool = False

    @property
    def delay_ms(self) -> int:
        return self.label.observed_time_ms - self.prediction.event_time_ms


_make_pair = positional_maker(JoinedPair)
#: the roles as module names: an enum member read off its class costs ten times as much
_PRIMARY, _CANARY, _SHADOW = Role.PRIMARY, Role.CANARY, Role.SHADOW


@dataclass(slots=True)
class JoinOutput:
    pairs: list[JoinedPair] = field(default_factory=list)
    rows: list[JoinedRow] = field(default_factory=list)
    unmatched: list[Feedback] = field(default_factory=list)
    evicted_predictions: int = 0
    #: the event ids of ``rows``: written as far as the join is concerned, before the
    #: caller hands them to the store (a label later in the same batch is a duplicate,
    #: whatever the batch's size)
    row_ids: set[str] = field(default_factory=set)

    def extend(self, other: JoinOutput) -> None:
        self.pairs.extend(other.pairs)
        self.rows.extend(other.rows)
        self.unmatched.extend(other.unmatched)
        self.evicted_predictions += other.evicted_predictions
        self.row_ids |= other.row_ids


@dataclass(slots=True)
class JoinStats:
    received: int = 0
    restored: int = 0
    joined: int = 0
    unmatched: int = 0
    duplicate: int = 0
    released: int = 0
    pending_labels: int = 0
    pending_predictions: int = 0  # predictions held without a label

    def reconciles(self) -> bool:
        return self.received + self.restored == (
            self.joined + self.unmatched + self.duplicate + self.released + self.pending_labels
        )


def build_row(
    label: Feedback,
    answer: Prediction,
    scored_by: Iterable[tuple[Role, int]],
    joined_time_ms: int,
) -> JoinedRow:
    """The ground-truth row of ``label`` answered by ``answer``; ``scored_by``: the
    (role, model version) of every prediction of its event (``answer``'s among them),
    whose shadow versions the row names. Keys only: no stored prediction is decoded for
    them."""
    mine = (answer.role, answer.model_version)
    shadows = {r.value: v for r, v in scored_by if r is _SHADOW and (r, v) != mine}
    return make_joined_row(label, answer, joined_time_ms, shadows)


def _answer_of(preds: Iterable[Prediction]) -> Prediction | None:
    best: Prediction | None = None
    for p in preds:
        if p.role is _PRIMARY:
            return p
        if p.role is _CANARY:
            best = p
    return best


def _no_decoder(_raw: bytes) -> Prediction:
    raise RuntimeError("a stored prediction needs the join's decode_prediction")


class JoinState:
    """Windowed join of labels and predictions by event id, over one
    :class:`PartitionState` per join partition (see module doc)."""

    def __init__(
        self,
        window_ms: int = DEFAULT_WINDOW_MS,
        *,
        already_written: Callable[[str], bool] = lambda _eid: False,
        decode_prediction: DecodePrediction = _no_decoder,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        self.window_ms = window_ms
        self._already_written = already_written
        self._decode = decode_prediction
        self._clock = clock
        self._parts: dict[tuple[str, int], PartitionState] = {}
        self._ready: dict[bytes, Prediction] = {}
        self.stats = JoinStats()

    def __len__(self) -> int:
        return sum(1 for s in self._parts.values() for _ in s.items())

    @property
    def watermark_ms(self) -> int | None:
        wms = [s.meta.watermark for s in self._parts.values() if s.meta.watermark >= 0]
        return max(wms) if wms else None

    # ------------------------------------------------------------- partitions
    def open_partition(self, tp: tuple[str, int], state: PartitionState) -> None:
        """Join ``tp``'s messages on ``state`` (restored by the caller)."""
        old = self._parts.pop(tp, None)
        if old is not None:
            self._forget(old)
            old.close()
        self._parts[tp] = state
        self.stats.restored += state.meta.pending_labels
        self.stats.pending_labels += state.meta.pending_labels
        self.stats.pending_predictions += state.meta.pending_predictions

    def close_partition(self, tp: tuple[str, int]) -> None:
        """Hand ``tp`` over (after a commit): its pending labels are *released*."""
        state = self._parts.pop(tp, None)
        if state is not None:
            self.stats.released += state.meta.pending_labels
            self._forget(state)
            state.close()

    def _forget(self, state: PartitionState) -> None:
        self.stats.pending_labels -= state.meta.pending_labels
        self.stats.pending_predictions -= state.meta.pending_predictions

    def partitions(self) -> dict[tuple[str, int], PartitionState]:
        return self._parts

    def partition(self, tp: tuple[str, int]) -> PartitionState:
        s = self._parts.get(tp)
        if s is None:
            s = PartitionState(None)
            self._parts[tp] = s
        return s

    def _part_of(self, pos: Position | None) -> PartitionState:
        tp = NO_PARTITION if pos is None else (pos[0], pos[1])
        s = self._parts.get(tp)
        return s if s is not None else self.partition(tp)

    def consumed(self, pos: Position) -> None:
        """``pos`` was applied (whatever it was): the partition resumes after it."""
        s = self._parts.get((pos[0], pos[1]))
        if s is not None and pos[2] >= s.meta.input_offset:
            s.meta.input_offset = pos[2] + 1

    def prefetch(self, tp: tuple[str, int], eids: Iterable[str]) -> None:
        """The entries of a batch's event ids on ``tp`` read from its store at once
        (:meth:`PartitionState.prefetch`) before its messages are applied."""
        s = self._parts.get(tp)
        if s is not None:
            s.prefetch(eids)

    def needs_commit(self, max_changes: int | None = None) -> bool:
        """Time to commit, by the changes held in memory over every partition (those of
        a commit in flight included), which ``max_changes`` bounds: a commit starts once
        the new ones pass half of it (the other half gathers while it is written), and
        also when new and in-flight ones together pass it. None: when a partition's
        changes outgrow its cache."""
        if max_changes is not None:
            parts = self._parts.values()
            new = sum(s.dirty for s in parts)
            return 2 * new > max_changes or new + sum(s.sealed for s in parts) > max_changes
        return any(s.dirty > s.cache_entries for s in self._parts.values())

    # ------------------------------------------------------------------ inputs
    def add_prediction(
        self, p: Prediction, raw: bytes = b"", *, out: JoinOutput | None = None
    ) -> JoinOutput:
        """Apply one prediction; what it settles is added to ``out`` (a new output by
        default), which is returned."""
        if out is None:
            out = JoinOutput()
        self.add_head(p.event_id, p.event_time_ms, p.role, p.model_version, raw, p.position, out, p)
        return out

    def add_head(
        self,
        event_id: str,
        event_time_ms: int,
        role: Role,
        model_version: int,
        raw: bytes,
        position: Position | None,
        out: JoinOutput,
        p: Prediction | None = None,
    ) -> None:
        """Apply one prediction known by its head fields and its wire bytes (checked
        whole by the caller): it is decoded only if a label waits for it, or when its
        label arrives (as a stored one is). ``p``: the prediction, decoded already."""
        part = self._part_of(position)
        e = part.get(event_id)
        if e is None:
            e = Entry(event_id, event_time_ms + self.window_ms)
        k = (role, model_version)
        if k not in e.preds:  # else a re-delivered prediction: nothing new
            if not e.preds:  # the first prediction sets the entry's window
                e.expire_at = event_time_ms + self.window_ms
                part.schedule(e)
            slot: list[Any] = [raw, p]
            e.preds[k] = slot
            if e.label is None:
                self.stats.pending_predictions += 1
                part.meta.pending_predictions += 1
            else:
                full = self._pred(slot)
                out.pairs.append(_make_pair(e.label, full, not e.joined))
                self._mark_joined(part, e)
                if not e.written and role is not _SHADOW:
                    self._write(e, full, out)
            part.put(e)
        if event_time_ms > part.meta.watermark:
            part.meta.watermark = event_time_ms
            if event_time_ms > part.next_expiry():
                self._expire(part, out)

    def add_label(self, lab: Feedback, *, out: JoinOutput | None = None) -> JoinOutput:
        """Apply one label; what it settles is added to ``out`` (a new output by
        default), which is returned."""
        if out is None:
            out = JoinOutput()
        self.stats.received += 1
        part = self._part_of(lab.position)
        e = part.get(lab.event_id)
        if e is not None and e.label is not None:
            self.stats.duplicate += 1
            return out
        if lab.event_id in out.row_ids or self._already_written(lab.event_id):
            self._settled(part, e, lab, out)
            return out
        if e is None:
            e = Entry(lab.event_id, lab.observed_time_ms + self.window_ms)
            part.schedule(e)
        e.label = lab
        part.put(e)
        if not e.preds:
            self.stats.pending_labels += 1
            part.meta.pending_labels += 1
            return out
        self.stats.pending_predictions -= len(e.preds)
        part.meta.pending_predictions -= len(e.preds)
        preds = [self._pred(slot) for slot in e.preds.values()]
        first = True
        for p in preds:
            out.pairs.append(_make_pair(lab, p, first))
            first = False
        self._mark_joined(part, e, was_pending=False)
        answer = _answer_of(preds)
        if answer is not None:
            self._write(e, answer, out)
        return out

    def advance(self, watermark_ms: int | None = None) -> JoinOutput:
        """Expire every entry whose window has passed; ``watermark_ms`` moves every
        partition's watermark forward (tests, tools; it never moves back)."""
        out = JoinOutput()
        for part in list(self._parts.values()):
            if watermark_ms is not None and watermark_ms > part.meta.watermark:
                part.meta.watermark = watermark_ms
            if part.meta.watermark >= 0:
                self._expire(part, out)
        return out

    def clear(self) -> int:
        """Drop every partition (tests). Returns the pending labels released."""
        before = self.stats.released
        for tp in list(self._parts):
            self.close_partition(tp)
        return self.stats.released - before

    # --------------------------------------------------------------- internals
    def predecode(self, raws: dict[bytes, Prediction]) -> None:
        """Predictions about to be joined, decoded by the caller at once (the batch
        being applied): a stored prediction with these bytes is taken from here instead
        of being decoded alone. Replaces the previous batch's."""
        self._ready = raws

    def peek(self, tp: tuple[str, int], eid: str) -> Entry | None:
        """The entry of ``eid`` on ``tp``, to look at (not to change)."""
        s = self._parts.get(tp)
        return None if s is None else s.get(eid)

    def _pred(self, slot: list[Any]) -> Prediction:
        p = slot[1]
        if p is None:
            raw = slot[0]
            p = self._ready.get(raw) if self._ready else None
            if p is None:
                p = self._decode(raw)
            slot[1] = p
        assert isinstance(p, Prediction)
        return p

    def _expire(self, part: PartitionState, out: JoinOutput) -> None:
        for e in part.expired(part.meta.watermark):
            self._evict(part, e, out)

    def _mark_joined(self, part: PartitionState, e: Entry, *, was_pending: bool = True) -> None:
        if not e.joined:
            e.joined = True
            self.stats.joined += 1
            if was_pending:
                self.stats.pending_labels -= 1
                part.meta.pending_labels -= 1

    def _settled(
        self, part: PartitionState, e: Entry | None, lab: Feedback, out: JoinOutput
    ) -> None:
        """``lab``'s event has its row already: the label consumed again after a restart
        or a rollback (its state restored from before the row was made), or sent again.
        It is a duplicate and writes no row, but its entry holds it as joined and
        written, as the entry did when the row was made: its predictions, consumed again
        before it or after it, pair with it (live quality sees what it would have seen
        without the restart) instead of waiting for a label until their window ends."""
        self.stats.duplicate += 1
        if e is None:
            e = Entry(lab.event_id, lab.observed_time_ms + self.window_ms)
            part.schedule(e)
        self.stats.pending_predictions -= len(e.preds)
        part.meta.pending_predictions -= len(e.preds)
        for slot in e.preds.values():
            # not first_for_label: the label counts as a duplicate, not as joined
            out.pairs.append(_make_pair(lab, self._pred(slot), False))
            slot[0], slot[1] = b"", None  # only the keys matter from now on
        e.label = lab
        e.joined = e.written = True
        part.put(e)

    def _write(self, e: Entry, answer: Prediction, out: JoinOutput) -> None:
        assert e.label is not None
        out.rows.append(build_row(e.label, answer, e.preds, self._clock()))
        out.row_ids.add(e.event_id)
        e.written = True
        for slot in e.preds.values():  # only the keys matter from now on
            slot[0], slot[1] = b"", None

    def _evict(self, part: PartitionState, e: Entry, out: JoinOutput) -> None:
        if e.label is None:
            self.stats.pending_predictions -= len(e.preds)
            part.meta.pending_predictions -= len(e.preds)
            out.evicted_predictions += len(e.preds)
        elif not e.joined:
            self.stats.pending_labels -= 1
            part.meta.pending_labels -= 1
            self.stats.unmatched += 1
            out.unmatched.append(e.label)
        elif not e.written:
            # joined shadow predictions only: keep the row, from a shadow
            preds = [self._pred(slot) for slot in e.preds.values()]
            out.rows.append(build_row(e.label, preds[0], e.preds, self._clock()))
            out.row_ids.add(e.event_id)
