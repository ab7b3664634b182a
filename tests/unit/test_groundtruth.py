"""Ground-truth store: atomic files, crash leftovers, no duplicates, range reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamscore.dev import synthetic
from streamscore.feedback.groundtruth import (
    INPROGRESS,
    GroundTruthStore,
    read_rows,
    read_training_data,
    read_unmatched,
    training_data,
)

HOUR = 3_600_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % HOUR)  # 2023-11-14T22:00Z


def row(eid: str, t: int, **inputs: Any) -> dict[str, Any]:
    inp = inputs or {"a": -30.0, "b": 40.0, "c": 2.5, "segment": None}
    return {
        "event_id": eid,
        "key": f"k-{eid}",
        "event_time": t,
        "observed_time": t + 500,
        "joined_time": t + 600,
        "label": 10 * float(inp.get("a") or 0) + 3 * float(inp.get("b") or 0),
        "model_name": "demo",
        "model_version": 1,
        "role": "primary",
        "prediction_value": 1.0,
        "prediction_label": None,
        "probabilities": [],
        "classes": [],
        "feature_names": ["a", "b"],
        "features": [-30.0, 40.0],
        "inputs": inp,
        "shadow_versions": {},
    }


def opened(root: Path) -> GroundTruthStore:
    s = GroundTruthStore(root)
    s.open()
    return s


def test_rows_land_in_hour_partitions_and_read_back(tmp_path: Path) -> None:
    s = opened(tmp_path)
    assert s.append(row("e1", T0 + 10))
    assert s.append(row("e2", T0 + HOUR + 10))
    assert read_rows(tmp_path) == []  # buffered rows are not visible
    files = s.flush()
    rel = sorted(str(p.relative_to(tmp_path).parent) for p in files)
    assert rel == ["dt=2023-11-14/hour=22", "dt=2023-11-14/hour=23"]
    assert all(p.name.startswith("part-") and p.suffix == ".avro" for p in files)
    got = read_rows(tmp_path)
    assert [r["event_id"] for r in got] == ["e1", "e2"]
    assert got[0]["event_time"] == T0 + 10 and isinstance(got[0]["observed_time"], int)
    assert got[0]["inputs"]["c"] == 2.5
    assert not list(s.writer_dir.iterdir())  # nothing left in progress


def test_time_range_reads(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(6):
        s.append(row(f"e{i}", T0 + i * HOUR // 2))
    s.flush()
    ids = [r["event_id"] for r in read_rows(tmp_path, T0 + HOUR // 2, T0 + 2 * HOUR)]
    assert ids == ["e1", "e2", "e3"]  # since inclusive, until exclusive
    assert [r["event_id"] for r in read_rows(tmp_path, since_ms=T0 + 2 * HOUR)] == ["e4", "e5"]


def test_leftover_inprogress_file_is_ignored_and_cleaned(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(row("kept", T0))
    s.flush()
    # a crash mid-write: a partial file under _inprogress (garbage bytes)
    junk = tmp_path / INPROGRESS / "part-deadbeef.avro"
    junk.write_bytes(b"Obj\x01partial")
    assert [r["event_id"] for r in read_rows(tmp_path)] == ["kept"]
    report = GroundTruthStore(tmp_path).open()
    assert report.removed_inprogress == ("part-deadbeef.avro",)
    assert report.rows == 1
    assert not junk.exists()


def test_a_dead_writers_leftovers_are_removed_a_live_writers_are_not(tmp_path: Path) -> None:
    live = opened(tmp_path)
    live_partial = live.writer_dir / "part-live.avro"
    live_partial.write_bytes(b"Obj\x01being written")
    dead_dir = tmp_path / INPROGRESS / "0123456789abcdef"  # its lock file is not held
    dead_dir.mkdir()
    (dead_dir / "part-dead.avro").write_bytes(b"Obj\x01partial")
    (tmp_path / INPROGRESS / "0123456789abcdef.lock").touch()

    report = GroundTruthStore(tmp_path).open()

    assert report.removed_inprogress == ("part-dead.avro",)
    assert not dead_dir.exists()
    assert live_partial.exists()  # its writer holds the lock: left alone


def test_close_releases_the_writer_lock(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(row("e1", T0))
    s.close()  # flushes first
    assert [r["event_id"] for r in read_rows(tmp_path)] == ["e1"]
    assert not s.writer_dir.exists()
    assert list((tmp_path / INPROGRESS).iterdir()) == []


def test_refresh_indexes_what_another_writer_finalized(tmp_path: Path) -> None:
    a, b = opened(tmp_path), opened(tmp_path)
    assert a.writer != b.writer
    a.append(row("e1", T0))
    a.flush()
    assert not b.contains("e1")  # b indexed the store when it opened
    assert b.refresh() == 1
    assert b.contains("e1")
    assert not b.append(row("e1", T0))  # a re-read label after a rebalance: no second row
    assert b.refresh() == 0  # files already indexed are not read again


def test_no_duplicate_event_ids_after_restart(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(5):
        assert s.append(row(f"e{i}", T0 + i))
    assert not s.append(row("e2", T0 + 2))  # same process
    s.flush()
    s.append(row("lost", T0 + 9))  # buffered, never flushed: the process dies
    s2 = opened(tmp_path)
    assert s2.contains("e3") and not s2.contains("lost")
    assert not s2.append(row("e3", T0 + 3))
    assert s2.append(row("lost", T0 + 9))  # replayed from Kafka: written once now
    assert s2.append(row("e9", T0 + 9))
    s2.flush()
    ids = [r["event_id"] for r in read_rows(tmp_path)]
    assert sorted(ids) == ["e0", "e1", "e2", "e3", "e4", "e9", "lost"]
    assert len(ids) == len(set(ids))


def test_unmatched_labels_are_kept_and_deduplicated(tmp_path: Path) -> None:
    s = opened(tmp_path)
    lab = {"event_id": "nope", "label": 3.5, "observed_time": T0 + 5}
    assert s.append_unmatched(lab)
    assert not s.append_unmatched(lab)
    s.flush()
    assert read_rows(tmp_path) == []
    assert read_unmatched(tmp_path) == [lab]
    assert opened(tmp_path).contains_unmatched("nope")


def test_training_data_uses_the_serving_checks(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(row("ok", T0, a=-30.0, b=40.0, c=2.0))
    s.append(row("c_out_of_range", T0 + 1, a=-30.0, b=40.0, c=99.0))  # spec: c <= 55
    s.append(row("c_missing", T0 + 2, a=-30.0, b=40.0, c=None))
    bad = row("bad_label", T0 + 3)
    bad["label"] = "n/a"
    s.append(bad)
    s.flush()
    d = read_training_data(tmp_path, synthetic.spec_abc())
    assert [r["event_id"] for r in d.rows] == ["ok"]
    assert d.X.tolist() == [[-30.0, 40.0, 2.0]] and d.n_invalid == 3
    ab = read_training_data(tmp_path, synthetic.spec_ab())
    assert ab.X.shape == (3, 2)  # c is not an input of (a, b): only the bad label goes


def test_fallback_to_scored_features_without_inputs() -> None:
    r = row("x", T0)
    r["inputs"] = {}
    d = training_data([r], synthetic.spec_ab())
    assert d.X.tolist() == [[-30.0, 40.0]]
    with pytest.raises(AssertionError):
        assert training_data([r], synthetic.spec_abc()).X.shape[0] == 1
