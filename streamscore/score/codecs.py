"""What the scorer needs of its codecs: a batch of message values decoded, a batch of
predictions encoded. Pure: no Kafka, no fastavro.

:class:`BatchDecoder` and :class:`BatchEncoder` are the two interfaces; the worker's Avro
codecs (:class:`~streamscore.serde.message.AvroDeserializer`,
:class:`~streamscore.serde.message.AvroSerializer`) implement them, column-wise. Plain
callables (one message value -> event dict; prediction dicts -> encoded values) are taken
too: :func:`batch_decoder` and :func:`batch_encoder` wrap them in :class:`PerMessageDecoder`
and :class:`RowEncoder`. The results are the same either way; only the speed differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..core.columns import RecordColumns
from ..core.errors import InfrastructureError, StreamscoreError, unexpected_decode_error

log = logging.getLogger(__name__)

#: one message value -> its event
Decoder = Callable[[bytes | None], Mapping[str, Any]]
#: prediction records -> their encoded values, in order
RowsEncoder = Callable[[list[dict[str, Any]]], list[bytes]]
#: (indices of the values decoded, their events, ``(index, error)`` of each value that
#: failed), indices in order
Decoded = tuple[list[int], Sequence[Mapping[str, Any]], list[tuple[int, StreamscoreError]]]


@runtime_checkable
class BatchDecoder(Protocol):
    """Decodes a batch of message values at once, and one value alone (what the scorer
    falls back to when the batch path fails)."""

    def __call__(self, data: bytes | None, /) -> Mapping[str, Any]:
        """The event in one value, or a :class:`StreamscoreError`."""
        ...

    def decode_many(self, values: Sequence[bytes | None]) -> Decoded:
        """The batch decoded: the same events and typed errors as one call per value. An
        :class:`InfrastructureError` (the registry away) is raised, nothing decoded."""
        ...


@runtime_checkable
class BatchEncoder(Protocol):
    """Encodes records given column-wise (constants once, NumPy arrays as they are)."""

    def encode_columns(self, cols: RecordColumns) -> list[bytes]:
        """``cols`` encoded, one value per record, in order."""
        ...


def decode_each(decode: Decoder, values: Sequence[bytes | None]) -> Decoded:
    """``values`` decoded one at a time: whatever one message does to ``decode`` is that
    message's typed error, except an :class:`InfrastructureError`, which is raised."""
    good: list[int] = []
    events: list[Mapping[str, Any]] = []
    failed: list[tuple[int, StreamscoreError]] = []
    for i, v in enumerate(values):
        try:
            events.append(decode(v))
            good.append(i)
        except InfrastructureError:
            raise
        except StreamscoreError as exc:
            failed.append((i, exc))
        except Exception as exc:  # whatever one message does to a decoder is its own
            failed.append((i, unexpected_decode_error(exc)))
    return good, events, failed


class PerMessageDecoder:
    """A :class:`BatchDecoder` over a plain one-message decoder."""

    __slots__ = ("_decode",)

    def __init__(self, decode: Decoder) -> None:
        self._decode = decode

    def __call__(self, data: bytes | None, /) -> Mapping[str, Any]:
        return self._decode(data)

    def decode_many(self, values: Sequence[bytes | None]) -> Decoded:
        return decode_each(self._decode, values)


class RowEncoder:
    """A :class:`BatchEncoder` over a plain encoder of record dicts."""

    __slots__ = ("_encode",)

    def __init__(self, encode: RowsEncoder) -> None:
        self._encode = encode

    def encode_columns(self, cols: RecordColumns) -> list[bytes]:
        return self._encode(cols.rows())


def batch_decoder(decode: BatchDecoder | Decoder) -> BatchDecoder:
    """``decode`` as a :class:`BatchDecoder` (a plain decoder wrapped)."""
    return decode if isinstance(decode, BatchDecoder) else PerMessageDecoder(decode)


def batch_encoder(encode: BatchEncoder | RowsEncoder) -> BatchEncoder:
    """``encode`` as a :class:`BatchEncoder` (a plain encoder of dicts wrapped)."""
    return encode if isinstance(encode, BatchEncoder) else RowEncoder(encode)


def decode_batch(decoder: BatchDecoder, values: Sequence[bytes | None]) -> Decoded:
    """``decoder.decode_many(values)``; should that fail with anything but an
    :class:`InfrastructureError` (a bug in a batch path), each message then says for
    itself. An :class:`InfrastructureError` is raised, never returned as a message's
    error: the batch is not bad data."""
    try:
        decoded = decoder.decode_many(values)
    except InfrastructureError:
        raise
    except Exception:  # a bug in the batch path: each message then says for itself
        log.exception("batch decode failed; decoding the batch message by message")
        return decode_each(decoder, values)
    for _i, exc in decoded[2]:
        if isinstance(exc, InfrastructureError):
            raise exc
    return decoded
