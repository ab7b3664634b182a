"""The pure join: order independence, window, bounded state, settlement, reconciliation."""

from __future__ import annotations

import random

from streamscore.core.records import Feedback, Prediction, Role
from streamscore.feedback.join import JoinState, OffsetTracker

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
        position=("predictions", 0, off),
    )


def label(eid: str, t: int = T0 + 1000, *, y: float = 12.0, off: int = 0) -> Feedback:
    return Feedback(eid, y, t, ("feedback", 0, off))


def test_label_before_prediction_joins_when_the_prediction_arrives() -> None:
    j = JoinState(WINDOW)
    out = j.add_label(label("e1", off=7))
    assert out.pairs == [] and out.rows == [] and out.settled == []
    assert j.stats.pending_labels == 1
    out = j.add_prediction(pred("e1", off=3))
    assert len(out.pairs) == 1 and out.pairs[0].first_for_label
    assert out.pairs[0].delay_ms == 1000
    (row,) = out.rows
    assert row["event_id"] == "e1" and row["label"] == 12.0
    assert row["prediction_value"] == 10.0 and row["model_version"] == 1
    assert row["inputs"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert sorted(out.settled) == [("feedback", 0, 7), ("predictions", 0, 3)]
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
    assert row["role"] == "primary" and row["shadow_versions"] == {"shadow": 2}
    assert j.stats.pending_predictions == 0
    # a late canary/shadow prediction of the written event joins, settles, writes nothing
    late = j.add_prediction(pred("e1", role=Role.SHADOW, version=3, off=9))
    assert len(late.pairs) == 1 and late.rows == [] and late.settled == [("predictions", 0, 9)]


def test_label_after_the_window_is_unmatched_and_kept() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("old", T0, off=1))
    # the stream moves on past the window: the old prediction is evicted unlabelled
    out = j.add_prediction(pred("new", T0 + WINDOW + 1, off=2))
    out.extend(j.advance())  # the loop advances after every batch
    assert out.evicted_predictions == 1 and ("predictions", 0, 1) in out.settled
    late = j.add_label(label("old", T0 + WINDOW + 5, off=3))
    assert late.pairs == [] and j.stats.pending_labels == 1
    out = j.advance(T0 + 2 * WINDOW + 10)
    assert [lab.event_id for lab in out.unmatched] == ["old"]
    assert ("feedback", 0, 3) in out.settled
    assert j.stats.unmatched == 1 and j.stats.pending_labels == 0 and j.stats.reconciles()


def test_labels_do_not_move_the_watermark() -> None:
    j = JoinState(WINDOW)
    j.add_label(label("x", T0 + 10 * WINDOW))
    j.add_prediction(pred("p", T0))
    assert j.advance().unmatched == [] and j.stats.pending_labels == 1


def test_duplicates_are_settled_at_once_and_never_rejoined() -> None:
    written = {"done"}
    j = JoinState(WINDOW, already_written=written.__contains__)
    out = j.add_label(label("done", off=1))
    assert out.settled == [("feedback", 0, 1)] and j.stats.duplicate == 1
    j.add_prediction(pred("e1"))
    j.add_label(label("e1", off=2))
    again = j.add_label(label("e1", off=3))
    assert again.pairs == [] and again.rows == [] and again.settled == [("feedback", 0, 3)]
    repeat = j.add_prediction(pred("e1", off=0))  # re-delivered prediction
    assert repeat.pairs == [] and repeat.settled == [("predictions", 0, 0)]
    assert j.stats.duplicate == 2 and j.stats.reconciles()


def test_a_prediction_of_an_already_written_event_settles_at_once() -> None:
    """After a crash between the store flush and the offset commit, a restarted worker
    re-reads both sides of rows it already has: neither may wait for a window."""
    written = {"done"}
    j = JoinState(WINDOW, already_written=written.__contains__)
    out = j.add_prediction(pred("done", off=7))
    assert out.settled == [("predictions", 0, 7)] and out.pairs == [] and out.rows == []
    assert len(j) == 0 and j.stats.pending_predictions == 0
    assert j.add_label(label("done", off=8)).settled == [("feedback", 0, 8)]
    assert j.stats.duplicate == 1 and j.stats.reconciles()
    held = j.add_prediction(pred("new", off=9))  # not written yet: waits for its label
    assert held.settled == [] and len(j) == 1


def test_state_is_bounded_by_the_cap() -> None:
    j = JoinState(WINDOW, max_entries=10)
    settled = []
    for i in range(25):
        settled += j.add_prediction(pred(f"e{i}", T0 + i, off=i)).settled
    assert len(j) == 10
    assert sorted(o for _t, _p, o in settled) == list(range(15))  # oldest evicted first
    for i in range(5):
        out = j.add_label(label(f"lonely{i}", off=i))
        settled = out.settled
    # labels beyond the cap are evicted as unmatched, never silently dropped
    assert len(j) == 10 and j.stats.unmatched == 0
    for i in range(10):
        j.add_label(label(f"more{i}", off=100 + i))
    assert len(j) == 10 and j.stats.unmatched == 5 and j.stats.reconciles()


def test_shadow_only_join_gets_its_row_at_eviction() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("s", role=Role.SHADOW, version=2, off=1))
    out = j.add_label(label("s", off=1))
    assert len(out.pairs) == 1 and out.rows == [] and out.settled == []
    out = j.advance(T0 + 2 * WINDOW)
    (row,) = out.rows
    assert row["role"] == "shadow" and row["model_version"] is None
    assert sorted(out.settled) == [("feedback", 0, 1), ("predictions", 0, 1)]


def test_inputs_fall_back_to_scored_features() -> None:
    j = JoinState(WINDOW)
    j.add_prediction(pred("e", inputs={}))
    (row,) = j.add_label(label("e")).rows
    assert row["inputs"] == {"a": 1.0, "b": 2.0}


def test_reconciliation_holds_under_random_interleaving() -> None:
    rng = random.Random(3)
    j = JoinState(WINDOW, max_entries=300)
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
    settled = 0
    for kind, eid, tt in ops:
        if kind == "p":
            out = j.add_prediction(pred(eid, tt, off=0))
        else:
            n_labels += 1
            out = j.add_label(label(eid, tt, off=0))
        out.extend(j.advance())
        rows += [r["event_id"] for r in out.rows]
        settled += len(out.settled)
        assert j.stats.reconciles()
        assert len(j) <= 300
    s = j.stats
    assert s.received == n_labels
    assert s.joined + s.unmatched + s.duplicate + s.pending_labels == n_labels
    assert len(rows) == len(set(rows))  # one row per event id
    out = j.advance(t + 10 * WINDOW)
    assert j.stats.pending_labels == 0 and len(j) == 0
    rows += [r["event_id"] for r in out.rows]
    settled += len(out.settled)
    assert len(rows) == j.stats.joined
    assert settled == len(ops)  # every consumed message is settled exactly once


def test_offset_tracker_commits_only_the_settled_prefix() -> None:
    tr = OffsetTracker()
    for off in range(5):
        tr.track(("t", 0, off))
    tr.track(("t", 1, 10))
    tr.settle([("t", 0, 1), ("t", 0, 2)])
    assert tr.committable() == {}
    tr.settle([("t", 0, 0)])
    assert tr.committable() == {("t", 0): 3}
    tr.committed({("t", 0): 3})
    assert tr.committable() == {}
    tr.settle([("t", 1, 10), ("t", 0, 4)])
    assert tr.committable() == {("t", 1): 11}
    tr.settle([("t", 0, 3)])
    assert tr.committable() == {("t", 0): 5, ("t", 1): 11}
    assert tr.unsettled() == 0
