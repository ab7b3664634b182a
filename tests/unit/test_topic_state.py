"""The one model-topic state reducer (``models/topic_state.py``) on its own: the role rules
(signed records only; no lower version, no replayed rollback or retire), the record behind
each role's current version, and archives checked when asked for."""

from __future__ import annotations

import dataclasses

import pytest

from streamscore.core.errors import (
    SignatureMismatchError,
    StaleModelVersionError,
    StaleRetireError,
    StaleRollbackError,
    UnsignedEnvelopeError,
)
from streamscore.core.records import Role
from streamscore.models.envelope import Action
from streamscore.models.signing import HmacVerifier
from streamscore.models.topic_state import TopicState, fold

from .model_records import RECORD_KEYRING, signed_record

VERIFIER = HmacVerifier(RECORD_KEYRING)


def test_the_role_state_follows_activations_rollbacks_and_retires() -> None:
    state = TopicState(VERIFIER)
    v1, v2 = signed_record(Role.PRIMARY, 1), signed_record(Role.PRIMARY, 2)
    assert state.admit(v1) and state.admit(v2)
    assert not state.admit(v2)  # the role's last record again: nothing to do
    st = state.role("demo", Role.PRIMARY)
    assert (st.current, st.newest, st.record) == (2, 2, v2)
    rb = signed_record(Role.PRIMARY, 1, target=2, rollback=True)
    assert state.admit(rb)
    st = state.role("demo", Role.PRIMARY)
    assert (st.current, st.newest, st.record) == (1, 2, rb)
    assert state.admit(signed_record(Role.PRIMARY, 1, Action.RETIRE, target=1))
    st = state.role("demo", Role.PRIMARY)
    assert (st.current, st.newest, st.record) == (None, 2, None)
    assert state.role("demo", Role.SHADOW).current is None  # never had a record
    assert state.role("other", Role.PRIMARY).record is None


def test_records_that_break_the_rules_raise_and_change_nothing() -> None:
    state = TopicState(VERIFIER)
    v1, v3 = signed_record(Role.PRIMARY, 1), signed_record(Role.PRIMARY, 3)
    state.admit(v1)
    state.admit(v3)
    cases = [
        (StaleModelVersionError, v1),  # replayed older activation
        (StaleModelVersionError, signed_record(Role.PRIMARY, 2)),  # below the newest
        (StaleRollbackError, signed_record(Role.PRIMARY, 1, target=2, rollback=True)),
        (StaleRollbackError, signed_record(Role.PRIMARY, 4, target=3, rollback=True)),
        (StaleRetireError, signed_record(Role.PRIMARY, 1, Action.RETIRE, target=1)),
        (UnsignedEnvelopeError, dataclasses.replace(v3, envelope_signature=None)),
        (SignatureMismatchError, dataclasses.replace(v3, version=9)),
        (SignatureMismatchError, signed_record(Role.PRIMARY, 9, key=b"another key")),
    ]
    for error, record in cases:
        with pytest.raises(error):
            state.admit(record)
        st = state.role("demo", Role.PRIMARY)
        assert (st.current, st.newest, st.record) == (3, 3, v3), record


def test_fold_skips_what_admit_rejects_and_keeps_to_the_named_model() -> None:
    shadow2 = signed_record(Role.SHADOW, 2)
    records = [
        signed_record(Role.PRIMARY, 1),
        shadow2,
        signed_record(Role.SHADOW, 3),
        shadow2,  # replayed: stale, skipped
        dataclasses.replace(signed_record(Role.PRIMARY, 7), envelope_signature=b"x" * 32),
        signed_record(Role.PRIMARY, 5, name="other"),
    ]
    state = fold(records, VERIFIER, name="demo")
    assert state.role("demo", Role.PRIMARY).current == 1
    assert state.role("demo", Role.SHADOW).current == 3
    assert state.role("other", Role.PRIMARY).current is None  # not folded
    assert fold(records, VERIFIER).role("other", Role.PRIMARY).current == 5


def test_archives_are_checked_when_asked_for() -> None:
    a1 = signed_record(Role.PRIMARY, 1, Action.ARCHIVE)
    a1_shadow = signed_record(Role.SHADOW, 1, Action.ARCHIVE)
    legacy = dataclasses.replace(a1, envelope_signature=None)  # before envelopes were signed
    a2 = signed_record(Role.PRIMARY, 2, Action.ARCHIVE)
    bad_artifact = dataclasses.replace(a2, signature=b"y" * 32)
    state = TopicState(VERIFIER)
    for record in (a1, a1_shadow, legacy, a2, bad_artifact):
        assert state.admit(record) is False  # archives never serve
    assert state.archived_versions("demo") == [1, 2]
    assert state.archive("demo", 1) == a1_shadow  # the newest that verifies
    assert state.archive("demo", 1, role=Role.PRIMARY) == a1
    assert state.archive("demo", 1, envelope_signed=False) == legacy
    assert state.archive("demo", 2) == a2  # the newer one's artifact does not verify
    assert state.archive("demo", 3) is None
    other_keys = TopicState(HmacVerifier({"k1": b"another key"}))
    other_keys.admit(a1)
    assert other_keys.archive("demo", 1, envelope_signed=False) is None
