"""The schema registry stopped and restarted (durably: it keeps its schemas and ids)
under a running score worker, and under a worker that starts while it is down: every
event is scored exactly once, nothing is dead-lettered, no model envelope is rejected,
and the worker stays in its consumer group throughout (no rebalance out, no revocation).

On this module's private cluster: the shared registry is never stopped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka.admin import AdminClient

from streamscore import synthetic
from streamscore.localcluster import LocalCluster

from .feedback_stack import wait_until
from .stack import Stack, WorkerProcess


def _primary_ids(stack: Stack, preds: list[Any]) -> Counter[str]:
    dec = stack.decoder("prediction")
    ids: Counter[str] = Counter()
    for m in preds:
        p = dec(m.value())
        if p["role"] == "primary":
            ids[p["event_id"]] += 1
    return ids


def _encoded(stack: Stack, n: int, *, version: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``n`` events encoded with event schema ``version`` (registered now, while the
    registry is up), to be produced later without it."""
    ser = stack.event_serializer(version)
    rng = np.random.default_rng(seed)
    return [(e["key"].encode(), ser(e)) for e, _y in synthetic.events(n, rng, with_c=version > 1)]


def _ids(stack: Stack, items: list[tuple[bytes, bytes]]) -> list[str]:
    dec = stack.decoder("event")
    return [dec(v)["event_id"] for _k, v in items]


def _members(stack: Stack) -> tuple[str, list[str]]:
    """(group state, client ids of its members) as the broker's coordinator sees them."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    (desc,) = [f.result(30) for f in admin.describe_consumer_groups([stack.group_id]).values()]
    return str(desc.state.name), sorted(m.client_id for m in desc.members)


def _rebalance_lines(w: WorkerProcess) -> list[str]:
    text = w.log_path.read_text()
    return re.findall(r".*\b(?:revoked|lost) \[.*", text)


def _scored_once(stack: Stack, ids: list[str]) -> Counter[str]:
    preds = stack.read(
        stack.topics.predictions,
        until=lambda got: set(ids) <= set(_primary_ids(stack, got)),
        timeout=240,
    )
    return _primary_ids(stack, preds)


def _no_dead_letters(stack: Stack) -> list[Any]:
    return stack.read(stack.topics.dlq, until=lambda got: bool(got), timeout=5)


def test_registry_restart_under_a_running_worker(
    private_cluster: LocalCluster,
    private_stack: Stack,
    make_private_worker: Callable[..., WorkerProcess],
) -> None:
    stack = private_stack
    stack.publish("ab", version=1)
    w = make_private_worker("running")
    first = stack.produce_events(200, seed=1)  # the worker caches schema v1
    assert set(_scored_once(stack, first)) == set(first)
    # schema v2 registered now, but never seen by the worker: its id is not cached there
    uncached = _encoded(stack, 500, version=2, seed=2)
    cached = _encoded(stack, 200, version=1, seed=3)
    ids = first + _ids(stack, uncached) + _ids(stack, cached)

    private_cluster.stop_registry()
    try:
        stack.produce_raw(uncached + cached)
        # the worker meets the registry away and puts batches back (several times)
        wait_until(
            lambda: w.sample("streamscore_registry_unavailable_batches_total") >= 3,
            120,
            "batches put back while the registry is away",
        )
        # still a member of its group while waiting (it keeps polling while paused)
        state, members = _members(stack)
        assert state == "STABLE" and members == ["streamscore-score-running"], (state, members)
        assert w.proc.poll() is None
    finally:
        private_cluster.start_registry()

    got = _scored_once(stack, ids)
    assert set(got) == set(ids)
    assert max(got.values()) == 1  # exactly once: nothing scored twice
    assert _no_dead_letters(stack) == []
    assert w.sample("streamscore_dead_letters_total") == 0
    assert w.sample("streamscore_events_consumed_total") == len(ids)
    assert _rebalance_lines(w) == []  # never revoked, never lost: it stayed in its group
    assert _members(stack) == ("STABLE", ["streamscore-score-running"])
    assert w.terminate() == 0


def test_registry_down_when_a_worker_starts(
    private_cluster: LocalCluster,
    private_stack: Stack,
    make_private_worker: Callable[..., WorkerProcess],
) -> None:
    stack = private_stack
    stack.publish("ab", version=1)
    ids = stack.produce_events(300, seed=4)

    private_cluster.stop_registry()
    try:
        w = make_private_worker("starting", wait=False)
        # it cannot decode the model envelopes yet: it waits, it does not reject them
        wait_until(
            lambda: "model envelope: schema registry" in w.log_path.read_text(),
            120,
            "the model watcher waiting for the registry",
        )
        assert w.proc.poll() is None, w.log()
        assert w.sample("streamscore_model_loaded") == 0
        assert w.sample("streamscore_model_updates_rejected_total") == 0
    finally:
        private_cluster.start_registry()

    w.wait_metrics(timeout=180)  # the model is loaded once the registry answers
    more = stack.produce_events(200, seed=5)
    got = _scored_once(stack, ids + more)
    assert set(got) == set(ids + more)
    assert max(got.values()) == 1
    assert _no_dead_letters(stack) == []
    assert w.sample("streamscore_dead_letters_total") == 0
    assert w.sample("streamscore_model_updates_rejected_total") == 0
    assert w.sample("streamscore_model_updates_applied_total", {"role": "primary"}) == 1
    assert _rebalance_lines(w) == []
    assert _members(stack) == ("STABLE", ["streamscore-score-starting"])
    assert w.terminate() == 0
