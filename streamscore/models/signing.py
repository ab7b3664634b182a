"""Signatures behind a small interface: a :class:`Signer` (publishers) and a
:class:`Verifier` (workers, and publishers checking what they re-sign).

Today both are HMAC-SHA256 with a keyring ``{key_id: key}`` (:class:`HmacSigner`,
:class:`HmacVerifier`). An asymmetric scheme (Ed25519: publishers hold the private key,
workers only public keys) drops in as another pair with the same two methods; nothing
that signs or verifies artifacts and envelopes knows which scheme it uses.

Key material never appears in exceptions, reprs or logs. Pure: no Kafka imports.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ..core.errors import SignatureMismatchError

__all__ = ["HmacSigner", "HmacVerifier", "Signer", "Verifier", "as_verifier"]


@runtime_checkable
class Signer(Protocol):
    """Signs messages with one key, named by ``key_id`` (which travels with the data)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks a signature made by some key of its keyring; raises
    :class:`~streamscore.core.errors.SignatureMismatchError` (unknown key id, or a signature
    that does not verify). ``what`` names the signed thing in the error message."""

    def verify(
        self, message: bytes, signature: bytes, key_id: str | None, *, what: str
    ) -> None: ...

    def key_ids(self) -> list[str]: ...


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class HmacSigner:
    """HMAC-SHA256 under one shared secret."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: bytes, key_id: str) -> None:
        if not key:
            raise ValueError("signing key must not be empty")
        self._key = bytes(key)
        self._key_id = key_id

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        return _hmac(self._key, message)

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self._key_id!r})"


class HmacVerifier:
    """HMAC-SHA256 against a keyring ``{key_id: key}`` (several ids during a rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, keyring: Mapping[str, bytes]) -> None:
        self._keys = {str(k): bytes(v) for k, v in keyring.items()}

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, message: bytes, signature: bytes, key_id: str | None, *, what: str) -> None:
        key = self._keys.get(key_id) if key_id is not None else None
        if key is None:
            raise SignatureMismatchError(
                f"{what} signed with unknown key id {key_id!r}; known key ids: {self.key_ids()}"
            )
        if not hmac.compare_digest(_hmac(key, message), bytes(signature)):
            raise SignatureMismatchError(
                f"{what} signature does not verify with key id {key_id!r} (tampered or wrong key)"
            )

    def __repr__(self) -> str:
        return f"HmacVerifier(key_ids={self.key_ids()})"


def as_verifier(keys: Mapping[str, bytes] | Verifier) -> Verifier:
    """A verifier as it is, or an HMAC verifier over a keyring mapping."""
    if isinstance(keys, Mapping):
        return HmacVerifier(keys)
    return keys
