"""Every Prometheus metric, defined once, on an injected registry.

Tests build a fresh ``CollectorRegistry`` and read exact sample values with
``registry.get_sample_value(...)``; processes pass their own registry to :func:`serve`.
Lag and drift are gauges computed at scrape time, the per-event histograms take arrays
(:mod:`streamscore.metrics.collectors`); the rest are prometheus_client's own classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .collectors import BulkHistogram, GaugeSpec, ScrapedGauges

PREFIX = "streamscore"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_SCORE_BUCKETS = (-1000, -500, -250, -100, -50, -10, 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1, 10, 50, 100)

#: The live quality gauges of a feedback worker, ``streamscore_live_<name>``, by model
#: version and role (then ``live_reliability``): regression gets mae/rmse, classifiers
#: accuracy, log_loss, and roc_auc (binary) or macro_f1 (multi-class).
LIVE_FAMILIES = (
    ("labelled", "Labelled predictions currently in the rolling quality window."),
    ("mae", "Rolling mean absolute error (regressors)."),
    ("rmse", "Rolling root mean squared error (regressors)."),
    ("accuracy", "Rolling accuracy (classifiers)."),
    ("log_loss", "Rolling log loss: mean -log p(true class) (classifiers)."),
    ("roc_auc", "Rolling ROC AUC of the positive class's probability (binary classifiers)."),
    ("macro_f1", "Rolling macro-averaged F1 (multi-class classifiers)."),
)

ProcessKind = Literal["score", "feedback"]


class Metrics:
    """The score worker's and the feedback worker's metrics (one process uses a subset).

    ``kind`` names the process: only the series that kind of process sets are registered
    on ``registry`` (and exported); the others stay usable objects that export nothing.
    An unlabelled gauge exports its 0 from the start, so a feedback worker registering
    ``model_loaded`` would report "no model loaded" forever. ``None`` (tests, benchmarks)
    registers every series.
    """

    def __init__(self, registry: CollectorRegistry, kind: ProcessKind | None = None) -> None:
        self.registry = registry
        self.kind = kind
        both = registry
        score = registry if kind in (None, "score") else None
        feedback = registry if kind in (None, "feedback") else None
        # ---- scoring
        self.events_consumed = Counter(
            f"{PREFIX}_events_consumed",
            "Messages consumed from the events topic.",
            ["topic"],
            registry=score,
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions",
            "Predictions produced.",
            ["model_name", "model_version", "role"],
            registry=score,
        )
        self.invalid_events = Counter(
            f"{PREFIX}_invalid_events",
            "Messages that could not be scored, by reason.",
            ["reason"],
            registry=both,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Messages written to the dead-letter topic.",
            ["reason"],
            registry=both,
        )
        self.late_events = Counter(
            f"{PREFIX}_late_events",
            "Events older than the latency SLA, by policy.",
            ["policy"],
            registry=score,
        )
        self.degraded_predictions = Counter(
            f"{PREFIX}_degraded_predictions",
            "Predictions answered by a fallback because the primary failed.",
            ["model_name"],
            registry=score,
        )
        self.shadow_skipped = Counter(
            f"{PREFIX}_shadow_skipped",
            "Events a shadow or canary model could not score (invalid for its feature spec).",
            ["role"],
            registry=score,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Messages per micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=score,
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds",
            "Time per batch spent in each stage.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=score,
        )
        # per-event histograms, fed a sample array per batch
        self.end_to_end_latency = BulkHistogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "Prediction handed to the producer, minus the event's own time.",
            buckets=_LATENCY_BUCKETS,
            registry=score,
        )
        self.scores = BulkHistogram(
            f"{PREFIX}_prediction_score",
            "Scores produced (regression value or top probability).",
            ["role"],
            buckets=_SCORE_BUCKETS,
            registry=score,
        )
        #: computed at scrape time from the positions and high watermarks the score loop
        #: records (its ``PartitionTracker`` binds itself): one row per owned partition
        self.consumer_lag = ScrapedGauges(
            GaugeSpec(
                f"{PREFIX}_consumer_lag",
                "High watermark minus position, per owned partition.",
                ("topic", "partition"),
            ),
            registry=score,
        )
        self.backpressure_pauses = Counter(
            f"{PREFIX}_backpressure_pauses",
            "Times consumption paused because the producer queue was full.",
            registry=score,
        )
        self.registry_unavailable_batches = Counter(
            f"{PREFIX}_registry_unavailable_batches",
            "Batches put back and consumed again because the schema registry could not be "
            "reached (retried with backoff, never dead-lettered): score workers, and the "
            "feedback worker's router and join loop.",
            registry=both,
        )
        self.batches_aborted = Counter(
            f"{PREFIX}_batches_aborted",
            "Batches aborted and re-consumed (exactly-once mode).",
            registry=score,
        )
        self.transaction_retries = Counter(
            f"{PREFIX}_transaction_retries",
            "Exactly-once trouble, by outcome: retried (a transactional call made again once "
            "the broker answered), aborted (a batch aborted and consumed again), "
            "producer_replaced (a call hung: a new producer fenced the old one).",
            ["outcome"],
            registry=score,
        )
        # ---- model lifecycle
        self.model_updates_applied = Counter(
            f"{PREFIX}_model_updates_applied",
            "Model updates activated.",
            ["role"],
            registry=score,
        )
        self.model_updates_rejected = Counter(
            f"{PREFIX}_model_updates_rejected",
            "Model updates refused, by reason.",
            ["reason"],
            registry=score,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "1 for each active model (name, version, role).",
            ["model_name", "model_version", "role"],
            registry=score,
        )
        self.model_loaded = Gauge(
            f"{PREFIX}_model_loaded",
            "1 when a primary model is active, 0 while waiting.",
            registry=score,
        )
        self.model_swap_seconds = Histogram(
            f"{PREFIX}_model_swap_seconds",
            "Model publish time to activation in this worker.",
            buckets=_LATENCY_BUCKETS,
            registry=score,
        )
        # ---- drift: computed at scrape time from the active primary's drift window
        #: (the score loop's ``DriftTracker`` binds itself); families in this order
        self.drift = ScrapedGauges(
            GaugeSpec(
                f"{PREFIX}_feature_drift_psi",
                "Population stability index of a live window against the bundle's reference.",
                ("feature", "model_version"),
            ),
            GaugeSpec(
                f"{PREFIX}_feature_missing_share",
                "Share of missing values in the live drift window (feature or score).",
                ("feature", "model_version"),
            ),
            GaugeSpec(
                f"{PREFIX}_feature_out_of_range_share",
                "Share of live values outside the reference [min, max] (feature or score).",
                ("feature", "model_version"),
            ),
            GaugeSpec(
                f"{PREFIX}_drift_window_events",
                "Events currently in the drift window (PSI is noisy while this is small).",
                ("model_version",),
            ),
            registry=score,
        )
        self.model_holdout_metric = Gauge(
            f"{PREFIX}_model_holdout_metric",
            "Holdout metric recorded in the active bundle (e.g. mae), for live comparison.",
            ["model_version", "role", "metric"],
            registry=score,
        )
        # ---- feedback
        self.feedback_received = Counter(
            f"{PREFIX}_feedback_received",
            "Labels consumed from the feedback topic.",
            registry=feedback,
        )
        self.feedback_routed = Counter(
            f"{PREFIX}_feedback_routed",
            "Predictions and labels re-keyed by event id onto the join topic, by kind.",
            ["kind"],
            registry=feedback,
        )
        self.feedback_joined = Counter(
            f"{PREFIX}_feedback_joined",
            "Labels joined with a prediction.",
            ["model_version", "role"],
            registry=feedback,
        )
        self.feedback_unmatched = Counter(
            f"{PREFIX}_feedback_unmatched",
            "Labels that found no prediction within the window.",
            registry=feedback,
        )
        self.feedback_pending = Gauge(
            f"{PREFIX}_feedback_pending",
            "Labels and predictions waiting in the join state.",
            ["side"],
            registry=feedback,
        )
        # observed a batch of joined pairs at a time (observe_many)
        self.residuals = BulkHistogram(
            f"{PREFIX}_residual",
            "Label minus prediction (regressors).",
            ["model_version", "role"],
            buckets=(-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50),
            registry=feedback,
        )
        self.label_delay = BulkHistogram(
            f"{PREFIX}_label_delay_seconds",
            "Label observed time minus event time.",
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 86400),
            registry=feedback,
        )
        self.checkpoint_seconds = Histogram(
            f"{PREFIX}_feedback_checkpoint_seconds",
            "Feedback checkpoint time by step: the ground-truth merge (groundtruth), the "
            "changelog transaction with the offsets (changelog), the local store (state).",
            ["step"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=feedback,
        )
        # ---- feedback: label accounting, classifier quality, promotion (issue 4)
        self.feedback_labels = Counter(
            f"{PREFIX}_feedback_labels",
            "Labels settled, by outcome (joined | unmatched | duplicate | released); "
            "received = sum of outcomes + feedback_pending{side=label}.",
            ["outcome"],
            registry=feedback,
        )
        #: live quality per (model version, role), computed from the rolling windows of
        #: joined labels (``feedback.promotion.LiveQuality`` binds itself); families in
        #: the order of :data:`LIVE_FAMILIES`
        self.live = ScrapedGauges(
            *(
                GaugeSpec(f"{PREFIX}_live_{name}", doc, ("model_version", "role"))
                for name, doc in LIVE_FAMILIES
            ),
            GaugeSpec(
                f"{PREFIX}_live_reliability",
                "Rolling reliability diagram (classifiers): per confidence bucket, the mean "
                "predicted probability (stat=predicted), observed frequency (stat=observed) "
                "and row count (stat=count).",
                ("model_version", "role", "bucket", "stat"),
            ),
            registry=feedback,
        )
        self.promotion_decisions = Counter(
            f"{PREFIX}_promotion_decisions",
            "Automatic shadow promotion decisions, by outcome (promoted | declined | failed).",
            ["outcome"],
            registry=feedback,
        )

    def counters(self) -> dict[str, Counter]:
        """Every counter, by family name (what a child process's counts are added to,
        :mod:`streamscore.metrics.forward`)."""
        return {
            next(iter(c.describe())).name: c for c in vars(self).values() if isinstance(c, Counter)
        }


@dataclass
class MetricsServer:
    server: Any
    thread: Any
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Expose ``registry`` on ``http://host:port/metrics`` (port 0 picks a free one)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, server.server_address[1])
