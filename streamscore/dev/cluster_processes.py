"""The local cluster's server processes: found, started, signalled and stopped, never a
foreign one.

Every JVM the local cluster starts carries a marker argument
(``-Dstreamscore.localcluster=<run dir>#<role>``); a process counts as ours only when its
``/proc/<pid>/cmdline`` (or ``ps``) shows a ``java`` carrying that marker
(:func:`is_ours`), found through its pid file or, after a crash that lost it, by a scan
of the process table (:meth:`ServerProcess.pid`). Also here: the checks a start needs
(a Java runtime, free ports, a port that answers) and a log's last lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ClusterError, JavaMissingError

log = logging.getLogger(__name__)

MIN_JAVA = 17
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 20


def parse_java_version(text: str) -> int:
    """The major version from ``java -version`` output (``1.8.0_x`` -> 8, ``17.0.2`` -> 17).

    Raises ``ValueError`` when no version can be found.
    """
    m = re.search(r'version\s+"(\d+)(?:\.(\d+))?', text)
    if m is None:
        m = re.search(r"^\S+\s+(\d+)(?:\.(\d+))?", text.strip())
    if m is None:
        raise ValueError(f"no java version in {text!r}")
    major = int(m.group(1))
    if major == 1 and m.group(2) is not None:
        major = int(m.group(2))
    return major


def check_java(java: str | None = None) -> str:
    """The path of a ``java`` >= 17, or :class:`JavaMissingError`."""
    exe = java or shutil.which("java")
    if exe is None:
        raise JavaMissingError(
            f"no 'java' on PATH: the local cluster needs a Java {MIN_JAVA}+ runtime "
            "(e.g. apt-get install openjdk-17-jre-headless)"
        )
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaMissingError(f"cannot run {exe} -version: {e}") from e
    try:
        major = parse_java_version(out.stderr + out.stdout)
    except ValueError as e:
        raise JavaMissingError(f"cannot tell the version of {exe}: {e}") from e
    if major < MIN_JAVA:
        raise JavaMissingError(
            f"{exe} is Java {major}; the local cluster needs Java {MIN_JAVA} or newer"
        )
    return exe


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` (we cannot bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or ``None``."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            # state is the field after the parenthesised command name
            if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
                return None
            raw = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        return args or None
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(
            ["ps", "-ww", "-o", "stat=,args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def list_pids() -> list[int]:
    if Path("/proc/self").exists():
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid="], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is a live java process that carries our ``marker`` argument."""
    args = process_cmdline(pid)
    if not args:
        return False
    return Path(args[0]).name.startswith("java") and marker in args


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


# Popen handles of the servers this Python process started, so that they are reaped
# (no zombies) when we stop them from the same process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def die_with_parent() -> list[str]:
    """A command prefix under which the child is killed (SIGKILL) by the kernel when
    this process ends, however it ends (a test session killed by ``timeout``, SIGKILL, a
    crash: no ``finally`` runs then, and a server in a session of its own would live
    on): ``setpriv --pdeathsig KILL --`` (util-linux), which sets
    ``prctl(PR_SET_PDEATHSIG)`` and execs the command (same pid; the setting survives the
    exec). Empty where it cannot be done (not Linux, no ``setpriv``).

    Not a ``preexec_fn``: Python code between fork and exec can deadlock when other
    threads run (the tests' feeders, the demo's supervisors). The setting is tied to the
    thread that forks, so only the main thread's children get it (another thread may end
    before its child should: empty)."""
    if not sys.platform.startswith("linux"):
        return []
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def stray_servers(run_dirs: Iterable[Path], props: Iterable[str]) -> list[int]:
    """Live server processes of ours (a ``java`` carrying a ``-D<prop>=<run dir>`` marker,
    ``prop`` one of ``props``) of one of ``run_dirs`` (or a directory under one): what a
    test session must not leave behind."""
    dirs = [str(Path(d).absolute()) for d in run_dirs]
    marks = tuple(f"-D{p}={d}" for p in props for d in dirs)
    if not marks:
        return []

    def marked(arg: str) -> bool:
        return any(arg == m or arg.startswith((f"{m}#", f"{m}/")) for m in marks)

    found = []
    for pid in list_pids():
        args = process_cmdline(pid)
        if args and Path(args[0]).name.startswith("java") and any(map(marked, args)):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int], timeout_s: float = 10.0) -> None:
    """SIGKILL ``pids`` (each its process group when it leads one) and wait until they
    are gone (or ``timeout_s``)."""
    pids = set(pids)
    for p in pids:
        _signal(p, signal.SIGKILL)
    end = time.monotonic() + timeout_s
    while pids and time.monotonic() < end:
        _reap()
        pids = {p for p in pids if process_cmdline(p) is not None}
        if pids:
            time.sleep(0.05)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # start_new_session made the server its own process-group leader
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


@dataclass(frozen=True)
class ServerProcess:
    """One server of a local cluster: its role, pid file, log and marker argument.
    ``stop_with_parent``: the servers it spawns are killed when this process ends
    (:func:`die_with_parent`; a test's cluster)."""

    role: str
    pid_file: Path
    log: Path
    marker: str
    stop_with_parent: bool = False

    def pid(self) -> int | None:
        """The live pid of this server (pid file first, else a process-table scan)."""
        pid = read_pid_file(self.pid_file)
        if pid is not None and is_ours(pid, self.marker):
            return pid
        found = self.scan()
        return found[0] if found else None

    def scan(self) -> list[int]:
        me = os.getpid()
        return [p for p in list_pids() if p != me and is_ours(p, self.marker)]

    def rotate_log(self) -> None:
        """Keep the previous start's output (``.log.1``: why it crashed), start afresh."""
        if self.log.exists():
            self.log.replace(self.log.with_name(self.log.name + ".1"))
        self.log.write_bytes(b"")

    def spawn(self, cmd: Sequence[str], cwd: Path) -> int:
        """Start ``cmd`` in a session of its own, output appended to the log; write the
        pid file. Should writing it fail, the process is killed before the error is
        raised: nothing is left running that :meth:`stop` could not find."""
        with self.log.open("ab") as out:
            prefix = die_with_parent() if self.stop_with_parent else []
            proc = subprocess.Popen(
                [*prefix, *cmd],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        try:
            tmp = self.pid_file.with_suffix(".pid.tmp")
            tmp.write_text(f"{proc.pid}\n")
            tmp.replace(self.pid_file)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.info("started %s (pid %d), log %s", self.role, proc.pid, self.log)
        return proc.pid

    def exit_code(self) -> int | str:
        proc = _CHILDREN.get(read_pid_file(self.pid_file) or -1)
        if proc is not None and proc.poll() is not None:
            return proc.returncode
        return "unknown"

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) every process of this server; SIGKILL what is left after
        :data:`STOP_GRACE_S`; :class:`ClusterError` if one survives even that."""
        pids = set(self.scan())
        pid = read_pid_file(self.pid_file)
        if pid is not None and is_ours(pid, self.marker):
            pids.add(pid)
        for p in pids:
            log.info("stopping %s (pid %d)%s", self.role, p, " with SIGKILL" if kill else "")
            _signal(p, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + (0 if kill else STOP_GRACE_S)
        while pids and time.monotonic() < deadline:
            _reap()
            pids = {p for p in pids if is_ours(p, self.marker)}
            if pids:
                time.sleep(0.1)
        for p in pids if not kill else ():
            log.warning("%s (pid %d) ignored SIGTERM, killing it", self.role, p)
            _signal(p, signal.SIGKILL)
        end = time.monotonic() + 10
        while pids and time.monotonic() < end:
            _reap()
            pids = {p for p in pids if is_ours(p, self.marker)}
            if pids:
                time.sleep(0.05)
        if pids:
            raise ClusterError(f"could not stop local {self.role} (pids {sorted(pids)})")
        self.pid_file.unlink(missing_ok=True)
