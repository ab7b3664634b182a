"""The demo's report: the summary (``results/summary.json``), its printout, and the plot.

Pure functions of what the demo observed (:class:`~streamscore.dev.observe.DemoObservations`),
its truth counts, its timeline and its training runs; times are wall-clock seconds, shown
relative to the run's start ``t0``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .observe import DemoObservations
from .supervise import BACKGROUND_NICE
from .traffic import DemoTruth


@dataclass
class RunRecord:
    """What a demo run leaves to report, besides its observations."""

    t0: float
    #: (wall-clock time, text), in order
    timeline: list[tuple[float, str]] = field(default_factory=list)
    #: (start, end), wall clock
    training_runs: list[tuple[float, float]] = field(default_factory=list)
    labels_sent: int = 0
    active_at_end: str = ""
    feedback_mae_at_end: dict[str, float] = field(default_factory=dict)


def mae_by_version(obs: DemoObservations, since: float = 0.0) -> dict[int, float]:
    """Mean absolute error per model version, of the predictions scored from ``since``."""
    acc: dict[int, list[float]] = defaultdict(list)
    for t, v, err, _lat in obs.rows:
        if t >= since:
            acc[v].append(err)
    return {v: float(np.mean(e)) for v, e in sorted(acc.items())}


def latency_ms(
    obs: DemoObservations,
    training_runs: Sequence[tuple[float, float]],
    training: bool | None = None,
) -> dict[str, float | int | None]:
    """p50/p99 end-to-end latency over all primary predictions (``training=None``), over
    those scored while a training run was going (True), or over the others (False)."""
    lat = [
        r[3] * 1000
        for r in obs.rows
        if training is None or any(a <= r[0] <= b for a, b in training_runs) == training
    ]
    if not lat:
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(lat, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "n": len(lat)}


def summary(obs: DemoObservations, truth: DemoTruth, run: RunRecord) -> dict[str, Any]:
    t0 = run.t0
    lat = np.array([r[3] for r in obs.rows]) if obs.rows else np.zeros(1)
    scored = [r[0] for r in obs.rows]
    elapsed = max(1e-9, max(scored) - min(scored)) if scored else 1.0
    return {
        "events_produced": truth.produced,
        "malformed_produced": truth.malformed,
        "predictions": obs.predictions,
        "dead_letters": dict(obs.dead),
        "model_versions_first_seen_s": {
            str(v): round(t - t0, 1) for v, t in sorted(obs.first_seen.items())
        },
        "timeline_s": [(round(t - t0, 1), text) for t, text in run.timeline],
        "active_at_end": run.active_at_end,
        "live_mae_by_version": mae_by_version(obs),
        "live_mae_feedback_worker": run.feedback_mae_at_end,
        "labels_sent": run.labels_sent,
        "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
        "latency_p99_ms": float(np.percentile(lat, 99) * 1000),
        "latency_ms_while_training": latency_ms(obs, run.training_runs, training=True),
        "latency_ms_otherwise": latency_ms(obs, run.training_runs, training=False),
        "training_runs_s": [(round(a - t0, 1), round(b - t0, 1)) for a, b in run.training_runs],
        "scored_per_s": obs.predictions / elapsed,
    }


def plot(obs: DemoObservations, run: RunRecord, path: Path) -> Path | None:
    """Rolling MAE per model version and end-to-end latency over time, with the timeline
    and the training runs marked; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t0 = run.t0
    rows = np.array(obs.rows) if obs.rows else np.zeros((0, 4))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for v in sorted(set(rows[:, 1].astype(int).tolist())):
        sel = rows[rows[:, 1] == v]
        t = sel[:, 0] - t0
        err = sel[:, 2]
        window = max(1, min(200, len(err) // 5))
        rolling = np.convolve(err, np.ones(window) / window, mode="valid")
        ax1.plot(t[window - 1 :], rolling, label=f"model v{v}")
    top = ax1.get_ylim()[1]
    for i, (t, text) in enumerate(run.timeline):
        for ax in (ax1, ax2):
            ax.axvline(t - t0, color="k", linestyle="--", linewidth=1)
        ax1.annotate(text, (t - t0, top * (0.92 - 0.08 * (i % 4))), fontsize=8)
    ax1.set_ylabel("rolling MAE")
    ax1.legend()
    ax1.set_title("streamscore demo: live error per model version")
    for i, (a, b) in enumerate(run.training_runs):
        ax2.axvspan(
            a - t0,
            b - t0,
            color="tab:orange",
            alpha=0.15,
            label=f"training run (nice +{BACKGROUND_NICE})" if i == 0 else None,
        )
    ax2.plot(rows[:, 0] - t0, rows[:, 3] * 1000, ",", alpha=0.5)
    if run.training_runs:
        ax2.legend(loc="upper right")
    ax2.set_ylabel("end-to-end latency (ms)")
    ax2.set_xlabel("seconds since start")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _p50_p99(lat: dict[str, Any] | None) -> str:
    if not lat or not lat.get("n"):
        return "-"
    return f"{lat['p50']:.1f} / {lat['p99']:.1f} ({lat['n']} predictions)"


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("events produced", summary["events_produced"]),
        ("  of which malformed", summary["malformed_produced"]),
        ("primary predictions", summary["predictions"]),
        ("dead letters", ", ".join(f"{k}: {v}" for k, v in summary["dead_letters"].items()) or 0),
        ("labels sent", summary["labels_sent"]),
        ("model versions first answering (s)", summary["model_versions_first_seen_s"]),
        ("active at the end", summary["active_at_end"]),
        (
            "live MAE by version (demo)",
            {k: round(v, 4) for k, v in summary["live_mae_by_version"].items()},
        ),
        (
            "live MAE (feedback worker)",
            {k: round(v, 4) for k, v in summary["live_mae_feedback_worker"].items()},
        ),
        (
            "end-to-end latency p50 / p99 (ms)",
            f"{summary['latency_p50_ms']:.1f} / {summary['latency_p99_ms']:.1f}",
        ),
        *(
            (f"  {label}", _p50_p99(summary.get(key)))
            for label, key in (
                ("while a training run was going", "latency_ms_while_training"),
                ("otherwise", "latency_ms_otherwise"),
            )
        ),
        ("scored per second (bound by the offered rate)", f"{summary['scored_per_s']:.0f}"),
        ("plot", summary.get("plot")),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n== streamscore demo summary ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("timeline (s):")
    for t, text in summary["timeline_s"]:
        print(f"  {t:6.1f}  {text}")
