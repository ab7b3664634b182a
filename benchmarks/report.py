"""The report of a ``make bench`` run: the summary against the targets (kept in the JSON)
and the printed tables."""

from __future__ import annotations

from typing import Any

from . import workload
from .measure import median
from .results import Profile, Results


def summarize(res: Results, p: Profile) -> None:
    summary: dict[str, Any] = {}
    targets = {"hgb": 50_000.0, "lr": 100_000.0}
    for kind in workload.MODEL_KINDS:
        longs = [r for r in res.throughput if r.model == kind and r.label == "long"]
        shorts = [r for r in res.throughput if r.model == kind and r.label == "short"]
        naive = [r.eps for r in res.naive if r.model == kind]
        eps = median([r.sustained_eps for r in longs])
        naive_eps = median(naive)
        lat = {r.mode: r for r in res.latency if r.model == kind}
        paced = lat.get("paced")
        s: dict[str, Any] = {
            "throughput_eps_median": eps,
            "throughput_target_eps": targets[kind],
            "throughput_target_met": eps >= targets[kind],
            "naive_eps_median": naive_eps,
            "worker_over_naive": eps / naive_eps if naive_eps else float("nan"),
            "ratio_target_met": bool(naive_eps) and eps / naive_eps >= 10,
            "cpu_s_per_1k_long": median([r.cpu_s_per_1k for r in longs]),
            "cpu_s_per_1k_short": median([r.cpu_s_per_1k for r in shorts]),
            "peak_rss_mb_short": median([r.peak_rss_mb for r in shorts]),
            "peak_rss_mb_long": median([r.peak_rss_mb for r in longs]),
        }
        if shorts and longs:
            growth = s["peak_rss_mb_long"] - s["peak_rss_mb_short"]
            s["peak_rss_growth_mb"] = growth
            s["rss_flat"] = growth < 0.1 * s["peak_rss_mb_short"]
        if paced is not None:
            s["paced_p99_ms"] = paced.broker_p99_ms
            s["paced_p99_target_met"] = paced.broker_p99_ms < 50.0
            s["paced_worker_p99_ms"] = paced.worker_p99_ms
        summary[kind] = s
    res.summary = summary


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_table(res: Results, command: str) -> None:
    print()
    print(f"streamscore bench ({res.profile}, batch size {res.batch_size}) — {command}")
    print(f"host: {res.host['cpus']} CPUs, {res.host['python']}, {res.host['machine']}")
    print()
    hdr = (
        f"{'model':<5} {'run':<6} {'events':>8} {'sustained ev/s':>15} {'overall ev/s':>13} "
        f"{'CPU s/1k':>9} {'broker s/1k':>11} {'busy CPUs':>9} {'peak RSS MB':>12} "
        f"{'RSS 25/50/100%':>15}"
    )
    print(
        "1+3. drain a pre-filled topic (one worker; throughput from the broker's LogAppendTime "
        "of the predictions)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in res.throughput:
        rss = "/".join(f"{v:.0f}" for v in r.rss_mb_at.values())
        print(
            f"{r.model:<5} {r.label:<6} {r.events:>8,} {r.sustained_eps:>15,.0f} "
            f"{r.overall_eps:>13,.0f} {r.cpu_s_per_1k:>9.4f} {r.broker_cpu_s_per_1k:>11.4f} "
            f"{r.machine_busy_cpus:>9.2f} {r.peak_rss_mb:>12.1f} {rss:>15}"
        )
    print()
    print("   worker stage times (its own histograms), us/event:")
    for r in res.throughput:
        if r.label == "long":
            print(
                f"   {r.model:<5} "
                + "  ".join(f"{k} {v:.2f}" for k, v in r.stage_us_per_event.items())
            )
    print()
    print(
        "2. end-to-end latency, ms, after a paced warm-up: prediction's broker append time - "
        "event_time;\n   split into the producer's share (event appended - event_time) and the "
        "worker's (prediction appended - event appended)"
    )
    hdr = (
        f"{'model':<5} {'offered':<7} {'offered ev/s':>12} {'events':>8} {'drained ev/s':>13} "
        f"{'p50':>7} {'p99':>7} {'max':>7} {'producer p99':>13} {'worker p50/p99':>15} "
        f"{'p99 incl. warm-up':>18}"
    )
    print(hdr)
    print("-" * len(hdr))
    for lr in res.latency:
        worker = f"{lr.worker_p50_ms:.1f}/{lr.worker_p99_ms:.1f}"
        print(
            f"{lr.model:<5} {lr.mode:<7} {lr.offered_eps:>12,.0f} {lr.events:>8,} "
            f"{lr.drained_eps:>13,.0f} {lr.broker_p50_ms:>7.1f} {lr.broker_p99_ms:>7.1f} "
            f"{lr.broker_max_ms:>7.0f} {lr.producer_p99_ms:>13.1f} {worker:>15} "
            f"{lr.broker_p99_incl_warmup_ms:>18.1f}"
        )
    print()
    print("4. naive baseline (poll/decode/sklearn predict/encode/produce per message)")
    for nr in res.naive:
        print(
            f"   {nr.model:<5} {nr.events:>7,} events  {nr.eps:>9,.0f} ev/s  "
            f"{nr.cpu_s_per_1k:.3f} CPU s/1k"
        )
    print()
    print("targets")
    if res.profile != "full":
        print(
            "   (a smoke run: short runs, often on a broker that has just started and is still "
            "compiling; judge the targets on the full run)"
        )
    for kind, s in res.summary.items():
        print(
            f"   {kind:<4} throughput {s['throughput_eps_median']:,.0f} ev/s "
            f"(target {s['throughput_target_eps']:,.0f}: {met(s['throughput_target_met'])}); "
            f"worker/naive {s['worker_over_naive']:.1f}x (>= 10x: {met(s['ratio_target_met'])})"
        )
        if "paced_p99_ms" in s:
            print(
                f"        p99 at 2,000 ev/s offered {s['paced_p99_ms']:.1f} ms "
                f"(< 50 ms: {met(s['paced_p99_target_met'])}; the worker's share "
                f"{s['paced_worker_p99_ms']:.1f} ms)"
            )
        if "rss_flat" in s:
            print(
                f"        peak RSS short/long {s['peak_rss_mb_short']:.1f}/"
                f"{s['peak_rss_mb_long']:.1f} MB (flat: {met(s['rss_flat'])})"
            )
