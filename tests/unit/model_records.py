"""Model-topic records for tests that need the topic's rules but not a model: signed as
a publisher signs them (envelope and artifact), with a few bytes standing in for the
bundle (nothing here loads it)."""

from __future__ import annotations

from streamscore.core.records import Role
from streamscore.models import envelope
from streamscore.models.envelope import Action, ModelEnvelope
from streamscore.models.signing import HmacSigner

RECORD_KEY = b"model-records-test-key"
RECORD_KEYRING = {"k1": RECORD_KEY}


def signed_record(
    role: Role,
    version: int,
    action: Action = Action.ACTIVATE,
    *,
    target: int | None = None,
    rollback: bool = False,
    name: str = "demo",
    key: bytes = RECORD_KEY,
) -> ModelEnvelope:
    """A record of ``name`` signed with ``key`` under key id ``k1`` (its artifact too)."""
    signer = HmacSigner(key, "k1")
    artifact = b"" if action is Action.RETIRE else f"{name} v{version}".encode()
    return envelope.make(
        model_name=name,
        role=role,
        version=version,
        artifact=artifact,
        signature=signer.sign(artifact) if artifact else None,
        key_id="k1",
        created_at_ms=1_700_000_000_000,
        published_at_ms=1_700_000_000_000,
        publisher="t",
        action=action,
        rollback=rollback,
        target_version=target,
        signer=signer,
    )
