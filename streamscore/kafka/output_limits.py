"""How large an output may be, and how a message too large to forward whole is cut. Pure.

A topic refuses a record batch larger than its ``max.message.bytes`` (the broker's
``message.max.bytes`` when the topic has no override), and the producer refuses, in
``produce()``, a message larger than its own ``message.max.bytes``. The score worker
reads its output topics' limits at start (:func:`streamscore.kafka.admin.topic_limits`),
sets its producer's limit from them, and sizes every output against its topic's limit
*before* producing: a prediction that does not fit is not produced (its event is
dead-lettered, :class:`~streamscore.core.errors.OutputTooLargeError`), and a dead letter that
does not fit is cut to fit, with headers that say so
(:func:`streamscore.kafka.dead_letters.fit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: What one record in a batch of its own adds to key + value + headers on the wire: the
#: record batch header (61 bytes) and the record's varints, with a wide margin.
RECORD_OVERHEAD = 512
#: Per header: its two length varints (at most 5 bytes each).
HEADER_OVERHEAD = 10
#: librdkafka's default ``message.max.bytes``: the limit assumed for a topic whose
#: configuration cannot be read (below the broker's default of 1,048,588).
DEFAULT_LIMIT = 1_000_000
#: librdkafka's default ``batch.size``: the producer's batches never exceed it.
DEFAULT_BATCH_BYTES = 1_000_000
#: The producer's ``message.max.bytes`` cannot go beyond this (librdkafka's maximum).
MAX_PRODUCER_BYTES = 1_000_000_000

Headers = Sequence[tuple[str, bytes]]


def headers_size(headers: Headers | None) -> int:
    if not headers:
        return 0
    return sum(len(k.encode()) + len(v) + HEADER_OVERHEAD for k, v in headers)


def wire_size(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> int:
    """An upper bound of the bytes a topic counts for this record in a batch of its own."""
    return len(key or b"") + len(value or b"") + headers_size(headers) + RECORD_OVERHEAD


class OutputLimits:
    """The largest record (:func:`wire_size`) each output topic accepts.

    Read once at start; a refusal by the broker later (the topic's limit was lowered
    meanwhile) lowers the limit kept here (:meth:`lower`), so the next batches are sized
    against what the topic really takes."""

    def __init__(self, limits: Mapping[str, int] | None = None, *, default: int = DEFAULT_LIMIT):
        self._limits = dict(limits or {})
        self._default = default

    def __repr__(self) -> str:
        return f"OutputLimits({self._limits!r}, default={self._default})"

    def limit(self, topic: str) -> int:
        return self._limits.get(topic, self._default)

    def as_dict(self) -> dict[str, int]:
        return dict(self._limits)

    def fits(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> bool:
        return wire_size(key, value, headers) <= self.limit(topic)

    def lower(self, topic: str, refused_size: int) -> None:
        """``topic`` (or the producer) refused a record of ``refused_size``
        (:func:`wire_size`) bytes. The real limit is unknown, only lower: take three
        quarters of the refused size, so that a few refusals in a row get below it (and
        the learned limit is at most a quarter under it)."""
        self._limits[topic] = max(0, min(self.limit(topic), refused_size * 3 // 4))

    def producer_max_bytes(self) -> int:
        """The producer's ``message.max.bytes``: room for the largest record any output
        topic takes (librdkafka counts a little less than :func:`wire_size`)."""
        largest = max([self._default, *self._limits.values()])
        return min(largest + RECORD_OVERHEAD, MAX_PRODUCER_BYTES)

    def batch_bytes(self) -> int:
        """The producer's ``batch.size``: a batch of many small records must fit the
        smallest output topic too (the broker refuses a whole batch that is too large)."""
        smallest = min([self._default, *self._limits.values()])
        return max(1, min(DEFAULT_BATCH_BYTES, smallest - RECORD_OVERHEAD))
