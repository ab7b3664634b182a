"""Envelope signatures (pure): the canonical bytes, the Signer/Verifier interface, the
domain separation from artifact signatures, and the Avro schema's evolution."""

from __future__ import annotations

import dataclasses
import itertools
from io import BytesIO
from typing import Any

import fastavro
import pytest

from streamscore.core.errors import (
    DigestMismatchError,
    SignatureMismatchError,
    UnsignedEnvelopeError,
)
from streamscore.core.records import Role
from streamscore.models import envelope
from streamscore.models.envelope import Action, ModelEnvelope
from streamscore.models.signing import HmacSigner, HmacVerifier, Signer, Verifier, as_verifier
from streamscore.serde import schemas
from streamscore.serde.wire import parse

KEY = b"envelope-test-key-0123456789"
SIGNER = HmacSigner(KEY, "k1")
VERIFIER = HmacVerifier({"k1": KEY})


def make(**changes: Any) -> ModelEnvelope:
    base: dict[str, Any] = dict(
        model_name="m",
        role=Role.PRIMARY,
        version=2,
        artifact=b"SSBUNDLE-artifact-bytes",
        signature=b"s" * 32,
        key_id="k1",
        created_at_ms=1,
        published_at_ms=2,
        publisher="me",
    )
    base.update(changes)
    return envelope.make(**base, signer=SIGNER)


def test_interfaces_and_reprs_hide_keys() -> None:
    assert isinstance(SIGNER, Signer) and isinstance(VERIFIER, Verifier)
    assert as_verifier({"k1": KEY}).key_ids() == ["k1"]
    assert as_verifier(VERIFIER) is VERIFIER
    for obj in (SIGNER, VERIFIER):
        assert KEY.decode() not in repr(obj)
    with pytest.raises(ValueError):
        HmacSigner(b"", "k")


def test_signed_envelope_verifies_and_round_trips() -> None:
    e = make(rollback=True, target_version=3, version=1)
    envelope.verify(e, VERIFIER)
    assert ModelEnvelope.from_avro(e.to_avro()) == e
    assert "replacing v3" in repr(e) and "b'" not in repr(e)


@pytest.mark.parametrize(
    "change",
    [
        {"model_name": "n"},
        {"role": Role.SHADOW},
        {"action": Action.RETIRE},
        {"action": Action.ARCHIVE},
        {"version": 3},
        {"rollback": True},
        {"target_version": 1},
        {"format": "other/1"},
        {"key_id": "k2"},
        {"publisher": None},
        {"created_at_ms": 9},
        {"published_at_ms": 9},
    ],
)
def test_every_field_is_covered(change: dict[str, Any]) -> None:
    e = make()
    forged = dataclasses.replace(e, **change)
    assert envelope.signed_bytes(forged) != envelope.signed_bytes(e)
    with pytest.raises(SignatureMismatchError):
        envelope.verify(forged, HmacVerifier({"k1": KEY, "k2": KEY}))


def test_canonical_bytes_are_unambiguous() -> None:
    """Length prefixes and presence bytes: moving characters between adjacent fields or
    swapping None for a value never yields the same bytes."""
    variants = [
        make(model_name="ab", publisher="c"),
        make(model_name="a", publisher="bc"),
        make(model_name="m", publisher=None),
        make(model_name="m", publisher=""),
        make(target_version=None),
        make(target_version=0),
    ]
    encodings = [envelope.signed_bytes(v) for v in variants]
    assert len(set(encodings)) == len(encodings)
    assert all(x.startswith(envelope.ENVELOPE_DOMAIN) for x in encodings)


def test_artifact_signature_cannot_stand_in_for_an_envelope_signature() -> None:
    e = make()
    as_artifact = SIGNER.sign(e.artifact)  # what the publisher signs for the bundle
    with pytest.raises(SignatureMismatchError):
        envelope.verify(dataclasses.replace(e, envelope_signature=as_artifact), VERIFIER)
    # and the envelope's bytes are never a bundle (bundles start with their magic)
    assert not envelope.signed_bytes(e).startswith(b"SSBUNDLE")


def test_unsigned_unknown_key_and_digest_errors_are_typed() -> None:
    e = make()
    with pytest.raises(UnsignedEnvelopeError) as ei:
        envelope.verify(dataclasses.replace(e, envelope_signature=None), VERIFIER)
    assert ei.value.reason == "unsigned_envelope" and "republish" in str(ei.value)
    with pytest.raises(SignatureMismatchError) as es:
        envelope.verify(e, HmacVerifier({"other": KEY}))
    assert "unknown key id 'k1'" in str(es.value) and KEY.decode() not in str(es.value)
    with pytest.raises(DigestMismatchError) as ed:
        envelope.verify(dataclasses.replace(e, artifact=b"another artifact"), VERIFIER)
    assert ed.value.reason == "sha256_mismatch"


def test_schema_v2_is_v1_plus_defaulted_fields_and_reads_v1_data() -> None:
    """BACKWARD: the v2 reader reads v1 records (no envelope signature: they are then
    rejected as unsigned_envelope), and v1 readers still read v2 records."""
    v1, v2 = schemas.load("model_envelope", 1), schemas.load("model_envelope", 2)
    names1 = [f["name"] for f in v1["fields"]]
    new = [f for f in v2["fields"] if f["name"] not in names1]
    assert [f["name"] for f in v2["fields"]][: len(names1)] == names1
    assert {f["name"] for f in new} == {"target_version", "envelope_signature"}
    assert all("default" in f for f in new)
    e = make(rollback=True, target_version=3, version=1)
    old = {k: v for k, v in e.to_avro().items() if k in names1}
    pv1, pv2 = parse(v1), parse(v2)
    buf = BytesIO()
    fastavro.schemaless_writer(buf, pv1, old)
    back = fastavro.schemaless_reader(BytesIO(buf.getvalue()), pv1, pv2)
    legacy = ModelEnvelope.from_avro(back)
    assert legacy.envelope_signature is None and legacy.target_version is None
    with pytest.raises(UnsignedEnvelopeError):
        envelope.verify(legacy, VERIFIER)
    buf = BytesIO()
    fastavro.schemaless_writer(buf, pv2, e.to_avro())
    assert fastavro.schemaless_reader(BytesIO(buf.getvalue()), pv2, pv1) == old


def test_signed_bytes_of_all_actions_and_roles_differ() -> None:
    seen = set()
    for role, action, rollback in itertools.product(Role, Action, (False, True)):
        seen.add(envelope.signed_bytes(make(role=role, action=action, rollback=rollback)))
    assert len(seen) == len(Role) * len(Action) * 2
