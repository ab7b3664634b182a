"""The feedback loop against the real cluster: labels join predictions, the ground-truth
store fills, ``train`` publishes a better model (manually, then through automatic shadow
promotion), and a SIGKILLed feedback worker loses and duplicates nothing.

Depends on predictions carrying ``inputs`` (prediction v2, filled by scoring.py): without
them the store has no c and the retrained candidate cannot be built (train refuses with
TooFewRowsError). ``test_sigkill_restart_loses_and_duplicates_nothing`` does not need them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from streamscore.core.records import Role
from streamscore.feedback import groundtruth
from streamscore.models.envelope import Action
from tests.processes import children, gone

from .feedback_stack import (
    FeedbackProcess,
    Store,
    count_join_labels,
    gt_settings,
    make_feedback_fixture,  # noqa: F401  (the make_feedback fixture)
    produce_labels,
    produce_predictions,
    produce_world,
    run_train,
    store_rows,
    table_fixture,  # noqa: F401  (the table fixture: local and S3)
    wait_group_caught_up,
    wait_join_committed,
    wait_join_group_settled,
    wait_rows,
    wait_until,
)
from .stack import Stack, WorkerProcess

V = {"model_version": "1", "role": "primary"}


def _mae(fb: FeedbackProcess, version: int, role: str = "primary") -> float:
    return fb.sample("streamscore_live_mae", {"model_version": str(version), "role": role})


def _labelled(fb: FeedbackProcess, version: int, role: str = "primary") -> float:
    return fb.sample(
        "streamscore_feedback_joined_total", {"model_version": str(version), "role": role}
    )


def _assert_inputs(rows: list[dict[str, object]]) -> None:
    assert all(r.get("c") is not None for r in rows), (
        "predictions carry no raw inputs (prediction v2 `inputs`): scoring.py must fill them"
    )


def test_labels_store_train_publish_swap_and_live_mae_drops(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    tmp_path: Path,
) -> None:
    store = tmp_path / "gt"
    stack.publish("ab", version=1)
    w = make_worker("w1")
    fb = make_feedback(store, "--window", "3s")

    truth = produce_world(stack, 3000, seed=11)
    bogus = {f"never-scored-{i}": 1.0 for i in range(20)}
    produce_labels(stack, {**truth, **bogus})
    rows = wait_rows(store, 3000, proc=fb)
    assert len({r["event_id"] for r in rows}) == len(rows) == 3000
    assert {r["model_version"] for r in rows} == {1}
    _assert_inputs(rows)
    y = {r["event_id"]: r["label"] for r in rows}
    assert all(abs(y[k] - truth[k]) < 1e-9 for k in y)
    wait_until(lambda: _labelled(fb, 1) >= 3000, 30, "v1 labelled count")
    mae_v1 = _mae(fb, 1)
    assert 0.5 < mae_v1 < 2.0, mae_v1  # v1 cannot see c

    res = run_train(stack, store, "--min-rows", "1000")
    print(res.stdout, res.stderr[-2000:])
    assert res.returncode == 0, res.stderr
    assert "PUBLISH" in res.stdout and "mae" in res.stdout
    assert "published demo/primary v2" in res.stdout
    cand_line = next(line for line in res.stdout.splitlines() if line.startswith("mae"))
    _name, cur, cand, _delta = cand_line.split()
    assert float(cand) < 0.05 * float(cur)  # this test's labels are y without noise

    # workers swap to v2
    wait_until(lambda: w.sample("streamscore_model_info", {"model_version": "2"}) == 1, 60, "swap")
    truth2 = produce_world(stack, 2000, seed=12)
    produce_labels(stack, truth2)
    wait_rows(store, 5000, proc=fb)
    wait_until(lambda: _labelled(fb, 2) >= 2000, 60, "v2 labelled count")
    # the bogus labels become unmatched as event time moves on: predictions a minute
    # ahead (event time, not waiting) move every join partition's watermark past them
    ahead = int(time.time() * 1000) + 60_000
    produce_predictions(stack, [(f"ahead-{i}", ahead) for i in range(64)])
    mae_v2 = _mae(fb, 2)
    print(f"\nMEASURED live MAE v1 {mae_v1:.4f} -> v2 {mae_v2:.6f}")
    assert mae_v2 < 0.05 * mae_v1

    wait_until(lambda: fb.sample("streamscore_feedback_unmatched_total") == 20, 60, "unmatched")
    unmatched = groundtruth.read_unmatched(store)
    assert {u["event_id"] for u in unmatched} == set(bogus)
    out = fb.labels_outcomes()
    pending = fb.sample("streamscore_feedback_pending", {"side": "label"})
    assert fb.sample("streamscore_feedback_received_total") == sum(out.values()) + pending == 5020


def test_automatic_promotion_of_a_better_shadow(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    tmp_path: Path,
) -> None:
    store = tmp_path / "gt"
    stack.publish("ab", version=1)
    w = make_worker("w1")
    fb = make_feedback(
        store,
        "--window",
        "30s",
        "--auto-promote",
        "--promote-min-labels",
        "300",
        "--promote-margin",
        "0.2",
    )
    truth = produce_world(stack, 1500, seed=21)
    produce_labels(stack, truth)
    _assert_inputs(wait_rows(store, 1500, proc=fb))

    res = run_train(stack, store, "--min-rows", "500", "--as", "shadow")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "published demo/shadow v2" in res.stdout
    wait_until(
        lambda: w.sample("streamscore_model_info", {"model_version": "2", "role": "shadow"}) == 1,
        60,
        "shadow v2 active",
    )
    # no manual step from here: labels alone make the policy promote the shadow
    truth2 = produce_world(stack, 1500, seed=22)
    produce_labels(stack, truth2)
    wait_until(
        lambda: fb.sample("streamscore_promotion_decisions_total", {"outcome": "promoted"}) == 1,
        120,
        "promotion",
    )
    assert _labelled(fb, 2, "shadow") >= 300
    assert _mae(fb, 2, "shadow") < 0.05 * _mae(fb, 1, "primary")

    tele = stack.decoder("telemetry")
    msgs = stack.read(
        stack.topics.telemetry,
        until=lambda got: any(b"promotion" in (m.value() or b"") for m in got),
        timeout=30,
    )
    promos = [t for t in (tele(m.value()) for m in msgs) if t["kind"].startswith("promotion")]
    assert [t["kind"] for t in promos] == ["promotion"]
    assert "shadow v2 vs primary v1" in promos[0]["detail"] and "mae" in promos[0]["detail"]

    wait_until(
        lambda: w.sample("streamscore_model_info", {"model_version": "2", "role": "primary"}) == 1,
        60,
        "v2 serving as primary",
    )
    assert w.sample("streamscore_model_info", {"role": "shadow"}) == 0
    envs = stack.model_topic().read_all()
    prim = [e for e in envs if e.key == "demo/primary"]
    assert prim[-1].version == 2 and prim[-1].publisher == "auto-promotion"
    shad = [e for e in envs if e.key == "demo/shadow"]
    assert shad[-1].action is Action.RETIRE
    assert any(e.action is Action.ARCHIVE and e.version == 1 for e in envs)
    # the old primary is the rollback target
    back = stack.model_topic().rollback("demo", Role.PRIMARY, key=stack.key, keyring=stack.verifier)
    assert back.version == 1


def test_sigkill_restart_loses_and_duplicates_nothing(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    table: Store,
    tmp_path: Path,
) -> None:
    """SIGKILL mid-stream, on the local store and on S3: afterwards every labelled event
    has exactly one row."""
    store = table
    group = f"{stack.group_id}-fb-restart"
    stack.publish("ab", version=1)
    make_worker("w1")
    state = tmp_path / "state"  # the restarted worker finds the killed one's local state
    fb = make_feedback(
        store, "--window", "10m", "--router", "process", group_id=group, state_dir=state
    )
    wait_until(lambda: children(fb.proc.pid) != [], 60, "its router process")
    (router,) = children(fb.proc.pid)

    a = produce_world(stack, 3000, seed=31)
    items = list(a.items())

    def trickle() -> None:  # labels keep flowing while the worker is killed
        for i in range(0, len(items), 100):
            produce_labels(stack, dict(items[i : i + 100]))
            time.sleep(0.1)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    wait_rows(store, 300, proc=fb)
    wait_join_committed(stack, group)  # a checkpoint to resume from
    fb.kill()  # SIGKILL mid-stream: buffered rows and uncommitted offsets are lost
    killed_at = len(store_rows(store))
    # its router saw the worker's end of their pipe close: it drains and exits
    wait_until(lambda: gone(router), 60, "the killed worker's router process to exit")
    feeder.join()
    assert killed_at < len(a), "the kill should land while labels are still flowing"

    b_truth = produce_world(stack, 2000, seed=32)
    b_first = dict(list(b_truth.items())[:1000])
    produce_labels(stack, b_first)  # labels before or while their predictions flow
    fb2 = make_feedback(store, "--window", "10m", group_id=group, state_dir=state)
    produce_labels(stack, dict(list(b_truth.items())[1000:]))

    wait_rows(store, 5000, proc=fb2)
    wait_group_caught_up(stack, group)  # any duplicate write would have happened by now
    rows = store_rows(store)
    ids = [r["event_id"] for r in rows]
    print(f"\nMEASURED rows at kill {killed_at}, after restart {len(ids)}")
    assert len(ids) == len(set(ids)) == 5000  # no row duplicated
    assert set(ids) == set(a) | set(b_truth)  # no label lost
    assert groundtruth.read_unmatched(gt_settings(store)) == []

    def reconciled() -> bool:
        out = fb2.labels_outcomes()
        pending = fb2.sample("streamscore_feedback_pending", {"side": "label"})
        return fb2.sample("streamscore_feedback_received_total") == sum(out.values()) + pending

    wait_until(reconciled, 30, "labels in == joined + unmatched + duplicate + released + pending")
    # every event has its label: no prediction waits for one (a label read again whose
    # row the killed worker had written settles the predictions read again with it)
    wait_until(
        lambda: fb2.sample("streamscore_feedback_pending", {"side": "prediction"}) == 0,
        30,
        "no prediction left waiting for its label",
    )
    out = fb2.labels_outcomes()
    # the restarted worker resumed from the state's last checkpoint (offsets and state
    # committed together): it read again only what the killed one had not committed and
    # joined each of those labels once more (the store refused the rows it already had);
    # the labels the killed router had routed but not committed come twice: duplicates
    received = fb2.sample("streamscore_feedback_received_total")
    assert out["joined"] + out["duplicate"] == received and out["unmatched"] == 0
    # not the whole stream again: fewer labels than the join topic holds (5000, and the
    # tail the killed router had routed but not committed, routed again)
    assert 5000 - killed_at <= received < count_join_labels(stack, group)
    print(f"MEASURED restarted worker: {out}")


def test_two_feedback_workers_split_the_join_and_dead_letter_bad_labels(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    tmp_path: Path,
) -> None:
    """Predictions (keyed by entity) and labels (keyed by event id) land in unrelated
    partitions; the router re-keys both onto the join topic, so two workers of one group
    each join their share and together write every row once, to one shared store."""
    store = tmp_path / "gt"
    group = f"{stack.group_id}-fb-pair"
    stack.publish("ab", version=1)
    make_worker("w1")
    # one router in a process of its own, one on a thread of its worker
    fb1 = make_feedback(store, "--window", "10m", "--router", "process", group_id=group)

    truth = produce_world(stack, 4000, seed=41)
    items = list(truth.items())
    produce_labels(stack, dict(items[:2000]))
    wait_rows(store, 1000, proc=fb1)
    # a rebalance mid-stream: the second worker (an empty state dir of its own, as on
    # another host) restores its partitions' state from the changelog
    fb2 = make_feedback(store, "--window", "10m", "--router", "thread", group_id=group)
    wait_join_group_settled(stack, group, 2)
    produce_labels(stack, dict(items[2000:]))
    bad_label = b"\x00\x00\x00\x00"  # shorter than the wire-format header
    stack.produce_raw([(b"bad-label-key", bad_label)], topic=stack.topics.feedback)

    wait_rows(store, 4000, proc=fb1)
    wait_group_caught_up(stack, group)  # any duplicate write would have happened by now
    ids = [r["event_id"] for r in store_rows(store)]
    assert len(ids) == len(set(ids)) == 4000  # every label once, across both writers
    assert set(ids) == set(truth)
    assert groundtruth.read_unmatched(store) == []

    # both members joined a share: the join topic's 4 partitions were spread over them
    joined = [fb.labels_outcomes()["joined"] for fb in (fb1, fb2)]
    print(f"\nMEASURED labels joined per feedback worker: {joined}")
    assert all(j > 0 for j in joined), joined
    assert sum(joined) >= 4000
    assert "changelog records applied" in (stack.tmp / "feedback-1.log").read_text()
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    md = admin.list_topics(f"{group}.join", timeout=10).topics[f"{group}.join"]
    assert len(md.partitions) == 4  # as many as predictions / feedback

    # the bad label is in the dead-letter topic, untouched, with where it came from
    dlq = stack.read(stack.topics.dlq, until=lambda ms: any(m.value() == bad_label for m in ms))
    (dead,) = [m for m in dlq if m.value() == bad_label]
    assert dead.key() == b"bad-label-key"
    headers = dict(dead.headers() or [])
    assert headers["streamscore.error.class"] == b"TruncatedMessageError"
    assert headers["streamscore.source.topic"] == stack.topics.feedback.encode()

    # counted by a router (each in its own process: its counts reach its worker's
    # /metrics within 0.2 s)
    def routed_dead() -> float:
        return sum(
            fb.sample("streamscore_dead_letters_total", {"reason": "truncated"})
            for fb in (fb1, fb2)
        )

    wait_until(lambda: routed_dead() >= 1, 30, "the router's dead letter counted")
    assert routed_dead() == 1


def test_a_label_30_days_late_joins_and_one_after_the_window_is_unmatched(
    stack: Stack, make_feedback: Callable[..., FeedbackProcess], tmp_path: Path
) -> None:
    """Event time is steered by the predictions' own times (no waiting): a 31-day window,
    a label 30 days after its prediction joins it, one 32 days after is kept unmatched."""
    day = 86_400_000
    t0 = int(time.time() * 1000) - 70 * day
    store = tmp_path / "gt"
    fb = make_feedback(store, "--window", "31d", group_id=f"{stack.group_id}-fb-30d")
    produce_predictions(stack, [("late", t0), ("too-late", t0)])
    # the stream goes on for 30 days of event time on every join partition
    produce_predictions(stack, [(f"d30-{i}", t0 + 30 * day) for i in range(64)])
    produce_labels(stack, {"late": 4.0}, observed_ms=t0 + 30 * day)
    wait_rows(store, 1, proc=fb)
    # 32 days: "too-late"'s window has passed, its label finds nothing ...
    produce_predictions(stack, [(f"d32-{i}", t0 + 32 * day) for i in range(64)])
    produce_labels(stack, {"too-late": 5.0}, observed_ms=t0 + 32 * day)
    wait_until(lambda: fb.sample("streamscore_feedback_received_total") == 2, 60, "labels")
    # ... and is unmatched once the label's own window has passed too
    produce_predictions(stack, [(f"d64-{i}", t0 + 64 * day) for i in range(64)])
    wait_until(lambda: fb.sample("streamscore_feedback_unmatched_total") == 1, 60, "unmatched")
    rows = store_rows(store)
    assert [(r["event_id"], r["label"], r["event_time"]) for r in rows] == [("late", 4.0, t0)]
    wait_until(lambda: len(groundtruth.read_unmatched(store)) == 1, 60, "unmatched stored")
    (lab,) = groundtruth.read_unmatched(store)
    assert lab["event_id"] == "too-late" and lab["observed_time"] == t0 + 32 * day
    out = fb.labels_outcomes()
    assert out["joined"] == 1 and out["unmatched"] == 1 and out["duplicate"] == 0
