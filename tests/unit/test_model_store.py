"""ModelStore swaps, canary slicing, fallback scoring."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper

from streamscore.core.errors import NoModelError, NonFiniteOutputError
from streamscore.core.records import Role
from streamscore.models.container import Bundle
from streamscore.models.runtime import LoadedModel, PredictFailedError, ScoreBatch
from streamscore.models.store import (
    ModelStore,
    NonFiniteRowsError,
    StaleModelVersionError,
    canary_mask,
    score_with_fallback,
)

Loader = Callable[..., LoadedModel]


@pytest.fixture
def reg(make_regressor_bundle: Callable[..., Bundle], load: Loader) -> Callable[[int], LoadedModel]:
    cache: dict[int, LoadedModel] = {}

    def get(version: int) -> LoadedModel:
        if version not in cache:
            cache[version] = load(make_regressor_bundle(version=version))
        return cache[version]

    return get


# ----------------------------------------------------------------------- swaps


def test_snapshot_before_swap_keeps_old_model(reg: Callable[[int], LoadedModel]) -> None:
    store = ModelStore()
    assert store.snapshot().generation == 0 and not store.has_primary
    assert store.offer(Role.PRIMARY, reg(1))
    before = store.snapshot()
    assert store.offer(Role.PRIMARY, reg(2))
    after = store.snapshot()
    assert before.primary is reg(1) and before.generation == 1
    assert after.primary is reg(2) and after.generation == 2
    assert after.fallback is reg(1)  # previous good primary kept
    with pytest.raises(AttributeError):
        before.primary = reg(2)  # type: ignore[misc]


def test_lower_or_equal_version_refused(
    reg: Callable[[int], LoadedModel], load: Loader, make_regressor_bundle: Callable[..., Bundle]
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, reg(3))
    with pytest.raises(StaleModelVersionError):
        store.offer(Role.PRIMARY, reg(2))
    # same version, different artifact (other name -> other bytes)
    other_v3 = load(make_regressor_bundle(version=3, name="other"))
    with pytest.raises(StaleModelVersionError):
        store.offer(Role.PRIMARY, other_v3)
    # the same artifact again is an idempotent no-op
    assert store.offer(Role.PRIMARY, reg(3)) is False
    assert store.snapshot().generation == 1
    assert store.offer(Role.PRIMARY, reg(2), allow_downgrade=True)
    assert store.snapshot().primary is reg(2)


def test_roles_are_independent_and_clear(reg: Callable[[int], LoadedModel]) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, reg(5))
    store.offer(Role.SHADOW, reg(1))
    store.offer(Role.CANARY, reg(6))
    snap = store.snapshot()
    assert snap.versions() == {"primary": 5, "shadow": 1, "canary": 6}
    assert store.clear(Role.CANARY) and not store.clear(Role.CANARY)
    assert store.snapshot().canary is None and store.snapshot().generation == 4
    assert snap.canary is reg(6)


def test_pinned_baseline_is_not_replaced(reg: Callable[[int], LoadedModel]) -> None:
    store = ModelStore(baseline=reg(1))
    store.offer(Role.PRIMARY, reg(2))
    store.offer(Role.PRIMARY, reg(3))
    assert store.snapshot().fallback is reg(1)
    store.set_baseline(None)
    store.offer(Role.PRIMARY, reg(4))
    assert store.snapshot().fallback is reg(3)


def test_wait_for_primary(reg: Callable[[int], LoadedModel]) -> None:
    store = ModelStore()
    assert store.wait_for_primary(0.01) is False
    model = reg(1)
    t = threading.Timer(0.05, lambda: store.offer(Role.PRIMARY, model))
    t.start()
    try:
        assert store.wait_for_primary(5.0) is True
    finally:
        t.join()
    assert store.has_primary


def test_concurrent_offers_never_tear_a_snapshot(reg: Callable[[int], LoadedModel]) -> None:
    store = ModelStore()
    models = [reg(v) for v in range(1, 4)]
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.offer(Role.PRIMARY, models[i % 3], allow_downgrade=True)
            store.offer(Role.SHADOW, models[i % 3], allow_downgrade=True)
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        last = -1
        for _ in range(2000):
            s = store.snapshot()
            assert s.generation >= last
            last = s.generation
    finally:
        stop.set()
        th.join()


# ---------------------------------------------------------------------- canary


def test_canary_fraction_and_stability() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    for fraction in (0.05, 0.1, 0.5):
        m = canary_mask(keys, fraction)
        assert abs(m.mean() - fraction) < 0.02
        np.testing.assert_array_equal(m, canary_mask(keys, fraction))
    # nested: a key in the 5% slice is in the 10% slice
    assert not (canary_mask(keys, 0.05) & ~canary_mask(keys, 0.1)).any()


def test_canary_hash_is_process_independent() -> None:
    key = "user-42"
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    assert canary_mask([key], h + 1e-9)[0] and not canary_mask([key], h - 1e-9)[0]


def test_canary_edge_cases(reg: Callable[[int], LoadedModel]) -> None:
    keys = ["a", None, "b"]
    assert canary_mask(keys, 1.0).tolist() == [True, False, True]
    assert not canary_mask(keys, 0.0).any()
    assert canary_mask([], 0.5).shape == (0,)
    store = ModelStore()
    assert not store.snapshot().canary_mask(keys, 1.0).any()  # no canary active
    store.offer(Role.CANARY, reg(1))
    assert store.snapshot().canary_mask(keys, 1.0).tolist() == [True, False, True]


# -------------------------------------------------------------------- fallback


def _sqrt_bundle(template: Bundle) -> Bundle:
    """variable = sqrt(X[:, 0:1]): NaN wherever f0 < 0; reference rows all positive."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [3, 1], [1.0, 0.0, 0.0])
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["lin"]),
        helper.make_node("Sqrt", ["lin"], ["variable"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sqrt",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    ref = (np.abs(template.reference_X[:8]) + 0.1).astype(np.float32)
    expected = np.sqrt(ref[:, 0].astype(np.float64))
    return Bundle(template.meta, model.SerializeToString(), ref, expected, "variable")


class _Exploding(LoadedModel):
    def predict(self, X: npt.ArrayLike) -> ScoreBatch:
        raise PredictFailedError("boom")


def test_fallback_answers_non_finite_rows(
    make_regressor_bundle: Callable[..., Bundle], load: Loader, make_X: Callable[..., Any]
) -> None:
    fallback = load(make_regressor_bundle(version=1))
    primary = load(_sqrt_bundle(make_regressor_bundle(version=2)))
    store = ModelStore()
    store.offer(Role.PRIMARY, fallback)
    store.offer(Role.PRIMARY, primary)
    X = make_X(200, seed=9)
    res = score_with_fallback(store.snapshot(), X)
    neg = X[:, 0] < 0
    assert neg.any() and (~neg).any()
    np.testing.assert_array_equal(res.degraded, neg)
    assert res.batch.values is not None and np.isfinite(res.batch.values).all()
    fb_values = fallback.predict(X[neg]).values
    assert fb_values is not None
    np.testing.assert_allclose(res.batch.values[neg], fb_values)
    np.testing.assert_allclose(res.batch.values[~neg], np.sqrt(X[~neg, 0]), rtol=1e-6)
    np.testing.assert_array_equal(res.model_versions(), np.where(neg, 1, 2))
    assert res.meta_for_row(int(np.flatnonzero(neg)[0])).version == 1


def test_no_fallback_raises_with_rows(
    make_regressor_bundle: Callable[..., Bundle], load: Loader, make_X: Callable[..., Any]
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, load(_sqrt_bundle(make_regressor_bundle(version=2))))
    X = make_X(50, seed=9)
    with pytest.raises(NonFiniteOutputError) as exc:
        score_with_fallback(store.snapshot(), X)
    assert isinstance(exc.value, NonFiniteRowsError)
    np.testing.assert_array_equal(exc.value.rows, np.flatnonzero(X[:, 0] < 0))


def test_primary_exception_falls_back_for_all_rows(
    reg: Callable[[int], LoadedModel], make_X: Callable[..., Any]
) -> None:
    good = reg(1)
    bad = _Exploding(good.bundle, good._session, "x")
    store = ModelStore(baseline=good)
    store.offer(Role.PRIMARY, bad)
    X = make_X(20)
    res = score_with_fallback(store.snapshot(), X)
    assert res.degraded.all()
    np.testing.assert_array_equal(res.batch.values, good.predict(X).values)
    store.set_baseline(None)
    store2 = ModelStore()
    store2.offer(Role.PRIMARY, bad)
    with pytest.raises(PredictFailedError):
        score_with_fallback(store2.snapshot(), X)


def test_healthy_primary_is_not_degraded(
    reg: Callable[[int], LoadedModel], make_X: Callable[..., Any]
) -> None:
    store = ModelStore()
    store.offer(Role.PRIMARY, reg(1))
    res = score_with_fallback(store.snapshot(), make_X(10))
    assert not res.degraded.any() and res.fallback is None
    with pytest.raises(NoModelError):
        score_with_fallback(ModelStore().snapshot(), make_X(10))
