"""The pure join: order independence, window, duplicates, reconciliation (in-memory
partition state; the RocksDB state is tested in test_join_state.py)."""

from __future__ import annotations

import random

from streamscore.core.records import Feedback, Prediction, Role
from streamscore.feedback.join import JoinOutput, JoinState

T0 = 1_700_000_000_000
WINDOW = 60_000


def pred(
    eid: str,
    t: int = T0,
    *,
    role: Role = Role.PRIMARY,
    version: int = 1,
    value: float = 10.0,
    off: int = 0,
    inputs: dict[str, object] | None = None,
) -> Prediction:
    return Prediction(
        event_id=eid,
        key=f"k-{eid}",
        event_time_ms=t,
        model_name="demo",
        model_version=version,
        role=role,
        value=value,
        label=None,
        probabilities=(),
        classes=(),
        feature_names=("a", "b"),
        features=(1.0, 2.0),
        inputs={"a": 1.0, "b": 2.0, "c": 3.0} if inputs is None else inputs,
        position=("join", 0, off),
    )


def label(eid: str, t: int = T0 + 1000, *, y: float = 12.0, off: int = 0) -> Feedback:
    return Feedback(eid, y, t, ("join", 0, off))


def test_label_before_prediction_joins_when_the_prediction_arrives() -> None:
    j = JoinState(WINDOW)
    out = j.add_label(label("e1", off=7))
    assert out.pairs == [] and out.rows == []
    assert j.stats.pending_labels == 1 and len(j) == 1
    out = j.add_prediction(pred("e1", off=3))
    assert len(out.pairs) == 1 and out.pairs[0].first_for_label
    assert out.pairs[0].delay_ms == 1000
    (row,) = out.rows
    assert row.event_id == "e1" and row.label.label == 12.0 and row.prediction.answers
    assert row.prediction.value == 10.0 and row.prediction.model_version == 1
    assert row.prediction.raw_inputs() == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert j.stats.joined == 1 and j.stats.pending_labels == 0 and j.stats.reconciles()


def test_label_after_prediction_joins_primary_and_shadow_one_row() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("e1", off=1))
    j.add_prediction(pred("e1", role=Role.SHADOW, version=2, value=11.5, off=2))
    assert j.stats.pending_predictions == 2
    out = j.add_label(label("e1"))
    assert {(p.prediction.role, p.prediction.model_version) for p in out.pairs} == {
        (Role.PRIMARY, 1),
        (Role.SHADOW, 2),
    }
    assert sum(p.first_for_label for p in out.pairs) == 1
    (row,) = out.rows
    assert row.prediction.role is Role.PRIMARY and row.shadow_versions == {"shadow": 2}
    assert j.stats.pending_predictions == 0
    # a late canary/shadow prediction of the written event joins, writes nothing
    late = j.add_prediction(pred("e1", role=Role.SHADOW, version=3, off=9))
    assert len(late.pairs) == 1 and late.rows == [] and j.stats.pending_predictions == 0


def test_label_after_the_window_is_unmatched_and_kept() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("old", T0, off=1))
    # the stream moves on past the window: the old prediction is evicted unlabelled
    out = j.add_prediction(pred("new", T0 + WINDOW + 1, off=2))  # expiry as it applies
    assert out.evicted_predictions == 1 and j.stats.pending_predictions == 1 and len(j) == 1
    late = j.add_label(label("old", T0 + WINDOW + 5, off=3))
    assert late.pairs == [] and j.stats.pending_labels == 1
    out = j.advance(T0 + 2 * WINDOW + 10)
    assert [lab.event_id for lab in out.unmatched] == ["old"] and out.evicted_predictions == 1
    assert len(j) == 0
    assert j.stats.unmatched == 1 and j.stats.pending_labels == 0 and j.stats.reconciles()


def test_labels_do_not_move_the_watermark() -> None:
    j = JoinState(WINDOW)
    j.add_label(label("x", T0 + 10 * WINDOW))
    j.add_prediction(pred("p", T0))
    assert j.advance().unmatched == [] and j.stats.pending_labels == 1


def test_duplicates_are_never_rejoined() -> None:
    written = {"done"}
    j = JoinState(WINDOW, already_written=written.__contains__)
    out = j.add_label(label("done", off=1))
    assert out.pairs == [] and out.rows == [] and j.stats.duplicate == 1
    assert j.stats.pending_labels == 0 and len(j) == 1  # held as settled, for its window
    j.add_prediction(pred("e1"))
    assert len(j.add_label(label("e1", off=2)).rows) == 1
    again = j.add_label(label("e1", off=3))
    assert again.pairs == [] and again.rows == []
    repeat = j.add_prediction(pred("e1", off=0))  # re-delivered prediction
    assert repeat.pairs == [] and repeat.rows == []
    assert j.stats.duplicate == 2 and j.stats.joined == 1 and j.stats.reconciles()


def test_a_label_of_an_already_written_event_is_a_duplicate_whatever_the_state() -> None:
    """A row the store already has (its messages consumed again after a restart, whose
    state was restored from before the row was made) is never written again, even when
    its prediction is still in the state; the prediction pairs with the label (for live
    quality), as it did the first time, and never waits for a label until its window
    ends, whichever came first."""
    written = {"done", "first"}
    j = JoinState(WINDOW, already_written=written.__contains__)
    out = j.add_prediction(pred("done", off=7))
    assert out.pairs == [] and out.rows == [] and j.stats.pending_predictions == 1
    dup = j.add_label(label("done", off=8))
    (pair,) = dup.pairs
    assert pair.prediction.event_id == "done" and not pair.first_for_label and dup.rows == []
    assert j.stats.duplicate == 1 and j.stats.joined == 0 and j.stats.pending_predictions == 0
    # the label first, its prediction after it: paired, no row, nothing pending
    assert j.add_label(label("first", off=9)).pairs == [] and j.stats.pending_labels == 0
    late = j.add_prediction(pred("first", off=10))
    assert len(late.pairs) == 1 and late.rows == [] and j.stats.pending_predictions == 0
    assert j.stats.duplicate == 2 and j.stats.reconciles()
    # both leave with their window: nothing evicted unlabelled, nothing unmatched
    gone = j.advance(T0 + 3 * WINDOW)
    assert (gone.evicted_predictions, gone.unmatched, gone.rows) == (0, [], [])
    assert len(j) == 0 and j.stats.unmatched == 0


def test_a_row_made_earlier_in_the_same_batch_counts_as_written() -> None:
    """A label sent again after its event's entry expired is a duplicate whether its row
    was handed to the store before (another batch) or is still in this batch's output:
    where a batch ends changes nothing (a replay cuts its batches differently)."""
    for cut in (False, True):
        store: set[str] = set()
        j = JoinState(WINDOW, already_written=store.__contains__)
        out = JoinOutput()
        j.add_prediction(pred("e", off=1), out=out)
        j.add_label(label("e", off=2), out=out)
        j.add_prediction(pred("later", T0 + 3 * WINDOW, off=3), out=out)  # "e" expires
        assert [r.label.event_id for r in out.rows] == ["e"] and len(j) == 1
        if cut:  # the batch ends: its rows go to the store, a new output begins
            store.update(r.label.event_id for r in out.rows)
            out = JoinOutput()
        again = j.add_label(label("e", y=3.0, off=4), out=out)
        assert j.stats.duplicate == 1 and j.stats.pending_labels == 0, cut
        assert [r.label.event_id for r in again.rows] == ([] if cut else ["e"])
        assert j.stats.reconciles()


def test_shadow_only_join_gets_its_row_at_eviction() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("s", role=Role.SHADOW, version=2, off=1))
    out = j.add_label(label("s", off=1))
    assert len(out.pairs) == 1 and out.rows == [] and len(j) == 1
    out = j.advance(T0 + 2 * WINDOW)
    (row,) = out.rows
    assert row.prediction.role is Role.SHADOW and not row.prediction.answers
    assert len(j) == 0 and j.stats.joined == 1


def test_inputs_fall_back_to_scored_features() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("e", inputs={}))
    (row,) = j.add_label(label("e")).rows
    assert row.prediction.raw_inputs() == {"a": 1.0, "b": 2.0}


def test_reconciliation_holds_under_random_interleaving() -> None:
    rng = random.Random(3)
    j = JoinState(WINDOW)
    ops: list[tuple[str, str, int]] = []
    t = T0
    for i in range(2000):
        t += rng.randint(0, 200)
        eid = f"e{i}"
        if rng.random() < 0.9:
            ops.append(("p", eid, t))
        if rng.random() < 0.8:
            ops.append(("l", eid, t + rng.randint(0, 2 * WINDOW)))
        if rng.random() < 0.05:
            ops.append(("l", eid, t))  # duplicate label
    rng.shuffle(ops)
    ops.sort(key=lambda o: o[2] + rng.randint(0, 5000))
    n_labels = 0
    rows: list[str] = []
    for kind, eid, tt in ops:
        if kind == "p":
            out = j.add_prediction(pred(eid, tt, off=0))
        else:
            n_labels += 1
            out = j.add_label(label(eid, tt, off=0))
        out.extend(j.advance())
        rows += [r.event_id for r in out.rows]
        assert j.stats.reconciles()
    s = j.stats
    assert s.received == n_labels
    assert s.joined + s.unmatched + s.duplicate + s.pending_labels == n_labels
    assert len(rows) == len(set(rows))  # one row per event id
    out = j.advance(t + 10 * WINDOW)
    assert j.stats.pending_labels == 0 and len(j) == 0
    rows += [r.event_id for r in out.rows]
    assert len(rows) == j.stats.joined
    assert j.stats.pending_predictions == 0 and j.stats.reconciles()
