"""Signatures behind a small interface: a :class:`Signer` (publishers) and a
:class:`Verifier` (workers, and publishers checking what they re-sign).

Ed25519 is the default (:class:`Ed25519Signer`, :class:`Ed25519Verifier`): publishers
hold the private key, workers hold only public keys in a keyring ``{key_id: public key}``
(several ids during a rotation), so a worker cannot sign anything: a compromised worker
cannot publish a model the others trust. A verifier has no ``sign`` and cannot be turned
into a signer; :meth:`Ed25519Signer.from_file` refuses a public key or a keyring.

HMAC-SHA256 (:class:`HmacSigner`, :class:`HmacVerifier`) stays for deployments whose model
topic was signed with a shared secret (``STREAMSCORE_SIGNING=hmac``, off by default):
every worker holding that secret can sign, which is why it is not the default.

Files (read by :func:`signer_from` / :func:`verifier_from`, written by :func:`keygen`):

- private key: PKCS#8 PEM, preceded by a ``# key_id: <id>`` line; mode 0600.
- keyring: one ``<key_id>=<base64 of the raw 32-byte public key>`` per line, ``#``
  comments; the ``.pub`` file :func:`keygen` writes is a one-line keyring.

Key material never appears in exceptions, reprs or logs. Pure: no Kafka imports.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..core.config import SigningScheme, SigningSettings
from ..core.errors import ConfigError, SignatureMismatchError, UnknownSigningKeyError

__all__ = [
    "Ed25519Signer",
    "Ed25519Verifier",
    "HmacSigner",
    "HmacVerifier",
    "KeyPair",
    "Signer",
    "Verifier",
    "as_signer",
    "as_verifier",
    "key_fingerprint",
    "keygen",
    "publisher_keys",
    "read_keyring",
    "signer_from",
    "tool_verifier",
    "verifier_from",
    "worker_verifier",
]

log = logging.getLogger(__name__)

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_ID_LINE = "# key_id:"
_PUBLIC_KEY_BYTES = 32


@runtime_checkable
class Signer(Protocol):
    """Signs messages with one key, named by ``key_id`` (which travels with the data)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...

    def verifier(self) -> Verifier:
        """A verifier for this signer's own signatures (its key only)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Checks a signature made by some key of its keyring; raises
    :class:`~streamscore.core.errors.SignatureMismatchError` (its subclass
    :class:`~streamscore.core.errors.UnknownSigningKeyError` for a key id it does not
    list, or a signature that does not verify). ``what`` names the signed thing."""

    def verify(
        self, message: bytes, signature: bytes, key_id: str | None, *, what: str
    ) -> None: ...

    def key_ids(self) -> list[str]: ...


def _unknown(what: str, key_id: str | None, known: list[str]) -> UnknownSigningKeyError:
    return UnknownSigningKeyError(
        f"{what} signed with unknown key id {key_id!r}; known key ids: {known}"
    )


def _mismatch(what: str, key_id: str | None) -> SignatureMismatchError:
    return SignatureMismatchError(
        f"{what} signature does not verify with key id {key_id!r} (tampered or wrong key)"
    )


# --------------------------------------------------------------------------- Ed25519


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The default key id of a key pair: ``ed25519-`` and 12 hex digits of the sha256
    of the raw public key."""
    return "ed25519-" + hashlib.sha256(_raw_public(public_key)).hexdigest()[:12]


def _check_key_id(key_id: str, where: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigError(
            f"{where}: a key id is 1-64 characters of letters, digits, '.', '_' or '-', "
            f"got {key_id!r}"
        )
    return key_id


class Ed25519Signer:
    """Ed25519 under one private key (publishers only)."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("Ed25519Signer needs an Ed25519 private key")
        self._key = private_key
        self._key_id = _check_key_id(key_id, "Ed25519Signer")

    @classmethod
    def from_file(cls, path: Path, key_id: str | None = None) -> Ed25519Signer:
        """The private key in ``path`` (as :func:`keygen` writes it). Its key id is the
        file's ``# key_id:`` line, else ``key_id``, else the key's fingerprint; a
        ``key_id`` that contradicts the file's is refused. A public key or a keyring is
        refused: nothing a worker holds can sign."""
        where = f"signing key file {path}"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"cannot read {where}: {reason}") from None
        begin = text.find("-----BEGIN ")
        if begin < 0 or "PRIVATE KEY-----" not in text[begin:]:
            raise ConfigError(
                f"{where} holds no PEM private key (a public key or keyring cannot sign; "
                "make a key pair with `streamscore model keygen`, or set "
                "STREAMSCORE_SIGNING=hmac for a shared HMAC secret)"
            )
        try:
            key = serialization.load_pem_private_key(text[begin:].encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None  # the library's message may quote the file: never shown
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{where} is not an unencrypted Ed25519 private key in PEM")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            log.warning(
                "%s is readable by group or others (mode %o): chmod 600 it",
                where,
                path.stat().st_mode & 0o777,
            )
        header = [
            line[len(_KEY_ID_LINE) :].strip()
            for line in text[:begin].splitlines()
            if line.startswith(_KEY_ID_LINE)
        ]
        in_file = _check_key_id(header[-1], where) if header else None
        if in_file is not None and key_id is not None and key_id != in_file:
            raise ConfigError(
                f"{where} is key id {in_file!r} but STREAMSCORE_SIGNING_KEY_ID says {key_id!r}"
            )
        chosen = in_file or key_id or key_fingerprint(key.public_key())
        return cls(key, _check_key_id(chosen, where))

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(bytes(message))

    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return _raw_public(self._key.public_key())

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier({self._key_id: self.public_key()})

    def __repr__(self) -> str:
        return f"Ed25519Signer(key_id={self._key_id!r})"


class Ed25519Verifier:
    """Ed25519 against a keyring ``{key_id: raw 32-byte public key}``. It holds public
    keys only: it can check signatures, never make one."""

    __slots__ = ("_keys",)

    def __init__(self, keyring: Mapping[str, bytes | Ed25519PublicKey]) -> None:
        keys: dict[str, Ed25519PublicKey] = {}
        for kid, key in keyring.items():
            if isinstance(key, Ed25519PublicKey):
                keys[str(kid)] = key
                continue
            if len(key) != _PUBLIC_KEY_BYTES:
                raise ConfigError(
                    f"public key {kid!r} is {len(key)} bytes; an Ed25519 public key is 32"
                )
            keys[str(kid)] = Ed25519PublicKey.from_public_bytes(bytes(key))
        self._keys = keys

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, message: bytes, signature: bytes, key_id: str | None, *, what: str) -> None:
        key = self._keys.get(key_id) if key_id is not None else None
        if key is None:
            raise _unknown(what, key_id, self.key_ids())
        try:
            key.verify(bytes(signature), bytes(message))
        except (InvalidSignature, ValueError, TypeError):
            raise _mismatch(what, key_id) from None

    def __repr__(self) -> str:
        return f"Ed25519Verifier(key_ids={self.key_ids()})"


@dataclass(frozen=True)
class KeyPair:
    """What :func:`keygen` wrote."""

    key_id: str
    private_file: Path
    public_file: Path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never wider whatever the umask says); refuse an
    existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists: refusing to overwrite a key file") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def keygen(out_dir: Path, key_id: str | None = None) -> KeyPair:
    """A new Ed25519 key pair in ``out_dir``: ``<key_id>.key`` (the private key, mode
    0600, for publishers) and ``<key_id>.pub`` (a one-line keyring, for workers). The key
    id defaults to the key's fingerprint. Refuses to overwrite either file."""
    key = Ed25519PrivateKey.generate()
    kid = _check_key_id(key_id or key_fingerprint(key.public_key()), "model keygen --key-id")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = out_dir / f"{kid}.key", out_dir / f"{kid}.pub"
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a key file")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    header = (
        "# streamscore model signing key (Ed25519). PRIVATE: publishers only, never workers.\n"
        f"{_KEY_ID_LINE} {kid}\n"
    ).encode()
    _write_new(private, header + pem, 0o600)
    line = f"{kid}={base64.b64encode(_raw_public(key.public_key())).decode()}\n"
    _write_new(public, line.encode(), 0o644)
    return KeyPair(kid, private, public)


def read_keyring(path: Path, *, secret: bool = False) -> dict[str, bytes]:
    """The ``key_id=value`` lines of ``path``: base64 raw public keys, or (``secret``,
    the HMAC scheme) the shared secrets as written. A duplicate id is refused; no value is
    ever quoted in an error."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"cannot read keyring file {path}: {reason}") from None
    keys: dict[str, bytes] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kid, sep, value = (part.strip() for part in line.partition("="))
        where = f"keyring file {path} line {n}"
        if not sep or not value:
            raise ConfigError(f"{where}: expected key_id=<key>")
        _check_key_id(kid, where)
        if kid in keys:
            raise ConfigError(f"{where}: key id {kid!r} listed twice")
        if secret:
            keys[kid] = value.encode()
            continue
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: key {kid!r} is not base64") from None
        if len(key) != _PUBLIC_KEY_BYTES:
            raise ConfigError(
                f"{where}: key {kid!r} is {len(key)} bytes; an Ed25519 public key is 32 "
                "(a private key never goes in a keyring)"
            )
        keys[kid] = key
    return keys


# ------------------------------------------------------------------------------ HMAC


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class HmacSigner:
    """HMAC-SHA256 under one shared secret (``STREAMSCORE_SIGNING=hmac`` only)."""

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

    def verifier(self) -> HmacVerifier:
        return HmacVerifier({self._key_id: self._key})

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self._key_id!r})"


class HmacVerifier:
    """HMAC-SHA256 against a keyring ``{key_id: key}`` (several ids during a rotation).
    Whoever holds these keys can also sign with them."""

    __slots__ = ("_keys",)

    def __init__(self, keyring: Mapping[str, bytes]) -> None:
        self._keys = {str(k): bytes(v) for k, v in keyring.items()}

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, message: bytes, signature: bytes, key_id: str | None, *, what: str) -> None:
        key = self._keys.get(key_id) if key_id is not None else None
        if key is None:
            raise _unknown(what, key_id, self.key_ids())
        if not hmac.compare_digest(_hmac(key, message), bytes(signature)):
            raise _mismatch(what, key_id)

    def __repr__(self) -> str:
        return f"HmacVerifier(key_ids={self.key_ids()})"


def as_verifier(keys: Mapping[str, bytes] | Verifier) -> Verifier:
    """A verifier as it is, or an HMAC verifier over a keyring mapping of secrets."""
    if isinstance(keys, Mapping):
        return HmacVerifier(keys)
    return keys


def as_signer(key: bytes | Signer, key_id: str = "") -> Signer:
    """A signer as it is, or an HMAC signer over a shared secret and its id."""
    if isinstance(key, Signer):
        if key_id and key_id != key.key_id:
            raise ValueError(f"signer is key id {key.key_id!r}, not {key_id!r}")
        return key
    return HmacSigner(key, key_id)


# -------------------------------------------------------------------- from settings


def signer_from(settings: SigningSettings) -> Signer:
    """The publisher's signer. Raises :class:`ConfigError` when no private key (or, with
    the HMAC scheme, no secret) is configured: a worker with public keys only gets none."""
    if settings.scheme is SigningScheme.HMAC:
        if not settings.hmac_key:
            raise ConfigError(
                "no model signing key configured: set STREAMSCORE_SIGNING_KEY or "
                "STREAMSCORE_SIGNING_KEY_FILE (STREAMSCORE_SIGNING=hmac)"
            )
        return HmacSigner(settings.hmac_key.reveal().encode(), settings.key_id or "default")
    if settings.key_file is None:
        raise ConfigError(
            "no model signing key configured: publishers set STREAMSCORE_SIGNING_KEY_FILE to "
            "the private key from `streamscore model keygen` (workers need only public keys)"
        )
    return Ed25519Signer.from_file(settings.key_file, settings.key_id)


def verifier_from(
    settings: SigningSettings, signer: Signer | None = None, *, required: bool = True
) -> Verifier:
    """The keys that verify model records: the keyring files' (public keys; HMAC: the
    secrets), plus ``signer``'s own (a publisher checking what it re-signs) and, with the
    HMAC scheme, the shared secret. A worker passes no signer: it never reads the private
    key. ``required``: raise :class:`ConfigError` when that leaves no key at all."""
    hmac_scheme = settings.scheme is SigningScheme.HMAC
    keys: dict[str, bytes] = {}
    for path in settings.keyring_files:
        for kid, key in read_keyring(path, secret=hmac_scheme).items():
            if keys.get(kid, key) != key:
                raise ConfigError(f"key id {kid!r} has two different keys in the keyring files")
            keys[kid] = key
    if hmac_scheme and signer is None and settings.hmac_key:
        signer = HmacSigner(settings.hmac_key.reveal().encode(), settings.key_id or "default")
    if isinstance(signer, HmacSigner | Ed25519Signer):
        own = signer.public_key() if isinstance(signer, Ed25519Signer) else signer._key
        if keys.get(signer.key_id, own) != own:
            raise ConfigError(
                f"key id {signer.key_id!r} names another key in the keyring files than the "
                "signing key's"
            )
        keys[signer.key_id] = own
    if required and not keys:
        raise ConfigError(
            "no model verification key: set STREAMSCORE_KEYRING_FILE (or "
            "STREAMSCORE_PUBLIC_KEY_FILE) to the publishers' public keys; workers never run "
            "unsigned models"
            + (" (STREAMSCORE_SIGNING=hmac: STREAMSCORE_SIGNING_KEY)" if hmac_scheme else "")
        )
    return HmacVerifier(keys) if hmac_scheme else Ed25519Verifier(keys)


def publisher_keys(settings: SigningSettings) -> tuple[Signer, Verifier]:
    """A publisher's signer (its private key) and the keys it verifies with: the
    keyrings' and its own."""
    signer = signer_from(settings)
    return signer, verifier_from(settings, signer)


def tool_verifier(settings: SigningSettings) -> Verifier:
    """The keys ``model list`` and ``train`` verify with: the keyrings', and the signing
    key's when this shell has one (none at all is allowed: every record then shows as
    signed by an unknown key)."""
    signer = signer_from(settings) if settings.can_sign else None
    return verifier_from(settings, signer, required=False)


def worker_verifier(settings: SigningSettings) -> Verifier:
    """A score worker's keys: public keys only (Ed25519); it never reads a private key,
    so nothing in the process can sign."""
    if settings.key_file is not None:
        log.warning(
            "STREAMSCORE_SIGNING_KEY_FILE is set but a score worker only verifies models: it "
            "is not read; remove the private key from workers"
        )
    return verifier_from(settings)
