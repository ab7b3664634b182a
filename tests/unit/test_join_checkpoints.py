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

import random
from pathlib import Path

import pytest

from streamscore.serde.wire import registry_client

from .join_traffic import T0, JoinRun, messages


@pytest.mark.parametrize("wait", [True, False])
@pytest.mark.parametrize(("seed", "rocks"), [(1, False), (2, True), (3, True), (4, False)])
def test_where_checkpoints_fall_and_whether_they_fail_changes_nothing(
    tmp_path: Path, seed: int, rocks: bool, wait: bool
) -> None:
    registry = registry_client({"url": f"mock://checkpoints-{seed}-{rocks}"})
    batches = messages(registry, seed, 1500)
    at_end, often, flaky = (
        JoinRun(registry, tmp_path / name, rocks=rocks) for name in ("end", "often", "flaky")
    )
    flaky.flaky = True
    rnd = random.Random(seed)
    for n, batch in enumerate(batches):
        commit = rnd.random() < 0.4
        wm = (rnd.random() < 0.03) and T0 + n * 2500  # a tool moving the watermark
        for r in (at_end, often, flaky):
            r.feed(batch)
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
