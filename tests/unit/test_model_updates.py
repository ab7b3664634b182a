"""The updater's decisions, without Kafka: verify, load, check, then swap (or reject)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamscore import envelope
from streamscore.bundle import Bundle, sign_bundle
from streamscore.envelope import Action, ModelEnvelope
from streamscore.metrics import Metrics
from streamscore.model_store import ModelStore
from streamscore.model_updates import ModelUpdater, UpdateReport
from streamscore.records import Role

READER = {"f0": "double", "f1": "double", "f2": "double?", "event_id": "string"}


@pytest.fixture
def rig(keyring: Mapping[str, bytes]) -> dict[str, Any]:
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
    action: Action = Action.ACTIVATE,
) -> ModelEnvelope:
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
        action=action,
    )


def rejected(reg: CollectorRegistry, reason: str) -> float:
    return reg.get_sample_value("streamscore_model_updates_rejected_total", {"reason": reason}) or 0


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
        (lambda b, k: dataclasses.replace(env_for(b, k), format="pickle/1"), "undecodable"),
        (lambda b, k: dataclasses.replace(env_for(b, k), version=99), "undecodable"),
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


def test_stale_version_is_rejected_but_rollback_is_accepted(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(2), keyring))
    assert not up.apply(env_for(make_regressor_bundle(1), keyring))
    assert rejected(rig["reg"], "stale_version") == 1
    assert up.apply(env_for(make_regressor_bundle(1), keyring, rollback=True))
    assert rig["store"].snapshot().primary.meta.version == 1


def test_retire_and_archive(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    up = rig["updater"]
    up.apply(env_for(make_regressor_bundle(1), keyring, role=Role.SHADOW))
    assert rig["store"].snapshot().shadow is not None
    assert not up.apply(env_for(make_regressor_bundle(2), keyring, action=Action.ARCHIVE))
    assert rig["store"].snapshot().primary is None  # archives are never served
    assert up.apply(
        env_for(make_regressor_bundle(1), keyring, role=Role.SHADOW, action=Action.RETIRE)
    )
    assert rig["store"].snapshot().shadow is None


def test_startup_takes_newest_valid_and_keeps_previous_as_fallback(
    rig: dict[str, Any], make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    history = {
        "m/primary": [
            env_for(make_regressor_bundle(1), keyring),
            env_for(make_regressor_bundle(2), keyring),
            env_for(make_regressor_bundle(3), keyring),
            env_for(make_regressor_bundle(4), keyring, tamper=True),
        ]
    }
    rig["updater"].apply_latest(history)
    snap = rig["store"].snapshot()
    assert snap.primary.meta.version == 3
    assert snap.fallback is not None and snap.fallback.meta.version == 2
    assert rejected(rig["reg"], "bad_signature") == 1


def test_envelope_round_trip_and_repr_hides_bytes(
    make_regressor_bundle: Callable[..., Bundle], keyring: Any
) -> None:
    e = env_for(make_regressor_bundle(1), keyring)
    assert ModelEnvelope.from_avro(e.to_avro()) == e
    assert e.key == "m/primary"
    assert dataclasses.replace(e, action=Action.ARCHIVE).key == "m/archive/1"
    assert "b'" not in repr(e)
    assert "v1" in repr(e)
