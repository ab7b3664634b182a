"""The durable join state (RocksDB per partition): expiry by event time through the time
index, a bounded cache, restore from changelog records, idempotent replay after a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamscore.core.errors import StateStoreError
from streamscore.core.records import Feedback, Prediction, Role
from streamscore.feedback.join import JoinOutput, JoinState
from streamscore.feedback.state import (
    Entry,
    PartitionState,
    decode_entry,
    encode_entry,
    encode_entry_parts,
)

T0 = 1_700_000_000_000
DAY = 86_400_000
WINDOW = 30 * DAY
TP = ("join", 0)


def pred_record(eid: str, t: int, role: str = "primary", version: int = 1) -> dict[str, Any]:
    return {
        "event_id": eid,
        "key": f"k-{eid}",
        "event_time": t,
        "model_name": "m",
        "model_version": version,
        "role": role,
        "value": 1.5,
        "features": [1.0, 2.0],
        "feature_names": ["a", "b"],
        "inputs": {"a": 1.0, "b": 2.0},
    }


def decode(raw: bytes) -> Prediction:
    return Prediction.from_avro(json.loads(raw))


def add_pred(j: JoinState, eid: str, t: int, off: int, **kw: Any) -> Any:
    rec = pred_record(eid, t, **kw)
    raw = json.dumps(rec).encode()
    out = j.add_prediction(Prediction.from_avro(rec, (*TP, off)), raw)
    j.consumed((*TP, off))
    return out


def add_label(j: JoinState, eid: str, t: int, off: int, y: float = 1.0) -> Any:
    out = j.add_label(Feedback(eid, y, t, (*TP, off)))
    j.consumed((*TP, off))
    return out


def new_join(path: Path | None, cache: int = 100, **kw: Any) -> tuple[JoinState, PartitionState]:
    j = JoinState(WINDOW, decode_prediction=decode, **kw)
    s = PartitionState(path, cache_entries=cache)
    j.open_partition(TP, s)
    return j, s


class Changelog:
    """The records a Kafka changelog partition would hold, with offsets."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes | None, bytes | None]] = []

    def commit(self, s: PartitionState) -> None:
        for k, v in s.seal():
            self.records.append((len(self.records), k, v))
        s.applied(len(self.records) - 1)

    def after(self, offset: int) -> list[tuple[int, bytes | None, bytes | None]]:
        return [r for r in self.records if r[0] > offset]


def test_entry_codec_round_trips_and_rejects_garbage() -> None:
    e = Entry("ev", T0 + WINDOW, label=Feedback("ev", "fraud", T0 + 5), joined=True)
    e.preds[(Role.SHADOW, 3)] = [b"raw-bytes", None]
    back = decode_entry("ev", encode_entry(e))
    assert back.expire_at == T0 + WINDOW and back.joined and not back.written
    assert back.label == Feedback("ev", "fraud", T0 + 5)
    assert back.preds == {(Role.SHADOW, 3): [b"raw-bytes", None]}
    for y in (True, 7, 2.5):
        e.label = Feedback("ev", y, T0)
        got = decode_entry("ev", encode_entry(e)).label
        assert got is not None and got.label == y and type(got.label) is type(y)
    data = encode_entry(e)
    with pytest.raises(StateStoreError):
        decode_entry("ev", data[:-3])
    with pytest.raises(StateStoreError):
        decode_entry("ev", data + b"x")


@pytest.mark.parametrize("label", [None, 2.5, float("nan"), 1.0, True, 7, "fraud"])
@pytest.mark.parametrize("written", [False, True])
@pytest.mark.parametrize("n_preds", [1, 2])
def test_packed_entries_are_the_field_by_field_bytes(
    label: Any, written: bool, n_preds: int
) -> None:
    e = Entry("ev", T0 + WINDOW, joined=label is not None, written=written)
    e.label = None if label is None else Feedback("ev", label, T0 + 5)
    for i, role in enumerate((Role.PRIMARY, Role.SHADOW)[:n_preds]):
        e.preds[(role, 3 + i)] = [b"raw-bytes" * (i + 1), None]
    data = encode_entry(e)
    assert data == encode_entry_parts(e)
    back = decode_entry("ev", data)
    assert (back.expire_at, back.joined, back.written) == (e.expire_at, e.joined, written)
    assert list(back.preds) == list(e.preds)
    assert [s[0] for s in back.preds.values()] == [
        b"" if written else s[0] for s in e.preds.values()
    ]


def test_a_label_after_30_days_joins_and_one_after_the_window_is_unmatched(
    tmp_path: Path,
) -> None:
    j, s = new_join(tmp_path / "p0", cache=5)
    add_pred(j, "late", T0, 0)
    add_pred(j, "too-late", T0, 1)
    for i in range(200):  # the stream goes on for 30 days of event time
        add_pred(j, f"other{i}", T0 + i * (30 * DAY // 200), 2 + i)
    Changelog().commit(s)
    assert s.cached() <= 5  # the old entries are on disk only
    out = add_label(j, "late", T0 + 30 * DAY, 300)
    (row,) = out.rows
    assert row.event_id == "late" and row.prediction.value == 1.5
    # the watermark passes the window of the other one: expired from the disk index
    add_pred(j, "next", T0 + WINDOW + 10, 301)
    assert j.stats.pending_predictions > 0
    late = add_label(j, "too-late", T0 + WINDOW + 20, 302)
    assert late.rows == [] and j.stats.pending_labels == 1
    out = j.advance(T0 + 2 * WINDOW + 30)
    assert [lab.event_id for lab in out.unmatched] == ["too-late"]
    assert j.stats.joined == 1 and j.stats.unmatched == 1 and j.stats.reconciles()


def test_expiry_is_a_range_scan_in_event_time_order(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "p0", cache=1)
    for i in range(50):
        add_pred(j, f"e{i}", T0 + (49 - i) * 1000, i)  # newest first
    Changelog().commit(s)
    for eid in ("e49", "e48"):  # loaded from disk, so the cache holds more than its cap
        assert s.get(eid) is not None
    gone = s.expired(T0 + WINDOW + 10 * 1000 + 1)  # everything older than 10 s after T0
    assert [e.event_id for e in gone] == [f"e{i}" for i in range(49, 38, -1)]
    assert s.expired(T0 + WINDOW + 10 * 1000 + 1) == []


def test_memory_stays_bounded_and_the_oldest_still_joins(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "p0", cache=50)
    log = Changelog()
    for i in range(5000):
        add_pred(j, f"e{i}", T0 + i, i)
        if j.needs_commit():
            log.commit(s)
    log.commit(s)
    assert s.cached() <= 50 and s.dirty == 0
    assert j.stats.pending_predictions == 5000 == s.meta.pending_predictions
    (row,) = add_label(j, "e0", T0 + DAY, 5000).rows
    assert row.event_id == "e0"


def test_restore_from_the_changelog_on_an_empty_state_dir(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "a", cache=10)
    log = Changelog()
    for i in range(100):
        add_pred(j, f"e{i}", T0 + i, i)
    add_label(j, "early", T0, 100)
    log.commit(s)
    add_label(j, "e1", T0 + 5, 101)  # e1 written: its entry keeps only the label + keys
    log.commit(s)
    j2, s2 = new_join(tmp_path / "fresh", cache=10)
    j2.close_partition(TP)
    s2 = PartitionState(tmp_path / "fresh", cache_entries=10)
    assert s2.restore(log.after(s2.meta.changelog_offset)) == len(log.records)
    j2.open_partition(TP, s2)
    assert s2.meta.input_offset == 102 and s2.meta.changelog_offset == len(log.records) - 1
    assert j2.stats.pending_predictions == 99 and j2.stats.pending_labels == 1
    assert sorted(e.event_id for e in s2.items()) == sorted(e.event_id for e in s.items())
    assert add_label(j2, "e1", T0 + 6, 102).rows == []  # already joined there
    (row,) = add_label(j2, "e7", T0 + 7, 103).rows
    assert row.event_id == "e7"
    (row,) = add_pred(j2, "early", T0, 104).rows
    assert row.event_id == "early"


def test_a_local_store_catches_up_from_its_changelog_offset(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "a")
    log = Changelog()
    add_pred(j, "e1", T0, 0)
    log.commit(s)
    s.close()
    # another worker owned the partition meanwhile and committed more
    j_other, other = new_join(tmp_path / "b")
    other.restore(log.after(-1))
    add_label(j_other, "e1", T0 + 1, 1)
    add_pred(j_other, "e2", T0 + 2, 2)
    log.commit(other)
    back = PartitionState(tmp_path / "a")
    assert back.restore(log.after(back.meta.changelog_offset)) == 3  # e1, e2, meta
    assert back.meta.input_offset == 3
    e1 = back.get("e1")
    assert e1 is not None and e1.written and back.get("e2") is not None


def test_replay_after_a_crash_is_idempotent(tmp_path: Path) -> None:
    """A crash after rows were made durable but before the commit: the replay from the
    committed state gives the same rows and the same state as a run without a crash."""
    msgs = [("p", f"e{i}", T0 + i * 1000) for i in range(20)]
    msgs += [("l", f"e{i}", T0 + DAY) for i in range(0, 20, 2)]
    msgs += [("l", "nope", T0), ("p", "far", T0 + WINDOW + 5000)]

    def feed(j: JoinState, start: int, stop: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for off in range(start, stop):
            kind, eid, t = msgs[off]
            o = add_pred(j, eid, t, off) if kind == "p" else add_label(j, eid, t, off)
            out += [("row", r.event_id) for r in o.rows]
            out += [("unmatched", lab.event_id) for lab in o.unmatched]
        return out

    ja, sa = new_join(tmp_path / "clean", cache=3)
    clean = feed(ja, 0, len(msgs))
    Changelog().commit(sa)

    jb, sb = new_join(tmp_path / "crashed", cache=3)
    log = Changelog()
    first = feed(jb, 0, 15)
    log.commit(sb)
    lost = feed(jb, 15, len(msgs))  # durable in the store, never committed: then SIGKILL
    sb.close()
    jc, sc = new_join(tmp_path / "crashed", cache=3)
    assert sc.meta.input_offset == 15
    again = feed(jc, sc.meta.input_offset, len(msgs))
    assert again == lost and first + again == clean
    Changelog().commit(sc)
    assert sorted((e.event_id, e.expire_at, e.written) for e in sc.items()) == sorted(
        (e.event_id, e.expire_at, e.written) for e in sa.items()
    )
    sc.meta.changelog_offset = sa.meta.changelog_offset
    assert sc.meta == sa.meta  # offsets, watermark, pending counts


def test_prefetched_entries_are_what_get_reads_until_the_next_commit(tmp_path: Path) -> None:
    """A batch's entries read ahead in one multi-get give the same join as lookups one
    by one, and a commit forgets them (an entry expired and deleted meanwhile is gone)."""
    j, s = new_join(tmp_path / "p0", cache=1)
    log = Changelog()
    for i in range(10):
        add_pred(j, f"e{i}", T0 + i, i)
    log.commit(s)  # committed; only the last entry stays in the cache
    j.prefetch(TP, ["e0", "e1", "e9", "new"])
    assert s.get("new") is None
    (row,) = add_label(j, "e1", T0 + DAY, 10).rows
    assert row.event_id == "e1"
    assert add_label(j, "e1", T0 + DAY, 11).rows == []  # a duplicate: the change seen
    j.prefetch(TP, ["e0"])
    j.advance(T0 + WINDOW + 5)  # every entry but e1's label expires and is deleted
    log.commit(s)
    assert s.get("e0") is None  # not the bytes read ahead before the commit
    assert add_pred(j, "e0", T0 + WINDOW + 6, 12).rows == []  # a new entry, pending
    e0 = s.get("e0")
    assert e0 is not None and e0.label is None and len(e0.preds) == 1


def test_restore_writes_batches_without_the_log_then_flushes(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "a")
    log = Changelog()
    for i in range(50):
        add_pred(j, f"e{i}", T0 + i, i)
        log.commit(s)  # one meta record per commit: 100 records
    fresh = PartitionState(tmp_path / "fresh")
    assert fresh.restore(log.after(-1)) == 100
    fresh.close()  # reopened: what the restore wrote is on disk with its offset
    back = PartitionState(tmp_path / "fresh")
    assert back.meta.changelog_offset == 99 and back.meta.pending_predictions == 50
    assert back.get("e49") is not None
    broken = PartitionState(tmp_path / "broken")
    with pytest.raises(StateStoreError, match="truncated"):
        broken.restore([(0, b"ee1", b"\x01\x02")])


def _index_keys(s: PartitionState, eid: str) -> list[bytes]:
    db = s._db
    assert db is not None
    return [k for k in db.keys(from_key=b"x") if k.startswith(b"x") and k[9:] == eid.encode()]


def test_an_update_that_keeps_its_expiry_writes_no_new_index_key(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "p0", cache=1)
    log = Changelog()
    add_pred(j, "kept", T0, 0)
    add_pred(j, "moved", T0, 1)
    add_pred(j, "other", T0 + 1, 2)  # pushes both out of the one-entry cache
    log.commit(s)
    add_label(j, "kept", T0 + DAY, 3)  # read back from the store, its expiry unchanged
    e = s.get("moved")
    assert e is not None and e.indexed_at == e.expire_at == T0 + WINDOW
    e.expire_at += DAY  # an update that moves the entry in time
    s.put(e)
    log.commit(s)
    assert len(_index_keys(s, "kept")) == 1
    assert len(_index_keys(s, "moved")) == 2  # the new expiry's; the old one is stale
    # both expire once, at their own time
    assert [x.event_id for x in s.expired(T0 + WINDOW + 1)] == ["kept"]
    log.commit(s)
    assert [x.event_id for x in s.expired(T0 + WINDOW + DAY + 1)] == ["other", "moved"]


_KILLED_WRITER = """
import os, sys
from pathlib import Path
from streamscore.feedback.state import Entry, PartitionState
s = PartitionState(Path(sys.argv[1]))
for batch in range(3):
    for i in range(2000):
        s.put(Entry(f"b{batch}-{i}", 10**12 + i))
    s.seal()
    s.applied(batch)
    if batch == 0:
        s._db.flush(True)  # the first batch reaches an SST; the others stay in memtables
print("written", flush=True)
os._exit(9)  # killed: no close, no flush
"""


def test_a_killed_process_leaves_its_store_behind_never_inconsistent(tmp_path: Path) -> None:
    """State writes skip RocksDB's write-ahead log (the changelog is the log): a process
    killed after three commits leaves a store as of one of them, with the meta record of
    that same commit, and a restore from the changelog brings it up to date."""
    import subprocess
    import sys

    path = tmp_path / "p0"
    out = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True, timeout=60
    )
    assert out.returncode == 9 and b"written" in out.stdout, out.stderr
    s = PartitionState(path)
    seen = s.meta.changelog_offset
    assert seen in (0, 1, 2)
    for batch in range(3):  # every batch up to the meta's, none after it
        assert (s.get(f"b{batch}-1999") is not None) == (batch <= seen)
    records = [
        (batch, b"e" + f"b{batch}-{i}".encode(), encode_entry(Entry(f"b{batch}-{i}", 10**12 + i)))
        for batch in range(seen + 1, 3)
        for i in range(2000)
    ]
    s.restore(records)
    assert all(s.get(f"b{batch}-1999") is not None for batch in range(3))
    s.close()


def test_a_sealed_commit_is_read_through_and_applied_as_it_was_sealed(tmp_path: Path) -> None:
    """While a commit is in flight (sealed), the join goes on: it reads the sealed
    entries, its new changes gather apart, and applying the commit writes the sealed
    changes with the meta as sealed (its input offset), never the newer ones."""
    j, s = new_join(tmp_path / "p0")
    add_pred(j, "a", T0, 0)
    records = s.seal()
    assert [k for k, _v in records] == [b"ea", b"m"] and s.in_flight
    with pytest.raises(RuntimeError):
        s.seal()  # one commit at a time
    add_label(j, "a", T0 + DAY, 1)  # meets the sealed prediction
    add_pred(j, "b", T0 + 1, 2)
    assert j.stats.joined == 1 and s.dirty == 2
    s.applied(1)
    assert not s.in_flight and s.dirty == 2 and s.meta.changelog_offset == 1
    s.close()
    back = PartitionState(tmp_path / "p0")
    assert back.meta.input_offset == 1 and back.meta.changelog_offset == 1
    got = back.get("a")
    assert got is not None and got.label is None  # as sealed: the label came after
    assert back.get("b") is None


def test_an_unsealed_commit_joins_the_newer_changes(tmp_path: Path) -> None:
    j, s = new_join(tmp_path / "p0")
    log = Changelog()
    add_pred(j, "a", T0, 0)
    add_pred(j, "b", T0, 1)
    s.seal()
    add_label(j, "a", T0 + DAY, 2)  # a newer change of a sealed entry
    s.unseal()  # the commit failed (the table away): nothing was written
    assert not s.in_flight and s.dirty == 2
    log.commit(s)
    s.close()
    back = PartitionState(tmp_path / "p0")
    a, b = back.get("a"), back.get("b")
    assert a is not None and a.label is not None and a.written  # the newer one won
    assert b is not None and back.meta.input_offset == 3


def pending(s: PartitionState, eid: str, expire_at: int) -> None:
    """A pending prediction due at ``expire_at``, straight into ``s``."""
    e = Entry(eid, expire_at)
    e.preds[(Role.PRIMARY, 1)] = [b"raw", None]
    s.put(e)
    s.schedule(e)


def test_expiry_is_oldest_first_across_a_commit_in_flight() -> None:
    """Entries due before a commit in flight was sealed and entries due since expire
    together oldest first, ties by event id, as one schedule would give them."""
    s = PartitionState(None)
    pending(s, "b", 5)
    pending(s, "x", 3)
    s.seal()  # in flight: its schedule is set aside
    pending(s, "a", 3)
    pending(s, "c", 4)
    assert [e.event_id for e in s.expired(10)] == ["a", "x", "c", "b"]


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_unsealed_commit_keeps_every_expiry_in_order(tmp_path: Path, on_disk: bool) -> None:
    """The expiry schedule of a failed commit and the one made since are one schedule
    again: whatever expires below a watermark is found, oldest first. (Merging the two
    heaps as if they were sorted hid the entry due at 4 under the one due at 14.)"""
    s = PartitionState(tmp_path / "p0" if on_disk else None)
    for eid, exp in (("a", 4), ("b", 16), ("c", 1)):
        pending(s, eid, exp)
    s.seal()
    for eid, exp in (("d", 14), ("e", 20), ("f", 25)):
        pending(s, eid, exp)
    s.unseal()
    assert [e.event_id for e in s.expired(5)] == ["c", "a"]
    assert [e.event_id for e in s.expired(21)] == ["d", "b", "e"]
    assert [e.event_id for e in s.expired(100)] == ["f"]


def test_a_change_committed_outside_the_cached_newest_is_what_the_join_reads(
    tmp_path: Path,
) -> None:
    """An entry cached at one commit, changed, then committed among newer changes that
    the cache keeps instead (one of them a deletion, so the cache is not refilled
    whole): the join reads the new version, not the one cached before. (It read the
    old one: a joined label came back as pending and expired as unmatched.)"""
    j, s = new_join(tmp_path / "p0", cache=2)
    log = Changelog()
    add_label(j, "a", T0 + WINDOW, 0)  # a label first: pending
    add_pred(j, "c", T0, 1)  # pending, due at T0 + WINDOW
    log.commit(s)  # both cached as committed
    add_pred(j, "a", T0 + WINDOW, 2)  # a's prediction: joined, its row written
    add_pred(j, "b", T0 + WINDOW + 1, 3)  # newer; its time expires c (deleted)
    log.commit(s)
    a = s.get("a")
    assert a is not None and a.joined and a.written
    out = j.advance(T0 + 4 * WINDOW)  # a's window passes: nothing unmatched
    assert [lab.event_id for lab in out.unmatched] == []
    assert (j.stats.joined, j.stats.unmatched) == (1, 0)


def test_an_entry_made_again_with_the_same_expiry_after_expiring_still_expires(
    tmp_path: Path,
) -> None:
    """A pending prediction expires (its index key handled, deleted at the next
    commit); the same prediction comes again (re-delivered) before that commit, due at
    the same time: its index key, written again, is not deleted with the old one, and
    it expires too. (It was deleted: the entry never expired.)"""
    j, s = new_join(tmp_path / "p0")
    log = Changelog()
    add_pred(j, "p", T0, 0)
    log.commit(s)
    out = add_pred(j, "q", T0 + WINDOW + 1, 1)  # p's window passes: evicted
    assert out.evicted_predictions == 1
    add_pred(j, "p", T0, 2)  # re-delivered: pending again, already due
    log.commit(s)
    out = add_pred(j, "r", T0 + WINDOW + 2, 3)
    assert out.evicted_predictions == 1  # p, again
    assert s.get("p") is None


def test_an_entry_committed_after_its_time_has_passed_still_expires(tmp_path: Path) -> None:
    """A label whose window had already passed when it came (expiry below the watermark
    the index was last scanned to) is committed before the watermark moves on: it still
    expires at the next scan, as unmatched."""
    j, s = new_join(tmp_path / "p0", cache=1)
    log = Changelog()
    add_pred(j, "p", T0 + 2 * WINDOW, 0)  # watermark far ahead, index scanned to it
    log.commit(s)
    j.add_label(Feedback("late", 1.0, T0, (*TP, 1)))  # expired already when it came
    j.consumed((*TP, 1))
    log.commit(s)  # committed before any prediction moves the watermark
    out = add_pred(j, "q", T0 + 2 * WINDOW + 1, 2)
    assert [lab.event_id for lab in out.unmatched] == ["late"]


def test_changes_are_bounded_over_every_partition_when_a_limit_is_given(tmp_path: Path) -> None:
    j = JoinState(WINDOW, decode_prediction=decode)
    for p in (0, 1):
        j.open_partition(("join", p), PartitionState(tmp_path / str(p), cache_entries=1000))
    for i in range(6):
        rec = pred_record(f"e{i}", T0 + i)
        j.add_prediction(Prediction.from_avro(rec, ("join", i % 2, i)), json.dumps(rec).encode())
    assert j.needs_commit(11) and not j.needs_commit(12)  # a commit starts at half
    assert not j.needs_commit()  # per partition: 3 changes each, under their cache
    for s in j.partitions().values():
        s.seal()  # a commit in flight holds the 6
    assert not j.needs_commit(6)
    rec = pred_record("e6", T0 + 6)
    j.add_prediction(Prediction.from_avro(rec, ("join", 1, 6)), json.dumps(rec).encode())
    assert j.needs_commit(6)  # 1 new + 6 in flight held: over the bound
    assert not j.needs_commit(7)


def test_a_prediction_held_by_its_head_joins_as_a_decoded_one(tmp_path: Path) -> None:
    """add_head keeps the wire bytes only; the label decodes them, before or after."""
    rows: dict[bool, list[Any]] = {}
    for by_head in (False, True):
        j, _s = new_join(tmp_path / str(by_head))
        out = JoinOutput()
        for n, eid in enumerate(("before", "after")):
            rec = pred_record(eid, T0)
            raw = json.dumps(rec).encode()
            if eid == "before":  # the label waits for its prediction
                add_label(j, eid, T0 + DAY, 10 + n)
            if by_head:
                j.add_head(eid, T0, Role.PRIMARY, 1, raw, (*TP, n), out)
            else:
                j.add_prediction(Prediction.from_avro(rec, (*TP, n)), raw, out=out)
            if eid == "after":
                out.extend(add_label(j, eid, T0 + DAY, 20 + n))
        rows[by_head] = [
            (r.event_id, r.prediction.value, r.prediction.features, r.prediction.raw_inputs())
            for r in out.rows
        ]
    assert rows[True] == rows[False]
    assert [r[0] for r in rows[True]] == ["before", "after"]


def test_a_late_answer_names_the_shadow_versions_without_decoding_the_shadows(
    tmp_path: Path,
) -> None:
    decoded: list[bytes] = []

    def counting(raw: bytes) -> Prediction:
        decoded.append(raw)
        return decode(raw)

    j = JoinState(WINDOW, decode_prediction=counting)
    s = PartitionState(tmp_path / "p0", cache_entries=1)
    j.open_partition(TP, s)
    add_label(j, "e", T0 + DAY, 0)
    add_pred(j, "e", T0, 1, role="shadow", version=2)  # joins, no row (a shadow)
    Changelog().commit(s)  # stored encoded: the shadow's decoded copy is gone
    j.prefetch(TP, ["e"])
    (row,) = add_pred(j, "e", T0, 2, role="primary", version=1).rows  # the answer, late
    assert row.prediction.role is Role.PRIMARY and row.shadow_versions == {"shadow": 2}
    assert decoded == []  # the versions come from the entry's keys
