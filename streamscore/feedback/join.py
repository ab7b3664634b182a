"""Label <-> prediction join state for the feedback worker. Pure: no Kafka imports.

The feedback worker reads two topics: ``predictions`` (every role's prediction of every
scored event) and ``feedback`` (labels). :class:`JoinState` matches them by event id:

* A label joins *every* prediction of its event (primary, canary, shadow) that arrives
  within the window, whatever the order: a label may come before its prediction, long
  after it, or never; a prediction may never get a label.
* The window is measured in event time against a **watermark**: the largest event time
  seen on the predictions stream. A prediction waits for its label until
  ``watermark > event_time + window``; a label that has found no prediction waits until
  ``watermark > observed_time + window`` and is then *unmatched* (kept, never dropped:
  the caller writes it to the store's ``unmatched/`` area). Labels do not move the
  watermark (a stalled predictions stream keeps labels waiting rather than calling them
  unmatched too early); a quiet stream only holds memory, bounded by the cap below.
* Memory is bounded: at most ``max_entries`` event ids are held; beyond that the oldest
  entry (arrival order) is evicted exactly as if its window had passed.
* Exactly one ground-truth row per event id: it is built when the label meets the
  *answering* prediction (primary, or canary for canary keys) and carries that
  prediction's value, version, scored vector and the event's raw inputs. A label that
  met only shadow predictions gets its row (from the shadow) when its entry is evicted.
  Labels whose event id is already in the store (``already_written``) or already in the
  state are *duplicates*: settled at once, not joined again.

**Settlement** (restart safety, see :mod:`streamscore.feedback.loop`): every consumed message
has a :data:`Position`; :class:`JoinOutput.settled` lists the positions whose work is
complete once the rows / unmatched labels in the same output are durably stored:

* a label and its event's predictions settle when the row is written (joined) or the
  label is written as unmatched; later predictions of an already-written event settle
  immediately;
* a prediction that never got a label settles when it is evicted;
* duplicates settle immediately.

:class:`OffsetTracker` turns settled positions into per-partition committable offsets:
the offset after the longest settled prefix of what was consumed.

Reconciliation (also exposed by :class:`JoinStats`)::

    labels received == joined + unmatched + duplicate + released + pending labels

where *released* counts pending labels dropped on a rebalance (:meth:`JoinState.clear`;
their offsets were not committed, so the next owner reads them again).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.records import Feedback, Position, Prediction, Role

DEFAULT_WINDOW_MS = 3_600_000
DEFAULT_MAX_ENTRIES = 500_000


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


@dataclass(slots=True)
class JoinOutput:
    pairs: list[JoinedPair] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[Feedback] = field(default_factory=list)
    settled: list[Position] = field(default_factory=list)
    evicted_predictions: int = 0

    def extend(self, other: JoinOutput) -> None:
        self.pairs.extend(other.pairs)
        self.rows.extend(other.rows)
        self.unmatched.extend(other.unmatched)
        self.settled.extend(other.settled)
        self.evicted_predictions += other.evicted_predictions


@dataclass(slots=True)
class JoinStats:
    received: int = 0
    joined: int = 0
    unmatched: int = 0
    duplicate: int = 0
    released: int = 0
    pending_labels: int = 0
    pending_predictions: int = 0  # predictions held without a label

    def reconciles(self) -> bool:
        return self.received == (
            self.joined + self.unmatched + self.duplicate + self.released + self.pending_labels
        )


@dataclass(slots=True)
class _Entry:
    event_id: str
    expire_at: int
    token: int
    preds: dict[tuple[Role, int], Prediction] = field(default_factory=dict)
    label: Feedback | None = None
    joined: bool = False
    written: bool = False
    held: list[Position] = field(default_factory=list)


def build_row(
    label: Feedback,
    answer: Prediction,
    others: Iterable[Prediction],
    joined_time_ms: int,
) -> dict[str, Any]:
    """A ``groundtruth_row`` record (see ``schemas/groundtruth_row.v1.avsc``)."""
    is_answer = answer.answers
    return {
        "event_id": label.event_id,
        "key": answer.key,
        "event_time": answer.event_time_ms,
        "observed_time": label.observed_time_ms,
        "joined_time": joined_time_ms,
        "label": label.label,
        "model_name": answer.model_name if is_answer else None,
        "model_version": answer.model_version if is_answer else None,
        "role": answer.role.value,
        "prediction_value": answer.value if is_answer else None,
        "prediction_label": answer.label if is_answer else None,
        "probabilities": list(answer.probabilities) if is_answer else [],
        "classes": list(answer.classes) if is_answer else [],
        "feature_names": list(answer.feature_names),
        "features": list(answer.features),
        "inputs": answer.raw_inputs(),
        "shadow_versions": {
            p.role.value: p.model_version for p in others if p is not answer and not p.answers
        },
    }


def _answer_of(preds: Iterable[Prediction]) -> Prediction | None:
    best: Prediction | None = None
    for p in preds:
        if p.role is Role.PRIMARY:
            return p
        if p.role is Role.CANARY:
            best = p
    return best


class JoinState:
    """Bounded, windowed join of labels and predictions by event id (see module doc)."""

    def __init__(
        self,
        window_ms: int = DEFAULT_WINDOW_MS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        already_written: Callable[[str], bool] = lambda _eid: False,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._already_written = already_written
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._heap: list[tuple[int, int, str]] = []
        self._tokens = itertools.count()
        self.watermark_ms: int | None = None
        self.stats = JoinStats()

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ inputs
    def add_prediction(self, p: Prediction) -> JoinOutput:
        out = JoinOutput()
        if self.watermark_ms is None or p.event_time_ms > self.watermark_ms:
            self.watermark_ms = p.event_time_ms
        e = self._entries.get(p.event_id)
        if e is None:
            if self._already_written(p.event_id):
                # re-read after a restart (its row was made durable, the commit was not):
                # nothing to join, so holding it would stall its partition for a window
                _settle(out, p.position)
                return self._bounded(out)
            e = self._new_entry(p.event_id, p.event_time_ms + self.window_ms)
        k = (p.role, p.model_version)
        if k in e.preds:  # a re-delivered prediction: nothing new
            _settle(out, p.position)
            return self._bounded(out)
        if not e.preds:
            self._reschedule(e, p.event_time_ms + self.window_ms)
        e.preds[k] = p
        if e.label is None:
            self.stats.pending_predictions += 1
            _hold(e, p.position)
            return self._bounded(out)
        out.pairs.append(JoinedPair(e.label, p, first_for_label=not e.joined))
        self._mark_joined(e)
        if e.written:
            _settle(out, p.position)
        else:
            _hold(e, p.position)
            if p.answers:
                self._write(e, p, out)
        return self._bounded(out)

    def add_label(self, lab: Feedback) -> JoinOutput:
        out = JoinOutput()
        self.stats.received += 1
        e = self._entries.get(lab.event_id)
        if (e is not None and e.label is not None) or self._already_written(lab.event_id):
            self.stats.duplicate += 1
            _settle(out, lab.position)
            return out
        if e is None:
            e = self._new_entry(lab.event_id, lab.observed_time_ms + self.window_ms)
        e.label = lab
        _hold(e, lab.position)
        if not e.preds:
            self.stats.pending_labels += 1
            return self._bounded(out)
        self.stats.pending_predictions -= len(e.preds)
        first = True
        for p in e.preds.values():
            out.pairs.append(JoinedPair(lab, p, first_for_label=first))
            first = False
        self._mark_joined(e, was_pending=False)
        answer = _answer_of(e.preds.values())
        if answer is not None:
            self._write(e, answer, out)
        return self._bounded(out)

    def advance(self, watermark_ms: int | None = None) -> JoinOutput:
        """Evict every entry whose window has passed (``watermark_ms`` may move the
        watermark forward, e.g. in tests; it never moves back)."""
        if watermark_ms is not None and (
            self.watermark_ms is None or watermark_ms > self.watermark_ms
        ):
            self.watermark_ms = watermark_ms
        out = JoinOutput()
        if self.watermark_ms is None:
            return out
        wm = self.watermark_ms
        heap = self._heap
        while heap and heap[0][0] < wm:
            _exp, token, eid = heapq.heappop(heap)
            e = self._entries.get(eid)
            if e is None or e.token != token:
                continue  # stale heap item
            del self._entries[eid]
            self._evict(e, out)
        return out

    def clear(self) -> int:
        """Drop everything (partitions revoked). Returns the pending labels released."""
        released = self.stats.pending_labels
        self.stats.released += released
        self.stats.pending_labels = 0
        self.stats.pending_predictions = 0
        self._entries.clear()
        self._heap.clear()
        return released

    # --------------------------------------------------------------- internals
    def _new_entry(self, eid: str, expire_at: int) -> _Entry:
        token = next(self._tokens)
        e = _Entry(eid, expire_at, token)
        self._entries[eid] = e
        heapq.heappush(self._heap, (expire_at, token, eid))
        return e

    def _reschedule(self, e: _Entry, expire_at: int) -> None:
        if expire_at == e.expire_at:
            return
        e.token = next(self._tokens)
        e.expire_at = expire_at
        heapq.heappush(self._heap, (expire_at, e.token, e.event_id))

    def _mark_joined(self, e: _Entry, *, was_pending: bool = True) -> None:
        if not e.joined:
            e.joined = True
            self.stats.joined += 1
            if was_pending:
                self.stats.pending_labels -= 1

    def _write(self, e: _Entry, answer: Prediction, out: JoinOutput) -> None:
        assert e.label is not None
        out.rows.append(build_row(e.label, answer, e.preds.values(), self._clock()))
        e.written = True
        out.settled.extend(e.held)
        e.held = []

    def _evict(self, e: _Entry, out: JoinOutput) -> None:
        if e.label is None:
            self.stats.pending_predictions -= len(e.preds)
            out.evicted_predictions += len(e.preds)
        elif not e.joined:
            self.stats.pending_labels -= 1
            self.stats.unmatched += 1
            out.unmatched.append(e.label)
        elif not e.written:
            # joined shadow predictions only: keep the row, from a shadow
            best = next(iter(e.preds.values()))
            out.rows.append(build_row(e.label, best, e.preds.values(), self._clock()))
        out.settled.extend(e.held)
        e.held = []

    def _bounded(self, out: JoinOutput) -> JoinOutput:
        while len(self._entries) > self.max_entries:
            _eid, e = self._entries.popitem(last=False)
            self._evict(e, out)
        return out


def _hold(e: _Entry, pos: Position | None) -> None:
    if pos is not None:
        e.held.append(pos)


def _settle(out: JoinOutput, pos: Position | None) -> None:
    if pos is not None:
        out.settled.append(pos)


class OffsetTracker:
    """Per partition, the next offset that is safe to commit: one past the longest
    prefix of consumed offsets that are all settled."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], deque[int]] = {}
        self._settled: dict[tuple[str, int], set[int]] = {}
        self._safe: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def track(self, pos: Position) -> None:
        tp = (pos[0], pos[1])
        self._seen.setdefault(tp, deque()).append(pos[2])

    def untrack(self, pos: Position) -> None:
        """Forget the position tracked last for its partition (put back, not read)."""
        seen = self._seen.get((pos[0], pos[1]))
        if seen and seen[-1] == pos[2]:
            seen.pop()

    def settle(self, positions: Iterable[Position]) -> None:
        touched: set[tuple[str, int]] = set()
        for topic, part, off in positions:
            tp = (topic, part)
            self._settled.setdefault(tp, set()).add(off)
            touched.add(tp)
        for tp in touched:
            seen, done = self._seen.get(tp), self._settled[tp]
            while seen and seen[0] in done:
                off = seen.popleft()
                done.discard(off)
                self._safe[tp] = off + 1

    def unsettled(self) -> int:
        return sum(len(q) for q in self._seen.values())

    def committable(self) -> dict[tuple[str, int], int]:
        """Safe offsets that moved since the last :meth:`committed` call."""
        return {tp: off for tp, off in self._safe.items() if self._committed.get(tp) != off}

    def committed(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._committed.update(offsets)

    def clear(self) -> None:
        self._seen.clear()
        self._settled.clear()
        self._safe.clear()
        self._committed.clear()
