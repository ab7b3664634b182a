"""Avro message keys (``[events] key_format = "avro"``): the Confluent wire format, the
key schema fetched from the registry by the id each key carries (any subject: the
``<topic>-key`` one or another strategy's), bounded like values
(:class:`~streamscore.serde.message.AvroDeserializer`, each key read with its own writer
schema).

A primitive key (string, long...) reads as its text, a record key as compact JSON with
sorted field names (bytes as hex); each distinct key of a batch is decoded once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..core.errors import InfrastructureError, KeyDecodeError, StreamscoreError
from .message import AvroDeserializer
from .wire import WriterSchemaCache


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class AvroKeyDecoder:
    """A :class:`~streamscore.score.keys.KeyDecoder` for wire-format Avro keys."""

    def __init__(self, schemas: WriterSchemaCache) -> None:
        self._read = AvroDeserializer(schemas, None, records_only=False)

    def decode_keys(
        self, keys: Sequence[bytes | None]
    ) -> tuple[list[str | None], dict[int, StreamscoreError]]:
        self._read.require(keys)  # the registry away: raised, nothing decoded
        seen: dict[bytes, str | StreamscoreError] = {}
        out: list[str | None] = []
        errors: dict[int, StreamscoreError] = {}
        for i, k in enumerate(keys):
            if k is None:
                out.append(None)
                continue
            got = seen.get(k)
            if got is None:
                try:
                    got = _text(self._read(k))
                except InfrastructureError:
                    raise
                except StreamscoreError as exc:
                    got = KeyDecodeError(
                        f"message key is not a readable Avro key ([events] key_format is "
                        f"'avro'): {exc.reason}: {exc.message}"
                    )
                seen[k] = got
            if isinstance(got, StreamscoreError):
                out.append(None)
                errors[i] = got
            else:
                out.append(got)
        return out, errors
