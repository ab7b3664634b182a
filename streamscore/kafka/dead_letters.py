"""Dead letters: the one place that builds them.

A dead letter is a consumed message that cannot be processed, forwarded to the
dead-letter topic with its original key and bytes (cut to fit only when larger than the
topic takes: :func:`fit`) and headers that say why
(``streamscore.error.class`` / ``.reason`` / ``.message`` / ``.field``), where it was
read (``streamscore.source.topic`` / ``.partition`` / ``.offset`` / ``.timestamp``), and
by whom (``streamscore.worker.id``, ``streamscore.model.version``). The score worker, the
feedback router and the feedback join all build theirs here, from a typed
:class:`~streamscore.core.errors.StreamscoreError`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.errors import StreamscoreError
from .delivery import OutMessage
from .output_limits import Headers, wire_size

TRUNCATED_HEADER = "streamscore.truncated"
ORIGINAL_SIZE_HEADER = "streamscore.original.size"
ORIGINAL_KEY_SIZE_HEADER = "streamscore.original.key.size"
#: The longest ``streamscore.error.message`` header, in bytes.
MAX_ERROR_MESSAGE_BYTES = 1000

HeaderList = list[tuple[str, bytes]]


class Source(Protocol):
    """What a dead letter keeps of the message it came from (the scorer's
    :class:`~streamscore.score.batch.InMessage` is one)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


def source_headers(topic: str, partition: int, offset: int) -> HeaderList:
    """Where a forwarded message was read (a dead letter's, and a late event's routed to
    the late topic)."""
    return [
        ("streamscore.source.topic", topic.encode()),
        ("streamscore.source.partition", str(partition).encode()),
        ("streamscore.source.offset", str(offset).encode()),
    ]


def dead_letter_headers(
    source: Source, error: StreamscoreError, *, worker_id: str, model_version: int | None
) -> HeaderList:
    """Headers that say why a message is in the dead-letter topic and where it came from."""
    headers = [
        ("streamscore.error.class", type(error).__name__.encode()),
        ("streamscore.error.reason", error.reason.encode()),
        (
            "streamscore.error.message",
            str(error).encode("utf-8", "replace")[:MAX_ERROR_MESSAGE_BYTES],
        ),
        *source_headers(source.topic, source.partition, source.offset),
        ("streamscore.source.timestamp", str(source.timestamp_ms).encode()),
        ("streamscore.worker.id", worker_id.encode()),
        ("streamscore.model.version", str(model_version or "").encode()),
    ]
    if error.field is not None:
        headers.append(("streamscore.error.field", error.field.encode()))
    return headers


def fit(
    key: bytes | None, value: bytes | None, headers: Headers, limit: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A message as it can be forwarded to a topic taking records up to ``limit`` bytes:
    whole if it fits; else its value cut to fit, with the headers ``streamscore.truncated
    = true`` and ``streamscore.original.size`` (the value's length). A key that would
    take more than half of the room left is cut too (``streamscore.original.key.size``).
    What is kept is a prefix: the original's first bytes, so the cut copy still shows
    what the message was."""
    out = list(headers)
    if wire_size(key, value, out) <= limit:
        return key, value, out
    out.append((TRUNCATED_HEADER, b"true"))
    out.append((ORIGINAL_SIZE_HEADER, str(len(value or b"")).encode()))
    room = limit - wire_size(None, None, out)
    if key is not None and len(key) > room // 2:
        out.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key)).encode()))
        room = limit - wire_size(None, None, out)
        key = key[: max(0, room // 2)]
    room -= len(key or b"")
    if value is not None:
        value = value[: max(0, room)]
    return key, value, out


def dead_letter(
    source: Source,
    error: StreamscoreError,
    *,
    dlq_topic: str,
    worker_id: str,
    model_version: int | None = None,
    limit: int | None = None,
) -> OutMessage:
    """The dead letter of ``source``: its key and bytes untouched, the headers of
    :func:`dead_letter_headers`; larger than ``limit`` (the dead-letter topic's record
    limit; None: no limit), cut to fit (:func:`fit`)."""
    headers = dead_letter_headers(source, error, worker_id=worker_id, model_version=model_version)
    if limit is None:
        return OutMessage(dlq_topic, source.key, source.value, headers)
    key, value, headers = fit(source.key, source.value, headers, limit)
    return OutMessage(dlq_topic, key, value, headers)


class Consumed:
    """A ``confluent_kafka.Message`` as it was consumed, seen as a :class:`Source`
    (``dead_letter(Consumed(msg), error, ...)``)."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Any) -> None:
        self._msg = msg

    @property
    def key(self) -> bytes | None:
        key: bytes | None = self._msg.key()
        return key

    @property
    def value(self) -> bytes | None:
        value: bytes | None = self._msg.value()
        return value

    @property
    def topic(self) -> str:
        return str(self._msg.topic())

    @property
    def partition(self) -> int:
        return int(self._msg.partition())

    @property
    def offset(self) -> int:
        return int(self._msg.offset())

    @property
    def timestamp_ms(self) -> int:
        _ts_type, ts = self._msg.timestamp()
        return int(ts)
