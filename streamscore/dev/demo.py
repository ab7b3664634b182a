"""`streamscore demo`: the whole loop on the local cluster, with a picture at the end.

Starts the local cluster, publishes a signed v1 model trained without feature c, starts
two score workers and a feedback worker (auto-promotion on) as separate processes, and
produces events at a steady rate: v1 events first, then v2 events carrying c (schema
evolution live), plus a small share of malformed messages. A labeller sends each event's
true y to the feedback topic after a delay. Midway, `streamscore train` fits a candidate
with c on the ground truth the feedback worker collected and publishes it as shadow; the
feedback worker promotes it when it beats v1 on live labels, and the score workers swap
to it without a pause. The demo follows the predictions topic to measure live error per
version and end-to-end latency. Every process it starts is stopped on exit, Ctrl-C
included. Traffic starts once the workers' group has settled (and a freshly started broker
has had some warm-up traffic); the training run is background work, at a lower CPU
priority and single-threaded, so that it does not take the workers' cores.

This module is the orchestration (:class:`Demo`): the steps above, in order, on time. The
parts live next to it: :mod:`~streamscore.dev.supervise` (child processes and their
priorities), :mod:`~streamscore.dev.traffic` (events and labels),
:mod:`~streamscore.dev.observe` (predictions, dead letters and ``/metrics`` as the demo
sees them), :mod:`~streamscore.dev.report` (summary and plot); topics are created by
:mod:`streamscore.kafka.admin`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import (
    SIGNING_ENV,
    ClusterSettings,
    KafkaSettings,
    RegistrySettings,
    TopicSettings,
)
from ..core.records import Role
from ..kafka.admin import create_topics, standard_topics
from ..kafka.clients import admin_config
from ..models.publish import ModelTopic
from ..models.signing import Ed25519Signer, keygen
from ..serde import schemas
from ..serde.message import AvroDeserializer, topic_serializer
from ..serde.wire import WriterSchemaCache, registry_client
from . import observe, report
from .observe import Observer
from .supervise import BACKGROUND_THREADS_ENV, processes, run_background, start_cli, wait_settled
from .synthetic import demo_bundle
from .traffic import Traffic

#: The score workers export their metrics on 9400, 9401, ...; the feedback worker on 9500.
WORKER_METRICS_PORT = 9400
FEEDBACK_METRICS_PORT = 9500
#: The largest model bundle the demo publishes (its model topic takes 64 KiB more).
MODEL_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DemoSettings:
    duration_s: float = 120.0
    rate: float = 400.0  # events per second
    bad_fraction: float = 0.01
    workers: int = 2
    results_dir: Path = Path("results")
    keep_cluster: bool = True
    label_delay_s: float = 1.0
    v2_events_at: float = 0.25  # share of the duration after which events carry c
    train_at: float = 0.45  # share of the duration after which the candidate is trained
    promote_min_labels: int = 300
    # unmeasured traffic before the measured run when the demo has just started the local
    # cluster: a fresh broker compiles its hot paths (JIT) during its first seconds of
    # traffic, at several hundred milliseconds of end-to-end latency
    warmup_s: float = 10.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: the demo's project file: its features and training recipe
    project: Path = field(default_factory=lambda: demo_project())


def demo_project() -> Path:
    """``examples/demo/streamscore.toml`` of this checkout (the demo runs from one)."""
    return Path(__file__).resolve().parents[2] / "examples" / "demo" / "streamscore.toml"


def _topics(run_id: str) -> TopicSettings:
    return TopicSettings(
        events=f"demo.{run_id}.events",
        predictions=f"demo.{run_id}.predictions",
        predictions_shadow=f"demo.{run_id}.predictions.shadow",
        telemetry=f"demo.{run_id}.telemetry",
        models=f"demo.{run_id}.models",
        feedback=f"demo.{run_id}.feedback",
        dlq=f"demo.{run_id}.events.dlq",
        late=f"demo.{run_id}.events.late",
    )


class Demo:
    def __init__(
        self,
        settings: DemoSettings,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        cluster: ClusterSettings | None,
    ) -> None:
        self.s = settings
        self.kafka = kafka
        self.registry_settings = registry
        self.cluster = cluster
        self.topics = _topics(settings.run_id)
        # a key pair per run, made on the spot (removed with this object or at exit): the
        # publishers (this process, training, the auto-promoting feedback worker) get the
        # private key's file, the score workers only the public key's
        self._keys_dir = tempfile.TemporaryDirectory(prefix="streamscore-demo-keys-")
        self.keys = keygen(Path(self._keys_dir.name), "demo")
        self.signer = Ed25519Signer.from_file(self.keys.private_file)
        self.stop = threading.Event()
        self.traffic = Traffic(
            kafka,
            self.topics,
            rate=settings.rate,
            bad_fraction=settings.bad_fraction,
            label_delay_s=settings.label_delay_s,
            stop=self.stop,
        )
        self.truth = self.traffic.truth
        self.observer = Observer(
            kafka,
            registry,
            self.topics,
            self.truth,
            group_id=f"demo-observer-{settings.run_id}",
            stop=self.stop,
            on_new_version=lambda v: self._mark(f"workers answer with v{v} (promoted)"),
        )
        self.obs = self.observer.obs
        self.timeline: list[tuple[float, str]] = []
        self.t0 = time.time()
        self.store_dir = settings.results_dir / "groundtruth"
        self.children: list[subprocess.Popen[Any]] = []
        self.training_runs: list[tuple[float, float]] = []  # (start, end), wall clock
        self._shadow_out = False  # the retrained candidate has been published
        self._shown_output = ""  # what of the training run's output was printed
        self.final_active = ""
        self.final_feedback_mae: dict[str, float] = {}

    def _mark(self, text: str) -> None:
        self.timeline.append((time.time(), text))
        print(f"demo: {text}", flush=True)

    # ---- setup
    def _create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        specs = standard_topics(
            self.topics,
            partitions=4,
            model_partitions=1,
            model_topic_max_bytes=MODEL_MAX_BYTES + 65536,
        )
        create_topics(AdminClient(admin_config(self.kafka)), specs, exist_ok=False)

    def _child_env(self, *, background: bool = False, publisher: bool = False) -> dict[str, str]:
        # the caller's own signing settings are not handed on: the children use the demo's
        env = {k: v for k, v in os.environ.items() if k not in SIGNING_ENV}
        if background:
            env.update(BACKGROUND_THREADS_ENV)
        env.update(
            {
                "STREAMSCORE_BOOTSTRAP": self.kafka.bootstrap_servers,
                "STREAMSCORE_REGISTRY_URL": self.registry_settings.url,
                "STREAMSCORE_PUBLIC_KEY_FILE": str(self.keys.public_file),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if publisher:
            env["STREAMSCORE_SIGNING_KEY_FILE"] = str(self.keys.private_file)
        env.update(self.topics.as_env())
        env["STREAMSCORE_CONFIG"] = str(self.s.project)
        return env

    def _model_topic(self, reg: Any) -> ModelTopic:
        schema = schemas.load("model_envelope")
        return ModelTopic(
            self.kafka,
            self.topics.models,
            encode=topic_serializer(
                reg, self.registry_settings, "models", self.topics.models, schema
            ),
            decode=AvroDeserializer(WriterSchemaCache(reg), schema),
            max_message_bytes=MODEL_MAX_BYTES,
        )

    def _wait_settled(self, group_id: str, members: int, timeout: float = 30.0) -> None:
        """Waits until the score workers' group has settled. Otherwise the rebalance that
        follows the second worker's join stalls half the partitions for a second or two
        after traffic starts, about 1 % of a minute's events: the p99 itself."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(admin_config(self.kafka))
        if not wait_settled(admin, group_id, self.topics.events, members, timeout):
            print(
                f"demo: the score workers' group did not settle in {timeout:.0f}s; starting anyway",
                flush=True,
            )

    def _start(
        self, name: str, args: list[str], *, publisher: bool = False
    ) -> subprocess.Popen[bytes]:
        return start_cli(
            args, self._child_env(publisher=publisher), self.s.results_dir / f"{name}.log"
        )

    def _retrain(self) -> bool:
        """Fit a candidate with c on the ground truth and publish it as shadow."""
        args = [
            "train",
            "--groundtruth",
            str(self.store_dir),
            "--as",
            "shadow",
            "--min-rows",
            "200",
            "--publisher",
            "demo-retrain",
        ]
        started = time.time()
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            # the candidate is out now, whenever the process exits (a busy machine can
            # take seconds to end it, and the promotion may come first)
            if line.startswith("published ") and not self._shadow_out:
                self._shadow_published("".join(lines))

        try:
            # stopped with the others, Ctrl-C included; below the score workers' priority
            rc, out = run_background(
                args,
                self._child_env(background=True, publisher=True),
                self.children,
                timeout_s=120,
                on_line=on_line,
            )
        finally:
            self.training_runs.append((started, time.time()))
        (self.s.results_dir / "train.log").write_text(out)
        if self._shadow_out:
            rest = out[len(self._shown_output) :].rstrip()
            if rest:
                print(rest, flush=True)
            return True
        if rc != 0:
            print(f"demo: training not published yet (exit {rc}); retrying", flush=True)
            return False
        self._shadow_published(out)
        return True

    def _shadow_published(self, output: str) -> None:
        print(output.rstrip(), flush=True)
        self._shown_output = output
        self._shadow_out = True
        self._mark("v2 (a, b, c) trained on the ground truth, out as shadow")

    # ---- output
    def _active_models(self) -> str:
        return observe.active_models(WORKER_METRICS_PORT)

    def _feedback_mae(self) -> dict[str, float]:
        return observe.feedback_mae(FEEDBACK_METRICS_PORT)

    def _progress(self) -> str:
        recent = report.mae_by_version(self.obs, time.time() - 10)
        mae = ", ".join(f"v{v}: {m:.3f}" for v, m in recent.items())
        fb = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(self._feedback_mae().items()))
        return (
            f"[{time.time() - self.t0:5.0f}s] produced {self.truth.produced:>6}  "
            f"scored {self.obs.predictions:>6}  dead-lettered {sum(self.obs.dead.values()):>3}  "
            f"labels {self.traffic.labels_sent:>6} | active: {self._active_models() or '-'} | "
            f"live MAE (feedback worker): {fb or '-'} | demo's own, last 10 s: {mae or '-'}"
        )

    def _record(self) -> report.RunRecord:
        return report.RunRecord(
            t0=self.t0,
            timeline=self.timeline,
            training_runs=self.training_runs,
            labels_sent=self.traffic.labels_sent,
            active_at_end=self.final_active,
            feedback_mae_at_end=self.final_feedback_mae,
        )

    def summary(self) -> dict[str, Any]:
        return report.summary(self.obs, self.truth, self._record())

    def plot(self, path: Path) -> Path | None:
        return report.plot(self.obs, self._record(), path)

    # ---- main
    def run(self) -> dict[str, Any]:
        fresh_cluster = False
        if self.cluster is not None:
            from .localcluster import LocalCluster

            print("demo: starting the local cluster (first run downloads it)…", flush=True)
            local = LocalCluster(self.cluster, TopicSettings())
            fresh_cluster = not local.status().running
            local.up()
        self._create_topics()
        reg = registry_client(self.registry_settings.client_config())
        models = self._model_topic(reg)
        models.publish(
            demo_bundle("ab", version=1).to_bytes(),
            Role.PRIMARY,
            key=self.signer,
            publisher="demo",
        )
        shutil.rmtree(self.store_dir, ignore_errors=True)
        with processes() as procs:
            self.children = procs
            for i in range(self.s.workers):
                procs.append(
                    self._start(
                        f"worker-{i + 1}",
                        [
                            "score",
                            "--worker-id",
                            f"demo-{i + 1}",
                            "--group-id",
                            f"demo-{self.s.run_id}",
                            "--metrics-port",
                            str(WORKER_METRICS_PORT + i),
                        ],
                    )
                )
            feedback = self._start(
                "feedback",
                [
                    "feedback",
                    "--group-id",
                    f"demo-feedback-{self.s.run_id}",
                    "--groundtruth",
                    str(self.store_dir),
                    "--metrics-port",
                    str(FEEDBACK_METRICS_PORT),
                    "--auto-promote",
                    "--promote-min-labels",
                    str(self.s.promote_min_labels),
                    "--window",
                    "10m",
                    "--state-dir",
                    f"{self.store_dir}-state",
                ],
                publisher=True,  # --auto-promote signs what it promotes
            )
            procs.append(feedback)
            workers = list(procs)  # the long-running ones; training runs come and go
            observe.wait_model_loaded(
                workers[: self.s.workers],
                [WORKER_METRICS_PORT + i for i in range(self.s.workers)],
                self.s.results_dir,
            )
            self._wait_settled(f"demo-{self.s.run_id}", self.s.workers)
            print(
                "demo: 2 score workers and a feedback worker are up; metrics on "
                + ", ".join(
                    observe.metrics_url(WORKER_METRICS_PORT + i) for i in range(self.s.workers)
                )
                + f", {observe.metrics_url(FEEDBACK_METRICS_PORT)}",
                flush=True,
            )
            ser, producer = self.traffic.events_producer(reg)
            if fresh_cluster and self.s.warmup_s > 0:
                print(
                    f"demo: the broker has just started: {self.s.warmup_s:.0f}s of unmeasured "
                    "warm-up traffic first",
                    flush=True,
                )
                self.traffic.warm_up(ser, producer, self.s.warmup_s)
            self.t0 = time.time()
            self._mark("v1 (features a, b) published as primary, signed")
            threads = [
                threading.Thread(
                    target=self.traffic.produce,
                    args=(ser, producer),
                    kwargs={
                        "t0": self.t0,
                        "duration_s": self.s.duration_s,
                        "v2_from": self.t0 + self.s.duration_s * self.s.v2_events_at,
                    },
                    daemon=True,
                ),
                threading.Thread(target=self.traffic.label, args=(reg,), daemon=True),
                threading.Thread(target=self.observer.run, daemon=True),
            ]
            for t in threads:
                t.start()
            v2_events_at = self.t0 + self.s.duration_s * self.s.v2_events_at
            train_at = self.t0 + self.s.duration_s * self.s.train_at
            v2_events_marked = trained = False
            next_try = train_at
            trainer: threading.Thread | None = None
            train_result: list[bool] = []
            try:
                next_progress = time.time() + 2
                while threads[0].is_alive():
                    # a progress line every 2 s; the switch and the training run on time
                    due = [next_progress]
                    if not v2_events_marked:
                        due.append(v2_events_at)
                    if not trained and trainer is None:
                        due.append(next_try)
                    time.sleep(max(0.05, min(due) - time.time()))
                    if time.time() >= next_progress:
                        print(self._progress(), flush=True)
                        next_progress = time.time() + 2
                    for p in workers:
                        if p.poll() is not None:
                            raise RuntimeError(
                                f"a worker exited with {p.returncode}; see "
                                f"{self.s.results_dir}/*.log"
                            )
                    now = time.time()
                    if not v2_events_marked and now >= v2_events_at:
                        self._mark("producers switch to v2 events (with c)")
                        v2_events_marked = True
                    if trainer is not None and not trainer.is_alive():
                        trainer = None
                        trained = bool(train_result and train_result[-1])
                        if not trained:
                            next_try = now + 3
                    if not trained and trainer is None and now >= next_try:
                        # in the background: progress keeps printing while it trains
                        trainer = threading.Thread(
                            target=lambda: train_result.append(self._retrain()), daemon=True
                        )
                        trainer.start()
                # let the last events and labels drain
                deadline = time.time() + 15
                while time.time() < deadline and (
                    self.obs.predictions + sum(self.obs.dead.values()) < self.truth.produced
                ):
                    time.sleep(0.5)
                time.sleep(self.s.label_delay_s + 2)  # the last labels reach the feedback worker
                self.final_active = self._active_models()
                self.final_feedback_mae = self._feedback_mae()
            finally:
                self.stop.set()
                for t in threads:
                    t.join(10)
        summary = self.summary()
        self.s.results_dir.mkdir(parents=True, exist_ok=True)
        (self.s.results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot = self.plot(self.s.results_dir / "demo.png")
        summary["plot"] = str(plot) if plot else None
        return summary
