"""Launch and stop ``streamscore`` worker processes (``score``, ``feedback``) against a
cluster, and read their /metrics: the one launcher used by the integration tests
(tests/integration/stack.py, feedback_stack.py) and the benchmarks (benchmarks/run.py,
benchmarks/feedback.py).

It lives in the test tree, not in the package, because only tests and benchmarks start
workers this way (the package's own supervisor is the demo's); it needs no pytest, so the
benchmarks import it as ``tests.processes`` from the repository root.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from streamscore.core.config import TopicSettings
from streamscore.dev.cluster_processes import die_with_parent

#: ports handed out by :func:`free_port` in this process (never twice)
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a server a test starts, below Linux's ephemeral range
    (32768-60999): a port the kernel hands out for outgoing connections could be taken
    by any client's connection while a test stops and restarts its server on it."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20_000, 32_000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port in 20000-31999")


def worker_env(
    base: dict[str, str],
    bootstrap: str,
    registry_url: str,
    topics: TopicSettings,
    **extra: str,
) -> dict[str, str]:
    """``base`` (usually ``os.environ``) plus the STREAMSCORE_* settings of a worker."""
    env = dict(base)
    env.update(
        {
            "STREAMSCORE_BOOTSTRAP": bootstrap,
            "STREAMSCORE_REGISTRY_URL": registry_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(topics.as_env())
    env.update(extra)
    return env


def metrics_text(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return str(r.read().decode())


def sample(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples called ``name`` (matching ``labels``) on ``port``'s /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(metrics_text(port)):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a feedback worker's router process), from /proc."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie not reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def wait_until(cond: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll ``cond`` until it holds; fail at the deadline saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


@dataclass
class WorkerProcess:
    worker_id: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    _log: IO[bytes] | None = field(repr=False, default=None)

    def metrics_text(self) -> str:
        return metrics_text(self.metrics_port)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return sample(self.metrics_port, name, labels)

    def wait_until(self, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll ``cond`` (connection errors count as not yet) until it holds; fail at the
        deadline or as soon as the process exits, with the tail of its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.worker_id} exited {self.proc.returncode}:\n{self.log()}"
                )
            try:
                if cond():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.worker_id}: timed out waiting for {what}:\n{self.log()}")

    def wait_metrics(self, timeout: float = 60.0) -> None:
        """Until a score worker has a primary model (``streamscore_model_loaded`` 1)."""
        self.wait_until(
            lambda: self.sample("streamscore_model_loaded") == 1.0, "a loaded model", timeout
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the process serves /metrics."""
        self.wait_until(lambda: bool(self.metrics_text()), "/metrics", timeout)

    def owned_partitions(self) -> set[str]:
        """The partitions a score worker owns (it exports a lag series for each)."""
        from prometheus_client.parser import text_string_to_metric_families

        return {
            s.labels["partition"]
            for fam in text_string_to_metric_families(self.metrics_text())
            for s in fam.samples
            if s.name == "streamscore_consumer_lag"
        }

    def log(self, n: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Kill if still running and close the log file (test teardown)."""
        self.kill()
        if self._log is not None:
            self._log.close()


W = TypeVar("W", bound=WorkerProcess)


def launch(
    command: str,
    *args: str,
    worker_id: str,
    group_id: str,
    env: dict[str, str],
    log_path: Path,
    cls: type[W] = WorkerProcess,  # type: ignore[assignment]
    **fields: Any,
) -> W:
    """Start ``python -m streamscore.cli <command> --worker-id .. --group-id ..
    --metrics-port <free port> *args`` with its output in ``log_path``. The caller stops
    it (:meth:`WorkerProcess.terminate` / :meth:`~WorkerProcess.close`); should this
    process end without doing so (killed), the kernel kills it (Linux, main thread)."""
    port = free_port()
    log = log_path.open("wb")
    cmd = [
        *die_with_parent(),  # killed by the kernel should this process end without stopping it
        sys.executable,
        "-m",
        "streamscore.cli",
        command,
        "--worker-id",
        worker_id,
        "--group-id",
        group_id,
        "--metrics-port",
        str(port),
        *args,
    ]
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    except BaseException:
        log.close()
        raise
    return cls(worker_id, proc, port, log_path, log, **fields)
