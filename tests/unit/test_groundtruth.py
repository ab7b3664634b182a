"""Ground-truth table (Delta Lake, local disk): the user's names, one row per event id by
the table's merge, several writers, range reads with partition pruning, compaction,
vacuum and time travel; URI and retention settings."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streamscore.core.config import GroundTruthSettings, Secret, parse_table_uri
from streamscore.core.errors import ConfigError, ProjectFileError
from streamscore.core.project import parse_project
from streamscore.core.records import JoinedRow, Role
from streamscore.dev import synthetic
from streamscore.feedback.groundtruth import (
    DATE_COLUMN,
    GroundTruthStore,
    GroundTruthUnavailableError,
    RowFields,
    TableVersionVacuumedError,
    raw_inputs,
    read_rows,
    read_rows_at,
    read_training_data,
    read_unmatched,
    training_data,
)
from streamscore.models.meta import TrainingSource

from ..records import joined_row

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY)  # 2023-11-14T00:00Z


def row(eid: str, t: int, **inputs: Any) -> JoinedRow:
    """A join row: a primary regressor's answer, scored on (a, b), with ``inputs``."""
    inp = inputs or {"a": -30.0, "b": 40.0, "c": 2.5, "segment": None}
    label = 10 * float(inp.get("a") or 0) + 3 * float(inp.get("b") or 0)
    return joined_row(eid, t, label=label, inputs=inp)


def opened(root: Path | str, **kw: Any) -> GroundTruthStore:
    s = GroundTruthStore(str(root), **kw)
    s.open()
    return s


def ids(root: Path | str, **kw: Any) -> list[str]:
    return [str(r["event_id"]) for r in read_rows(str(root), **kw)]


def parquet_files(table_dir: Path) -> list[Path]:
    return sorted(table_dir.rglob("*.parquet"))


def test_rows_land_in_date_partitions_and_read_back(tmp_path: Path) -> None:
    s = opened(tmp_path)
    assert s.append(row("e1", T0 + 10))
    assert s.append(row("e2", T0 + DAY + 10))
    assert not s.append(row("e1", T0 + 10))  # already buffered
    assert read_rows(str(tmp_path)) == []  # buffered rows are not visible
    rep = s.flush()
    assert (rep.rows, rep.inserted, rep.already_stored) == (2, 2, 0)
    parts = sorted({p.parent.name for p in parquet_files(tmp_path / "rows")})
    assert parts == [f"{DATE_COLUMN}=2023-11-14", f"{DATE_COLUMN}=2023-11-15"]
    assert (tmp_path / "rows" / "_delta_log").is_dir()
    got = read_rows(str(tmp_path))
    assert [r["event_id"] for r in got] == ["e1", "e2"]
    assert got[0]["event_time"] == T0 + 10 and got[0]["observed_time"] == T0 + 510
    assert got[0]["c"] == 2.5 and got[0]["a"] == -30.0  # each input under its own name
    assert got[0]["model_version"] == 1 and got[0]["model_role"] == "primary"
    assert got[0]["label"] == 10 * -30.0 + 3 * 40.0


def test_rows_keep_the_users_names(tmp_path: Path) -> None:
    fields = RowFields("payment_id", "created_at", "is_fraud")
    s = opened(tmp_path, fields=fields)
    r = row("p1", T0 + 5, amount=12.5, country="FR", classes="gold", is_fraud=None)
    answer = replace(
        r.prediction,
        value=None,
        label="true",
        probabilities=(0.2, 0.8),
        classes=("false", "true"),
    )
    s.append(replace(r, label=replace(r.label, label="true"), prediction=answer))
    s.flush()
    (got,) = read_rows(str(tmp_path), fields=fields)
    assert got["payment_id"] == "p1" and got["created_at"] == T0 + 5
    assert got["is_fraud"] == "true"
    assert got["amount"] == 12.5 and got["country"] == "FR"
    # inputs named like the table's own columns (or the label) are input_<name>
    assert got["input_classes"] == "gold" and got["classes"] == ["false", "true"]
    assert got["model_role"] == "primary"
    assert "input_is_fraud" not in got  # a null input is a null column, not written
    assert got["prediction_label"] == "true" and got["prediction_score"] == 0.8
    assert not {"event_id", "event_time", "label", "inputs"} & set(got)
    raw = raw_inputs(got, fields)
    assert raw["classes"] == "gold" and raw["amount"] == 12.5 and "payment_id" not in raw


def test_row_fields_refuse_clashes() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        RowFields("id", "id", "label")
    with pytest.raises(ConfigError, match="column of the ground-truth table"):
        RowFields("event_id", "event_time", "model_version")


def test_time_range_reads_prune_date_partitions(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(6):
        s.append(row(f"e{i}", T0 + i * DAY // 2))
    s.flush()
    root = str(tmp_path)
    assert ids(root, since_ms=T0 + DAY // 2, until_ms=T0 + 2 * DAY) == ["e1", "e2", "e3"]
    assert ids(root, since_ms=T0 + 2 * DAY) == ["e4", "e5"]
    assert ids(root, until_ms=T0 + 1) == ["e0"]


def test_one_row_per_event_id_across_restarts(tmp_path: Path) -> None:
    s = opened(tmp_path)
    for i in range(5):
        s.append(row(f"e{i}", T0 + i))
    s.flush()
    s.append(row("lost", T0 + 9))  # buffered, never flushed: the process dies
    s2 = opened(tmp_path)  # a new worker re-reads what was not committed
    for eid in ("e3", "lost", "e9"):
        s2.append(row(eid, T0 + 9 if eid != "e3" else T0 + 3))
    rep = s2.flush()
    assert (rep.rows, rep.inserted, rep.already_stored) == (3, 2, 1)
    got = ids(tmp_path)
    assert sorted(got) == ["e0", "e1", "e2", "e3", "e4", "e9", "lost"]
    assert len(got) == len(set(got))


def test_two_writers_on_one_table_write_each_row_once(tmp_path: Path) -> None:
    a, b = opened(tmp_path), opened(tmp_path)
    errors: list[BaseException] = []

    def write(store: GroundTruthStore, offset: int) -> None:
        try:
            for batch in range(8):  # overlapping ids, same partitions: merges conflict
                for i in range(batch * 10 + offset, batch * 10 + offset + 15):
                    store.append(row(f"e{i}", T0 + i))
                store.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(st, k * 5)) for k, st in ((0, a), (1, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = ids(tmp_path)
    assert len(got) == len(set(got)) == len({f"e{i}" for i in range(0, 90)})


def test_unmatched_labels_are_kept_once_and_not_when_a_row_exists(tmp_path: Path) -> None:
    now = [T0 + 1000]  # the wall clock: rows are joined at T0 + 600
    s = opened(tmp_path, wall_clock=lambda: now[0])
    s.append(row("joined", T0))
    s.append(row("buffered", T0 + 1))
    assert not s.append_unmatched({"event_id": "buffered", "label": 1.0, "observed_time": T0})
    s.flush()
    lab = {"event_id": "nope", "label": 3.5, "observed_time": T0 + 5}
    assert s.append_unmatched(lab)
    assert not s.append_unmatched(lab)
    # a label re-read after a restart whose row was written before: not unmatched
    assert not s.append_unmatched({"event_id": "joined", "label": 1.0, "observed_time": T0 + 7})
    s.flush()
    s2 = opened(tmp_path, wall_clock=lambda: now[0])
    assert s2.refresh() == 2  # another worker, or after a restart: the recent rows known
    assert not s2.append_unmatched({"event_id": "joined", "label": 1.0, "observed_time": T0})
    s2.append_unmatched(lab)  # again after a restart: the table keeps one
    s2.flush()
    assert read_unmatched(str(tmp_path)) == [lab]
    assert ids(tmp_path) == ["joined", "buffered"]
    # a label for an event whose row was joined longer ago than recent_ms: kept
    now[0] = T0 + 700 + s2.recent_ms  # both rows joined more than recent_ms ago
    s3 = opened(tmp_path, wall_clock=lambda: now[0])
    assert s3.refresh() == 0
    late = {"event_id": "joined", "label": 2.0, "observed_time": now[0]}
    assert s3.append_unmatched(late)
    assert s3.flush().unmatched == 1
    assert [u["event_id"] for u in read_unmatched(str(tmp_path))] == ["nope", "joined"]
    assert ids(tmp_path) == ["joined", "buffered"]


def test_compaction_keeps_every_row_and_vacuum_respects_retention(tmp_path: Path) -> None:
    s = opened(tmp_path, clock=lambda: 0.0)
    for k in range(6):
        s.append(row(f"e{k}", T0 + k))
        s.flush()
    v_before = read_rows_at(str(tmp_path)).version
    n_files = len(parquet_files(tmp_path / "rows"))
    assert n_files >= 6
    rep = s.maintain(force=True)
    assert rep.compacted is not None and rep.compacted["numFilesRemoved"] >= 6
    assert ids(tmp_path) == [f"e{k}" for k in range(6)]
    assert rep.vacuumed == 0  # retention (168 h by default) keeps the old files
    assert read_rows_at(str(tmp_path)).version == (v_before or 0) + 1
    # time travel: the version before compaction reads the same rows
    assert ids(tmp_path, version=v_before) == [f"e{k}" for k in range(6)]

    short = GroundTruthSettings(str(tmp_path), retention_hours=0)
    s0 = GroundTruthStore(short, clock=lambda: 0.0)
    s0.open()
    assert s0.maintain(force=True).vacuumed >= 6
    assert len(parquet_files(tmp_path / "rows")) == 1
    assert ids(tmp_path) == [f"e{k}" for k in range(6)]
    # the version before compaction lost its files to the vacuum: a typed error says so
    with pytest.raises(TableVersionVacuumedError, match=f"version {v_before} .*vacuum") as e:
        ids(tmp_path, version=v_before)
    assert e.value.version == v_before


class _Handle:
    """A real table handle that counts the times it is brought up to date."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.updates = 0

    def update_incremental(self) -> None:
        self.updates += 1
        self.table.update_incremental()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_a_read_whose_snapshot_is_vacuumed_under_it_reads_the_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import DeltaTable

    from streamscore.feedback import groundtruth

    s = GroundTruthStore(GroundTruthSettings(str(tmp_path), retention_hours=0), clock=lambda: 0.0)
    s.open()
    for k in range(4):
        s.append(row(f"e{k}", T0 + k))
        s.flush()
    stale = DeltaTable(str(tmp_path / "rows"))  # loaded now, read after the vacuum
    for n in range(2):
        s.append(row(f"f{n}", T0 + 10 + n))
        s.flush()
    assert s.maintain(force=True).vacuumed >= 4
    with pytest.raises(FileNotFoundError):
        stale.to_pyarrow_table()

    handle = _Handle(stale)  # a reader that opened the table just before the vacuum
    monkeypatch.setattr(groundtruth, "_open", lambda *a, **k: handle)
    got = read_rows_at(str(tmp_path))
    assert [str(r["event_id"]) for r in got.rows] == [f"e{k}" for k in range(4)] + ["f0", "f1"]
    assert handle.updates == 1 and got.version == DeltaTable(str(tmp_path / "rows")).version()

    class NeverNewer(_Handle):  # every version it loads has lost its files
        def update_incremental(self) -> None:
            self.updates += 1

    stale = DeltaTable(str(tmp_path / "rows"))
    s.append(row("g0", T0 + 20))
    s.flush()
    assert s.maintain(force=True).vacuumed >= 1
    never = NeverNewer(stale)
    monkeypatch.setattr(groundtruth, "_open", lambda *a, **k: never)
    with pytest.raises(GroundTruthUnavailableError, match=r"not there \(5 attempts"):
        read_rows(str(tmp_path))
    assert never.updates == groundtruth.MAX_READ_ATTEMPTS - 1


def test_refresh_says_when_the_table_cannot_be_read(tmp_path: Path) -> None:
    import shutil

    s = opened(tmp_path, wall_clock=lambda: T0 + 1000)
    s.append(row("e1", T0))
    s.flush()
    assert s.refresh() == 1 and s.contains("e1")
    shutil.rmtree(tmp_path / "rows" / f"{DATE_COLUMN}=2023-11-14")  # its files gone for good
    with pytest.raises(GroundTruthUnavailableError, match="files that are not there"):
        s.refresh()
    assert s.contains("e1")  # what it knew stays


def test_maintenance_follows_its_schedule(tmp_path: Path) -> None:
    now = [0.0]
    settings = GroundTruthSettings(str(tmp_path), compact_every_s=10, vacuum_every_s=0)
    s = GroundTruthStore(settings, clock=lambda: now[0])
    s.open()
    s.append(row("e1", T0))
    s.flush()
    assert s.maintain().compacted is None  # not due yet
    now[0] = 10.0
    assert s.maintain().compacted is not None
    assert s.maintain().compacted is None  # the next one is 10 s away


def test_training_data_uses_the_serving_checks(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.append(row("ok", T0, a=-30.0, b=40.0, c=2.0))
    s.append(row("c_out_of_range", T0 + 1, a=-30.0, b=40.0, c=99.0))  # spec: c <= 55
    s.append(row("c_missing", T0 + 2, a=-30.0, b=40.0, c=None))
    bad = row("bad_label", T0 + 3, a=-30.0, b=40.0, c=1.0)
    s.append(replace(bad, label=replace(bad.label, label="n/a")))
    s.flush()
    d = read_training_data(str(tmp_path), synthetic.spec_abc())
    assert [r["event_id"] for r in d.rows] == ["ok"]
    assert d.X.tolist() == [[-30.0, 40.0, 2.0]] and d.n_invalid == 3
    ab = read_training_data(str(tmp_path), synthetic.spec_ab())
    assert ab.X.shape == (3, 2)  # c is not an input of (a, b): only the bad label goes


def test_training_data_with_the_users_names() -> None:
    fields = RowFields("pid", "ts", "y")
    rows = [{"pid": "p", "ts": T0, "y": 3.0, "a": -30.0, "b": 40.0, "model_role": "primary"}]
    d = training_data(rows, synthetic.spec_ab(), fields=fields)
    assert d.X.tolist() == [[-30.0, 40.0]] and d.y.tolist() == [3.0]
    assert d.event_time_ms.tolist() == [T0]


def test_scored_features_fill_in_for_missing_inputs(tmp_path: Path) -> None:
    r = row("x", T0)
    s = opened(tmp_path)
    s.append(replace(r, prediction=replace(r.prediction, inputs={})))
    s.flush()
    (got,) = read_rows(str(tmp_path))
    assert (got["a"], got["b"]) == (-30.0, 40.0) and "c" not in got


# ---------------------------------------------------------------------- settings


def test_uri_parsing() -> None:
    assert parse_table_uri("file:///data/gt") == parse_table_uri("/data/gt")
    assert parse_table_uri("/data/gt").scheme == "file"
    assert parse_table_uri("gt").path == str(Path("gt").absolute())
    assert parse_table_uri("file:///data/gt").child("rows") == "/data/gt/rows"
    s3 = parse_table_uri("s3://bucket/some/prefix/")
    assert (s3.scheme, s3.path) == ("s3", "bucket/some/prefix")
    assert s3.child("rows") == "s3://bucket/some/prefix/rows"
    assert parse_table_uri("s3://bucket").child("unmatched") == "s3://bucket/unmatched"
    for bad, why in [
        ("gs://b/p", "unsupported"),
        ("file://relative/p", "absolute"),
        ("s3://", "not an S3 location"),
        ("s3://key:secret@bucket/p", "never in the URI"),
        ("", "empty"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_table_uri(bad)


def test_storage_options_and_their_secrecy() -> None:
    s3 = GroundTruthSettings(
        "s3://b/p",
        storage={"endpoint": Secret("http://127.0.0.1:9"), "secret_access_key": Secret("s3cr3t")},
    )
    opts = s3.storage_options()
    assert opts["aws_conditional_put"] == "etag"  # safe concurrent commits by default
    assert opts["secret_access_key"] == "s3cr3t"
    assert "s3cr3t" not in repr(s3) and "s3cr3t" not in s3.describe()
    assert "endpoint=http://127.0.0.1:9" in s3.describe()
    own = GroundTruthSettings("s3://b/p", storage={"conditional_put": Secret("disabled")})
    assert "aws_conditional_put" not in own.storage_options()
    assert GroundTruthSettings("/x").storage_options() == {}


def test_retention_and_schedule_settings() -> None:
    s = GroundTruthSettings("/x")
    assert (s.retention_hours, s.compact_every_s, s.vacuum_every_s) == (168.0, 600.0, 3600.0)
    with pytest.raises(ConfigError, match="retention_hours"):
        GroundTruthSettings("/x", retention_hours=-1)
    with pytest.raises(ConfigError, match="0: never"):
        GroundTruthSettings("/x", compact_every_s=-5)


def test_project_file_groundtruth_table() -> None:
    text = """
[groundtruth]
uri = "s3://lake/truth"
retention_hours = 24
compact_every_s = 60
[groundtruth.storage]
endpoint = "http://127.0.0.1:18090"
allow_http = true
secret_access_key = "hush"
"""
    gt = parse_project(text, "p.toml").groundtruth
    assert gt is not None
    assert gt.uri == "s3://lake/truth" and gt.retention_hours == 24.0
    assert gt.compact_every_s == 60.0 and gt.vacuum_every_s == 3600.0
    opts = gt.storage_options()
    assert opts["allow_http"] == "true" and opts["secret_access_key"] == "hush"
    assert "hush" not in repr(gt)
    with pytest.raises(ProjectFileError, match="did you mean 'retention_hours'"):
        parse_project("[groundtruth]\nretention_hour = 3\n", "p.toml")
    with pytest.raises(ProjectFileError, match="unsupported ground-truth URI"):
        parse_project('[groundtruth]\nuri = "ftp://x/y"\n', "p.toml")
    with pytest.raises(ProjectFileError, match="number >= 0"):
        parse_project("[groundtruth]\nvacuum_every_s = -1\n", "p.toml")


def test_training_source_round_trips() -> None:
    src = TrainingSource("s3://b/p", 12, T0, T0 + DAY, 345, "pid", "ts", "y")
    assert TrainingSource.from_dict(src.to_dict()) == src


def test_recently_written_ids_are_known_after_a_restart_older_ones_are_not(
    tmp_path: Path,
) -> None:
    now = [T0 + 10 * DAY]
    s = opened(tmp_path, recent_ms=HOUR, wall_clock=lambda: now[0])
    s.append(replace(row("old", T0), joined_time_ms=now[0] - 2 * HOUR))
    s.append(replace(row("new", T0), joined_time_ms=now[0] - 60_000))
    s.flush()
    assert s.contains("new") and not s.contains("old")  # own writes, within the horizon
    other = opened(tmp_path, recent_ms=HOUR, wall_clock=lambda: now[0])  # a restart
    assert other.contains("new") and not other.contains("old")
    now[0] += 2 * HOUR
    assert other.refresh() == 0 and not other.contains("new")  # bounded by the horizon


def test_a_row_is_known_from_its_append_on_wherever_the_checkpoints_fall(
    tmp_path: Path,
) -> None:
    """``contains`` (what the join asks of a label whose entry holds none) answers the same
    whether the row is buffered, sealed for a write in flight, put back after a failed
    write, or written: the join's decisions never depend on where a checkpoint fell."""
    now = [T0 + 10 * DAY]
    s = opened(tmp_path, recent_ms=HOUR, wall_clock=lambda: now[0])
    s.append(replace(row("a", T0), joined_time_ms=now[0]))
    assert s.contains("a") and not s.contains("b")  # buffered
    sealed = s.seal()
    s.append(replace(row("b", T0), joined_time_ms=now[0]))
    assert s.contains("a") and s.contains("b")  # one in flight, one buffered
    s.unseal(sealed)  # the write failed: back in the buffer
    assert s.contains("a")
    again = s.seal()
    s.write(again)
    assert s.contains("a") and s.contains("b")  # written, not yet acknowledged
    s.written(again)
    assert s.contains("a") and s.contains("b")  # known written
    assert not s.append_unmatched({"event_id": "a", "label": 1.0, "observed_time": T0})


def test_the_first_unmatched_label_of_an_event_stays_wherever_the_checkpoints_fall(
    tmp_path: Path,
) -> None:
    """An event's second unmatched label (a duplicate that came after the first one's
    entry expired) is refused while the first is buffered, and while it is being written
    too: a write that fails puts the first back, and the table keeps the first, as it
    does when the first was written before (the merge inserts only a new id)."""
    s = opened(tmp_path)
    first = {"event_id": "u", "label": 1.0, "observed_time": T0}
    second = {"event_id": "u", "label": 2.0, "observed_time": T0 + 5}
    assert s.append_unmatched(first)
    sealed = s.seal()
    assert not s.append_unmatched(second)  # the first is being written
    s.unseal(sealed)  # its write failed: back in the buffer
    assert not s.append_unmatched(second)
    s.flush()
    assert s.append_unmatched(second)  # written: the table's merge keeps the first
    s.flush()
    (kept,) = read_unmatched(tmp_path)
    assert (kept["label"], kept["observed_time"]) == (1.0, T0)


def test_recently_written_ids_are_bounded_in_number_the_newest_kept(tmp_path: Path) -> None:
    now = [T0 + 10 * DAY]
    s = opened(tmp_path, recent_ms=HOUR, max_recent_ids=3, wall_clock=lambda: now[0])
    for i in range(5):
        s.append(replace(row(f"e{i}", T0), joined_time_ms=now[0] - 50_000 + i))
    s.flush()
    assert [s.contains(f"e{i}") for i in range(5)] == [False, False, True, True, True]
    restarted = opened(tmp_path, recent_ms=HOUR, max_recent_ids=2, wall_clock=lambda: now[0])
    assert [restarted.contains(f"e{i}") for i in range(5)] == [False] * 3 + [True] * 2
    assert len(read_rows(tmp_path)) == 5  # the table keeps every row: only the shortcut forgets


def test_a_row_only_a_shadow_answered_carries_no_model_output(tmp_path: Path) -> None:
    s = opened(tmp_path)
    r = row("s", T0)
    shadow = replace(r.prediction, role=Role.SHADOW, model_version=2, probabilities=(0.3,))
    s.append(replace(r, prediction=shadow, shadow_versions={"shadow": 3}))
    s.append(replace(row("p", T0 + 1), shadow_versions={"shadow": 2}))
    s.flush()
    got = {g["event_id"]: g for g in read_rows(str(tmp_path))}
    assert got["s"]["model_role"] == "shadow" and got["s"]["shadow_versions"] == '{"shadow": 3}'
    none = ("model_name", "model_version", "prediction_value", "prediction_score")
    assert [got["s"][k] for k in none] == [None] * 4 and got["s"]["probabilities"] == []
    assert got["s"]["a"] == -30.0 and got["s"]["label"] == got["p"]["label"]  # still its row
    assert got["p"]["model_name"] == "demo" and got["p"]["model_version"] == 1
    assert got["p"]["prediction_value"] == 1.0 and got["p"]["shadow_versions"] == '{"shadow": 2}'
