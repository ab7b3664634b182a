"""Putting a consumed batch back while a service it needs is away (the schema registry),
without leaving the consumer group.

A batch that cannot be processed because of an :class:`~streamscore.core.errors.
InfrastructureError` is not bad data: nothing of it is produced, dead-lettered or
committed. :class:`PutBack` pauses the whole assignment, waits a backoff that doubles
while the service stays away (bounded), **polling the consumer meanwhile** (so the
member keeps heartbeating, serves rebalances and never passes ``max.poll.interval.ms``),
then resumes and seeks every partition back to the first offset not yet processed. The
next ``consume`` hands the same messages again.

Anything a poll hands out while paused (messages already queued, or from a partition
assigned during the wait) is dropped and its partition sought back to it too; a
partition revoked during the wait is forgotten (its next owner starts from the committed
offset, which never passed the batch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from ..core.errors import KafkaIOError

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


def first_offsets(msgs: Iterable[Any]) -> Offsets:
    """The first offset per (topic, partition) among ``msgs`` (errors skipped)."""
    first: Offsets = {}
    for m in msgs:
        if m.error() is not None:
            continue
        tp = (m.topic(), m.partition())
        if tp not in first or m.offset() < first[tp]:
            first[tp] = m.offset()
    return first


class PutBack:
    """``put_back(first, why)`` for one consumer (see the module doc).

    ``serve(timeout)`` is called while waiting (e.g. the producer's ``poll``, to keep
    serving delivery reports). :meth:`ok` resets the backoff once a batch goes through;
    :meth:`revoked` must be called from the consumer's revoke/lost callbacks."""

    def __init__(
        self,
        consumer: Any,
        *,
        stop: threading.Event,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        serve: Callable[[float], object] = lambda _t: None,
        poll_s: float = 0.2,
    ) -> None:
        self._c = consumer
        self._stop = stop
        self._min_s, self._max_s = backoff_s
        self._serve = serve
        self._poll_s = poll_s
        self._backoff_s = 0.0
        self._pending: Offsets | None = None  # where to seek back, during a put-back
        self.waiting = False

    @property
    def backoff_s(self) -> float:
        """The last wait (0 after :meth:`ok`)."""
        return self._backoff_s

    def ok(self) -> None:
        self._backoff_s = 0.0

    def revoked(self, partitions: Sequence[Any]) -> None:
        if self._pending is not None:
            for tp in partitions:
                self._pending.pop((tp.topic, tp.partition), None)

    def __call__(self, first: Mapping[tuple[str, int], int], why: str) -> float:
        """Put back everything from ``first`` on; returns the time waited (s)."""
        self._backoff_s = min(max(2 * self._backoff_s, self._min_s), self._max_s)
        log.warning("%s: batch put back, consumption paused for %.1f s", why, self._backoff_s)
        self._pending = dict(first)
        c = self._c
        t0 = time.monotonic()
        deadline = t0 + self._backoff_s
        self.waiting = True
        try:
            c.pause(c.assignment())
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._serve(0)
                # rebalance callbacks run in here; new partitions are paused below
                for m in c.consume(num_messages=100, timeout=min(left, self._poll_s)) or ():
                    if m.error() is None:
                        tp = (m.topic(), m.partition())
                        if tp not in self._pending or m.offset() < self._pending[tp]:
                            self._pending[tp] = m.offset()
                c.pause(c.assignment())
        finally:
            self.waiting = False
            pending, self._pending = self._pending, None
            owned = c.assignment()
            c.resume(owned)
            mine = {(tp.topic, tp.partition) for tp in owned}
            for (topic, partition), offset in sorted(pending.items()):
                if (topic, partition) not in mine:
                    continue  # revoked meanwhile: its next owner starts from the commit
                try:
                    c.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    # going on would skip the batch: stop instead (nothing was committed)
                    raise KafkaIOError(
                        f"could not seek {topic}[{partition}] back to offset {offset}: {exc}"
                    ) from exc
        return time.monotonic() - t0
