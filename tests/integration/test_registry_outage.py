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

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from streamscore.dev import synthetic
from streamscore.dev.localcluster import LocalCluster
from tests.processes import wait_until

from .stack import Stack, WorkerProcess


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


def _scored_by(stack: Stack, ids: list[str]) -> Counter[str]:
    """How many primary predictions each event got, once all of ``ids`` have one."""
    preds = stack.read(
        stack.topics.predictions,
        until=lambda got: set(ids) <= set(stack.primary_ids(got)),
        timeout=240,
    )
    return stack.primary_ids(preds)


def _assert_all_scored_once_in_group(stack: Stack, w: WorkerProcess, ids: list[str]) -> None:
    """Every event of ``ids`` scored exactly once, none dead-lettered, and ``w`` still
    the one stable member of its group, never revoked or lost."""
    got = _scored_by(stack, ids)
    assert set(got) == set(ids)
    assert max(got.values()) == 1  # exactly once: nothing scored twice
    assert stack.read(stack.topics.dlq, until=lambda got: bool(got), timeout=5) == []
    assert w.sample("streamscore_dead_letters_total") == 0
    assert w.sample("streamscore_model_updates_rejected_total") == 0
    assert _rebalance_lines(w) == []  # never revoked, never lost: it stayed in its group
    assert _members(stack) == ("STABLE", [f"streamscore-score-{w.worker_id}"])


@pytest.fixture
def published(private_stack: Stack) -> Stack:
    """The module's private stack, a primary model published while the registry is up."""
    private_stack.publish("ab", version=1)
    return private_stack


def test_registry_restart_under_a_running_worker(
    private_cluster: LocalCluster,
    published: Stack,
    make_private_worker: Callable[..., WorkerProcess],
) -> None:
    stack = published
    w = make_private_worker("running")
    first = stack.produce_events(200, seed=1)  # the worker caches schema v1
    assert set(_scored_by(stack, first)) == set(first)
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

    _assert_all_scored_once_in_group(stack, w, ids)
    assert w.sample("streamscore_events_consumed_total") == len(ids)
    assert w.terminate() == 0


def test_registry_down_when_a_worker_starts(
    private_cluster: LocalCluster,
    published: Stack,
    make_private_worker: Callable[..., WorkerProcess],
) -> None:
    ids = published.produce_events(300, seed=4)  # schema v1 registered, never seen by w
    stack = published

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
    _assert_all_scored_once_in_group(stack, w, ids + more)
    assert w.sample("streamscore_model_updates_applied_total", {"role": "primary"}) == 1
    assert w.terminate() == 0
