"""The updater's decisions, without Kafka: verify, order, load, check, then swap (or
reject). Each attack on the model topic from issue 10 has its test here: an unsigned or
forged retire, a replayed record (old activate, old rollback, old retire, an archive
re-labelled as a rollback), a shadow re-labelled as primary, an artifact swapped under a
signed envelope; each rejected with its reason while the current model keeps serving, and
the start-up catch-up decides the same as a running worker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamscore.core.config import KafkaSettings
from streamscore.core.records import Role
from streamscore.metrics.series import Metrics
from streamscore.models import envelope
from streamscore.models.container import Bundle, sign_bundle
from streamscore.models.envelope import Action, ModelEnvelope
from streamscore.models.signing import HmacSigner
from streamscore.models.store import ModelStore
from streamscore.models.updates import ModelUpdater, UpdateReport
from streamscore.models.watcher import ModelWatcher

from .kafka_fakes import FakeMessage

READER = {"f0": "double", "f1": "double", "f2": "double?", "event_id": "string"}


@pytest.fixture
def rig(keyring: Mapping[str, bytes]) -> dict[str, Any]:
    return make_rig(keyring)


def make_rig(keyring: Mapping[str, bytes]) -> dict[str, Any]:
    reg = CollectorRegistry()
    reports: list[UpdateReport] = []
    store = ModelStore()
    updater = ModelUpdater(
        store,
        keyring=keyring,
        reader_fields=READER,
        metrics=Metrics(reg),
        report=reports.append,
        clock=lambda: 1_700_000_001.5,
    )
    return {"reg": reg, "reports": reports, "store": store, "updater": updater}


def env_for(
    b: Bundle,
    keyring: Mapping[str, bytes],
    *,
    role: Role = Role.PRIMARY,
    key_id: str = "k1",
    tamper: bool = False,
    unsigned: bool = False,
    rollback: bool = False,
    target: int | None = None,
    action: Action = Action.ACTIVATE,
    sign_envelope: bool = True,
) -> ModelEnvelope:
    """An envelope as the publisher makes it (both signatures), or with one flaw."""
    signed = sign_bundle(b.to_bytes(), keyring[key_id], key_id)
    art = bytearray(signed.payload)
    if tamper:
        art[-10] ^= 1
    return envelope.make(
        model_name=b.meta.name,
        role=role,
        version=b.meta.version,
        artifact=bytes(art),
        signature=None if unsigned else signed.signature,
        key_id=key_id,
        created_at_ms=1,
        published_at_ms=1_700_000_000_000,
        publisher="t",
        rollback=rollback,
        target_version=target,
        action=action,
        signer=HmacSigner(keyring[key_id], key_id) if sign_envelope else None,
    )


def retire_for(
    name: str,
    role: Role,
    target: int | None,
    keyring: Mapping[str, bytes],
    *,
    sign_envelope: bool = True,
    key: bytes | None = None,
) -> ModelEnvelope:
    return envelope.make(
        model_name=name,
        role=role,
        version=target or 0,
        artifact=b"",
        signature=None,
        key_id="k1",
        created_at_ms=2,
        published_at_ms=1_700_000_000_000,
        publisher="t",
        action=Action.RETIRE,
        target_version=target,
        signer=HmacSigner(key or keyring["k1"], "k1") if sign_envelope else None,
    )


def resign(e: ModelEnvelope, keyring: Mapping[str, bytes], **changes: Any) -> ModelEnvelope:
    """What only a key holder can do: change fields and sign the envelope again."""
    return envelope.sign(dataclasses.replace(e, **changes), HmacSigner(keyring["k1"], "k1"))


def rejected(reg: CollectorRegistry, reason: str | None = None) -> float:
    if reason is not None:
        v = reg.get_sample_value("streamscore_model_updates_rejected_total", {"reason": reason})
        return v or 0
    total = 0.0
    for fam in reg.collect():
        for s in fam.samples:
            if s.name == "streamscore_model_updates_rejected_total":
                total += s.value
    return total


def versions(store: ModelStore) -> dict[str, int]:
    return store.snapshot().versions()


def test_apply_activates_and_reports(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    assert rig["updater"].apply(env_for(make_regressor_bundle(1), keyring))
    snap = rig["store"].snapshot()
    assert snap.primary is not None and snap.primary.meta.version == 1
    reg = rig["reg"]
    assert reg.get_sample_value("streamscore_model_updates_applied_total", {"role": "primary"}) == 1
    assert (
        reg.get_sample_value(
            "streamscore_model_info", {"model_name": "m", "model_version": "1", "role": "primary"}
        )
        == 1
    )
    assert reg.get_sample_value("streamscore_model_loaded") == 1
    assert reg.get_sample_value("streamscore_model_swap_seconds_sum") == pytest.approx(1.5)
    assert [r.kind for r in rig["reports"]] == ["model_applied"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b, k: env_for(b, k, tamper=True), "bad_signature"),
        (lambda b, k: env_for(b, k, unsigned=True), "unsigned"),
        (lambda b, k: env_for(b, k, sign_envelope=False), "unsigned_envelope"),
        (lambda b, k: resign(env_for(b, k), k, format="pickle/1"), "undecodable"),
        (lambda b, k: resign(env_for(b, k), k, version=99), "undecodable"),
        # without the key, changing any signed field breaks the envelope signature
        (lambda b, k: dataclasses.replace(env_for(b, k), format="pickle/1"), "bad_signature"),
        (lambda b, k: dataclasses.replace(env_for(b, k), version=99), "bad_signature"),
        (lambda b, k: dataclasses.replace(env_for(b, k), model_name="n"), "bad_signature"),
        (lambda b, k: dataclasses.replace(env_for(b, k), publisher="x"), "bad_signature"),
        (lambda b, k: dataclasses.replace(env_for(b, k), key_id="k2"), "bad_signature"),
    ],
)
def test_rejections_leave_the_current_model_serving(
    rig: dict[str, Any],
    make_regressor_bundle: Callable[..., Bundle],
    keyring: Any,
    mutate: Callable[[Bundle, Any], ModelEnvelope],
    reason: str,
) -> None:
    rig["updater"].apply(env_for(make_regressor_bundle(1), keyring))
    assert not rig["updater"].apply(mutate(make_regressor_bundle(2), keyring))
    assert rig["store"].snapshot().primary.meta.version == 1
    assert rejected(rig["reg"], reason) == 1
    assert rejected(rig["reg"]) == 1
    assert rig["reports"][-1].kind == "model_rejected"
    assert rig["reports"][-1].reason == reason


def test_incompatible_feature_spec_is_rejected(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    reg = CollectorRegistry()
    narrow = ModelUpdater(
        rig["store"],
        keyring=keyring,
        reader_fields={"f0": "double", "f1": "string"},
        metrics=Metrics(reg),
    )
    assert not narrow.apply(env_for(make_regressor_bundle(1), keyring))
    assert rejected(reg, "incompatible_features") == 1
    assert rig["store"].snapshot().primary is None


# ----------------------------------------------------------------- issue 10 attacks


def test_unsigned_retire_does_not_clear_the_primary(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(1), keyring))
    assert not up.apply(retire_for("m", Role.PRIMARY, 1, keyring, sign_envelope=False))
    assert not up.apply(retire_for("m", Role.PRIMARY, 1, keyring, key=b"attacker"))
    assert versions(rig["store"]) == {"primary": 1}
    assert rejected(rig["reg"], "unsigned_envelope") == 1
    assert rejected(rig["reg"], "bad_signature") == 1
    assert [r.reason for r in rig["reports"][1:]] == ["unsigned_envelope", "bad_signature"]


def test_signed_retire_of_the_current_version_clears_it_and_an_old_retire_cannot(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(1), keyring, role=Role.SHADOW))
    old_retire = retire_for("m", Role.SHADOW, 1, keyring)
    assert up.apply(old_retire)
    assert versions(rig["store"]) == {}
    assert not up.apply(old_retire)  # the same record again: nothing to do, not an attack
    assert up.apply(env_for(make_regressor_bundle(2), keyring, role=Role.SHADOW))
    assert not up.apply(old_retire)  # replayed after v2: names v1, refused
    assert not up.apply(retire_for("m", Role.SHADOW, None, keyring))  # names nothing
    assert versions(rig["store"]) == {"shadow": 2}
    assert rejected(rig["reg"], "stale_retire") == 2
    assert rejected(rig["reg"]) == 2
    assert [r.kind for r in rig["reports"]] == [
        "model_applied",
        "model_retired",
        "model_applied",
        "model_rejected",
        "model_rejected",
    ]


def test_replayed_archive_relabelled_as_rollback_cannot_downgrade(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    archive1 = env_for(make_regressor_bundle(1), keyring, action=Action.ARCHIVE)
    up.apply(env_for(make_regressor_bundle(1), keyring))
    up.apply(env_for(make_regressor_bundle(2), keyring))
    assert not up.apply(archive1)  # archives are never served, not even counted
    forged = [
        dataclasses.replace(archive1, action=Action.ACTIVATE, rollback=True),
        dataclasses.replace(archive1, action=Action.ACTIVATE, rollback=True, target_version=2),
    ]
    for e in forged:
        assert not up.apply(e)
    # the v1 activation exactly as it was published, replayed
    assert not up.apply(env_for(make_regressor_bundle(1), keyring))
    assert versions(rig["store"]) == {"primary": 2, "fallback": 1}
    assert rejected(rig["reg"], "bad_signature") == 2
    assert rejected(rig["reg"], "stale_version") == 1
    assert rejected(rig["reg"]) == 3


def test_shadow_relabelled_as_primary_is_rejected(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(2), keyring))
    shadow3 = env_for(make_regressor_bundle(3), keyring, role=Role.SHADOW)
    assert up.apply(shadow3)
    assert not up.apply(dataclasses.replace(shadow3, role=Role.PRIMARY))
    assert versions(rig["store"]) == {"primary": 2, "shadow": 3}
    assert rejected(rig["reg"], "bad_signature") == 1


def test_sha256_is_checked_against_the_artifact(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    v1 = env_for(make_regressor_bundle(1), keyring)
    up.apply(v1)
    v2 = env_for(make_regressor_bundle(2), keyring)
    # a signed v2 envelope carrying another (validly signed) artifact
    assert not up.apply(dataclasses.replace(v2, artifact=v1.artifact))
    assert versions(rig["store"]) == {"primary": 1}
    assert rejected(rig["reg"], "sha256_mismatch") == 1
    assert "sha256" in rig["reports"][-1].detail
    # v2 itself still applies afterwards: the forged record left no trace
    assert up.apply(v2)
    assert versions(rig["store"]) == {"primary": 2, "fallback": 1}


def test_signed_rollback_naming_the_current_version_works_and_replays_do_not(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    b = {v: make_regressor_bundle(v) for v in (1, 2, 3)}
    up.apply(env_for(b[1], keyring))
    up.apply(env_for(b[2], keyring))
    rollback = env_for(b[1], keyring, rollback=True, target=2)
    assert up.apply(rollback)
    assert versions(rig["store"]) == {"primary": 1, "fallback": 2}
    # v2 (rolled back) cannot come back by replay; v3 is a new version and can
    assert not up.apply(env_for(b[2], keyring))
    assert not up.apply(rollback)  # the same record again: no-op
    assert up.apply(env_for(b[3], keyring))
    assert not up.apply(rollback)  # replayed after v3: it replaced v2, not v3
    assert not up.apply(env_for(b[1], keyring, rollback=True))  # names no version
    assert not up.apply(env_for(b[3], keyring, rollback=True, target=2))  # does not go down
    assert versions(rig["store"])["primary"] == 3
    assert rejected(rig["reg"], "stale_version") == 1
    assert rejected(rig["reg"], "stale_rollback") == 3
    assert rejected(rig["reg"]) == 4


def test_rollback_to_the_version_already_serving_is_a_no_op(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    """A worker that could not load v2 (here: v2 reads a field this worker lacks) still
    serves v1; the publisher's rollback v2 -> v1 is accepted and changes nothing."""
    up = rig["updater"]
    b1 = make_regressor_bundle(1)  # one build: ONNX conversion is not byte-stable
    up.apply(env_for(b1, keyring))
    wide = make_regressor_bundle(2)
    spec = dataclasses.replace(wide.meta.feature_spec, fields=wide.meta.feature_spec.fields[:2])
    up2 = dataclasses.replace(wide, meta=dataclasses.replace(wide.meta, feature_spec=spec))
    assert not up.apply(env_for(up2, keyring))  # its reference batch no longer fits
    assert rejected(rig["reg"]) == 1
    assert not up.apply(env_for(b1, keyring, rollback=True, target=2))
    assert rejected(rig["reg"]) == 1
    assert versions(rig["store"]) == {"primary": 1}


def test_retire_and_archive(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(1), keyring, role=Role.SHADOW))
    assert rig["store"].snapshot().shadow is not None
    assert not up.apply(env_for(make_regressor_bundle(2), keyring, action=Action.ARCHIVE))
    assert rig["store"].snapshot().primary is None  # archives are never served
    assert up.apply(retire_for("m", Role.SHADOW, 1, keyring))
    assert rig["store"].snapshot().shadow is None


# --------------------------------------------------------------------- start-up


def test_startup_takes_newest_valid_and_keeps_previous_as_fallback(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    history = [
        env_for(make_regressor_bundle(1), keyring),
        env_for(make_regressor_bundle(2), keyring),
        env_for(make_regressor_bundle(3), keyring),
        env_for(make_regressor_bundle(4), keyring, tamper=True),
    ]
    rig["updater"].apply_latest(history)
    snap = rig["store"].snapshot()
    assert snap.primary.meta.version == 3
    assert snap.fallback is not None and snap.fallback.meta.version == 2
    assert rejected(rig["reg"], "bad_signature") == 1


def _attack_history(b: Callable[..., Bundle], k: Mapping[str, bytes]) -> list[ModelEnvelope]:
    """Legitimate v1, v2, shadow v3, then every forged or replayed record of issue 10."""
    v1, v2 = env_for(b(1), k), env_for(b(2), k)
    shadow3 = env_for(b(3), k, role=Role.SHADOW)
    archive1 = env_for(b(1), k, action=Action.ARCHIVE)
    return [
        archive1,
        v1,
        env_for(b(2), k, action=Action.ARCHIVE),
        v2,
        shadow3,
        dataclasses.replace(archive1, action=Action.ACTIVATE, rollback=True),  # bad_signature
        v1,  # stale_version
        dataclasses.replace(shadow3, role=Role.PRIMARY),  # bad_signature
        dataclasses.replace(env_for(b(4), k), artifact=v1.artifact),  # sha256_mismatch
        retire_for("m", Role.PRIMARY, 2, k, sign_envelope=False),  # unsigned_envelope
        retire_for("m", Role.PRIMARY, 1, k),  # stale_retire
    ]


ATTACK_REJECTIONS = {
    "bad_signature": 2,
    "stale_version": 1,
    "sha256_mismatch": 1,
    "unsigned_envelope": 1,
    "stale_retire": 1,
}


def test_startup_applies_the_live_rules_to_forged_records_at_the_end_of_history(
    make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    history = _attack_history(make_regressor_bundle, keyring)
    live, fresh = make_rig(keyring), make_rig(keyring)
    for e in history:
        live["updater"].apply(e)
    fresh["updater"].apply_latest(history)
    for r in (live, fresh):
        assert versions(r["store"]) == {"primary": 2, "shadow": 3, "fallback": 1}
        for reason, n in ATTACK_REJECTIONS.items():
            assert rejected(r["reg"], reason) == n, reason
        assert rejected(r["reg"]) == sum(ATTACK_REJECTIONS.values())
        assert r["reg"].get_sample_value("streamscore_model_loaded") == 1
    # start-up loads only what serves: v1 (fallback), v2 (primary), shadow v3
    applied = [x.envelope.version for x in fresh["reports"] if x.kind == "model_applied"]
    assert sorted(applied) == [1, 2, 3]


@pytest.mark.parametrize(
    ("tail", "want"),
    [
        ("rollback", {"primary": 1, "fallback": 2}),
        ("retire", {"fallback": 1}),
        ("rollback_then_v3", {"primary": 3, "fallback": 1}),
    ],
)
def test_startup_after_legitimate_rollback_or_retire(
    make_regressor_bundle: Callable[..., Bundle], keyring: Any, tail: str, want: dict[str, int]
) -> None:
    b = make_regressor_bundle
    history = [env_for(b(1), keyring), env_for(b(2), keyring)]
    if tail.startswith("rollback"):
        history.append(env_for(b(1), keyring, rollback=True, target=2))
    if tail == "rollback_then_v3":
        history += [env_for(b(2), keyring), env_for(b(3), keyring)]  # a replay, then v3
    if tail == "retire":
        history.append(retire_for("m", Role.PRIMARY, 2, keyring))
    live, fresh = make_rig(keyring), make_rig(keyring)
    for e in history:
        live["updater"].apply(e)
    fresh["updater"].apply_latest(history)
    assert versions(live["store"]) == want
    # a fresh worker has no fallback for a retired primary (live, the one before stays)
    fresh_want = {k: v for k, v in want.items() if tail != "retire" or k != "fallback"}
    assert versions(fresh["store"]) == fresh_want
    assert rejected(live["reg"]) == rejected(fresh["reg"]) == (tail == "rollback_then_v3")


def test_startup_when_the_newest_does_not_load_here_takes_the_one_before(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    b = make_regressor_bundle
    drifted = b(3)
    bad = dataclasses.replace(drifted, expected=drifted.expected + 5.0)
    rig["updater"].apply_latest(
        [env_for(b(1), keyring), env_for(b(2), keyring), env_for(bad, keyring)]
    )
    assert versions(rig["store"]) == {"primary": 2, "fallback": 1}
    assert rejected(rig["reg"], "reference_mismatch") == 1


# ------------------------------------------------------------------ record sizes


def test_watcher_rejects_an_oversized_record_by_size_and_reports_it(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    decoded: list[bytes] = []

    def decode(value: bytes | None) -> dict[str, Any]:
        decoded.append(value or b"")
        return env_for(make_regressor_bundle(1), keyring).to_avro()

    w = ModelWatcher(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        "models",
        decode,
        rig["updater"],
        Metrics(CollectorRegistry()),
        max_message_bytes=1000,
    )
    big = FakeMessage("models", 0, 7, b"\x00" * 1001, key=b"m/primary")
    assert w._envelope(big) is None
    assert decoded == []  # never decoded
    assert rejected(rig["reg"], "too_large") == 1
    rep = rig["reports"][-1]
    assert (rep.kind, rep.reason, rep.envelope) == ("model_rejected", "too_large", None)
    assert rep.record == "models[0]@7 key='m/primary'" and "1001 bytes" in (rep.detail or "")
    ok = FakeMessage("models", 0, 8, b"\x00" * 1000, key=b"m/primary")
    e = w._envelope(ok)
    assert e is not None and e.version == 1
    assert rejected(rig["reg"]) == 1


def test_key_rotation_republish_of_the_same_artifact(
    make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    """Re-publishing the serving artifact under a new key: a running worker takes it as
    a no-op; a fresh worker whose keyring lost the old key serves it."""
    b1 = make_regressor_bundle(1)
    old, new = env_for(b1, keyring, key_id="k1"), env_for(b1, keyring, key_id="k2")
    live = make_rig(keyring)
    assert live["updater"].apply(old)
    assert not live["updater"].apply(new)
    assert rejected(live["reg"]) == 0 and versions(live["store"]) == {"primary": 1}
    fresh = make_rig({"k2": keyring["k2"]})
    fresh["updater"].apply_latest([old, new])
    assert versions(fresh["store"]) == {"primary": 1}
    assert rejected(fresh["reg"], "bad_signature") == 1
