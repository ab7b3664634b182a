"""Message keys, decoded once per batch (``[events] key_format``): the string each event
is routed by (canary: a hash of it) and that its prediction records as ``key``. The
outputs' Kafka key stays the event's own key bytes (same partitioning downstream).

- ``string``: UTF-8 text (a key that is not UTF-8 is dead-lettered, :class:`KeyDecodeError`);
- ``bytes``: opaque bytes, shown as lowercase hex;
- ``avro``: the Confluent wire format with a key schema in the registry
  (:class:`streamscore.serde.keys.AvroKeyDecoder`; a primitive key reads as its text, a
  record key as compact JSON with sorted field names).

A null key is None in every format. Pure: no Kafka, no fastavro.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..core.config import KeyFormat
from ..core.errors import ConfigError, KeyDecodeError, StreamscoreError

#: (each key as its string, None for a null key; ``index -> error`` for those that fail)
DecodedKeys = tuple[list[str | None], dict[int, StreamscoreError]]


class KeyDecoder(Protocol):
    def decode_keys(self, keys: Sequence[bytes | None]) -> DecodedKeys:
        """Every key of a batch; an :class:`~streamscore.core.errors.InfrastructureError`
        (the registry away) is raised, nothing decoded."""
        ...


class StringKeys:
    """UTF-8 keys: one list comprehension for the whole batch, per key only when one
    of them is not UTF-8."""

    def decode_keys(self, keys: Sequence[bytes | None]) -> DecodedKeys:
        try:
            return [None if k is None else k.decode("utf-8") for k in keys], {}
        except UnicodeDecodeError:
            pass
        out: list[str | None] = []
        errors: dict[int, StreamscoreError] = {}
        for i, k in enumerate(keys):
            if k is None:
                out.append(None)
                continue
            try:
                out.append(k.decode("utf-8"))
            except UnicodeDecodeError as exc:
                out.append(None)
                errors[i] = KeyDecodeError(
                    f"message key is not UTF-8 text ({len(k)} bytes, invalid at byte "
                    f"{exc.start}); [events] key_format is 'string' (use 'bytes' for "
                    "opaque keys)"
                )
        return out, errors


class BytesKeys:
    """Opaque keys, as lowercase hex."""

    def decode_keys(self, keys: Sequence[bytes | None]) -> DecodedKeys:
        return [None if k is None else k.hex() for k in keys], {}


def key_decoder(fmt: KeyFormat, avro: KeyDecoder | None = None) -> KeyDecoder:
    """The decoder of keys written as ``fmt`` (``avro``: the registry-backed one)."""
    if fmt is KeyFormat.STRING:
        return StringKeys()
    if fmt is KeyFormat.BYTES:
        return BytesKeys()
    if avro is None:
        raise ConfigError("[events] key_format = 'avro' needs the registry's key decoder")
    return avro
