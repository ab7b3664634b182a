"""The demo's traffic: synthetic events at a steady rate, and their labels after a delay.

:class:`Traffic` produces v1 events first, then v2 events carrying feature c (schema
evolution live), plus a small share of malformed messages (cut short on purpose). It
keeps each event's true y (:class:`DemoTruth`: what the demo knows and the workers do
not) and queues a label for it, which :meth:`Traffic.label` sends to the feedback topic
once the label's delay has passed.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Producer

from ..core.config import KafkaSettings, TopicSettings
from ..serde import schemas
from ..serde.message import AvroSerializer
from . import synthetic


@dataclass
class DemoTruth:
    """What the demo knows and the workers do not: each event's true y."""

    y: dict[str, float] = field(default_factory=dict)
    produced: int = 0
    malformed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _paced(rate: float, keep_going: Callable[[], bool], send: Callable[[], None]) -> None:
    """Calls ``send`` ``rate`` times a second while ``keep_going()``."""
    interval = 1.0 / rate
    next_t = time.monotonic()
    while keep_going():
        send()
        next_t += interval
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Traffic:
    """Events and labels for one demo run (``topics``), on the demo's ``stop`` event."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        *,
        rate: float,
        bad_fraction: float,
        label_delay_s: float,
        stop: threading.Event,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.rate = rate
        self.bad_fraction = bad_fraction
        self.label_delay_s = label_delay_s
        self.stop = stop
        self.truth = DemoTruth()
        #: (due wall-clock time, event id, y), in due order
        self.labels: collections.deque[tuple[float, str, float]] = collections.deque()
        self.labels_sent = 0

    def events_producer(self, reg: Any) -> tuple[dict[int, Any], Producer]:
        """The events' serializers (v1, v2) and producer, connected and with the v1 schema
        registered, so the first measured events do not wait for either."""
        subject = f"{self.topics.events}-value"
        ser = {
            1: AvroSerializer(reg, subject, schemas.load("event", 1)),
            2: AvroSerializer(reg, subject, schemas.load("event", 2)),
        }
        p = Producer(self.kafka.config("producer", {"linger.ms": 2, "enable.idempotence": True}))
        ((e, _y),) = synthetic.events(1, np.random.default_rng(0), with_c=False)
        ser[1](e)  # registers the v1 schema (v2 is registered when v2 events start)
        p.list_topics(self.topics.events, timeout=10)
        return ser, p

    def produce(
        self, ser: dict[int, Any], p: Producer, *, t0: float, duration_s: float, v2_from: float
    ) -> None:
        """Events from ``t0`` for ``duration_s`` seconds (wall clock), v2 from ``v2_from``:
        each with its truth kept and its label queued, or, a ``bad_fraction`` of them,
        cut short."""
        rng = np.random.default_rng(1)

        def send() -> None:
            version = 1 if time.time() < v2_from else 2
            ((e, y),) = synthetic.events(1, rng, with_c=version == 2)
            if rng.random() < self.bad_fraction:
                value = ser[version](e)[: rng.integers(1, 12)]  # truncated on purpose
                with self.truth.lock:
                    self.truth.malformed += 1
            else:
                value = ser[version](e)
                with self.truth.lock:
                    self.truth.y[e["event_id"]] = y
                self.labels.append((time.time() + self.label_delay_s, e["event_id"], y))
            p.produce(self.topics.events, value, e["key"].encode())
            with self.truth.lock:
                self.truth.produced += 1
            p.poll(0)

        _paced(
            self.rate,
            lambda: not self.stop.is_set() and time.time() - t0 < duration_s,
            send,
        )
        p.flush(30)

    def warm_up(self, ser: dict[int, Any], p: Producer, seconds: float) -> None:
        """Unmeasured v1 traffic at the demo's rate. The events are scored like any other
        but have no truth, so the observer skips their predictions and no label is sent."""
        rng = np.random.default_rng(0)
        end = time.monotonic() + seconds

        def send() -> None:
            ((e, _y),) = synthetic.events(1, rng, with_c=False)
            p.produce(self.topics.events, ser[1](e), e["key"].encode())
            p.poll(0)

        _paced(self.rate, lambda: not self.stop.is_set() and time.monotonic() < end, send)
        p.flush(30)

    def label(self, reg: Any) -> None:
        """Sends each event's true y to the feedback topic once its delay has passed; on
        stop, whatever is still queued goes out at once."""
        ser = AvroSerializer(reg, f"{self.topics.feedback}-value", schemas.load("feedback"))
        p = Producer(self.kafka.config("producer", {"linger.ms": 5, "enable.idempotence": True}))
        while True:
            now = time.time()
            stopping = self.stop.is_set()  # on stop, whatever is queued goes out now
            while self.labels and (stopping or self.labels[0][0] <= now):
                _due, event_id, y = self.labels.popleft()
                value = ser({"event_id": event_id, "label": y, "observed_time": int(now * 1000)})
                p.produce(self.topics.feedback, value, event_id.encode())
                self.labels_sent += 1
            p.poll(0)
            if stopping:
                break
            time.sleep(0.05)
        p.flush(30)
