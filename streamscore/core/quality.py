"""Model quality metrics, one definition for training, live quality and promotion. Pure:
NumPy only.

The names are the project file's ``[train] metric`` values::

    accuracy   classification, higher is better
    log_loss   classification, lower is better (probability given to the true class)
    roc_auc    binary classification, higher is better (scores of the positive class)
    macro_f1   classification, higher is better (unweighted mean of per-class F1)
    mae, rmse  regression, lower is better

Which way is better is :class:`~streamscore.core.config.Metric`'s to say; how an
improvement is measured is decided here only (:func:`better_by`), for training, the
promotion gate and the auto-promotion alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .config import Metric
from .records import Task

CLASSIFICATION_METRICS = ("accuracy", "log_loss", "roc_auc", "macro_f1")
REGRESSION_METRICS = ("mae", "rmse")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS

#: Metrics where a lower value is better (:attr:`Metric.higher_is_better`, the one place
#: that says); all the others are higher-is-better.
LOWER_IS_BETTER = frozenset(m.value for m in Metric if not m.higher_is_better)

_EPS = 1e-15


def better_by(metric: str, current: float, candidate: float) -> float:
    """How much better ``candidate`` is than ``current`` on ``metric`` (positive: better).

    Error metrics (mae, rmse, log_loss): the relative reduction ``(current - candidate) /
    current`` (a current of 0 cannot be beaten: 0, or ``inf`` if the candidate is below).
    Score metrics (accuracy, roc_auc, macro_f1): the absolute gain ``candidate - current``.
    A NaN on either side is no improvement (``-inf``)."""
    if math.isnan(current) or math.isnan(candidate):
        return -math.inf
    if metric in LOWER_IS_BETTER:
        if current <= 0.0:
            return 0.0 if candidate >= current else math.inf
        return (current - candidate) / current
    return candidate - current


def improvement_kind(metric: str) -> str:
    """``relative`` (error metrics) or ``absolute``: how :func:`better_by` measures."""
    return "relative" if metric in LOWER_IS_BETTER else "absolute"


def beats(metric: str, current: float, candidate: float, margin: float) -> tuple[bool, float]:
    """Whether ``candidate`` beats ``current`` by at least ``margin`` (and strictly), and
    the improvement (:func:`better_by`)."""
    gain = better_by(metric, current, candidate)
    return gain >= margin and gain > 0, gain


def default_metric(task: Task) -> str:
    """The deciding metric when the recipe names none: mae, or accuracy."""
    return "mae" if task is Task.REGRESSION else "accuracy"


def check_metric(metric: str, task: Task, n_classes: int = 0) -> None:
    """Raise ``ValueError`` when ``metric`` cannot measure a model of ``task``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of: {', '.join(METRICS)}")
    wanted = REGRESSION_METRICS if task is Task.REGRESSION else CLASSIFICATION_METRICS
    if metric not in wanted:
        raise ValueError(f"metric {metric!r} does not measure a {task.value} model")
    if metric == "roc_auc" and n_classes > 2:
        raise ValueError(f"roc_auc needs a binary task; this model has {n_classes} classes")


def regression_metrics(errors: npt.ArrayLike) -> dict[str, float]:
    err = np.asarray(errors, dtype=np.float64)
    if err.size == 0:
        return {}
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err * err)))}


def roc_auc(positive: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count a
    half: the Mann-Whitney statistic on average ranks). NaN unless both classes occur."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over ties: each run of equal scores gets the mean of its positions
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # 1-based mean rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean over the classes seen (in the truth or the predictions) of each
    class's F1. NaN for no rows."""
    t = np.asarray(list(truth), dtype=np.str_)
    p = np.asarray(list(predicted), dtype=np.str_)
    if t.size == 0:
        return math.nan
    scores = []
    for c in np.union1d(t, p).tolist():
        tp = float(np.sum((t == c) & (p == c)))
        fp = float(np.sum((t != c) & (p == c)))
        fn = float(np.sum((t == c) & (p != c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def classification_metrics(
    truth: Sequence[str],
    predicted: Sequence[str],
    p_true: npt.ArrayLike,
    *,
    binary: bool,
    positive: npt.ArrayLike | None = None,
    p_positive: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """accuracy, log_loss and macro_f1; with ``binary``, roc_auc from ``positive`` (the
    truth is the positive class) and ``p_positive`` (its predicted probability). A metric
    that cannot be computed on these rows (roc_auc with one class only) is left out."""
    t = np.asarray(list(truth), dtype=np.str_)
    if t.size == 0:
        return {}
    p = np.asarray(list(predicted), dtype=np.str_)
    pt = np.clip(np.asarray(p_true, dtype=np.float64), _EPS, 1.0)
    out = {
        "accuracy": float(np.mean(t == p)),
        "log_loss": float(np.mean(-np.log(pt))),
        "macro_f1": macro_f1(t.tolist(), p.tolist()),
    }
    if binary and positive is not None and p_positive is not None:
        auc = roc_auc(positive, p_positive)
        if not math.isnan(auc):
            out["roc_auc"] = auc
    return out


def probabilities_metrics(
    y: Sequence[str],
    probabilities: npt.NDArray[np.float64],
    classes: Sequence[str],
    positive_class: str | None = None,
) -> dict[str, float]:
    """:func:`classification_metrics` for a probability matrix (rows: events, columns:
    ``classes``); the positive class of a binary model is ``positive_class`` or else the
    second class (scikit-learn's ``classes_[1]``)."""
    cls = np.asarray(list(classes), dtype=np.str_)
    ys = np.asarray(list(y), dtype=np.str_)
    probs = np.asarray(probabilities, dtype=np.float64)
    pred = cls[np.argmax(probs, axis=1)] if probs.size else np.asarray([], dtype=np.str_)
    idx = {c: i for i, c in enumerate(cls.tolist())}
    p_true = np.array(
        [probs[i, idx[v]] if v in idx else 0.0 for i, v in enumerate(ys.tolist())],
        dtype=np.float64,
    )
    binary = len(cls) == 2
    pos_idx = idx.get(positive_class, 1) if positive_class is not None else 1
    return classification_metrics(
        ys.tolist(),
        pred.tolist(),
        p_true,
        binary=binary,
        positive=ys == cls[pos_idx] if binary else None,
        p_positive=probs[:, pos_idx] if binary and probs.size else None,
    )
