"""The ground truth: labelled rows in a Delta Lake table (Parquet + a transaction log).

Where it lives: a URI (:class:`~streamscore.core.config.GroundTruthSettings`), a local
directory by default (``file:///path`` or a plain path) or ``s3://bucket/prefix``. Two
tables sit under it::

    <uri>/rows/event_date=YYYY-MM-DD/part-*.parquet        one row per labelled event
    <uri>/unmatched/observed_date=YYYY-MM-DD/part-*.parquet labels that met no prediction
    <uri>/{rows,unmatched}/_delta_log/*.json               the tables' commits

Rows keep the user's names (:class:`RowFields`): the event id and time under the
project's ``id_field``/``time_field``, the label under ``label_field``, every raw input
of the event (what the model read, and the fields it did not) under its own name, plus
what the answering prediction said (:data:`META_COLUMNS`). An input whose name is one of
the table's own columns is stored as ``input_<name>``.

Guarantees:

* **One row per event id, by the table**: :meth:`GroundTruthStore.flush` is a Delta
  ``MERGE`` on the id (``WHEN NOT MATCHED INSERT``), restricted to the event-date
  partitions of the batch, so a row already in the table (written before a crash, or by
  another worker before a rebalance) is never inserted again. No index of all past ids
  is held in memory: only the ids of rows joined within ``recent_ms`` (about twice the
  join window; the newest ``max_recent_ids`` of them at most, whatever the label rate),
  loaded at each partition assignment, so that a message re-read after a
  restart or a rebalance whose row is already written settles at once instead of waiting
  a whole window for a partner that was consumed before.
* **Several writers without locks**: every write is one atomic commit to the Delta log
  (put-if-absent of the next version: a rename-if-absent on a local disk, a conditional
  PUT on S3). Two writers that touch the same partitions conflict; the loser re-runs
  its merge on the new version (bounded retries), which is idempotent.
* **Durable before committed**: ``flush`` returns once the commit is in the log; the
  feedback worker commits its consumer offsets only after that (see
  :mod:`streamscore.feedback.loop`). A crash before the commit leaves at most Parquet
  files no version refers to (never read; vacuum deletes them).
* **Compaction and retention**: :meth:`GroundTruthStore.maintain` compacts small files
  (Delta ``OPTIMIZE``, a rewrite that changes no row) and vacuums files that left the
  table more than ``retention_hours`` ago, on the settings' schedule.
* **Time travel**: every read names the table version it saw
  (:attr:`RowsRead.version`); ``streamscore train`` records it in the bundle, and
  :func:`read_rows` with ``version=`` reads exactly that data back (while retention
  keeps its files).

Reading (:func:`read_rows`) prunes partitions by event date and filters on event time
(``since`` inclusive, ``until`` exclusive, epoch ms). Training matrices are built by
:func:`training_data` with :func:`streamscore.features.prepare.from_rows`: the serving
checks and encoding.

One concern, hence its length: the ground-truth table (its rows, the merge on the
event id, compaction and vacuum, pruned and time-travel reads).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import GroundTruthSettings
from ..core.errors import ConfigError, InfrastructureError, StreamscoreError
from ..core.records import (
    EVENT_ID_FIELD,
    EVENT_TIME_FIELD,
    FeatureSpec,
    JoinedRow,
    Prediction,
    Task,
    raw_input_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

ROWS = "rows"
UNMATCHED = "unmatched"
DATE_COLUMN = "event_date"
OBSERVED_DATE_COLUMN = "observed_date"
DEFAULT_LABEL_FIELD = "label"
INPUT_PREFIX = "input_"
_DAY_MS = 86_400_000

#: what the table adds to the user's fields (an input with one of these names, or with
#: the id/time/label field's name, is stored as ``input_<name>``)
META_COLUMNS = (
    DATE_COLUMN,
    "event_key",
    "observed_time",
    "joined_time",
    "model_name",
    "model_version",
    "model_role",
    "prediction_value",
    "prediction_label",
    "prediction_score",
    "probabilities",
    "classes",
    "shadow_versions",
)

#: commit conflicts (another writer, a compaction) re-run the merge this many times
MAX_COMMIT_ATTEMPTS = 50
#: a read of the latest version whose files a vacuum removed under it, this many times
MAX_READ_ATTEMPTS = 5


class GroundTruthUnavailableError(InfrastructureError):
    """The ground-truth table could not be written or read (storage away, or commit
    conflicts beyond the retry budget)."""

    reason = "groundtruth_unavailable"


class TableVersionVacuumedError(StreamscoreError):
    """A read pinned to a table version whose data files a vacuum has removed (older
    than the writers' ``retention_hours``): that version cannot be read again. Not
    retried; a longer retention keeps the versions that must stay readable (the training
    data of a model)."""

    reason = "groundtruth_version_vacuumed"

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class RowFields:
    """The user's names for the id, time and label columns."""

    id_field: str = EVENT_ID_FIELD
    time_field: str = EVENT_TIME_FIELD
    label_field: str = DEFAULT_LABEL_FIELD

    def __post_init__(self) -> None:
        names = (self.id_field, self.time_field, self.label_field)
        if len(set(names)) != 3:
            raise ConfigError(f"the id, time and label fields must differ, got {names}")
        for n in names:
            if n in META_COLUMNS:
                raise ConfigError(
                    f"{n!r} is a column of the ground-truth table itself; "
                    f"its own columns are: {', '.join(META_COLUMNS)}"
                )

    def input_column(self, name: str) -> str:
        """The column of the raw input ``name``."""
        if name in META_COLUMNS or name in (self.id_field, self.time_field, self.label_field):
            return INPUT_PREFIX + name
        return name

    @property
    def own(self) -> frozenset[str]:
        return frozenset((*META_COLUMNS, self.id_field, self.time_field, self.label_field))


Location = GroundTruthSettings | str | os.PathLike[str]


def as_settings(where: Location) -> GroundTruthSettings:
    """Settings for a location given as settings, a URI or a local path."""
    if isinstance(where, GroundTruthSettings):
        return where
    return GroundTruthSettings(os.fspath(where))


def _q(name: str) -> str:
    """A column name in a Delta (DataFusion SQL) predicate, case kept."""
    return "`" + name.replace("`", "``") + "`"


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def _dates_of(ms: Sequence[int]) -> list[str]:
    """The UTC dates of many times: one ``strftime`` per distinct day."""
    days: dict[int, str] = {}
    out = []
    for t in ms:
        d = t // _DAY_MS
        s = days.get(d)
        if s is None:
            s = days[d] = _date(d * _DAY_MS)
        out.append(s)
    return out


def _json_map(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "{}"
    import json

    return json.dumps(m, sort_keys=True)


# ------------------------------------------------------------------------ columns


def _ts(values: Sequence[int]) -> pa.Array:
    import pyarrow as pa

    # Delta's timestamp is microseconds, UTC
    return pa.array([v * 1000 for v in values], pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _scalar_column(values: list[Any]) -> pa.Array | None:
    """A column of raw scalars: float64 when every value is a number (or a bool),
    string when any is a string (numbers then as their text), None when all are null
    (the column is left out of the batch; the table keeps it null)."""
    import pyarrow as pa

    kinds = set(map(type, values))
    kinds.discard(type(None))
    if not kinds:
        return None
    if str in kinds:
        return pa.array([None if v is None else _as_text(v) for v in values], pa.string())
    return pa.array(
        [None if v is None else float(v) for v in values],
        pa.float64(),
        from_pandas=True,  # NaN stays NaN, never null
    )


def _as_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _top(probs: Sequence[float]) -> float | None:
    return float(max(probs)) if probs else None


def rows_to_arrow(rows: Sequence[JoinedRow], fields: RowFields) -> pa.Table:
    """Join rows (:class:`~streamscore.core.records.JoinedRow`) as an Arrow table in the
    user's names (module doc), built column by column. A row answered by a shadow only
    carries no model output (name, version, value, label, probabilities)."""
    import pyarrow as pa

    preds = [r.prediction for r in rows]
    labels = [r.label for r in rows]
    answered = [p.answers for p in preds]
    event_ms = [p.event_time_ms for p in preds]

    def model_output(
        get: Callable[[Prediction], Any], kind: pa.DataType, none: Any = None
    ) -> pa.Array:
        """What the answering predictions said (``none`` in a row a shadow answers)."""
        return pa.array([get(p) if a else none for p, a in zip(preds, answered, strict=True)], kind)

    cols: dict[str, pa.Array] = {
        fields.id_field: pa.array([lab.event_id for lab in labels], pa.string()),
        fields.time_field: _ts(event_ms),
        DATE_COLUMN: pa.array(_dates_of(event_ms), pa.string()),
        "event_key": pa.array([p.key for p in preds], pa.string()),
        "observed_time": _ts([lab.observed_time_ms for lab in labels]),
        "joined_time": _ts([r.joined_time_ms for r in rows]),
        "model_name": model_output(attrgetter("model_name"), pa.string()),
        "model_version": model_output(attrgetter("model_version"), pa.int64()),
        "model_role": pa.array([p.role.value for p in preds], pa.string()),
        "prediction_value": model_output(attrgetter("value"), pa.float64()),
        "prediction_label": model_output(attrgetter("label"), pa.string()),
        "prediction_score": model_output(lambda p: _top(p.probabilities), pa.float64()),
        "probabilities": model_output(attrgetter("probabilities"), pa.list_(pa.float64()), ()),
        "classes": model_output(attrgetter("classes"), pa.list_(pa.string()), ()),
        "shadow_versions": pa.array([_json_map(r.shadow_versions) for r in rows], pa.string()),
    }
    label = _scalar_column([lab.label for lab in labels])
    if label is not None:
        cols[fields.label_field] = label
    for name, values in raw_input_columns(preds).items():
        col = _scalar_column(values)
        if col is not None:
            cols[fields.input_column(name)] = col
    return pa.table(cols)


def unmatched_to_arrow(labels: Sequence[Mapping[str, Any]], fields: RowFields) -> pa.Table:
    """Unmatched labels (``feedback`` records: event_id, label, observed_time)."""
    import pyarrow as pa

    observed = [int(x["observed_time"]) for x in labels]
    cols: dict[str, pa.Array] = {
        fields.id_field: pa.array([str(x["event_id"]) for x in labels], pa.string()),
        "observed_time": _ts(observed),
        OBSERVED_DATE_COLUMN: pa.array(_dates_of(observed), pa.string()),
    }
    label = _scalar_column([x.get("label") for x in labels])
    if label is not None:
        cols[fields.label_field] = label
    return pa.table(cols)


def conform(batch: pa.Table, target: pa.Schema) -> pa.Table:
    """``batch`` with the columns the table already has cast to the table's types (a
    string column of the table takes numbers as text; a number column takes numeric
    strings, and logs what it cannot read as null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = batch
    for i, name in enumerate(batch.column_names):
        idx = target.get_field_index(name)
        if idx < 0:
            continue
        want = target.field(idx).type
        col = batch.column(i)
        if col.type == want:
            continue
        if pa.types.is_string(want) or pa.types.is_large_string(want):
            texts = [None if v is None else _as_text(v) for v in col.to_pylist()]
            new = pa.array(texts, want)
        else:
            try:
                new = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                new = pc.cast(col, want, safe=False) if pa.types.is_timestamp(want) else None
                if new is None:
                    vals = []
                    bad = 0
                    for v in col.to_pylist():
                        try:
                            vals.append(None if v is None else float(v))
                        except (TypeError, ValueError):
                            vals.append(None)
                            bad += 1
                    log.warning(
                        "ground truth column %r is %s in the table: %d value(s) that are "
                        "not numbers are stored as null",
                        name,
                        want,
                        bad,
                    )
                    new = pa.array(vals, pa.float64()).cast(want)
        out = out.set_column(i, pa.field(name, want), new)
    return out


# -------------------------------------------------------------------------- tables


class _Table:
    """One Delta table under the store's location, written by merges on the id."""

    def __init__(
        self,
        uri: str,
        options: dict[str, str],
        key: str,
        partition: str,
        base: Callable[[], pa.Schema],
    ) -> None:
        self.uri = uri
        self.options = options
        self.key = key
        self.partition = partition
        self._base = base
        self._dt: DeltaTable | None = None

    def open(self) -> DeltaTable:
        """The table, created (empty, with its base columns) when missing."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        for _ in range(5):
            try:
                self._dt = DeltaTable(self.uri, storage_options=self.options)
                return self._dt
            except TableNotFoundError:
                pass
            try:
                self._dt = DeltaTable.create(
                    self.uri,
                    self._base(),
                    mode="ignore",
                    partition_by=[self.partition],
                    storage_options=self.options,
                )
                return self._dt
            except DeltaError as exc:  # another writer created it first: load it
                log.info("table %s being created elsewhere (%s); loading it", self.uri, exc)
        raise GroundTruthUnavailableError(f"cannot create or open the table at {self.uri}")

    @property
    def table(self) -> DeltaTable:
        return self._dt if self._dt is not None else self.open()

    def merge(self, batch: pa.Table) -> int:
        """Insert the batch's rows whose id is not in the table yet; the rows inserted.
        Commit conflicts re-run the merge on the table's new version."""
        from deltalake.exceptions import CommitFailedError, DeltaError

        dates = sorted(set(batch.column(self.partition).to_pylist()))
        k, p = _q(self.key), _q(self.partition)
        in_dates = ", ".join("'" + d + "'" for d in dates)
        predicate = f"t.{k} = s.{k} AND t.{p} = s.{p} AND t.{p} IN ({in_dates})"
        delay = 0.05
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            table = self.table
            try:
                table.update_incremental()
                source = conform(batch, _arrow_schema(table))
                res = (
                    table.merge(
                        source,
                        predicate=predicate,
                        source_alias="s",
                        target_alias="t",
                        merge_schema=True,
                    )
                    .when_not_matched_insert_all()
                    .execute()
                )
                return int(res.get("num_target_rows_inserted", 0))
            except CommitFailedError as exc:
                log.info("merge into %s conflicted (attempt %d): %s", self.uri, attempt, exc)
            except (DeltaError, OSError) as exc:
                if attempt >= 5:
                    raise GroundTruthUnavailableError(
                        f"cannot write the table at {self.uri}: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("writing %s failed (attempt %d): %s", self.uri, attempt, exc)
            self._dt = None  # reload: the log moved on
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise GroundTruthUnavailableError(
            f"merge into {self.uri} still conflicts after {MAX_COMMIT_ATTEMPTS} attempts"
        )


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(table.schema().to_arrow())


def _rows_base(fields: RowFields) -> Callable[[], pa.Schema]:
    return lambda: rows_to_arrow([], fields).schema


def _unmatched_base(fields: RowFields) -> Callable[[], pa.Schema]:
    return lambda: unmatched_to_arrow([], fields).schema


@dataclass(frozen=True, slots=True)
class Sealed:
    """Buffered rows and unmatched labels taken out for one write, by event id."""

    rows: dict[str, JoinedRow]
    unmatched: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class OpenReport:
    rows_version: int
    unmatched_version: int


@dataclass(frozen=True, slots=True)
class FlushReport:
    rows: int = 0  # rows handed to the table
    inserted: int = 0  # rows the table did not hold yet
    unmatched: int = 0
    unmatched_inserted: int = 0

    @property
    def already_stored(self) -> int:
        """Rows the table already held (re-read after a crash or a rebalance)."""
        return self.rows - self.inserted


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    compacted: dict[str, Any] | None = None
    vacuumed: int = 0


#: the ids of recently written rows a store holds at most (a few MB; see ``_recent``)
MAX_RECENT_IDS = 100_000


class GroundTruthStore:
    """The feedback worker's writer (several may share one location: module doc)."""

    def __init__(
        self,
        settings: Location,
        *,
        fields: RowFields | None = None,
        max_buffered_rows: int = 20_000,
        recent_ms: int = 3_600_000,
        max_recent_ids: int = MAX_RECENT_IDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.settings = as_settings(settings)
        self.fields = fields or RowFields()
        self.max_buffered_rows = max_buffered_rows
        loc = self.settings.location
        opts = self.settings.storage_options()
        self._rows = _Table(
            loc.child(ROWS), opts, self.fields.id_field, DATE_COLUMN, _rows_base(self.fields)
        )
        self._unmatched = _Table(
            loc.child(UNMATCHED),
            opts,
            self.fields.id_field,
            OBSERVED_DATE_COLUMN,
            _unmatched_base(self.fields),
        )
        self._buf: dict[str, JoinedRow] = {}
        self._buf_unmatched: dict[str, dict[str, Any]] = {}
        self._clock = clock
        self._wall = wall_clock
        self._last_compact = self._last_vacuum = clock()
        self._opened = False
        #: ids of rows joined within ``recent_ms`` (this writer's and, as of the last
        #: :meth:`refresh`, the others'): what a restart or a rebalance can re-read.
        #: Not the uniqueness guarantee (the merge is), only a shortcut that settles a
        #: re-read message at once; bounded by the window, like the join state, and
        #: by ``max_recent_ids`` (the newest kept), whatever the label rate.
        self.recent_ms = recent_ms
        self.max_recent_ids = max_recent_ids
        self._recent: OrderedDict[str, int] = OrderedDict()
        #: batches sealed and not yet written or put back (a checkpoint in flight)
        self._in_flight: list[Sealed] = []

    def open(self) -> OpenReport:
        """Open (or create) both tables."""
        if self.settings.location.scheme == "file":
            from pathlib import Path

            Path(self.settings.location.path).mkdir(parents=True, exist_ok=True)
        rows = self._rows.open()
        unmatched = self._unmatched.open()
        self._opened = True
        self.refresh()
        return OpenReport(rows.version(), unmatched.version())

    def refresh(self) -> int:
        """Load the ids of the rows joined within ``recent_ms`` (by any writer): call it
        when partitions are assigned. Returns how many are known."""
        import pyarrow.compute as pc
        from deltalake.exceptions import DeltaError

        self._check_open()
        since = self._wall() - self.recent_ms
        key = self.fields.id_field
        recent = pc.field("joined_time") >= _ts([since])[0]

        def scan(t: DeltaTable) -> pa.Table:
            return t.to_pyarrow_dataset().to_table(columns=[key, "joined_time"], filter=recent)

        try:
            table = self._rows.table
            table.update_incremental()
            found = _scan_latest(table, scan, self._rows.uri)
        except (DeltaError, OSError) as exc:
            raise GroundTruthUnavailableError(
                f"the rows of {self._rows.uri} joined recently could not be read: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if found.num_rows > self.max_recent_ids:  # the newest
            found = found.sort_by("joined_time").slice(found.num_rows - self.max_recent_ids)
        joined = _records(found, ("joined_time",))
        joined.sort(key=lambda r: r["joined_time"])
        self._recent = OrderedDict((str(r[key]), int(r["joined_time"])) for r in joined)
        return len(self._recent)

    def _remember(self, rows: Iterable[tuple[str, int]]) -> None:
        """Ids of rows just written (with their joined times), then the oldest forgotten:
        those past ``recent_ms``, and any beyond ``max_recent_ids``. Joined times follow
        the wall clock, so the oldest are first."""
        horizon = self._wall() - self.recent_ms
        recent = self._recent
        for k, t in rows:
            if t >= horizon:
                recent[k] = t
        while recent and (
            len(recent) > self.max_recent_ids or next(iter(recent.values())) < horizon
        ):
            recent.popitem(last=False)

    def contains(self, event_id: str) -> bool:
        """True when the event has a row: buffered, sealed for a write in flight, or known
        written recently (see ``_recent``). The same answer whenever the rows are
        flushed: the join asks it, and what it decides never depends on where a
        checkpoint fell."""
        if event_id in self._buf or event_id in self._recent:
            return True
        for b in self._in_flight:  # noqa: SIM110 (asked per label: no generator)
            if event_id in b.rows:
                return True
        return False

    def close(self) -> None:
        if self._opened:
            self.flush()
            self._opened = False

    def _check_open(self) -> None:
        if not self._opened:
            raise RuntimeError("GroundTruthStore.open() must be called first")

    @property
    def buffered(self) -> int:
        return len(self._buf) + len(self._buf_unmatched)

    @property
    def needs_flush(self) -> bool:
        return self.buffered >= self.max_buffered_rows

    def append(self, row: JoinedRow) -> bool:
        """Buffer a ground-truth row; False for an event id already buffered (whether
        the table holds it is the merge's to say, at :meth:`flush`)."""
        self._check_open()
        eid = row.label.event_id
        if eid in self._buf:
            return False
        self._buf[eid] = row
        return True

    def append_unmatched(self, label: Mapping[str, Any]) -> bool:
        """Buffer an unmatched label (feedback record); False when one is already
        buffered or being written for its event (the table keeps the first), or
        when its event has a row buffered or known written recently (:meth:`contains`:
        a label re-read after a restart or a rebalance, whose row a worker wrote before).
        A label for an event whose row was joined longer ago than ``recent_ms`` is kept
        as unmatched: looking for its row would read the id column of the whole table,
        every checkpoint."""
        self._check_open()
        eid = str(label["event_id"])
        if eid in self._buf_unmatched or self.contains(eid):
            return False
        if any(eid in b.unmatched for b in self._in_flight):  # the first one stays
            return False
        self._buf_unmatched[eid] = dict(label)
        return True

    def flush(self) -> FlushReport:
        """Merge every buffered row into its table; durable when this returns. Raises
        (the table away) with the rows still buffered."""
        batch = self.seal()
        try:
            report = self.write(batch)
        except BaseException:
            self.unseal(batch)
            raise
        self.written(batch)
        return report

    def seal(self) -> Sealed:
        """The buffered rows and unmatched labels taken out for :meth:`write` (on another
        thread, while new rows are buffered), then :meth:`written` or :meth:`unseal`."""
        self._check_open()
        batch = Sealed(self._buf, self._buf_unmatched)
        self._buf, self._buf_unmatched = {}, {}
        self._in_flight.append(batch)
        return batch

    def write(self, batch: Sealed) -> FlushReport:
        """Merge a sealed batch into the tables; durable when this returns. Touches no
        buffer: safe on a thread of its own while rows are appended (one write at a
        time, and no :meth:`refresh` or :meth:`maintain` meanwhile)."""
        rows, inserted, unmatched, u_inserted = len(batch.rows), 0, 0, 0
        if batch.rows:
            inserted = self._rows.merge(rows_to_arrow(list(batch.rows.values()), self.fields))
        if batch.unmatched:
            labels = list(batch.unmatched.values())
            unmatched = len(labels)
            u_inserted = self._unmatched.merge(unmatched_to_arrow(labels, self.fields))
        return FlushReport(rows, inserted, unmatched, u_inserted)

    def written(self, batch: Sealed) -> None:
        """A sealed batch is in the table: its rows' ids are known written."""
        self._landed(batch)
        self._remember((k, r.joined_time_ms) for k, r in batch.rows.items())

    def _landed(self, batch: Sealed) -> None:
        """``batch`` is no longer in flight (written, or put back)."""
        self._in_flight = [b for b in self._in_flight if b is not batch]

    def unseal(self, batch: Sealed) -> None:
        """A sealed batch was not written: back in the buffers (what was buffered since
        keeps its place; a row the table took before a failure is refused again by the
        next merge)."""
        self._landed(batch)
        self._buf = {**batch.rows, **self._buf}
        self._buf_unmatched = {**batch.unmatched, **self._buf_unmatched}

    # ----------------------------------------------------------------- upkeep

    def maintain(self, *, force: bool = False) -> MaintenanceReport:
        """Compact small files and vacuum old ones when their interval has passed (or
        ``force``). A compaction that conflicts with a writer is retried next time."""
        from deltalake.exceptions import CommitFailedError, DeltaError

        s, now = self.settings, self._clock()
        compacted: dict[str, Any] | None = None
        vacuumed = 0
        if force or (s.compact_every_s > 0 and now - self._last_compact >= s.compact_every_s):
            self._last_compact = now
            for t in (self._rows, self._unmatched):
                try:
                    t.table.update_incremental()
                    res = t.table.optimize.compact()
                    if t is self._rows:
                        compacted = res
                except CommitFailedError as exc:
                    log.info("compaction of %s deferred (a writer committed): %s", t.uri, exc)
                except (DeltaError, OSError) as exc:
                    log.warning("compaction of %s failed: %s", t.uri, exc)
        if force or (s.vacuum_every_s > 0 and now - self._last_vacuum >= s.vacuum_every_s):
            self._last_vacuum = now
            for t in (self._rows, self._unmatched):
                try:
                    t.table.update_incremental()
                    vacuumed += len(
                        t.table.vacuum(
                            retention_hours=math.ceil(s.retention_hours),
                            dry_run=False,
                            enforce_retention_duration=False,
                        )
                    )
                except (DeltaError, OSError) as exc:
                    log.warning("vacuum of %s failed: %s", t.uri, exc)
        return MaintenanceReport(compacted, vacuumed)

    @property
    def version(self) -> int:
        return self._rows.table.version()


# ------------------------------------------------------------------------ reading


def _open(settings: Location, name: str, version: int | None = None) -> DeltaTable | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    s = as_settings(settings)
    try:
        return DeltaTable(
            s.location.child(name), version=version, storage_options=s.storage_options()
        )
    except TableNotFoundError:
        return None


@dataclass(frozen=True)
class RowsRead:
    """Rows of one table version, sorted by (time, id)."""

    rows: list[dict[str, Any]]
    version: int | None  # None: no table yet
    uri: str = ""


def _dates(since_ms: int | None, until_ms: int | None) -> list[tuple[str, str, str]]:
    parts: list[tuple[str, str, str]] = []
    if since_ms is not None:
        parts.append((DATE_COLUMN, ">=", _date(since_ms)))
    if until_ms is not None:
        parts.append((DATE_COLUMN, "<=", _date(until_ms)))
    return parts


def read_table(
    settings: Location,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    fields: RowFields | None = None,
    version: int | None = None,
) -> tuple[pa.Table | None, int | None]:
    """The rows with ``since <= time < until`` as Arrow, and the version read: only the
    event-date partitions of the range are opened."""
    import pyarrow.compute as pc

    f = fields or RowFields()
    expr = None
    tcol = pc.field(f.time_field)
    if since_ms is not None:
        expr = tcol >= _ts([since_ms])[0]
    if until_ms is not None:
        e2 = tcol < _ts([until_ms])[0]
        expr = e2 if expr is None else expr & e2
    pruning = _dates(since_ms, until_ms) or None

    def scan(table: DeltaTable) -> pa.Table:
        return table.to_pyarrow_dataset(file_pruning_predicate=pruning).to_table(filter=expr)

    return _read_snapshot(settings, ROWS, version, scan)


def _read_snapshot(
    settings: Location,
    name: str,
    version: int | None,
    scan: Callable[[DeltaTable], pa.Table],
) -> tuple[pa.Table | None, int | None]:
    """``scan`` of one snapshot of table ``name`` (the latest, or ``version``), and the
    version it read. A version whose files a vacuum removed raises
    :class:`TableVersionVacuumedError`."""
    table = _open(settings, name, version)
    if table is None:
        return None, None
    where = as_settings(settings).location.child(name)
    if version is None:
        return _scan_latest(table, scan, where), table.version()
    try:
        return scan(table), table.version()
    except FileNotFoundError as exc:
        raise TableVersionVacuumedError(
            f"version {version} of {where} cannot be read: a vacuum removed its files "
            f"(the writers' retention_hours is shorter than its age): {type(exc).__name__}",
            version=version,
        ) from None


def _scan_latest(table: DeltaTable, scan: Callable[[DeltaTable], pa.Table], where: str) -> pa.Table:
    """``scan`` of ``table``, just loaded at its latest version.

    A compaction followed by a vacuum can delete the files of the version a reader has
    just loaded (``retention_hours`` is how long old files stay, and it may be 0). The
    reader then loads the newer version and reads again, up to
    :data:`MAX_READ_ATTEMPTS` times in all."""
    missing: FileNotFoundError | None = None
    for attempt in range(MAX_READ_ATTEMPTS):
        if attempt:
            table.update_incremental()
        try:
            return scan(table)
        except FileNotFoundError as exc:
            missing = exc
    raise GroundTruthUnavailableError(
        f"the latest version of {where} refers to files that are not there "
        f"({MAX_READ_ATTEMPTS} attempts, the newest version loaded before each: files "
        f"deleted outside the table, or a vacuum overtaking every read): "
        f"{type(missing).__name__}"
    )


def _records(table: pa.Table, time_cols: Iterable[str]) -> list[dict[str, Any]]:
    import pyarrow as pa

    for name in time_cols:
        i = table.schema.get_field_index(name)
        if i >= 0:
            col = table.column(i)
            if pa.types.is_timestamp(col.type):  # back to epoch milliseconds
                col = col.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
            table = table.set_column(i, name, col)
    return [
        {k: v for k, v in r.items() if k not in (DATE_COLUMN, OBSERVED_DATE_COLUMN)}
        for r in table.to_pylist()
    ]


def read_rows(
    settings: Location,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    fields: RowFields | None = None,
    version: int | None = None,
) -> list[dict[str, Any]]:
    """Rows with ``since <= time < until`` (times as epoch ms), sorted by (time, id)."""
    return read_rows_at(settings, since_ms, until_ms, fields=fields, version=version).rows


def read_rows_at(
    settings: Location,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    fields: RowFields | None = None,
    version: int | None = None,
) -> RowsRead:
    f = fields or RowFields()
    s = as_settings(settings)
    table, v = read_table(s, since_ms, until_ms, fields=f, version=version)
    if table is None:
        return RowsRead([], None, s.uri)
    rows = _records(table, (f.time_field, "observed_time", "joined_time"))
    rows.sort(key=lambda r: (r[f.time_field], str(r[f.id_field])))
    return RowsRead(rows, v, s.uri)


def read_unmatched(
    settings: Location,
    *,
    fields: RowFields | None = None,
) -> list[dict[str, Any]]:
    """Every unmatched label (times as epoch ms), sorted by (observed time, id)."""
    f = fields or RowFields()
    table, _ = _read_snapshot(settings, UNMATCHED, None, lambda t: t.to_pyarrow_table())
    if table is None:
        return []
    rows = _records(table, ("observed_time",))
    rows.sort(key=lambda r: (r["observed_time"], str(r[f.id_field])))
    return rows


def raw_inputs(row: Mapping[str, Any], fields: RowFields) -> dict[str, Any]:
    """The event's raw fields of a stored row, by their own names (``input_<name>``
    columns back under ``name``)."""
    own = fields.own
    raw: dict[str, Any] = {}
    for k, v in row.items():
        if k in own:
            continue
        name = k[len(INPUT_PREFIX) :] if k.startswith(INPUT_PREFIX) else k
        if k.startswith(INPUT_PREFIX) and fields.input_column(name) != k:
            name = k
        raw[name] = None if isinstance(v, float) and math.isnan(v) else v
    return raw


@dataclass(frozen=True)
class TrainingData:
    """Rows valid for ``spec`` (serving checks), their matrix and labels, time ordered."""

    X: np.ndarray
    y: np.ndarray
    event_time_ms: np.ndarray
    rows: list[dict[str, Any]] = field(repr=False)
    n_read: int = 0
    n_invalid: int = 0


def labels_array(
    rows: Sequence[Mapping[str, Any]], task: Task, label_field: str = DEFAULT_LABEL_FIELD
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, usable mask): floats for regression (a string that is not a number is
    unusable), strings for classification (an integral float 1.0 reads as "1")."""
    n = len(rows)
    ok = np.ones(n, dtype=bool)
    if task is Task.REGRESSION:
        y = np.full(n, np.nan)
        for i, r in enumerate(rows):
            try:
                y[i] = float(r[label_field])
            except (TypeError, ValueError, KeyError):
                ok[i] = False
        ok &= np.isfinite(y)
        return y, ok
    ys = []
    for i, r in enumerate(rows):
        v = r.get(label_field)
        ok[i] = v is not None
        ys.append(label_as_class(v))
    return np.array(ys, dtype=np.str_), ok


def label_as_class(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def training_data(
    rows: Sequence[dict[str, Any]],
    spec: FeatureSpec,
    task: Task = Task.REGRESSION,
    fields: RowFields | None = None,
) -> TrainingData:
    """The training matrix for stored ``rows`` through :func:`prepare.from_rows`
    (serving's code path); rows the serving checks would refuse, or with unusable
    labels, are left out."""
    from ..features.prepare import from_rows

    f = fields or RowFields()
    raws = [raw_inputs(r, f) for r in rows]
    y_all, y_ok = labels_array(rows, task, f.label_field)
    X_all, valid = from_rows(raws, spec)
    keep = valid & y_ok
    X = X_all[y_ok[valid]]
    kept_rows = [r for r, k in zip(rows, keep.tolist(), strict=True) if k]
    times = np.array([int(r[f.time_field]) for r in kept_rows], dtype=np.int64)
    return TrainingData(
        X=X,
        y=y_all[keep],
        event_time_ms=times,
        rows=kept_rows,
        n_read=len(rows),
        n_invalid=int(len(rows) - keep.sum()),
    )


def read_training_data(
    settings: Location,
    spec: FeatureSpec,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    task: Task = Task.REGRESSION,
    fields: RowFields | None = None,
) -> TrainingData:
    rows = read_rows(settings, since_ms, until_ms, fields=fields)
    return training_data(rows, spec, task, fields)
