"""ONNX (onnxruntime) vs skops (scikit-learn) as the served model format.

Run: ``python -m benchmarks.model_format``. Prints one table row per model: serialized
size, load time (median of repeats), predict throughput at batch 500 and latency at
batch 1 (onnxruntime with ``intra_op_num_threads=1`` vs scikit-learn), and the largest
output disagreement between the two on held-out rows. Also checks that the regressors
the project may train convert. Needs ``skops``: ``pip install -e '.[bench]'``
(nothing else uses it).
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.models.convert import to_onnx_bytes

N_FEATURES = 10
SEED = 7


def _timeit(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """Median seconds per call."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs)


def _data(n: int, classification: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    z = X[:, 0] * 1.5 - X[:, 1] + 0.5 * X[:, 2] * X[:, 3] + rng.normal(scale=0.5, size=n)
    y = (z > 0).astype(int) if classification else z
    return X, y


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _convert(est: Any, X: np.ndarray) -> bytes:
    """The publish-time conversion streamscore uses (float32 input "X", zipmap off)."""
    return to_onnx_bytes(est, X.shape[1])[0]


def bench(name: str, est: Any, classification: bool) -> dict[str, Any]:
    import skops.io as sio

    X, y = _data(5000, classification)
    Xtr, Xte = X[:4000], X[4000:]
    est.fit(Xtr, y[:4000])
    onnx_bytes = _convert(est, Xtr)
    skops_bytes = sio.dumps(est)
    trusted = sio.get_untrusted_types(data=skops_bytes)

    t_load_onnx = _timeit(lambda: _session(onnx_bytes), repeat=5, number=3)
    t_load_skops = _timeit(lambda: sio.loads(skops_bytes, trusted=trusted), repeat=5, number=3)

    sess = _session(onnx_bytes)
    out_names = [o.name for o in sess.get_outputs()]
    b500 = Xte[:500]
    b1 = Xte[:1]

    def ort_run(b: np.ndarray) -> list[Any]:
        return sess.run(out_names, {"X": b})  # type: ignore[no-any-return]

    sk_fn = est.predict_proba if classification else est.predict
    t500_onnx = _timeit(lambda: ort_run(b500), repeat=5, number=20)
    t500_sk = _timeit(lambda: sk_fn(b500), repeat=5, number=20)
    t1_onnx = _timeit(lambda: ort_run(b1), repeat=5, number=200)
    t1_sk = _timeit(lambda: sk_fn(b1), repeat=5, number=200)

    outs = ort_run(Xte)
    if classification:
        diff = float(np.max(np.abs(outs[1] - est.predict_proba(Xte))))
        label_agree = float(np.mean(outs[0] == est.predict(Xte)))
    else:
        ref = est.predict(Xte)
        diff = float(np.max(np.abs(outs[0].ravel() - ref) / np.maximum(1.0, np.abs(ref))))
        label_agree = float("nan")
    return {
        "model": name,
        "onnx_kb": len(onnx_bytes) / 1024,
        "skops_kb": len(skops_bytes) / 1024,
        "load_onnx_ms": t_load_onnx * 1e3,
        "load_skops_ms": t_load_skops * 1e3,
        "b500_onnx_rows_s": 500 / t500_onnx,
        "b500_sk_rows_s": 500 / t500_sk,
        "b1_onnx_us": t1_onnx * 1e6,
        "b1_sk_us": t1_sk * 1e6,
        "max_diff": diff,
        "label_agree": label_agree,
    }


def check_converts() -> list[tuple[str, str]]:
    results = []
    cands: list[tuple[str, Any, bool]] = [
        ("HGBRegressor(100)", HistGradientBoostingRegressor(max_iter=100, random_state=0), False),
        ("Scaler+LinearRegression", make_pipeline(StandardScaler(), LinearRegression()), False),
        ("Scaler+Ridge", make_pipeline(StandardScaler(), Ridge()), False),
    ]
    for name, est, cls in cands:
        X, y = _data(2000, cls)
        est.fit(X, y)
        try:
            sess = _session(_convert(est, X))
            got = sess.run(None, {"X": X})[0].ravel()
            ref = est.predict(X)
            rel = float(np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))))
            results.append((name, f"ok, max rel diff {rel:.2e}"))
        except Exception as exc:  # report, do not stop
            results.append((name, f"FAILED: {type(exc).__name__}: {exc}"))
    return results


def main() -> None:
    rows = [
        bench(
            "HGBClassifier(100 trees)",
            HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0),
            True,
        ),
        bench(
            "Scaler+LogisticRegression",
            Pipeline([("s", StandardScaler()), ("m", LogisticRegression())]),
            True,
        ),
        bench(
            "HGBRegressor(100 trees)",
            HistGradientBoostingRegressor(max_iter=100, early_stopping=False, random_state=0),
            False,
        ),
    ]
    buf = io.StringIO()
    hdr = (
        f"{'model':<26} {'size KB onnx/skops':>19} {'load ms onnx/skops':>19} "
        f"{'b500 rows/s onnx/sklearn':>26} {'b1 us onnx/sklearn':>20} {'max diff':>9} {'labels':>7}"
    )
    print(hdr, file=buf)
    print("-" * len(hdr), file=buf)
    for r in rows:
        print(
            f"{r['model']:<26} {r['onnx_kb']:>8.1f}/{r['skops_kb']:<10.1f} "
            f"{r['load_onnx_ms']:>8.2f}/{r['load_skops_ms']:<10.2f} "
            f"{r['b500_onnx_rows_s']:>12,.0f}/{r['b500_sk_rows_s']:<13,.0f} "
            f"{r['b1_onnx_us']:>9.1f}/{r['b1_sk_us']:<10.1f} "
            f"{r['max_diff']:>9.1e} {r['label_agree']:>7.4f}",
            file=buf,
        )
    print(buf.getvalue())
    print("conversion checks:")
    for name, status in check_converts():
        print(f"  {name:<26} {status}")
    print(
        "\nmax diff: classifiers = max |p_onnx - p_sklearn|; regressors = max relative "
        "difference (denominator max(1,|y|)). labels = fraction of equal predicted labels."
    )


if __name__ == "__main__":
    main()
