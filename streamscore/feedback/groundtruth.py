"""The ground-truth store: labelled rows in time-partitioned Avro container files.

Layout under ``root``::

    dt=YYYY-MM-DD/hour=HH/part-<uuid>.avro            joined rows, by event hour (UTC)
    unmatched/dt=YYYY-MM-DD/hour=HH/part-<uuid>.avro   labels that found no prediction,
                                                       by observed hour (feedback schema)
    _inprogress/<writer>/part-<uuid>.avro              files being written (never read)
    _inprogress/<writer>.lock                          held by the live writer <writer>

Rows (``schemas/groundtruth_row.v1.avsc``) are buffered in memory and written by
:meth:`GroundTruthStore.flush`: one file per hour partition, written under
``_inprogress/``, flushed and ``fsync``-ed, then moved into its partition with
``os.replace`` (atomic within one file system) and the partition directory ``fsync``-ed.
Readers only ever list ``part-*.avro`` in partition directories, so they never see a
half-written file. A crash mid-write leaves at most an ``_inprogress`` file, which
:meth:`GroundTruthStore.open` deletes: its rows belonged to messages whose consumer
offsets were not committed yet (the feedback worker commits only after ``flush``), so
they are read and written again.

Several writers (feedback workers of one group) may share a store directory: each
writes under its own ``_inprogress/<writer>/`` and holds an exclusive ``flock`` on
``_inprogress/<writer>.lock`` while it lives. ``open`` deletes only the leftovers of
writers whose lock is free (dead processes), never a live writer's file. This needs a
file system with working POSIX locks (local disk, or a network file system that
supports them).

No duplicates: the store keeps the set of event ids it holds (rebuilt at ``open`` from the
finalized files, extended by every accepted row) and :meth:`append` refuses an event id it
already has, in a buffered row or a finalized file. The same holds for unmatched labels.
With several writers, each event id belongs to one writer at a time (the join topic is
keyed by event id); when ownership moves (a rebalance), :meth:`GroundTruthStore.refresh`
indexes the files the others finalized since, so a re-read label is still known.

Reading (:func:`read_rows`, :func:`read_training_data`) prunes partitions by hour and
filters on event time (``since`` inclusive, ``until`` exclusive, epoch ms). Training
matrices are built with :func:`streamscore.features.prepare.from_rows` and the model's
:class:`FeatureSpec`: the same checks and encoding as serving.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from ..core.records import FeatureSpec, Task
from ..serde import schemas
from ..serde.wire import parse

log = logging.getLogger(__name__)

INPROGRESS = "_inprogress"
UNMATCHED = "unmatched"
_HOUR_MS = 3_600_000
_PART_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_HOUR_DIR = re.compile(r"^hour=(\d{2})$")


def _row_schema() -> dict[str, Any]:
    return schemas.load("groundtruth_row", 1)


def _unmatched_schema() -> dict[str, Any]:
    return schemas.load("feedback", 1)


def partition_of(time_ms: int) -> tuple[str, str]:
    t = dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC)
    return f"dt={t:%Y-%m-%d}", f"hour={t:%H}"


def _hour_start_ms(day: str, hour: str) -> int:
    t = dt.datetime.strptime(f"{day} {hour}", "%Y-%m-%d %H").replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finalized_files(
    base: Path, since_ms: int | None = None, until_ms: int | None = None
) -> list[Path]:
    """Finalized part files under ``base`` whose hour overlaps [since, until)."""
    out: list[Path] = []
    if not base.is_dir():
        return out
    for day_dir in sorted(base.iterdir()):
        m = _PART_DIR.match(day_dir.name)
        if not m or not day_dir.is_dir():
            continue
        for hour_dir in sorted(day_dir.iterdir()):
            h = _HOUR_DIR.match(hour_dir.name)
            if not h or not hour_dir.is_dir():
                continue
            start = _hour_start_ms(m.group(1), h.group(1))
            if until_ms is not None and start >= until_ms:
                continue
            if since_ms is not None and start + _HOUR_MS <= since_ms:
                continue
            out.extend(sorted(hour_dir.glob("part-*.avro")))
    return out


_TIME_FIELDS = ("event_time", "observed_time", "joined_time")


def _read_file(path: Path, reader_schema: Any) -> Iterator[dict[str, Any]]:
    """Records of one finalized file; timestamps as epoch-ms ints (fastavro applies the
    file's logical types, so datetimes are turned back into milliseconds here)."""
    with path.open("rb") as f:
        for rec in fastavro.reader(f, reader_schema=reader_schema):
            assert isinstance(rec, dict)
            for k in _TIME_FIELDS:
                v = rec.get(k)
                if v is not None and not isinstance(v, int):
                    rec[k] = round(v.timestamp() * 1000)
            yield rec


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    removed_inprogress: tuple[str, ...]
    rows: int
    unmatched: int


class _Area:
    """One partitioned area (rows or unmatched): buffer, index, finalize."""

    def __init__(self, store: GroundTruthStore, base: Path, schema: dict[str, Any], tkey: str):
        self._store = store
        self.base = base
        self._writer_schema = fastavro.parse_schema(schema, named_schemas={})
        self._reader_schema = parse(schema)  # timestamps as epoch-ms ints
        self._time_key = tkey
        self.ids: set[str] = set()
        self._indexed: set[Path] = set()
        self.buffer: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.buffered = 0

    def rebuild_index(self) -> int:
        self.ids.clear()
        self._indexed.clear()
        return self.refresh_index()

    def refresh_index(self) -> int:
        """Index the finalized files not indexed yet (written by other writers)."""
        n = 0
        for path in _finalized_files(self.base):
            if path in self._indexed:
                continue
            for rec in _read_file(path, self._reader_schema):
                self.ids.add(rec["event_id"])
                n += 1
            self._indexed.add(path)
        return n

    def append(self, record: dict[str, Any]) -> bool:
        eid = record["event_id"]
        if eid in self.ids:
            return False
        self.ids.add(eid)
        self.buffer.setdefault(partition_of(int(record[self._time_key])), []).append(record)
        self.buffered += 1
        return True

    def flush(self) -> list[Path]:
        written: list[Path] = []
        for (day, hour), records in sorted(self.buffer.items()):
            name = f"part-{uuid.uuid4().hex}.avro"
            tmp = self._store.writer_dir / name
            with tmp.open("wb") as f:
                fastavro.writer(f, self._writer_schema, records, codec="deflate")
                f.flush()
                os.fsync(f.fileno())
            final_dir = self.base / day / hour
            new_dir = not final_dir.is_dir()
            final_dir.mkdir(parents=True, exist_ok=True)
            final = final_dir / name
            os.replace(tmp, final)
            self._indexed.add(final)
            _fsync_dir(final_dir)
            if new_dir:
                _fsync_dir(final_dir.parent)
                _fsync_dir(self.base)
            written.append(final)
        self.buffer.clear()
        self.buffered = 0
        return written


class GroundTruthStore:
    """Writer side of the store (several writers may share a directory: module doc)."""

    def __init__(self, root: Path | str, *, max_buffered_rows: int = 20_000) -> None:
        self.root = Path(root)
        self.inprogress_dir = self.root / INPROGRESS
        self.writer = uuid.uuid4().hex[:16]
        self.writer_dir = self.inprogress_dir / self.writer
        self._lock_fd: int | None = None
        self.max_buffered_rows = max_buffered_rows
        self._rows = _Area(self, self.root, _row_schema(), "event_time")
        self._unmatched = _Area(self, self.root / UNMATCHED, _unmatched_schema(), "observed_time")
        self._opened = False

    def open(self) -> RecoveryReport:
        """Create the layout, take this writer's lock, delete the leftover
        ``_inprogress`` files of dead writers (a crash mid-write), and rebuild the
        event-id indexes from the finalized files."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.inprogress_dir.mkdir(exist_ok=True)
        self._lock_fd = _lock(self.inprogress_dir / f"{self.writer}.lock", wait=True)
        self.writer_dir.mkdir()
        removed = _remove_dead_writers(self.inprogress_dir, self.writer)
        if removed:
            log.warning(
                "removed %d unfinished file(s) from %s (their rows are re-read from Kafka)",
                len(removed),
                self.inprogress_dir,
            )
        n_rows = self._rows.rebuild_index()
        n_unmatched = self._unmatched.rebuild_index()
        self._opened = True
        return RecoveryReport(tuple(removed), n_rows, n_unmatched)

    def close(self) -> None:
        """Flush, then release this writer's lock and remove its (empty) directories."""
        if not self._opened:
            return
        self.flush()
        self._opened = False
        with contextlib.suppress(OSError):
            self.writer_dir.rmdir()
        with contextlib.suppress(FileNotFoundError):
            (self.inprogress_dir / f"{self.writer}.lock").unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def refresh(self) -> int:
        """Index the finalized files other writers added since (after a rebalance)."""
        self._check_open()
        return self._rows.refresh_index() + self._unmatched.refresh_index()

    def _check_open(self) -> None:
        if not self._opened:
            raise RuntimeError("GroundTruthStore.open() must be called first")

    def contains(self, event_id: str) -> bool:
        return event_id in self._rows.ids

    def contains_unmatched(self, event_id: str) -> bool:
        return event_id in self._unmatched.ids

    @property
    def buffered(self) -> int:
        return self._rows.buffered + self._unmatched.buffered

    @property
    def needs_flush(self) -> bool:
        return self.buffered >= self.max_buffered_rows

    def append(self, row: dict[str, Any]) -> bool:
        """Buffer a ground-truth row; False (and nothing written) for a known event id."""
        self._check_open()
        return self._rows.append(row)

    def append_unmatched(self, label: Mapping[str, Any]) -> bool:
        """Buffer an unmatched label (feedback record); False for a known event id."""
        self._check_open()
        return self._unmatched.append(dict(label))

    def flush(self) -> list[Path]:
        """Write every buffered row to finalized files (durable when this returns)."""
        self._check_open()
        return self._rows.flush() + self._unmatched.flush()


def _lock(path: Path, *, wait: bool) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if needed): the open descriptor, or
    None if another process holds it and ``wait`` is False."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove_dead_writers(inprogress: Path, me: str) -> list[str]:
    """Delete what dead writers left under ``inprogress`` (their lock is free): files of
    an older single-writer layout directly in it, and ``<writer>/`` directories."""
    removed: list[str] = []
    for p in sorted(inprogress.iterdir()):
        if p.is_file() and p.suffix == ".avro":  # pre-lock layout: no live owner to ask
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
            continue
        if not p.is_dir() or p.name == me:
            continue
        lock_path = inprogress / f"{p.name}.lock"
        fd = _lock(lock_path, wait=False)
        if fd is None:
            continue  # a live writer
        try:
            for f in sorted(p.iterdir()):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed.append(f.name)
            with contextlib.suppress(OSError):
                p.rmdir()
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
        finally:
            os.close(fd)
    return removed


# ------------------------------------------------------------------------ reading


def read_rows(
    root: Path | str, since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """Finalized rows with ``since <= event_time < until``, sorted by (event_time, id)."""
    reader = parse(_row_schema())
    out = [
        r
        for p in _finalized_files(Path(root), since_ms, until_ms)
        for r in _read_file(p, reader)
        if (since_ms is None or r["event_time"] >= since_ms)
        and (until_ms is None or r["event_time"] < until_ms)
    ]
    out.sort(key=lambda r: (r["event_time"], r["event_id"]))
    return out


def read_unmatched(
    root: Path | str, since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """Unmatched labels with ``since <= observed_time < until``."""
    reader = parse(_unmatched_schema())
    out = [
        r
        for p in _finalized_files(Path(root) / UNMATCHED, since_ms, until_ms)
        for r in _read_file(p, reader)
        if (since_ms is None or r["observed_time"] >= since_ms)
        and (until_ms is None or r["observed_time"] < until_ms)
    ]
    out.sort(key=lambda r: (r["observed_time"], r["event_id"]))
    return out


def raw_inputs(row: Mapping[str, Any]) -> dict[str, Any]:
    """The event's raw fields for a row: the scored features by name, overlaid with
    ``inputs`` (what the scored vector does not hold as it was; see ``join``)."""
    raw = {
        n: (None if isinstance(v, float) and np.isnan(v) else v)
        for n, v in zip(row.get("feature_names") or (), row.get("features") or (), strict=False)
    }
    raw.update(row.get("inputs") or {})
    return raw


@dataclass(frozen=True)
class TrainingData:
    """Rows valid for ``spec`` (serving checks), their matrix and labels, event-time
    ordered."""

    X: np.ndarray
    y: np.ndarray
    event_time_ms: np.ndarray
    rows: list[dict[str, Any]] = field(repr=False)
    n_read: int = 0
    n_invalid: int = 0


def labels_array(rows: Sequence[Mapping[str, Any]], task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(labels, usable mask): floats for regression (a string that is not a number is
    unusable), strings for classification (an integral float 1.0 reads as "1")."""
    n = len(rows)
    ok = np.ones(n, dtype=bool)
    if task is Task.REGRESSION:
        y = np.full(n, np.nan)
        for i, r in enumerate(rows):
            try:
                y[i] = float(r["label"])
            except (TypeError, ValueError):
                ok[i] = False
        ok &= np.isfinite(y)
        return y, ok
    ys = [label_as_class(r["label"]) for r in rows]
    return np.array(ys, dtype=np.str_), ok


def label_as_class(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def training_data(
    rows: Sequence[dict[str, Any]], spec: FeatureSpec, task: Task = Task.REGRESSION
) -> TrainingData:
    """The training matrix for ``rows`` through :func:`prepare.from_rows` (serving's
    code path); rows the serving checks would refuse, or with unusable labels, are left
    out."""
    from ..features.prepare import from_rows

    raws = [raw_inputs(r) for r in rows]
    y_all, y_ok = labels_array(rows, task)
    X_all, valid = from_rows(raws, spec)
    keep = valid & y_ok
    # from_rows returns only the valid rows; pick the label-usable ones among them
    X = X_all[y_ok[valid]]
    kept_rows = [r for r, k in zip(rows, keep.tolist(), strict=True) if k]
    times = np.array([int(r["event_time"]) for r in kept_rows], dtype=np.int64)
    return TrainingData(
        X=X,
        y=y_all[keep],
        event_time_ms=times,
        rows=kept_rows,
        n_read=len(rows),
        n_invalid=int(len(rows) - keep.sum()),
    )


def read_training_data(
    root: Path | str,
    spec: FeatureSpec,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    task: Task = Task.REGRESSION,
) -> TrainingData:
    return training_data(read_rows(root, since_ms, until_ms), spec, task)
