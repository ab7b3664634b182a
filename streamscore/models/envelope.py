"""The model-update envelope on the compacted model topic (pure: no Kafka imports).

Keys: ``<name>/<role>`` carries the desired state of a role (latest wins under
compaction); ``<name>/archive/<version>`` keeps each published version for rollback.

Every field that decides what serves is signed: :func:`signed_bytes` is a canonical,
length-prefixed encoding of the envelope (action, role, rollback, model name, version,
the version a rollback or retire replaces, format, the artifact's sha256, key id,
publisher, times), prefixed by a domain tag so that it can never be mistaken for a signed
artifact (bundles start with ``SSBUNDLE``). :func:`verify` checks that signature and the
artifact's sha256. Whether a verified envelope follows its role's signed history (so a
replayed old record cannot lower a role's version, revive a rolled-back or retired one,
or clear a newer one) is :class:`~streamscore.models.topic_state.TopicState`'s concern.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import (
    BundleDecodeError,
    DigestMismatchError,
    UnsignedEnvelopeError,
)
from ..core.records import Role
from .signing import Signer, Verifier

FORMAT = "streamscore-bundle/1"
#: Domain tag of envelope signatures (version 1 of the canonical encoding).
ENVELOPE_DOMAIN = b"streamscore/model-envelope/v1\x00"


class Action(enum.StrEnum):
    ACTIVATE = "activate"
    RETIRE = "retire"
    ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class ModelEnvelope:
    model_name: str
    role: Role
    version: int
    action: Action
    created_at_ms: int
    published_at_ms: int
    publisher: str | None
    rollback: bool
    format: str
    key_id: str | None
    signature: bytes | None
    sha256: str
    artifact: bytes
    #: rollback: the version it replaces; retire: the version it retires.
    target_version: int | None = None
    #: signature of :func:`signed_bytes` (None: unsigned, always rejected).
    envelope_signature: bytes | None = None

    @property
    def key(self) -> str:
        if self.action is Action.ARCHIVE:
            return archive_key(self.model_name, self.version)
        return role_key(self.model_name, self.role)

    @property
    def size(self) -> int:
        return len(self.artifact)

    def __repr__(self) -> str:  # never dump artifact or signature bytes into logs
        target = "" if self.target_version is None else f" replacing v{self.target_version}"
        return (
            f"ModelEnvelope({self.model_name}/{self.role.value} v{self.version} "
            f"{self.action.value}{' rollback' if self.rollback else ''}{target}, "
            f"{self.size} bytes, key_id={self.key_id!r})"
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "role": self.role.value,
            "version": self.version,
            "action": self.action.value,
            "created_at": self.created_at_ms,
            "published_at": self.published_at_ms,
            "publisher": self.publisher,
            "rollback": self.rollback,
            "format": self.format,
            "key_id": self.key_id,
            "signature": self.signature,
            "sha256": self.sha256,
            "artifact": self.artifact,
            "target_version": self.target_version,
            "envelope_signature": self.envelope_signature,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ModelEnvelope:
        return cls(
            model_name=d["model_name"],
            role=Role(d["role"]),
            version=int(d["version"]),
            action=Action(d["action"]),
            created_at_ms=int(d["created_at"]),
            published_at_ms=int(d["published_at"]),
            publisher=d.get("publisher"),
            rollback=bool(d.get("rollback", False)),
            format=d["format"],
            key_id=d.get("key_id"),
            signature=d.get("signature"),
            sha256=d["sha256"],
            artifact=d["artifact"],
            target_version=None if d.get("target_version") is None else int(d["target_version"]),
            envelope_signature=d.get("envelope_signature"),
        )


def role_key(name: str, role: Role) -> str:
    return f"{name}/{role.value}"


def archive_key(name: str, version: int) -> str:
    return f"{name}/archive/{version}"


def make(
    *,
    model_name: str,
    role: Role,
    version: int,
    artifact: bytes,
    signature: bytes | None,
    key_id: str | None,
    created_at_ms: int,
    published_at_ms: int,
    publisher: str | None,
    action: Action = Action.ACTIVATE,
    rollback: bool = False,
    target_version: int | None = None,
    signer: Signer | None = None,
) -> ModelEnvelope:
    """An envelope for ``artifact``; signed (envelope signature) when ``signer`` is given."""
    env = ModelEnvelope(
        model_name=model_name,
        role=role,
        version=version,
        action=action,
        created_at_ms=created_at_ms,
        published_at_ms=published_at_ms,
        publisher=publisher,
        rollback=rollback,
        format=FORMAT,
        key_id=key_id,
        signature=signature,
        sha256=hashlib.sha256(artifact).hexdigest(),
        artifact=artifact,
        target_version=target_version,
    )
    return env if signer is None else sign(env, signer)


# ----------------------------------------------------------------------- signatures

_LEN = struct.Struct(">I")
_I64 = struct.Struct(">q")


def signed_bytes(env: ModelEnvelope) -> bytes:
    """The canonical bytes an envelope signature covers: the domain tag, then each field
    in a fixed order, strings as 4-byte length + UTF-8, integers as 8-byte big-endian,
    optional values behind a presence byte. Unambiguous: no two envelopes share them."""
    out = [ENVELOPE_DOMAIN]

    def text(s: str | None) -> None:
        if s is None:
            out.append(b"\x00")
            return
        b = s.encode("utf-8")
        out.append(b"\x01" + _LEN.pack(len(b)) + b)

    def number(n: int | None) -> None:
        out.append(b"\x00" if n is None else b"\x01" + _I64.pack(n))

    try:
        text(env.model_name)
        text(env.role.value)
        text(env.action.value)
        number(env.version)
        out.append(b"\x01" if env.rollback else b"\x00")
        number(env.target_version)
        text(env.format)
        text(env.sha256)
        text(env.key_id)
        text(env.publisher)
        number(env.created_at_ms)
        number(env.published_at_ms)
    except (struct.error, UnicodeEncodeError) as exc:
        raise BundleDecodeError(f"model envelope fields cannot be encoded: {exc}") from exc
    return b"".join(out)


def sign(env: ModelEnvelope, signer: Signer) -> ModelEnvelope:
    """``env`` under ``signer``'s key id, with its envelope signature."""
    keyed = replace(env, key_id=signer.key_id, envelope_signature=None)
    return replace(keyed, envelope_signature=signer.sign(signed_bytes(keyed)))


def verify(env: ModelEnvelope, verifier: Verifier) -> None:
    """Raise unless the envelope is signed by a known key over all its fields and its
    ``sha256`` is the artifact's: UnsignedEnvelopeError, SignatureMismatchError or
    DigestMismatchError."""
    if not env.envelope_signature:
        raise UnsignedEnvelopeError(
            f"model record {env.key} v{env.version} ({env.action.value}) carries no envelope "
            "signature; records written before envelopes were signed must be republished "
            "(streamscore model publish / rollback / retire)"
        )
    verifier.verify(
        signed_bytes(env),
        env.envelope_signature,
        env.key_id,
        what=f"model envelope {env.key} v{env.version} ({env.action.value})",
    )
    digest = hashlib.sha256(env.artifact).hexdigest()
    if not hmac.compare_digest(digest, env.sha256.lower()):
        raise DigestMismatchError(
            f"model record {env.key} v{env.version}: the artifact's sha256 is "
            f"{digest[:12]}..., the envelope says {env.sha256[:12]}..."
        )
