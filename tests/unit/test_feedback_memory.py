"""The feedback worker's allocator settings (streamscore/feedback/memory.py): a large
block freed is not reused from the heap for smaller ones (it would leave holes there),
settings from the environment are left alone. Each case runs in a child process: the
settings are the process's."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from streamscore.feedback.state import META
from streamscore.kafka.changelog import POLL_EVERY, Changelog
from tests.unit.kafka_fakes import FakeClock, FakeTxnProducer

# malloc 8 MB, free it (glibc's dynamic threshold rises to 8 MB), then malloc 1 MB: is the
# 1 MB block mapped on its own (mallinfo2's hblkhd: bytes in mapped blocks) or taken from
# a heap?
_CHILD = """
import ctypes, json, sys
from streamscore.feedback.memory import tune_malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = tune_malloc(json.loads(sys.argv[1])) if sys.argv[1] != "none" else {}
big = libc.malloc(8 << 20)
libc.free(big)
before = libc.mallinfo2().hblkhd
small = libc.malloc(1 << 20)
mapped = libc.mallinfo2().hblkhd - before >= 1 << 20
libc.free(small)
print(json.dumps({"applied": applied, "mapped": mapped}))
"""


def child(environ: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, environ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin"},  # no MALLOC_* from the test's own environment
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_default_glibc_reuses_the_heap_after_a_large_free() -> None:
    # the behaviour tune_malloc is for: without it the 1 MB block comes from a heap
    assert child("none") == {"applied": {}, "mapped": False}


def test_tuned_large_blocks_stay_mapped_on_their_own() -> None:
    r = child("{}")
    assert r["mapped"] is True
    assert r["applied"] == {
        "MALLOC_MMAP_THRESHOLD_": 128 << 10,
        "MALLOC_TRIM_THRESHOLD_": 128 << 10,
        "MALLOC_ARENA_MAX": 2,
    }


def test_settings_from_the_environment_are_left_alone() -> None:
    r = child(json.dumps({"MALLOC_MMAP_THRESHOLD_": "9999999", "MALLOC_ARENA_MAX": "4"}))
    # only the trim threshold was set (it fixes the mmap threshold's dynamic rise too)
    assert r["applied"] == {"MALLOC_TRIM_THRESHOLD_": 128 << 10}


_TRIMMER = """
import threading, time
from streamscore.feedback.memory import tune_malloc

stop = threading.Event()
tune_malloc({}, stop, trim_interval_s=0.01)
(t,) = [t for t in threading.enumerate() if t.name == "malloc-trim"]
time.sleep(0.05)
alive = t.is_alive()
stop.set()
t.join(5)
print(alive, t.is_alive())
"""


def test_the_trimming_thread_runs_until_the_worker_stops() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _TRIMMER], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "False"]


class _Delivering(FakeTxnProducer):
    """Every record is delivered at once, but its report (and librdkafka's copy of the
    record) waits until ``poll`` or ``flush`` serves it: ``most_held`` is the largest
    number of delivered records held at any time."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.held: list[tuple[Any, int]] = []
        self.most_held = 0

    def produce(self, topic: str, value: Any, key: Any, *_a: Any, **kw: Any) -> None:
        super().produce(topic, value, key)
        self.held.append((kw.get("on_delivery"), len(self.produced) - 1))
        self.most_held = max(self.most_held, len(self.held))

    def _serve(self) -> None:
        for cb, offset in self.held:
            if cb is not None:
                cb(None, type("Msg", (), {"offset": lambda self, o=offset: o})())
        self.held.clear()

    def poll(self, timeout: float = 0) -> int:
        self._serve()
        return super().poll(timeout)

    def flush(self, timeout: float = 0) -> int:
        self._serve()
        return super().flush(timeout)


def test_a_checkpoint_frees_delivered_changelog_records_as_it_goes() -> None:
    p = _Delivering()
    changes = [(b"e%d" % i, b"v" * 300) for i in range(5 * POLL_EVERY)] + [(META, b"m")]
    at = Changelog(p, {}).commit({("join", 0): changes}, {}, None)
    assert at == {("join", 0): len(changes) - 1}  # the meta record's offset
    assert len(p.produced) == len(changes)
    # without polls in the transaction all 10,001 records were held until the flush
    assert p.most_held <= POLL_EVERY
