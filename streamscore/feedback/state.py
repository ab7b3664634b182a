"""Durable join state: one embedded RocksDB store per join partition, mirrored to a
compacted changelog topic (the Kafka Streams pattern). Pure: no Kafka imports (the
feedback loop produces the changelog and reads it back, :mod:`streamscore.kafka.changelog`).

Layout of one partition's store (``<state-dir>/<join topic>-<partition>/``, RocksDB
through ``rocksdict``, raw bytes)::

    e<event id>                      -> the entry (pending predictions, label, flags)
    x<expire_at: 8 bytes BE><event id> -> b""   time index: keys ordered by expiry
    m                                 -> Meta (offsets, watermark, pending counts)

Memory is bounded by ``cache_entries`` (the most recently committed entries, kept as
their encoded bytes: a few hundred bytes each, no Python objects for the garbage collector
to walk; decoded again when read) plus the changes since the last commit; RocksDB holds
the rest: its block cache and memtables are one budget shared by every store of the
process, its index and filter blocks a few bytes per key (see :func:`_options`). Lookups
are batched: the loop reads a consumed batch's entries in one multi-get per partition
(:meth:`PartitionState.prefetch`). Expiry is a range scan of the time index up to the
partition's watermark, never a scan of the entries.

Commit (two phases, driven by the loop): :meth:`PartitionState.seal` encodes every
entry changed since the last commit plus the meta record (the next input offset of the
partition among them); the loop writes them to the changelog in one Kafka transaction
with the consumed offsets; then :meth:`PartitionState.applied` writes the same changes,
the index keys and the meta (with the changelog offset reached) to RocksDB in one
``WriteBatch``, without RocksDB's write-ahead log: the changelog is the store's log (as
Kafka Streams runs its RocksDB stores). The local store therefore never runs ahead of the
committed changelog: after a crash it is either current or behind (the batches since the
last memtable flush are lost whole, their meta records with them), and
:meth:`PartitionState.restore` catches up from the changelog records after its recorded
``changelog_offset`` (all of them on a fresh host); a clean close flushes the memtables.
Index keys are validated lazily (an index key whose entry is gone or expires at another
time is dropped when scanned), so the changelog only carries entries; an update that
keeps an entry's expiry writes no index key again (:attr:`Entry.indexed_at`).

One concern, hence its length: the join's durable state per partition (RocksDB and
its changelog).
"""

from __future__ import annotations

import gc
import heapq
import shutil
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from ..core.errors import StateStoreError
from ..core.records import Feedback, Prediction, Role

ENTRY = b"e"
INDEX = b"x"
META = b"m"

_META = struct.Struct("<qqqqq")
_HEAD = struct.Struct("<qBH")  # expire_at, flags, number of predictions
_LABEL = struct.Struct("<qB")  # observed_time, label type
_PRED = struct.Struct("<BqI")  # role, model_version, raw length
_EXP = struct.Struct(">Q")
_F_LABEL, _F_JOINED, _F_WRITTEN = 1, 2, 4
_ROLES = (Role.PRIMARY, Role.CANARY, Role.SHADOW)
_ROLE_CODE = {r: i for i, r in enumerate(_ROLES)}
#: bounds on what an entry read back may hold (a changelog is input too)
MAX_PREDICTIONS = 1024
MAX_LABEL_BYTES = 1 << 16

_NEVER = 1 << 62
#: changelog records per RocksDB write batch when restoring
RESTORE_BATCH = 20_000


def _without_wal() -> WriteOptions:
    wo = WriteOptions()
    wo.disable_wal = True  # type: ignore[method-assign,assignment]  # a property (stub: a method)
    return wo


_NO_WAL = _without_wal()

DecodePrediction = Callable[[bytes], Prediction]


@dataclass(slots=True)
class Meta:
    """What a partition's state records about itself (one changelog record, key ``m``)."""

    input_offset: int = -1  # next join-topic offset to consume (-1: none applied yet)
    changelog_offset: int = -1  # last changelog offset applied to this store
    watermark: int = -1  # largest prediction event time seen (-1: none)
    pending_labels: int = 0
    pending_predictions: int = 0

    def encode(self) -> bytes:
        return _META.pack(
            self.input_offset,
            self.changelog_offset,
            self.watermark,
            self.pending_labels,
            self.pending_predictions,
        )

    @classmethod
    def decode(cls, data: bytes) -> Meta:
        if len(data) != _META.size:
            raise StateStoreError(f"join-state meta record of {len(data)} bytes")
        return cls(*_META.unpack(data))


@dataclass(slots=True)
class Entry:
    """One event id's state. ``preds`` maps (role, version) to [wire bytes, decoded or
    None]; once the row is written the bytes are dropped (only the keys still matter)."""

    event_id: str
    expire_at: int
    preds: dict[tuple[Role, int], list[bytes | Prediction | None]] = field(default_factory=dict)
    label: Feedback | None = None
    joined: bool = False
    written: bool = False
    #: the expiry its committed version is indexed under (read back from the store),
    #: -1 for an entry new since the last commit
    indexed_at: int = -1


#: the usual entries in one pack each (the same bytes as :func:`encode_entry_parts`):
#: one prediction and no label; one prediction and a float label
_ONE_PRED = struct.Struct("<qBHBqI")
_ONE_PRED_FLOAT_LABEL = struct.Struct("<qBHqBdBqI")


def encode_entry(e: Entry) -> bytes:
    preds = e.preds
    lab = e.label
    if len(preds) == 1 and (lab is None or type(lab.label) is float):
        (((role, version), slot),) = preds.items()
        raw = b"" if e.written else slot[0]
        assert isinstance(raw, bytes)
        flags = (_F_JOINED if e.joined else 0) | (_F_WRITTEN if e.written else 0)
        if lab is None:
            head = _ONE_PRED.pack(e.expire_at, flags, 1, _ROLE_CODE[role], version, len(raw))
        else:
            head = _ONE_PRED_FLOAT_LABEL.pack(
                e.expire_at, flags | _F_LABEL, 1, lab.observed_time_ms, 2, lab.label,
                _ROLE_CODE[role], version, len(raw),
            )  # fmt: skip
        return head + raw if raw else head
    return encode_entry_parts(e)


def encode_entry_parts(e: Entry) -> bytes:
    """An entry's bytes, field by field (any entry; :func:`encode_entry` packs the
    usual ones at once)."""
    flags = (
        (_F_LABEL if e.label is not None else 0)
        | (_F_JOINED if e.joined else 0)
        | (_F_WRITTEN if e.written else 0)
    )
    parts = [_HEAD.pack(e.expire_at, flags, len(e.preds))]
    lab = e.label
    if lab is not None:
        v = lab.label
        if isinstance(v, bool):
            parts += [_LABEL.pack(lab.observed_time_ms, 0), b"\x01" if v else b"\x00"]
        elif isinstance(v, int):
            parts += [_LABEL.pack(lab.observed_time_ms, 1), struct.pack("<q", v)]
        elif isinstance(v, float):
            parts += [_LABEL.pack(lab.observed_time_ms, 2), struct.pack("<d", v)]
        else:
            b = str(v).encode()
            parts += [_LABEL.pack(lab.observed_time_ms, 3), struct.pack("<I", len(b)), b]
    for (role, version), slot in e.preds.items():
        raw = slot[0] if e.written is False else b""
        assert isinstance(raw, bytes)
        parts += [_PRED.pack(_ROLE_CODE[role], version, len(raw)), raw]
    return b"".join(parts)


def entry_expiry(data: bytes) -> int:
    """The expiry time of an encoded entry (its first 8 bytes)."""
    return int(struct.unpack_from("<q", data)[0])


def decode_entry(event_id: str, data: bytes) -> Entry:
    try:
        expire_at, flags, n = _HEAD.unpack_from(data)
        if n > MAX_PREDICTIONS:
            raise StateStoreError(f"join-state entry with {n} predictions")
        pos = _HEAD.size
        e = Entry(event_id, expire_at, joined=bool(flags & _F_JOINED), indexed_at=expire_at)
        e.written = bool(flags & _F_WRITTEN)
        if flags & _F_LABEL:
            observed, kind = _LABEL.unpack_from(data, pos)
            pos += _LABEL.size
            value: float | str
            if kind == 0:
                value, pos = data[pos] == 1, pos + 1
            elif kind == 1:
                value, pos = struct.unpack_from("<q", data, pos)[0], pos + 8
            elif kind == 2:
                value, pos = struct.unpack_from("<d", data, pos)[0], pos + 8
            elif kind == 3:
                (size,) = struct.unpack_from("<I", data, pos)
                if size > MAX_LABEL_BYTES:
                    raise StateStoreError(f"join-state label of {size} bytes")
                value, pos = data[pos + 4 : pos + 4 + size].decode(), pos + 4 + size
            else:
                raise StateStoreError(f"join-state label of unknown type {kind}")
            e.label = Feedback(event_id, value, observed)
        for _ in range(n):
            role, version, size = _PRED.unpack_from(data, pos)
            pos += _PRED.size
            raw = data[pos : pos + size]
            if len(raw) != size or role >= len(_ROLES):
                raise StateStoreError("truncated join-state entry")
            pos += size
            e.preds[(_ROLES[role], version)] = [raw, None]
        if pos != len(data):
            raise StateStoreError("join-state entry with trailing bytes")
        return e
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateStoreError(f"undecodable join-state entry: {exc}") from None


def relax_gc() -> None:
    """Collect cycles rarely in a process that holds a join state. The changes between
    two commits are up to ``cache_entries`` entries of several objects each, all alive
    until the commit: with the default thresholds every few hundred allocations start a
    collection and the full ones walk them all again and again (a third of the time of
    feeding pending predictions). The join makes no reference cycles of its own."""
    gc.freeze()  # what is alive now (modules, settings) is never walked again
    gc.set_threshold(50_000, 20, 20)


#: block cache and memtables of all the partition stores of one process, together
#: (the block cache holds what labels read back; most lookups are of ids the store does
#: not hold, answered by the bloom filters, which live outside it)
BLOCK_CACHE_BYTES = 16 << 20
MEMTABLE_BYTES = 32 << 20
_shared: tuple[Cache, WriteBufferManager] | None = None


def _memory() -> tuple[Cache, WriteBufferManager]:
    """The block cache and the memtable budget every store of the process shares: a
    worker that owns four partitions holds four stores, and with a cache and memtables
    of their own each (64 + 64 MB) filling a million pending predictions took it near a
    gigabyte."""
    global _shared
    if _shared is None:
        _shared = (Cache(BLOCK_CACHE_BYTES), WriteBufferManager(MEMTABLE_BYTES, False))
    return _shared


def _options() -> Options:
    cache, memtables = _memory()
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.set_write_buffer_size(16 << 20)
    o.set_max_write_buffer_number(2)
    o.set_write_buffer_manager(memtables)  # flushes the largest when all exceed the budget
    # most lookups are of event ids not in the store (a new prediction): a bloom filter
    # on the memtables too answers them without searching the memtables' skip lists
    o.set_memtable_prefix_bloom_ratio(0.1)
    o.set_memtable_whole_key_filtering(True)
    t = BlockBasedOptions()
    t.set_block_cache(cache)
    t.set_bloom_filter(10, False)
    # index and filter blocks stay in memory, outside the block cache: a few bytes per
    # key (about 40 MB per 10 million pending predictions with their index keys). In the
    # cache, data blocks evicted them and every lookup of an absent key read them back
    # (the 10 million state bench slowed down without end).
    t.set_cache_index_and_filter_blocks(False)
    o.set_block_based_table_factory(t)
    o.set_max_open_files(256)
    return o


@dataclass(slots=True)
class _Sealed:
    """The changes of a commit in flight: the entries (None: deleted), their records as
    encoded (event id, bytes, the expiry to index or None), the expiry schedule, the
    index keys to delete, and the meta record as sealed."""

    entries: dict[str, Entry | None] = field(default_factory=dict)
    encoded: list[tuple[str, bytes | None, int | None]] = field(default_factory=list)
    heap: list[tuple[int, str]] = field(default_factory=list)
    scanned: list[bytes] = field(default_factory=list)
    meta: bytes = b""


class PartitionState:
    """One join partition's entries (module doc). ``path`` None keeps everything in
    memory (tests, and a worker run without ``--state-dir``)."""

    def __init__(
        self,
        path: Path | None,
        *,
        cache_entries: int = 100_000,
        fresh: bool = False,
    ) -> None:
        if cache_entries < 1:
            raise ValueError(f"cache_entries must be >= 1, got {cache_entries}")
        self.path = path
        self.cache_entries = cache_entries
        self._db: Rdict | None = None
        if path is not None:
            if fresh and path.exists():
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(path), _options())
        #: committed entries: encoded bytes with a RocksDB store (decoded when read), the
        #: entries themselves without one (then the cache is the whole state)
        self._cache: OrderedDict[str, Entry | bytes] = OrderedDict()
        self._dirty: dict[str, Entry | None] = {}
        self._heap: list[tuple[int, str]] = []
        self._scanned: list[bytes] = []  # index keys handled, deleted at the next apply
        #: the changes of a commit in flight (:meth:`seal`): read through until applied
        self._sealed = _Sealed()
        self._scan_from = 0
        self._next_db_expiry = 0  # no index key below this (0: unknown, scan)
        #: committed entries read ahead for the batch being applied (:meth:`prefetch`),
        #: None for an id the store does not hold, the Entry once read (so that a batch
        #: that looks at an entry twice decodes it once; cached ones too); forgotten at
        #: every commit and at the next prefetch
        self._fetched: dict[str, bytes | Entry | None] = {}
        self.meta = Meta()
        if self._db is not None:
            raw = self._get(META)
            if raw is not None:
                self.meta = Meta.decode(raw)

    # ------------------------------------------------------------- key/value
    def _get(self, key: bytes) -> bytes | None:
        assert self._db is not None
        v = self._db.get(key)
        return None if v is None else cast(bytes, v)

    def get(self, eid: str) -> Entry | None:
        d = self._dirty
        if eid in d:
            return d[eid]
        sealed = self._sealed.entries
        if sealed and eid in sealed:
            return sealed[eid]
        f = self._fetched
        if eid in f:
            v = f[eid]
            if v is None or isinstance(v, Entry):
                return v
            e = f[eid] = decode_entry(eid, v)  # an entry changed is put(), and dirty wins
            return e
        c = self._cache.get(eid)
        if c is not None:
            if isinstance(c, Entry):
                return c
            e = f[eid] = decode_entry(eid, c)  # decoded once for the batch (as fetched)
            return e
        if self._db is None:
            return None
        raw = self._get(ENTRY + eid.encode())
        return None if raw is None else decode_entry(eid, raw)

    def prefetch(self, eids: Iterable[str]) -> None:
        """Read the committed entries of ``eids`` (a batch's event ids) from RocksDB in
        one multi-get, for :meth:`get` to find: one call for the batch instead of one
        lookup per message, most of them of ids the store does not hold."""
        if self._db is None:
            return
        d, c, sealed = self._dirty, self._cache, self._sealed.entries
        todo = list(dict.fromkeys(e for e in eids if e not in d and e not in c and e not in sealed))
        self._fetched = {}
        if todo:
            values = self._db.get([ENTRY + e.encode() for e in todo])
            self._fetched = dict(zip(todo, cast(list[bytes | Entry | None], values), strict=True))

    def put(self, e: Entry) -> None:
        self._dirty[e.event_id] = e

    def schedule(self, e: Entry) -> None:
        heapq.heappush(self._heap, (e.expire_at, e.event_id))

    def delete(self, eid: str) -> None:
        self._dirty[eid] = None
        self._cache.pop(eid, None)

    @property
    def dirty(self) -> int:
        """Entries changed since the last seal."""
        return len(self._dirty)

    @property
    def sealed(self) -> int:
        """Entries of the commit in flight (:meth:`seal`), not applied yet."""
        return len(self._sealed.entries)

    def cached(self) -> int:
        return len(self._cache)

    # ---------------------------------------------------------------- expiry
    def next_expiry(self) -> int:
        """No entry expires before this time (a lower bound)."""
        nxt = self._next_db_expiry if self._db is not None else _NEVER
        for heap in (self._heap, self._sealed.heap):
            if heap and heap[0][0] < nxt:
                nxt = heap[0][0]
        return nxt

    def expired(self, watermark: int) -> list[Entry]:
        """Remove and return the entries with ``expire_at < watermark``, oldest first
        (ties by event id: the order one schedule gives, whatever was committed)."""
        out: list[Entry] = []
        # a commit in flight holds a schedule of its own: the two interleave
        several = bool(self._sealed.heap)
        for heap in (self._sealed.heap, self._heap):
            while heap and heap[0][0] < watermark:
                exp, eid = heapq.heappop(heap)
                e = self.get(eid)
                if e is not None and e.expire_at == exp:
                    self.delete(eid)
                    out.append(e)
        if self._db is not None and self._next_db_expiry < watermark:
            several = True  # and the committed ones, from the index
            self._next_db_expiry = _NEVER
            start = INDEX + _EXP.pack(max(self._scan_from, 0))
            for k in self._db.keys(from_key=start):
                key = cast(bytes, k)
                if not key.startswith(INDEX):
                    break
                exp = _EXP.unpack_from(key, 1)[0]
                if exp >= watermark:
                    self._next_db_expiry = exp
                    break
                self._scanned.append(key)
                eid = key[9:].decode()
                e = self.get(eid)
                if e is not None and e.expire_at == exp:
                    self.delete(eid)
                    out.append(e)
            self._scan_from = watermark
        if several:
            out.sort(key=lambda x: (x.expire_at, x.event_id))
        return out

    def items(self) -> Iterable[Entry]:
        """Every entry (tests, diagnostics): committed ones overlaid with the changes."""
        seen: set[str] = set()
        for changes in (self._dirty, self._sealed.entries):
            for eid, e in changes.items():
                if eid in seen:
                    continue
                seen.add(eid)
                if e is not None:
                    yield e
        if self._db is None:
            for eid, c in self._cache.items():
                if eid not in seen:
                    yield c if isinstance(c, Entry) else decode_entry(eid, c)
            return
        for k, raw in self._db.items(from_key=ENTRY):
            key = cast(bytes, k)
            if not key.startswith(ENTRY):
                break
            eid = key[1:].decode()
            if eid not in seen:
                yield decode_entry(eid, cast(bytes, raw))

    def snapshot(self) -> Iterable[tuple[bytes, bytes]]:
        """The committed records as a compacted changelog holds them (the latest value
        of every entry key, then the meta record), read from the local store."""
        if self._db is None:
            for eid, c in self._cache.items():
                yield ENTRY + eid.encode(), c if isinstance(c, bytes) else encode_entry(c)
        else:
            for k, raw in self._db.items(from_key=ENTRY):
                key = cast(bytes, k)
                if not key.startswith(ENTRY):
                    break
                yield key, cast(bytes, raw)
        yield META, self.meta.encode()

    # ---------------------------------------------------------------- commit
    def seal(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of everything changed since the last seal, the meta
        record last (its offset is the partition's changelog position), set aside for a
        commit (:meth:`applied`, or :meth:`unseal` when it fails) while new changes
        gather: :meth:`get` reads them until then. One commit at a time."""
        if self.in_flight:
            raise RuntimeError("a commit of this partition's state is already in flight")
        enc: list[tuple[str, bytes | None, int | None]] = []
        recs: list[tuple[bytes, bytes | None]] = []
        for eid, e in self._dirty.items():
            if e is None:
                enc.append((eid, None, None))
                recs.append((ENTRY + eid.encode(), None))
                continue
            data = encode_entry(e)
            # None: its index key is in the store already (an update that kept its expiry)
            enc.append((eid, data, None if e.indexed_at == e.expire_at else e.expire_at))
            recs.append((ENTRY + eid.encode(), data))
        meta = self.meta.encode()
        recs.append((META, meta))
        self._sealed = _Sealed(self._dirty, enc, self._heap, self._scanned, meta)
        self._dirty, self._heap, self._scanned = {}, [], []
        return recs

    @property
    def in_flight(self) -> bool:
        """Changes are sealed for a commit not applied yet."""
        return bool(self._sealed.meta)

    def applied(self, changelog_offset: int) -> None:
        """The sealed records are committed to the changelog (their last at
        ``changelog_offset``): write them to the local store, with the meta as it was
        sealed, and keep the newest in the cache. Nothing sealed: seal the changes first."""
        if not self.in_flight and self._dirty:
            self.seal()
        sealed = self._sealed
        self.meta.changelog_offset = changelog_offset
        cache = self._cache
        if self._db is not None:
            meta = Meta.decode(sealed.meta) if sealed.meta else replace(self.meta)
            meta.changelog_offset = changelog_offset
            wb = WriteBatch(raw_mode=True)
            # index keys handled since the last commit go first: an entry made again
            # since, expiring at the same time, writes the same key again below
            for key in sealed.scanned:
                wb.delete(key)
            put, pack, uncache = wb.put, _EXP.pack, cache.pop
            for eid, data, exp in sealed.encoded:
                # an older version cached would hide this one from get(): out with it
                # (the newest go back in below)
                uncache(eid, None)
                k = eid.encode()
                if data is None:
                    wb.delete(ENTRY + k)
                else:
                    put(ENTRY + k, data)
                    if exp is not None:
                        put(INDEX + pack(max(exp, 0)) + k, b"")
            wb.put(META, meta.encode())
            # no write-ahead log: the changelog is this store's log (module doc)
            self._db.write(wb, _NO_WAL)
            # the newest entries stay cached: only as many as the cache holds are put
            for eid, data, _exp in sealed.encoded[-self.cache_entries :]:
                if data is not None:
                    cache[eid] = data
                    cache.move_to_end(eid)
            while len(cache) > self.cache_entries:
                cache.popitem(last=False)
            if sealed.heap:  # now found by the index scan, from where they expire
                first = sealed.heap[0][0]
                self._next_db_expiry = min(self._next_db_expiry, first)
                self._scan_from = min(self._scan_from, first)
        else:
            for eid, e in sealed.entries.items():
                if e is not None:
                    cache[eid] = e
                else:
                    cache.pop(eid, None)
            for item in sealed.heap:  # the cache is the whole state: its heap stays
                heapq.heappush(self._heap, item)
        self._sealed = _Sealed()
        self._fetched = {}

    def unseal(self) -> None:
        """The commit in flight failed before the changelog took it: its changes join
        the ones made since (the newer win), for the next commit."""
        sealed = self._sealed
        self._sealed = _Sealed()
        self._dirty = {**sealed.entries, **self._dirty}
        # two heaps are not two sorted lists: merged as such, the result is no heap
        self._heap = sealed.heap + self._heap
        heapq.heapify(self._heap)
        self._scanned = sealed.scanned + self._scanned

    def discard(self) -> None:
        """Forget the changes since the last commit (a failed transaction)."""
        self._dirty.clear()
        self._sealed = _Sealed()
        self._fetched = {}
        self._scanned.clear()
        self._cache.clear()
        self._heap.clear()
        self._next_db_expiry = 0
        self._scan_from = 0
        if self._db is not None:
            raw = self._get(META)
            self.meta = Meta.decode(raw) if raw is not None else Meta()

    # --------------------------------------------------------------- restore
    def restore(self, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> int:
        """Apply changelog records ``(offset, key, value)`` read after
        ``meta.changelog_offset`` (batched writes); returns how many were applied."""
        n = self._restore_db(records) if self._db is not None else self._restore_memory(records)
        if n:
            self._cache.clear() if self._db is not None else None
            self._fetched = {}
            self._next_db_expiry = 0
            self._scan_from = 0
        return n

    def _restore_db(self, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> int:
        """Into RocksDB, in write batches of :data:`RESTORE_BATCH` records, each with the
        meta record (its changelog offset) and without the write-ahead log: a crash
        mid-restore loses whole batches and their meta together, so the store is behind,
        never inconsistent; the memtables are flushed at the end (the writes after it
        use the log again)."""
        db = self._db
        assert db is not None
        wo = _NO_WAL
        index, entry, meta_key, pack = INDEX, ENTRY, META, _EXP.pack
        wb = WriteBatch(raw_mode=True)
        n = in_batch = written = 0
        last = self.meta.changelog_offset
        try:
            for off, key, value in records:
                if key is None:
                    raise StateStoreError(f"changelog record at offset {off} without a key")
                if key[:1] == entry:
                    if value is None:
                        wb.delete(key)
                    else:
                        if len(value) < 8:
                            raise StateStoreError(f"truncated join-state entry at offset {off}")
                        exp = int.from_bytes(value[:8], "little", signed=True)
                        wb.put(key, value)
                        wb.put(index + pack(exp if exp > 0 else 0) + key[1:], b"")
                elif key == meta_key:
                    if value is None:
                        raise StateStoreError(f"changelog meta record at offset {off} is empty")
                    self.meta = Meta.decode(value)
                else:
                    raise StateStoreError(f"changelog record at offset {off} with an unknown key")
                last = off
                n += 1
                in_batch += 1
                if in_batch >= RESTORE_BATCH:
                    self.meta.changelog_offset = last
                    wb.put(meta_key, self.meta.encode())
                    db.write(wb, wo)
                    written += 1
                    wb = WriteBatch(raw_mode=True)
                    in_batch = 0
            if in_batch:
                self.meta.changelog_offset = last
                wb.put(meta_key, self.meta.encode())
                db.write(wb, wo)
                written += 1
        finally:  # the batches written without the log are made durable before any other
            if written:
                db.flush(True)
        return n

    def _restore_memory(self, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> int:
        n = 0
        for off, key, value in records:
            if key is None:
                raise StateStoreError(f"changelog record at offset {off} without a key")
            if key == META:
                if value is None:
                    raise StateStoreError(f"changelog meta record at offset {off} is empty")
                self.meta = Meta.decode(value)
            elif key.startswith(ENTRY):
                eid = key[1:].decode()
                if value is None:
                    self._cache.pop(eid, None)
                else:
                    e = decode_entry(eid, value)
                    self._cache[eid] = e
                    self.schedule(e)
            else:
                raise StateStoreError(f"changelog record at offset {off} with an unknown key")
            self.meta.changelog_offset = off
            n += 1
        return n

    def close(self) -> None:
        if self._db is not None:
            self._db.flush()
            self._db.close()
            self._db = None
        self._cache.clear()
        self._dirty.clear()
        self._sealed = _Sealed()
        self._fetched = {}
