"""The model-update envelope on the compacted model topic (pure: no Kafka imports).

Keys: ``<name>/<role>`` carries the desired state of a role (latest wins under
compaction); ``<name>/archive/<version>`` keeps each published version for rollback.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .records import Role

FORMAT = "streamscore-bundle/1"


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

    @property
    def key(self) -> str:
        if self.action is Action.ARCHIVE:
            return archive_key(self.model_name, self.version)
        return role_key(self.model_name, self.role)

    @property
    def size(self) -> int:
        return len(self.artifact)

    def __repr__(self) -> str:  # never dump artifact or signature bytes into logs
        return (
            f"ModelEnvelope({self.model_name}/{self.role.value} v{self.version} "
            f"{self.action.value}, {self.size} bytes, key_id={self.key_id!r})"
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
) -> ModelEnvelope:
    return ModelEnvelope(
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
    )
