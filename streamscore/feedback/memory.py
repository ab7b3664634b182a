"""glibc's allocator settings for a process that holds a join state (the feedback worker).

RocksDB (memtable blocks, write batches of a whole checkpoint, compactions), librdkafka
(a copy of every message produced to the changelog in a checkpoint's transaction, fetch
buffers) and Python (the tables of the dicts of a checkpoint's changes) allocate and free
blocks of hundreds of kilobytes to tens of megabytes, again and again. With glibc's
default the threshold above which a block is mapped on its own (and unmapped when freed)
rises to the size of the largest block freed so far (up to 32 MB), so that after the
first checkpoints these blocks come from the heaps, interleaved with long-lived small
objects: freed, they leave holes that are never given back. The worker's heaps then grew
with every checkpoint and every compaction (the larger the store, the larger its
compactions), which was most of its growth per million pending predictions. A fixed
threshold (:data:`MMAP_THRESHOLD`) keeps large blocks out of the heaps; few arenas
(:data:`ARENAS`) keep the free memory of a worker's ~45 threads in few heaps; and the free
pages inside the heaps are given back every :data:`TRIM_INTERVAL_S` (``malloc_trim``,
a few milliseconds, without the GIL), where glibc only gives back the top of a heap.

:func:`tune_malloc` is called first thing by the process (before its threads start:
arenas are made per thread on first use). Setting the environment (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) before the process starts does the
same; a value set there is left as it is. Nothing happens on a C library other than glibc.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: blocks of this size or more are mapped on their own and returned when freed
MMAP_THRESHOLD = 128 << 10
#: free memory at the top of a heap above this is returned
TRIM_THRESHOLD = 128 << 10
#: malloc arenas at most (glibc's default: 8 per core)
ARENAS = 2
#: seconds between two ``malloc_trim`` calls
TRIM_INTERVAL_S = 5.0

# mallopt(3) parameters, and the environment variables glibc reads for them at start
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = (
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
    (_M_ARENA_MAX, "MALLOC_ARENA_MAX", ARENAS),
)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  # glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(
    environ: Mapping[str, str],
    until: threading.Event | None = None,
    *,
    trim_interval_s: float = TRIM_INTERVAL_S,
) -> dict[str, int]:
    """Apply the settings of the module doc not already set in ``environ`` (the process's
    environment); returns the ones applied (empty on another C library). With ``until``:
    free heap pages are given back every ``trim_interval_s`` by a daemon thread, until the
    event is set."""
    libc = _glibc()
    if libc is None:
        return {}
    applied: dict[str, int] = {}
    for param, env_name, value in _SETTINGS:
        if env_name in environ:
            continue
        if libc.mallopt(param, value) == 1:
            applied[env_name] = value
        else:
            log.warning("mallopt(%d, %d) refused", param, value)
    if until is not None:
        trim = libc.malloc_trim

        def trimming() -> None:
            while not until.wait(trim_interval_s):
                trim(0)  # ctypes lets the GIL go for the call

        threading.Thread(target=trimming, name="malloc-trim", daemon=True).start()
    return applied
