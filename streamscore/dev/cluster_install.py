"""Downloading the local cluster's servers once, and verifying them on every start.

Kafka (its jars and runtime dependencies, with a log4j2 binding), the Apicurio Registry
``-all`` tarball, the S3Proxy ``jar-with-dependencies``, and the one Apache Avro jar that
the tests' Java reader of the predictions topics compiles against (with Kafka's own client
jars) are fetched with Maven (``--strict-checksums``) into a staging directory next to
their final place, hashed into a ``MANIFEST.json`` (sha256 + size of every file) and
swapped in with a rename, so an interrupted download never looks installed.
:func:`verify_manifest` checks an installed tree against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import ClusterSettings
from ..core.errors import DownloadError

log = logging.getLogger(__name__)

LOG4J_VERSION = "2.24.3"
#: Resolves Kafka's dependency tree (``copy-dependencies``).
DEPENDENCY_PLUGIN = "3.8.1"
#: Copies the Apicurio tarball. Plugin 3.x reads the artifact's POM first, and the parent
#: POM of ``apicurio-registry-app`` 3.0.x is not published, so it fails; 2.8 resolves the
#: bare artifact (checksums are still verified with ``--strict-checksums``).
DEPENDENCY_PLUGIN_COPY = "2.8"
MANIFEST = "MANIFEST.json"
#: Apache Avro (Java), for the tests' non-Python consumer of the predictions topics
AVRO_VERSION = "1.12.0"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` into ``root/MANIFEST.json`` (written last)."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    if not files:
        raise DownloadError(f"nothing was installed into {root}")
    manifest: dict[str, Any] = {**(extra or {}), "files": files}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(root / MANIFEST)
    return manifest


def verify_manifest(root: Path) -> str | None:
    """``None`` when ``root`` matches its manifest, else why not."""
    mpath = root / MANIFEST
    if not mpath.is_file():
        return f"no {MANIFEST} in {root}"
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {mpath}: {e}"
    if not files:
        return f"empty {mpath}"
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            return f"missing {p}"
        if p.stat().st_size != meta["size"]:
            return f"size mismatch for {p}"
        if sha256_file(p) != meta["sha256"]:
            return f"sha256 mismatch for {p}"
    return None


class Installer:
    """Installs Kafka and the registry of ``settings`` into ``cache_dir`` (the caller
    holds the cache's lock)."""

    def __init__(self, settings: ClusterSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.kafka_home = cache_dir / f"kafka-{settings.kafka_version}"
        self.registry_home = cache_dir / f"apicurio-{settings.apicurio_version}"
        self.s3proxy_home = cache_dir / f"s3proxy-{settings.s3proxy_version}"
        self.avro_home = cache_dir / f"avro-{AVRO_VERSION}"

    @property
    def avro_jar(self) -> Path:
        """The Apache Avro jar (installed by :meth:`install`)."""
        return self.avro_home / "libs" / f"avro-{AVRO_VERSION}.jar"

    def install(self) -> None:
        """Download and verify what the cache lacks; a no-op when it verifies."""
        t0 = time.monotonic()
        ver = self.settings
        if (why := verify_manifest(self.kafka_home)) is not None:
            log.info("installing kafka %s (%s)", ver.kafka_version, why)
            self._install_into(self.kafka_home, self._fetch_kafka)
        if (why := verify_manifest(self.registry_home)) is not None:
            log.info("installing apicurio registry %s (%s)", ver.apicurio_version, why)
            self._install_into(self.registry_home, self._fetch_registry)
        if (why := verify_manifest(self.s3proxy_home)) is not None:
            log.info("installing s3proxy %s (%s)", ver.s3proxy_version, why)
            self._install_into(self.s3proxy_home, self._fetch_s3proxy)
        log.info("install checked in %.1fs", time.monotonic() - t0)

    def install_avro(self) -> None:
        """The Apache Avro jar, downloaded and verified when the cache lacks it."""
        if (why := verify_manifest(self.avro_home)) is not None:
            log.info("installing apache avro %s (%s)", AVRO_VERSION, why)
            self._install_into(self.avro_home, self._fetch_avro)

    def _install_into(self, final: Path, fetch: Any) -> None:
        """Fetch into a temp dir next to ``final``, then swap it in with a rename, so an
        interrupted download never looks installed."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.cache_dir))
        try:
            fetch(staging)
            write_manifest(staging, {"name": final.name})
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _mvn(self, args: Sequence[str], cwd: Path) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DownloadError(
                "no 'mvn' on PATH: the local cluster is downloaded with Maven "
                "(e.g. apt-get install maven)"
            )
        cmd = [mvn, "-B", "-q", "--strict-checksums", "-Dstyle.color=never", *args]
        log.debug("running %s", " ".join(cmd))
        try:
            out = subprocess.run(
                cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=1800
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DownloadError(f"mvn failed: {e}") from e
        if out.returncode != 0:
            text = _ANSI.sub("", out.stdout + out.stderr)
            lines = [ln for ln in text.splitlines() if ln.strip()][-15:]
            raise DownloadError(f"mvn exited with {out.returncode}:\n" + "\n".join(lines))

    def _write_pom(self, staging: Path) -> Path:
        template = (
            resources.files(__package__ or "streamscore")  # resources/ sits beside this module
            .joinpath("resources/cluster-pom.xml")
            .read_text(encoding="utf-8")
        )
        pom = (
            template.replace("@KAFKA_VERSION@", self.settings.kafka_version)
            .replace("@LOG4J_VERSION@", LOG4J_VERSION)
            .replace("@DEPENDENCY_PLUGIN_VERSION@", DEPENDENCY_PLUGIN)
        )
        path = staging / ".pom" / "pom.xml"
        path.parent.mkdir(parents=True)
        path.write_text(pom, encoding="utf-8")
        return path

    def _fetch_kafka(self, staging: Path) -> None:
        pom = self._write_pom(staging)
        libs = staging / "libs"
        self._mvn(
            [
                "-f",
                str(pom),
                f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN}"
                ":copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            cwd=pom.parent,
        )
        shutil.rmtree(pom.parent)
        if not any(libs.glob(f"kafka_2.13-{self.settings.kafka_version}.jar")):
            raise DownloadError(f"mvn did not produce kafka_2.13 in {libs}")

    def _fetch_registry(self, staging: Path) -> None:
        pom = self._write_pom(staging)
        dl = staging / ".download"
        v = self.settings.apicurio_version
        self._mvn(
            [
                "-f",
                str(pom),
                f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN_COPY}:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{v}:tar.gz:all",
                f"-DoutputDirectory={dl}",
            ],
            cwd=pom.parent,
        )
        tarballs = list(dl.glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise DownloadError(f"mvn did not produce the apicurio tarball in {dl}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(staging, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extractall(staging)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DownloadError(f"cannot extract {tarballs[0].name}: {e}") from e
        shutil.rmtree(dl)
        shutil.rmtree(pom.parent)
        self.registry_jar(staging)  # fails now rather than at start time

    def _copy_artifact(self, staging: Path, artifact: str, out: Path) -> None:
        """One Maven artifact (``group:name:version[:type:classifier]``) copied into
        ``out`` by the dependency plugin, through a throwaway pom under ``staging``."""
        pom = self._write_pom(staging)
        self._mvn(
            [
                "-f",
                str(pom),
                f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN_COPY}:copy",
                f"-Dartifact={artifact}",
                f"-DoutputDirectory={out}",
            ],
            cwd=pom.parent,
        )
        shutil.rmtree(pom.parent)

    def _fetch_avro(self, staging: Path) -> None:
        libs = staging / "libs"
        self._copy_artifact(staging, f"org.apache.avro:avro:{AVRO_VERSION}", libs)
        if not (libs / f"avro-{AVRO_VERSION}.jar").is_file():
            raise DownloadError(f"mvn did not produce avro-{AVRO_VERSION}.jar in {libs}")

    def _fetch_s3proxy(self, staging: Path) -> None:
        v = self.settings.s3proxy_version
        self._copy_artifact(staging, f"org.gaul:s3proxy:{v}:jar:jar-with-dependencies", staging)
        self.s3proxy_jar(staging)  # fails now rather than at start time

    @property
    def s3proxy_jar_name(self) -> str:
        return f"s3proxy-{self.settings.s3proxy_version}-jar-with-dependencies.jar"

    def s3proxy_jar(self, home: Path | None = None) -> Path:
        """The runnable S3Proxy jar in an installed ``home``."""
        jar = (home or self.s3proxy_home) / self.s3proxy_jar_name
        if not jar.is_file():
            raise DownloadError(f"no {jar.name} in {home}")
        return jar

    @staticmethod
    def registry_jar(home: Path) -> Path:
        """The registry's runnable jar in an installed ``home``."""
        for cand in (home / "quarkus-app" / "quarkus-run.jar", home / "quarkus-run.jar"):
            if cand.is_file():
                return cand
        runners = sorted(home.glob("*-runner.jar"))
        if runners:
            return runners[0]
        raise DownloadError(f"no quarkus-run.jar or *-runner.jar in {home}")
