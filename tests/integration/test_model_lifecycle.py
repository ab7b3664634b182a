"""Model updates through the real compacted topic: hot swaps under load, restarts, and
each kind of bad update rejected while the current model keeps serving."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from streamscore.core.records import FeatureField, FeatureSpec, Role, prediction_headers
from streamscore.dev.synthetic import demo_bundle
from streamscore.models import envelope
from streamscore.models.container import Bundle, sign_bundle
from streamscore.models.runtime import LoadedModel, load_bundle
from streamscore.models.signing import Ed25519Signer

from .stack import Stack, WorkerProcess, three_role_worker


def _loaded(b: Bundle) -> LoadedModel:
    return load_bundle(b)


def _predictions(stack: Stack, msgs: list[Any]) -> list[dict[str, Any]]:
    dec = stack.decoder("prediction")
    return [dec(m.value()) | {"_partition": m.partition(), "_offset": m.offset()} for m in msgs]


def test_publish_v2_while_streaming_switches_without_loss_or_duplicates(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    w = make_worker("swap")
    stop = threading.Event()
    ids: list[str] = []

    def stream() -> None:
        while not stop.is_set():
            ids.extend(stack.produce_events(200, seed=len(ids)))
            time.sleep(0.05)

    def scored(version: int) -> float:
        return w.sample("streamscore_predictions_total", {"model_version": str(version)})

    t = threading.Thread(target=stream)
    t.start()
    try:
        # v1 scores a few streamed batches, then v2 is published mid-stream and scores
        # a few of its own while events keep coming
        w.wait_until(lambda: scored(1) >= 600, "v1 scoring the stream", timeout=120)
        published = time.time()
        stack.publish("ab", version=2)
        w.wait_until(lambda: scored(2) >= 600, "v2 scoring the stream", timeout=120)
    finally:
        stop.set()
        t.join()
    msgs = stack.read(stack.topics.predictions, until=lambda got: len(got) >= len(ids))
    preds = _predictions(stack, msgs)
    by_id: dict[str, list[int]] = defaultdict(list)
    for p in preds:
        by_id[p["event_id"]].append(p["model_version"])
    assert set(by_id) == set(ids)
    assert all(len(v) == 1 for v in by_id.values())
    v2_times = [p["scored_time"] for p in preds if p["model_version"] == 2]
    assert v2_times and any(p["model_version"] == 1 for p in preds)
    switch_s = min(v2_times) / 1000 - published
    swap_hist = w.sample("streamscore_model_swap_seconds_sum")
    print(
        f"\nMEASURED publish-to-first-v2-prediction: {switch_s * 1000:.0f} ms; "
        f"publish-to-activation in worker: {swap_hist * 1000:.0f} ms"
    )
    assert w.terminate() == 0


def test_twenty_swaps_during_50k_events_each_prediction_stamped_with_its_model(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    bundles = {v: demo_bundle("ab", version=v, seed=v) for v in range(1, 22)}
    models = {v: _loaded(b) for v, b in bundles.items()}
    topic = stack.model_topic()
    topic.publish(bundles[1].to_bytes(), Role.PRIMARY, key=stack.key, publisher="test")
    w = make_worker("twenty")
    ids: list[str] = []
    done = threading.Event()

    def stream() -> None:
        for i in range(50):
            ids.extend(stack.produce_events(1000, seed=100 + i))
            time.sleep(0.08)
        done.set()

    t = threading.Thread(target=stream)
    t.start()
    for v in range(2, 22):
        time.sleep(0.2)
        topic.publish(bundles[v].to_bytes(), Role.PRIMARY, key=stack.key, publisher="test")
    t.join()
    msgs = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 50_000)
    preds = _predictions(stack, msgs)
    assert len(preds) == 50_000
    assert {p["event_id"] for p in preds} == set(ids)
    assert w.sample("streamscore_model_updates_applied_total") == 21
    versions_seen = {p["model_version"] for p in preds}
    assert len(versions_seen) >= 10, versions_seen
    # per partition, in offset order, the version never goes back
    by_part: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for p in preds:
        by_part[p["_partition"]].append((p["_offset"], p["model_version"]))
    for seq in by_part.values():
        vs = [v for _o, v in sorted(seq)]
        assert vs == sorted(vs)
    # the stamp is the truth: each value is what that version's own model gives
    for v in versions_seen:
        rows = [p for p in preds if p["model_version"] == v]
        x = np.array([r["detail"]["features"] for r in rows], dtype=np.float32)
        want = models[v].predict(x).values
        np.testing.assert_allclose([r["value"] for r in rows], want, rtol=0, atol=1e-4)
        other = models[v % 21 + 1].predict(x).values
        assert not np.allclose([r["value"] for r in rows], other, rtol=0, atol=1e-4)
    assert w.terminate() == 0


def _bad_graph_bundle(version: int) -> Bundle:
    """A graph with a node from an unknown operator domain (what a crafted artifact that
    tried to run code would need); signed with the right key, so only the scan stops it."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 1], [10.0, 3.0])
    node = helper.make_node("Exec", ["X", "W"], ["variable"], domain="com.evil")
    graph = helper.make_graph(
        [node],
        "evil",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)],
        ir_version=8,
    )
    good = demo_bundle("ab", version=version)
    return dataclasses.replace(good, onnx_bytes=model.SerializeToString())


def test_each_bad_update_is_rejected_with_its_reason_and_v1_keeps_serving(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    w = make_worker("guard")
    topic = stack.model_topic()
    now = int(time.time() * 1000)

    def send(b: bytes, *, sign: bool = True, tamper: bool = False, version: int) -> None:
        signed = sign_bundle(b, stack.key)
        art = bytearray(signed.payload)
        if tamper:
            art[len(art) // 2] ^= 0xFF
        topic._send(
            [
                envelope.make(
                    model_name="demo",
                    role=Role.PRIMARY,
                    version=version,
                    artifact=bytes(art),
                    signature=signed.signature if sign else None,
                    key_id="test",
                    created_at_ms=now,
                    published_at_ms=now,
                    publisher="attacker",
                    signer=stack.key,  # only the artifact is at fault
                )
            ]
        )

    good2 = demo_bundle("ab", version=2)
    send(good2.to_bytes(), tamper=True, version=2)
    send(good2.to_bytes(), sign=False, version=3)
    send(_bad_graph_bundle(4).to_bytes(), version=4)
    incompatible = dataclasses.replace(
        demo_bundle("ab", version=5),
        meta=dataclasses.replace(
            demo_bundle("ab", version=5).meta,
            feature_spec=FeatureSpec((FeatureField("a"), FeatureField("not_in_events"))),
        ),
    )
    send(incompatible.to_bytes(), version=5)
    drifted = demo_bundle("ab", version=6)
    send(dataclasses.replace(drifted, expected=drifted.expected + 5.0).to_bytes(), version=6)
    # another key altogether, under the workers' key id
    attacker = Ed25519Signer(Ed25519PrivateKey.generate(), "test")
    other = sign_bundle(demo_bundle("ab", version=7).to_bytes(), attacker)
    topic._send(
        [
            envelope.make(
                model_name="demo",
                role=Role.PRIMARY,
                version=7,
                artifact=other.payload,
                signature=other.signature,
                key_id="test",
                created_at_ms=now,
                published_at_ms=now,
                publisher="attacker",
                signer=attacker,
            )
        ]
    )

    want = {
        "bad_signature": 2,
        "unsigned": 1,
        "untrusted_content": 1,
        "incompatible_features": 1,
        "reference_mismatch": 1,
    }

    def rejected() -> dict[str, float]:
        name = "streamscore_model_updates_rejected_total"
        return {r: w.sample(name, {"reason": r}) for r in want}

    w.wait_until(lambda: rejected() == want, f"rejections {want}", timeout=30)
    assert rejected() == want
    assert w.sample("streamscore_model_info", {"model_version": "1", "role": "primary"}) == 1
    ids = stack.produce_events(500, seed=11)
    preds = _predictions(stack, stack.read(stack.topics.predictions, until=lambda g: len(g) >= 500))
    assert {p["event_id"] for p in preds} == set(ids)
    assert {p["model_version"] for p in preds} == {1}
    # rejections are reported on the telemetry topic too
    tele = stack.read(
        stack.topics.telemetry,
        until=lambda g: sum(1 for m in g if b"model_rejected" in (m.value() or b"")) >= 6,
        timeout=30,
    )
    rejected = [m for m in tele if b"model_rejected" in (m.value() or b"")]
    assert len(rejected) >= 6
    assert w.terminate() == 0


def test_restart_comes_back_on_latest_valid_model_not_a_rejected_one(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    stack.publish("ab", version=2)
    stack.publish("ab", version=3)
    # v4 is tampered: must be skipped on restart too
    b4 = sign_bundle(demo_bundle("ab", version=4).to_bytes(), stack.key)
    now = int(time.time() * 1000)
    stack.model_topic()._send(
        [
            envelope.make(
                model_name="demo",
                role=Role.PRIMARY,
                version=4,
                artifact=b4.payload[:-1] + b"\x00",
                signature=b4.signature,
                key_id="test",
                created_at_ms=now,
                published_at_ms=now,
                publisher="attacker",
                signer=stack.key,  # the artifact is what is tampered
            )
        ]
    )
    w = make_worker("restart")
    assert w.sample("streamscore_model_info", {"model_version": "3", "role": "primary"}) == 1
    assert w.sample("streamscore_model_updates_rejected_total", {"reason": "bad_signature"}) == 1
    w.kill()
    w2 = make_worker("restart")
    assert w2.sample("streamscore_model_info", {"model_version": "3", "role": "primary"}) == 1
    ids = stack.produce_events(300, seed=12)
    preds = _predictions(stack, stack.read(stack.topics.predictions, until=lambda g: len(g) >= 300))
    assert {p["model_version"] for p in preds} == {3}
    assert {p["event_id"] for p in preds} == set(ids)
    assert w2.terminate() == 0


def test_rollback_republishes_the_previous_version(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.publish("ab", version=1)
    stack.publish("ab", version=2)
    w = make_worker("rollback")
    assert w.sample("streamscore_model_info", {"model_version": "2", "role": "primary"}) == 1
    stack.model_topic().rollback("demo", Role.PRIMARY, key=stack.key, keyring=stack.verifier)
    w.wait_until(
        lambda: w.sample("streamscore_model_info", {"model_version": "1", "role": "primary"}) == 1,
        "the rollback to v1",
        timeout=20,
    )
    assert w.sample("streamscore_model_info", {"model_version": "1", "role": "primary"}) == 1
    assert w.sample("streamscore_model_info", {"model_version": "2", "role": "primary"}) == 0
    assert w.terminate() == 0


def test_shadow_and_canary_through_the_real_topics(
    stack: Stack, make_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Primary + canary at 30 % + shadow on 20,000 events: ``predictions`` holds exactly
    one answer per event, ``predictions.shadow`` one shadow prediction per event; every
    record carries its model and event headers and the event's own ``traceparent``."""
    w = three_role_worker(stack, make_worker, "roles", tmp_path)
    total = 20_000
    trace = stack.produce_traced_events(total, n_keys=15_000)

    t = stack.topics
    # predictions: exactly one record per event (the answer); the shadow's on its own topic
    stack.read(t.predictions, until=lambda g: len(g) >= total)
    stack.read(t.predictions_shadow, until=lambda g: len(g) >= total)
    answer_msgs = stack.read_to_end(t.predictions)
    shadow_msgs = stack.read_to_end(t.predictions_shadow)
    assert (len(answer_msgs), len(shadow_msgs)) == (total, total)
    answers = _predictions(stack, answer_msgs)
    shadow = _predictions(stack, shadow_msgs)
    # routing needs no decode: every record's headers say what its decoded fields say
    for m, p in [*zip(answer_msgs, answers, strict=True), *zip(shadow_msgs, shadow, strict=True)]:
        i = int(p["event_id"].removeprefix("ev-"))
        assert m.headers() == [
            *prediction_headers(p["model_name"], p["model_version"], p["role"], p["event_id"]),
            trace[i][0],  # copied from the event; its other header is not
        ]
    assert {p["role"] for p in answers} == {"primary", "canary"}
    assert {p["role"] for p in shadow} == {"shadow"}
    # one answer per event, and the shadow scored every event alongside it
    assert sorted(p["event_id"] for p in answers) == sorted(f"ev-{i}" for i in range(total))
    assert sorted(p["event_id"] for p in shadow) == sorted(f"ev-{i}" for i in range(total))
    assert {p["model_version"] for p in shadow} == {3}
    # the shadow topic's own subject names the prediction schema (ksqlDB, sinks)
    for topic in (t.predictions, t.predictions_shadow):
        latest = stack.registry.get_latest_version(f"{topic}-value")
        assert json.loads(latest.schema.schema_str)["name"] == "Prediction"
    role_of_key: dict[str, set[str]] = defaultdict(set)
    for p in answers:
        role_of_key[p["key"]].add(p["role"])
    assert all(len(r) == 1 for r in role_of_key.values())  # a key always lands on one model
    canary_share = sum(1 for r in role_of_key.values() if r == {"canary"}) / len(role_of_key)
    assert abs(canary_share - 0.3) <= 0.02, canary_share
    canary_records = sum(1 for p in answers if p["role"] == "canary") / total
    assert abs(canary_records - 0.3) <= 0.02, canary_records
    assert {p["model_version"] for p in answers if p["role"] == "canary"} == {2}
    assert w.terminate() == 0
