"""The batch pipeline without a broker: decode, validate, predict once per role, encode."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from streamscore.core import errors
from streamscore.core.config import LatePolicy, ScoringSettings
from streamscore.core.records import Role, Task
from streamscore.dev import synthetic
from streamscore.kafka.dead_letters import dead_letter_headers
from streamscore.models.container import Bundle, sign_bundle
from streamscore.models.convert import build_bundle
from streamscore.models.meta import ModelMeta
from streamscore.models.runtime import LoadedModel, verify_and_load
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer, InMessage
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, parse, registry_client

KEY = b"unit-test-key"


def _fit(with_c: bool, version: int, name: str = "demo") -> LoadedModel:
    rng = np.random.default_rng(version)
    s = synthetic.sample(2000, rng)
    x = s.matrix(with_c)
    est = LinearRegression().fit(x, s.y)
    b = build_bundle(
        est,
        name=name,
        version=version,
        feature_spec=synthetic.spec_abc() if with_c else synthetic.spec_ab(),
        X_train=x,
        X_reference=x[:64],
        created_at_ms=1,
    )
    signed = sign_bundle(b.to_bytes(), KEY, "k")
    return verify_and_load(signed.payload, signed.signature, "k", {"k": KEY})


@pytest.fixture(scope="module")
def v1() -> LoadedModel:
    return _fit(False, 1)


@pytest.fixture(scope="module")
def v2() -> LoadedModel:
    return _fit(True, 2)


@pytest.fixture
def env() -> dict[str, Any]:
    reg = registry_client({"url": f"mock://scoring-{id(object())}"})
    enc_v1 = AvroSerializer(reg, "events-value", schemas.load("event", 1))
    enc_v2 = AvroSerializer(reg, "events-value", schemas.load("event", 2))
    dec = AvroDeserializer(WriterSchemaCache(reg), schemas.load("event", 2))
    pred = AvroSerializer(reg, "predictions-value", schemas.load("prediction"))
    return {"reg": reg, "v1": enc_v1, "v2": enc_v2, "dec": dec, "pred": pred}


@pytest.fixture
def make_messages(env: dict[str, Any]) -> Callable[..., list[InMessage]]:
    def make(n: int, *, with_c: bool, seed: int = 0, now_ms: int = 1_000_000) -> list[InMessage]:
        rng = np.random.default_rng(seed)
        enc = env["v2"] if with_c else env["v1"]
        out = []
        for i, (e, _y) in enumerate(synthetic.events(n, rng, with_c=with_c, event_time_ms=now_ms)):
            out.append(InMessage(enc(e), e["key"].encode(), "events", 0, i, now_ms))
        return out

    return make


def decode_prediction(data: bytes) -> dict[str, Any]:
    parsed = parse(schemas.load("prediction"))
    return fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed)  # type: ignore[no-any-return]


def scorer(env: dict[str, Any], **settings: Any) -> BatchScorer:
    return BatchScorer(
        env["dec"], env["pred"], ScoringSettings(**settings), clock_ms=lambda: 1_000_500
    )


def test_every_valid_event_gets_one_primary_prediction(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    msgs = make_messages(200, with_c=False)
    out = scorer(env).score(msgs, store.snapshot())
    assert out.n_scored == 200
    assert out.dead_letters == []
    preds = [decode_prediction(v) for _, v in out.predictions]
    assert [k for k, _ in out.predictions] == [m.key for m in msgs]
    assert {p["role"] for p in preds} == {"primary"}
    assert {p["model_version"] for p in preds} == {1}
    assert preds[0]["detail"]["feature_names"] == ["a", "b"]
    # the model's answer, computed once per batch, is what each prediction carries
    x = np.array([p["detail"]["features"] for p in preds])
    expected = v1.predict(x.astype(np.float32)).values
    np.testing.assert_allclose([p["value"] for p in preds], expected, rtol=1e-6)
    assert out.event_times_ms.shape == (200,)


def test_bad_messages_become_dead_letters_and_the_rest_is_scored(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    good = make_messages(10, with_c=False)
    bad_values = [
        b"",
        b"\x05garbage",
        good[0].value[:3],  # type: ignore[index]
        b"\x00\x00\x01\x00\x00" + good[0].value[5:],  # type: ignore[index]
        env["v1"](
            {
                "event_id": "x",
                "key": "k",
                "event_time": 1,
                "a": float("nan"),
                "b": 1.0,
                "segment": None,
            }
        ),
        env["v1"](
            {"event_id": "y", "key": "k", "event_time": 1, "a": 1e6, "b": 1.0, "segment": None}
        ),
    ]
    bad = [InMessage(v, b"k", "events", 1, 100 + i, 5) for i, v in enumerate(bad_values)]
    out = scorer(env).score(good[:5] + bad + good[5:], store.snapshot())
    assert out.n_scored == 10
    assert len(out.predictions) == 10
    kinds = {dl.message.offset: type(dl.error) for dl in out.dead_letters}
    assert kinds == {
        100: errors.EmptyMessageError,
        101: errors.MagicByteError,
        102: errors.TruncatedMessageError,
        103: errors.UnknownSchemaError,
        104: errors.NonFiniteError,
        105: errors.OutOfRangeError,
    }
    assert out.n_messages == len(out.predictions) + len(out.dead_letters)


def test_dead_letter_headers_name_error_field_and_source(
    env: dict[str, Any], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    msg = InMessage(
        env["v1"](
            {"event_id": "x", "key": "k", "event_time": 1, "a": 1e6, "b": 1.0, "segment": None}
        ),
        b"k",
        "events",
        3,
        42,
        7,
    )
    (dl,) = scorer(env).score([msg], store.snapshot()).dead_letters
    headers = dict(dead_letter_headers(dl.message, dl.error, worker_id="w1", model_version=1))
    assert headers["streamscore.error.class"] == b"OutOfRangeError"
    assert headers["streamscore.error.field"] == b"a"
    assert headers["streamscore.source.partition"] == b"3"
    assert headers["streamscore.source.offset"] == b"42"
    assert headers["streamscore.source.timestamp"] == b"7"
    assert headers["streamscore.model.version"] == b"1"


def test_shadow_scores_the_same_events_with_its_own_spec(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    v2: LoadedModel,
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.SHADOW, v2)
    # v1 events (no c) cannot be scored by the shadow, which needs c: skipped, counted
    msgs = make_messages(20, with_c=True) + make_messages(5, with_c=False, seed=3)
    out = scorer(env).score(msgs, store.snapshot())
    preds = [decode_prediction(v) for _, v in out.predictions]
    primary = [p for p in preds if p["role"] == "primary"]
    shadow = [p for p in preds if p["role"] == "shadow"]
    assert len(primary) == 25
    assert len(shadow) == 20
    assert {p["model_version"] for p in shadow} == {2}
    assert shadow[0]["detail"]["feature_names"] == ["a", "b", "c"]
    assert out.shadow_skipped == {"shadow": 5}
    # the shadow (sees c) is closer to the truth than the primary on the same events
    by_id = {p["event_id"]: p for p in primary}
    s_err = [
        abs(
            p["value"]
            - (
                10 * p["detail"]["features"][0]
                + 3 * p["detail"]["features"][1]
                + p["detail"]["features"][2]
            )
        )
        for p in shadow
    ]
    p_err = [
        abs(
            by_id[p["event_id"]]["value"]
            - (
                10 * p["detail"]["features"][0]
                + 3 * p["detail"]["features"][1]
                + p["detail"]["features"][2]
            )
        )
        for p in shadow
    ]
    assert np.mean(s_err) < np.mean(p_err) / 10


def test_canary_answers_its_share_of_keys_instead_of_primary(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    v2: LoadedModel,
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.CANARY, _fit(False, 3, name="demo"))
    msgs = make_messages(2000, with_c=False)
    out = scorer(env, canary_fraction=0.25).score(msgs, store.snapshot())
    preds = [decode_prediction(v) for _, v in out.predictions]
    assert len(preds) == 2000  # exactly one answer per event
    canary = [p for p in preds if p["role"] == "canary"]
    assert 0.15 < len(canary) / 2000 < 0.35
    keys_by_role: dict[str, set[str]] = {}
    for p in preds:
        keys_by_role.setdefault(p["role"], set()).add(p["key"])
    assert not keys_by_role["canary"] & keys_by_role["primary"]  # a key sticks to one model


@pytest.mark.parametrize("policy", [LatePolicy.SCORE_AND_FLAG, LatePolicy.ROUTE])
def test_late_events_follow_the_policy(
    env: dict[str, Any],
    make_messages: Callable[..., list[InMessage]],
    v1: LoadedModel,
    policy: LatePolicy,
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    fresh = make_messages(5, with_c=False, now_ms=1_000_400)
    old = make_messages(3, with_c=False, now_ms=900_000, seed=9)
    out = scorer(env, late_after_ms=1000, late_policy=policy).score(fresh + old, store.snapshot())
    assert out.n_late == 3
    preds = [decode_prediction(v) for _, v in out.predictions]
    if policy is LatePolicy.ROUTE:
        assert len(preds) == 5
        assert [m.offset for m in out.late_routed] == [0, 1, 2]
        assert not any(p["late"] for p in preds)
    else:
        assert len(preds) == 8
        assert sum(p["late"] for p in preds) == 3
        assert out.late_routed == []


def test_no_primary_refuses_to_score(env: dict[str, Any]) -> None:
    with pytest.raises(errors.NoModelError):
        scorer(env).score([], ModelStore().snapshot())


def _log_model(version: int) -> LoadedModel:
    """y = log(a) * 1 + log(b) * 1: finite on its positive reference rows, NaN at serve
    time for the demo's negative a — a data-dependent failure no load-time check sees."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 1], [1.0, 1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Log", ["X"], ["L"]),
            helper.make_node("MatMul", ["L", "W"], ["variable"]),
        ],
        "log",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"X": ref})[0].ravel().astype(np.float64)
    meta = ModelMeta(
        name="demo",
        version=version,
        task=Task.REGRESSION,
        feature_spec=synthetic.spec_ab(),
        created_at_ms=1,
    )
    b = Bundle(meta, model.SerializeToString(), ref, expected, "variable")
    signed = sign_bundle(b.to_bytes(), KEY, "k")
    return verify_and_load(signed.payload, signed.signature, "k", {"k": KEY})


def test_primary_failing_at_predict_time_falls_back_and_marks_degraded(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)
    store.offer(Role.PRIMARY, _log_model(2))  # v1 becomes the fallback
    assert store.snapshot().fallback is v1
    msgs = make_messages(50, with_c=False)  # a ~ N(-30, 6): log(a) is NaN
    out = scorer(env).score(msgs, store.snapshot())
    preds = [decode_prediction(v) for _, v in out.predictions]
    assert len(preds) == 50 and out.dead_letters == []
    assert all(p["degraded"] for p in preds)
    assert {p["model_version"] for p in preds} == {1}
    x = np.array([p["detail"]["features"] for p in preds], dtype=np.float32)
    np.testing.assert_allclose([p["value"] for p in preds], v1.predict(x).values, rtol=1e-6)
    # the answers are counted under the version that gave them
    assert {(o.model_version, o.count) for o in out.outputs if o.count} == {(1, 50)}


def test_predictions_carry_what_the_scored_vector_does_not(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v1: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v1)  # scores (a, b) only
    msgs = make_messages(30, with_c=True)
    out = scorer(env).score(msgs, store.snapshot())
    preds = [decode_prediction(v) for _, v in out.predictions]
    events = [env["dec"](m.value) for m in msgs]
    for p, e in zip(preds, events, strict=True):
        # c and segment are not model inputs: kept raw, so retraining can use them
        assert p["detail"]["inputs"] == {"c": e["c"], "segment": e["segment"]}
        raw = (
            dict(zip(p["detail"]["feature_names"], p["detail"]["features"], strict=True))
            | p["detail"]["inputs"]
        )
        assert {k: raw[k] for k in ("a", "b", "c")} == {k: e[k] for k in ("a", "b", "c")}


def test_model_inputs_are_not_repeated_in_inputs(
    env: dict[str, Any], make_messages: Callable[..., list[InMessage]], v2: LoadedModel
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, v2)  # scores (a, b, c)
    msgs = make_messages(10, with_c=True)
    out = scorer(env).score(msgs, store.snapshot())
    preds = [decode_prediction(v) for _, v in out.predictions]
    assert all(
        p["detail"]["inputs"] == {"segment": p["detail"]["inputs"].get("segment")} for p in preds
    )
    assert all("c" not in p["detail"]["inputs"] for p in preds)
