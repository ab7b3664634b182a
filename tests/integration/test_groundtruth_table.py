"""The ground-truth table on the real local cluster and the real S3 API server (S3Proxy):
DuckDB and Polars read it (on disk and on S3) with the same counts, two feedback workers
share one table across a rebalance, compaction runs during a live stream, and
``streamscore train`` trains from the table on S3 and records the version it read."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from streamscore.core.config import GroundTruthSettings, Secret, TopicSettings
from streamscore.core.records import JoinedRow
from streamscore.dev.localcluster import LocalCluster
from streamscore.feedback import groundtruth
from streamscore.feedback.groundtruth import GroundTruthStore

from ..records import joined_row
from .conftest import private_cluster_settings
from .feedback_stack import (
    FeedbackProcess,
    Store,
    gt_settings,
    make_feedback_fixture,  # noqa: F401  (the make_feedback fixture)
    produce_labels,
    produce_world,
    run_train,
    store_env,
    store_rows,
    table_fixture,  # noqa: F401  (the table fixture: local and S3)
    wait_group_caught_up,
    wait_rows,
)
from .stack import Stack, WorkerProcess

DAY = 86_400_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY)


def _row(i: int) -> JoinedRow:
    t = T0 + (i % 5) * DAY + i  # five event dates
    return joined_row(
        f"e{i:05d}",
        t,
        key=f"k{i % 7}",
        label=float(i),
        value=float(i) + 0.5,
        features=(float(i), -float(i)),
        inputs={"c": float(i % 3), "segment": "s" if i % 2 else None},
        observed_after_ms=10,
        joined_after_ms=20,
    )


def test_duckdb_and_polars_read_the_table(table: Store) -> None:
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    gt = gt_settings(table)
    store = GroundTruthStore(gt)
    store.open()
    for batch in range(3):
        for i in range(batch * 400, batch * 400 + 500):  # overlapping batches
            store.append(_row(i))
        store.flush()
    n = 1300
    ours = store_rows(table)
    assert len(ours) == len({r["event_id"] for r in ours}) == n

    uri, opts = gt.location.child("rows"), gt.storage_options()
    # Polars: read_delta / scan_delta (storage options as a notebook would pass them)
    frame = pl.read_delta(uri, storage_options=opts or None)
    assert frame.height == n and frame["event_id"].n_unique() == n
    assert set(frame.columns) >= {"event_id", "event_time", "label", "c", "model_version"}
    lazy = pl.scan_delta(uri, storage_options=opts or None)
    one_day = lazy.filter(pl.col("event_date") == "2023-11-14").select(pl.len()).collect()
    assert one_day.item() == n // 5
    # DuckDB: SQL over the table's current files (through delta-rs's Arrow dataset)
    dataset = DeltaTable(uri, storage_options=opts or None).to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("gt", dataset)
    count, ids, dates = con.execute(
        "SELECT count(*), count(DISTINCT event_id), count(DISTINCT event_date) FROM gt"
    ).fetchone()
    assert (count, ids, dates) == (n, n, 5)
    (mean_c,) = con.execute("SELECT avg(c) FROM gt").fetchone()
    assert abs(mean_c - sum(i % 3 for i in range(n)) / n) < 1e-9


def test_two_workers_share_one_table_across_a_rebalance(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    table: Store,
) -> None:
    """One worker joins alone, a second joins the group mid-stream (a rebalance moves
    partitions, and their uncommitted work, to it), then the first leaves (another):
    every labelled event has exactly one row, on the local table and on S3."""
    store = table
    group = f"{stack.group_id}-fb-rebalance"
    stack.publish("ab", version=1)
    make_worker("w1")
    fb1 = make_feedback(store, "--window-s", "600", group_id=group)
    truth = produce_world(stack, 3000, seed=51)
    items = list(truth.items())
    produce_labels(stack, dict(items[:1000]))
    wait_rows(store, 300, proc=fb1)

    fb2 = make_feedback(store, "--window-s", "600", group_id=group)  # rebalance
    produce_labels(stack, dict(items[1000:2000]))
    wait_rows(store, 1500, proc=fb2)
    fb1.close()  # leaves the group: a second rebalance hands everything to fb2
    produce_labels(stack, dict(items[2000:]))

    wait_rows(store, 3000, proc=fb2)
    wait_group_caught_up(stack, group)
    ids = [r["event_id"] for r in store_rows(store)]
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == set(truth)
    assert groundtruth.read_unmatched(store) == []
    assert fb2.labels_outcomes()["joined"] > 0


def test_compaction_during_a_live_stream_loses_and_doubles_nothing(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    tmp_path: Path,
) -> None:
    from deltalake import DeltaTable

    store = tmp_path / "gt"
    stack.publish("ab", version=1)
    make_worker("w1")
    fb = make_feedback(
        store,
        "--window-s",
        "600",
        "--compact-every-s",
        "1",
        "--vacuum-every-s",
        "2",
        "--retention-hours",
        "0",
    )
    truth = produce_world(stack, 3000, seed=61)
    items = list(truth.items())

    def trickle() -> None:  # labels keep arriving while the worker compacts
        for i in range(0, len(items), 100):
            produce_labels(stack, dict(items[i : i + 100]))
            time.sleep(0.15)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    feeder.join()
    wait_rows(store, 3000, proc=fb)
    wait_group_caught_up(stack, f"{stack.group_id}-feedback")
    ids = [r["event_id"] for r in store_rows(store)]
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == set(truth)

    history = DeltaTable(str(store / "rows")).history()
    ops = [h["operation"] for h in reversed(history)]
    merges = [i for i, op in enumerate(ops) if op == "MERGE"]
    optimizes = [i for i, op in enumerate(ops) if op == "OPTIMIZE"]
    print(f"\nMEASURED table commits: {len(merges)} merges, {len(optimizes)} compactions")
    # compactions ran between merges, i.e. while rows were still arriving
    assert any(merges[0] < i < merges[-1] for i in optimizes), ops
    assert "VACUUM END" in ops


def test_train_reads_the_table_on_s3_and_records_its_version(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    s3: object,
    unique_name: Callable[[str], str],
) -> None:
    from .feedback_stack import s3_table

    store = s3_table(s3, unique_name("gt-train"))  # type: ignore[arg-type]
    stack.publish("ab", version=1)
    make_worker("w1")
    fb = make_feedback(store, "--window-s", "30")
    truth = produce_world(stack, 1500, seed=71)
    produce_labels(stack, truth)
    wait_rows(store, 1500, proc=fb)
    version = groundtruth.read_rows_at(store).version
    assert version is not None

    res = run_train(stack, store, "--min-rows", "500")
    print(res.stdout, res.stderr[-2000:])
    assert res.returncode == 0, res.stderr
    assert "published demo/primary v2" in res.stdout
    assert f"ground truth {store.uri} version " in res.stdout

    listed = subprocess.run(
        [sys.executable, "-m", "streamscore.cli", "model", "list"],
        env={**stack.env(), **store_env(store)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    trained = [ln for ln in listed.stdout.splitlines() if f"{store.uri}@v" in ln]
    assert trained, listed.stdout  # v2's records (primary, archive) name the table
    line = trained[-1]
    used = int(line.split(f"{store.uri}@v")[1].split()[0])
    assert used >= version
    # time travel: the version the model was trained on reads back the same rows
    rows_then = groundtruth.read_rows(store, version=used)
    assert len(rows_then) >= 1500 and len({r["event_id"] for r in rows_then}) == len(rows_then)


def test_the_clusters_s3_server_starts_serves_a_table_and_stops(tmp_path: Path) -> None:
    """What ``streamscore cluster up`` starts after Kafka and the registry (here alone, on
    a private run dir and port): S3Proxy from the cluster's downloads, on loopback."""
    cluster = LocalCluster(private_cluster_settings(tmp_path / "run"), TopicSettings())
    try:
        ep = cluster.up_s3()
        pid = cluster.s3.pid()
        assert pid is not None and ep.url == f"http://127.0.0.1:{cluster.settings.s3_port}"
        assert cluster.up_s3() == ep and cluster.s3.pid() == pid  # idempotent
        opts = {k: Secret(v) for k, v in ep.storage_options().items()}
        gt = GroundTruthSettings(f"s3://{ep.bucket}/cluster-check", storage=opts)
        store = GroundTruthStore(gt)
        store.open()
        for i in range(10):
            store.append(_row(i))
        store.flush()
        assert len(groundtruth.read_rows(gt)) == 10
        # the bucket is a directory of the run dir (filesystem backend)
        assert (cluster.run_dir / "s3-data" / ep.bucket / "cluster-check" / "rows").is_dir()
    finally:
        cluster.down()
    assert cluster.s3.pid() is None
