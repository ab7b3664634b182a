"""S3Proxy: a real S3 API server on loopback for the ground-truth table on object storage.

``org.gaul:s3proxy`` (the ``jar-with-dependencies`` classifier, fetched with Maven by
:class:`~streamscore.dev.cluster_install.Installer`) runs on Java 17 with the
``filesystem`` jclouds provider: each bucket is a directory under ``data_dir``. It
authenticates requests (AWS signature v2/v4) with one local identity/credential pair,
which is not a secret (loopback only, dev and tests). Its process carries a marker
argument like the cluster's other servers, so :meth:`S3Proxy.stop` never signals a
foreign process.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PortInUseError, ServerStartError
from .cluster_processes import ServerProcess, check_java, port_answers, port_in_use, tail

#: the local server's identity and credential (loopback dev/test server, not a secret)
IDENTITY = "streamscore"
CREDENTIAL = "streamscore-local-credential"
#: the bucket created at start
BUCKET = "streamscore"
MARKER_PROP = "streamscore.s3proxy"


@dataclass(frozen=True)
class S3Endpoint:
    """What a client needs: the endpoint URL and the local credentials."""

    url: str
    identity: str = IDENTITY
    credential: str = CREDENTIAL
    bucket: str = BUCKET
    region: str = "us-east-1"

    def storage_options(self) -> dict[str, str]:
        """delta-rs / object_store options for this server."""
        return {
            "endpoint": self.url,
            "access_key_id": self.identity,
            "secret_access_key": self.credential,
            "region": self.region,
            "allow_http": "true",
            "conditional_put": "etag",
        }


class S3Proxy:
    """One S3Proxy server: ``jar`` run from ``run_dir`` on ``host:port``, buckets under
    ``run_dir/s3-data``."""

    def __init__(
        self,
        jar: Path,
        run_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 18090,
        stop_with_parent: bool = False,
    ) -> None:
        """``stop_with_parent``: the server dies with this process (a test's server)."""
        self.jar = jar
        self.run_dir = Path(run_dir)
        self.host = host
        self.port = port
        self.data_dir = self.run_dir / "s3-data"
        self.server = ServerProcess(
            role="s3proxy",
            pid_file=self.run_dir / "s3proxy.pid",
            log=self.run_dir / "s3proxy.log",
            marker=f"-D{MARKER_PROP}={self.run_dir}",
            stop_with_parent=stop_with_parent,
        )

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(f"http://{self.host}:{self.port}")

    def pid(self) -> int | None:
        return self.server.pid()

    def ready(self) -> bool:
        """True once the server answers HTTP (an unauthenticated request is refused
        with 403, which is an answer)."""
        if not port_answers(self.host, self.port):
            return False
        try:
            with urllib.request.urlopen(self.endpoint.url + "/", timeout=2) as resp:
                return int(resp.status) < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self, *, heap: str = "256m", timeout_s: float = 60.0) -> S3Endpoint:
        """Start it (a no-op when it runs) and wait until it answers."""
        if self.pid() is not None and self.ready():
            return self.endpoint
        if port_in_use(self.host, self.port):
            raise PortInUseError(
                f"port {self.host}:{self.port} (needed by the local S3 server) is already "
                "in use by another process",
                port=self.port,
            )
        java = check_java()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / BUCKET).mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "s3proxy.conf"
        conf.write_text(
            "\n".join(
                [
                    f"s3proxy.endpoint=http://{self.host}:{self.port}",
                    "s3proxy.authorization=aws-v2-or-v4",
                    f"s3proxy.identity={IDENTITY}",
                    f"s3proxy.credential={CREDENTIAL}",
                    "jclouds.provider=filesystem",
                    f"jclouds.filesystem.basedir={self.data_dir}",
                    "",
                ]
            )
        )
        self.server.rotate_log()
        cmd = [
            java,
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            self.server.marker,
            "-jar",
            str(self.jar),
            "--properties",
            str(conf),
        ]
        self.server.spawn(cmd, cwd=self.run_dir)
        try:  # not ready in time, or interrupted: stopped before the error goes on
            deadline = time.monotonic() + timeout_s
            while not self.ready():
                if self.server.exited():
                    raise ServerStartError(
                        f"S3Proxy exited during start; log {self.server.log}:\n"
                        f"{tail(self.server.log)}",
                        log_path=str(self.server.log),
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"S3Proxy not ready after {timeout_s:.0f}s; log {self.server.log}",
                        log_path=str(self.server.log),
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def stop(self) -> None:
        self.server.stop()
