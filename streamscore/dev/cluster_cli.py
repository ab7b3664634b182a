"""``streamscore cluster install|up|down|reset|status``: the local cluster's command line
and its status lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core.errors import ClusterError, ServerStartError
from .cluster_processes import tail
from .localcluster import ClusterStatus, LocalCluster


def format_status(st: ClusterStatus) -> str:
    def line(name: str, pid: int | None, ready: bool, where: str, logp: Path) -> str:
        state = "ready" if ready else ("starting/unresponsive" if pid else "stopped")
        pid_s = f"pid {pid}" if pid else "no process"
        return f"  {name:<9} {state:<22} {pid_s:<12} {where}  (log {logp})"

    head = "local cluster: running" if st.running else "local cluster: not running"
    return "\n".join(
        [
            head,
            line("kafka", st.kafka_pid, st.kafka_ready, st.bootstrap_servers, st.kafka_log),
            line("registry", st.registry_pid, st.registry_ready, st.registry_url, st.registry_log),
        ]
    )


def s3_status(cluster: LocalCluster) -> str:
    """The S3 server's status line (started by ``up``; not part of ``running``)."""
    s3 = cluster.s3
    pid = s3.pid()
    ready = pid is not None and s3.ready()
    state = "ready" if ready else ("starting/unresponsive" if pid else "stopped")
    pid_s = f"pid {pid}" if pid else "no process"
    ep = s3.endpoint
    return (
        f"  {'s3proxy':<9} {state:<22} {pid_s:<12} {ep.url}  (bucket {ep.bucket}, access "
        f"key {ep.identity}, secret {ep.credential}; log {s3.server.log})"
    )


def secure_help(cluster: LocalCluster) -> str:
    """How a process connects to the secured profile, as one of its principals."""
    from .cluster_secure import USERS, client_env

    files = cluster.secure_files
    assert files is not None
    lines = [
        f"secured profile: CA {files.ca}; users {', '.join(USERS)} "
        f"(passwords in {files.root}/<user>.password)",
        "a score worker's environment:",
    ]
    env = client_env(cluster.settings, files, "score")
    lines += [f"  export {k}={v}" for k, v in env.items()]
    return "\n".join(lines)


def main_cluster(action: str, cluster: LocalCluster) -> int:
    """``streamscore cluster install|up|down|reset|status``. Exit codes: 0 ok, 1 error,
    2 unknown action, 3 ``status`` of a cluster that is not (fully) running."""
    t0 = time.monotonic()
    try:
        if action == "install":
            cluster.install()
            print(f"local cluster installed in {cluster.cache_dir} ({time.monotonic() - t0:.1f}s)")
            return 0
        if action == "up":
            st = cluster.up()
            print(format_status(st))
            cluster.up_s3()
            print(s3_status(cluster))
            print(f"(took {time.monotonic() - t0:.1f}s)")
            if cluster.secure_files is not None:
                print(secure_help(cluster))
            return 0
        if action == "down":
            cluster.down()
            print(f"local cluster stopped (its data stays in {cluster.run_dir})")
            return 0
        if action == "reset":
            cluster.reset()
            print(
                "local cluster stopped and its broker data and registry store wiped; "
                "`streamscore cluster up` starts it empty"
            )
            return 0
        if action == "status":
            st = cluster.status()
            print(format_status(st))
            print(s3_status(cluster))
            return 0 if st.running else 3
    except ClusterError as e:
        first = e.message.splitlines()[0] if e.message else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        if isinstance(e, ServerStartError) and e.log_path:
            print(f"last lines of {e.log_path}:", file=sys.stderr)
            print(tail(Path(e.log_path)), file=sys.stderr)
        return 1
    print(
        f"error: unknown cluster action {action!r} (install, up, down, reset, status)",
        file=sys.stderr,
    )
    return 2
