"""The feedback join loop in process, without Kafka: CPU per label, by stage.

Run: ``python -m benchmarks.feedback_hotpath [--labels N] [--batch N] [--label-lead N]
[--profile FILE]``.

What ``make bench-feedback`` measures end to end (router, broker, join) mixes the join's
own work with the broker and the router's share of the GIL. This runs only the join:
N predictions and N labels in wire format (``mock://`` registry), keyed and headed as the
router writes them, spread over 4 join partitions, each label within a few hundred
messages of its prediction (before or after it, as the router interleaves two topics;
``--label-lead N``: N messages before it, as a backlog's labels run ahead), handed to a
real :class:`~streamscore.feedback.loop.FeedbackLoop` (RocksDB state under a temporary
directory, Delta ground-truth table on local disk, no changelog: offsets are
committed to the fake consumer) in consumed batches of ``--batch``. Reported: process CPU
seconds, labels per CPU second, checkpoint count, and the rows the table holds; with
``--repeat``, the run that took the least CPU (interference on a shared machine only
adds to it).
``--profile``: a cProfile of the drain, top functions by cumulative time.
``--instructions``: the run again under valgrind's callgrind, counting the instructions
of the drain only (every thread: the checkpoint thread and the table writer's own
included), reported per label. Unlike CPU seconds on a shared machine, the count is the
same from run to run for the same code and inputs, so two trees can be compared by one
run each (it takes ~50 times as long: use a few thousand labels).
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from benchmarks.feedback import prediction
from streamscore.core.config import FEEDBACK_BATCH
from streamscore.feedback.groundtruth import GroundTruthStore, read_rows
from streamscore.feedback.router import KIND_HEADER, LABEL, PREDICTION
from streamscore.feedback.state import relax_gc
from streamscore.metrics.series import Metrics
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import registry_client
from tests.unit.kafka_fakes import FakeConsumer, FakeMessage, feedback_loop

JOIN = "bench.join"
PARTITIONS = 4
#: set in the child run under callgrind: where to build the toggle library
_CALLGRIND_ENV = "STREAMSCORE_BENCH_CALLGRIND"
_TOGGLE_C = """
#include <valgrind/callgrind.h>
void streamscore_cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void streamscore_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""


class _Counting:
    """Callgrind's instrumentation switched on around the drain (a no-op outside it)."""

    def __init__(self) -> None:
        self._lib: Any = None
        where = os.environ.get(_CALLGRIND_ENV)
        if where:
            src, so = Path(where) / "toggle.c", Path(where) / "toggle.so"
            src.write_text(_TOGGLE_C)
            subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], check=True)
            self._lib = ctypes.CDLL(str(so))

    def __enter__(self) -> None:
        if self._lib is not None:
            self._lib.streamscore_cg_start()

    def __exit__(self, *_exc: object) -> None:
        if self._lib is not None:
            self._lib.streamscore_cg_stop()


def count_instructions(argv: list[str]) -> dict[str, Any]:
    """This bench run again under callgrind (instrumented around the drain only); the
    drain's instructions, from the dump its end writes."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    if not Path("/usr/include/valgrind/callgrind.h").exists():
        raise SystemExit("--instructions needs valgrind's headers (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fb-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.feedback_hotpath",
            *argv,
        ]  # fmt: skip
        env = {**os.environ, _CALLGRIND_ENV: tmp}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the run under callgrind failed:\n{done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        dumps = sorted(Path(tmp).glob("callgrind.out*"))
        counts = [_dumped_instructions(d) for d in dumps]
    result["instructions"] = max(counts)  # the dump at the drain's end
    return result


def _dumped_instructions(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def messages(n: int, seed: int = 7, lead: int = 0) -> tuple[list[list[FakeMessage]], Any]:
    """``n`` predictions and their labels as the join topic holds them, per partition,
    and the registry that knows their schemas."""
    reg = registry_client({"url": f"mock://feedback-hotpath-{seed}"})
    enc_p = AvroSerializer(reg, "p-value", schemas.load("prediction"))
    enc_f = AvroSerializer(reg, "f-value", schemas.load("feedback"))
    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    order: list[tuple[float, bytes, str]] = []
    for i in range(n):
        eid = f"ev-{i}"
        order.append((i, PREDICTION, eid))
        order.append((i - lead + rnd.uniform(-300, 300), LABEL, eid))
    order.sort(key=lambda x: x[0])
    parts: list[list[FakeMessage]] = [[] for _ in range(PARTITIONS)]
    for _t, kind, eid in order:
        p = hash(eid) % PARTITIONS
        if kind == PREDICTION:
            i = int(eid[3:])
            value = enc_p(prediction(eid, f"entity-{i % 5000}", now, i))
        else:
            value = enc_f({"event_id": eid, "label": 1.0, "observed_time": now})
        parts[p].append(
            FakeMessage(
                JOIN,
                p,
                len(parts[p]),
                value,
                key=eid.encode(),
                headers=[(KIND_HEADER, kind)],
                timestamp_ms=now,
            )
        )
    return parts, reg


def batches(parts: list[list[FakeMessage]], size: int) -> list[list[FakeMessage]]:
    """Consumed batches: each takes up to ``size`` messages, a run from each partition in
    turn (as a consumer returns fetched partition runs)."""
    out: list[list[FakeMessage]] = []
    cursors = [0] * len(parts)
    run = max(1, size // len(parts))
    while any(c < len(p) for c, p in zip(cursors, parts, strict=True)):
        b: list[FakeMessage] = []
        for j, p in enumerate(parts):
            b.extend(p[cursors[j] : cursors[j] + run])
            cursors[j] = min(len(p), cursors[j] + run)
        out.append(b)
    return out


def run(
    n: int,
    batch: int,
    profile: str | None,
    workdir: Path,
    lead: int = 0,
    checkpoint_s: float = 5.0,
) -> dict[str, Any]:
    parts, reg = messages(n, lead=lead)
    todo = batches(parts, batch)
    relax_gc()
    metrics = Metrics(CollectorRegistry(), "feedback")
    store = GroundTruthStore(str(workdir / "gt"), max_buffered_rows=100_000)
    store.open()
    stop = threading.Event()
    consumer = FakeConsumer(todo, stop, topic=JOIN, partitions=tuple(range(PARTITIONS)))
    loop = feedback_loop(
        reg,
        consumer,
        store,
        metrics,
        stop,
        window_ms=3_600_000,
        heads=True,
        state_dir=workdir / "state",
        checkpoint_s=checkpoint_s,
        batch_size=batch,
    )
    loop._on_assign(consumer, [TopicPartition(JOIN, p) for p in range(PARTITIONS)])
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    with _Counting():
        stats = loop.run()
    if prof is not None:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = read_rows(workdir / "gt")
    if prof is not None and profile is not None:
        prof.dump_stats(profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    return {
        "labels": n,
        "batch": batch,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "labels_per_cpu_s": round(n / cpu),
        "us_per_label": round(cpu / n * 1e6, 1),
        "checkpoints": stats.checkpoints,
        "rows": len(rows),
        "rows_unique": len({r["event_id"] for r in rows}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feedback_hotpath", description=__doc__)
    ap.add_argument("--labels", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=FEEDBACK_BATCH, help="messages per consumed batch")
    ap.add_argument(
        "--label-lead",
        type=int,
        default=0,
        help="labels this many messages before their predictions (a backlog's order)",
    )
    ap.add_argument(
        "--checkpoint-s",
        type=float,
        default=5.0,
        help="checkpoint interval (inf: only when the changes or rows held call for one)",
    )
    ap.add_argument("--profile", default=None, help="write a cProfile here, print its top")
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs; the least CPU is reported (noise adds)"
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count the drain's instructions under callgrind (one run; repeatable)",
    )
    args = ap.parse_args(argv)
    if args.instructions:
        # by count only: under callgrind a run takes ~50 times as long, and checkpoints
        # by the clock would come more often than in a plain run
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--instructions"]
        r = count_instructions([*rest, "--repeat", "1", "--checkpoint-s", "inf"])
        r["instructions_per_label"] = round(r["instructions"] / args.labels)
        print(json.dumps(r))
        return 0 if r["rows"] == r["rows_unique"] == args.labels else 1
    runs = []
    for _ in range(args.repeat):
        workdir = Path(tempfile.mkdtemp(prefix="fb-hotpath-"))
        try:
            runs.append(
                run(
                    args.labels,
                    args.batch,
                    args.profile,
                    workdir,
                    args.label_lead,
                    args.checkpoint_s,
                )
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    r = min(runs, key=lambda x: x["cpu_s"])
    r["cpu_s_runs"] = [x["cpu_s"] for x in runs]
    print(json.dumps(r))
    return 0 if all(x["rows"] == x["rows_unique"] == args.labels for x in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
