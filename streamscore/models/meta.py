"""What a bundle says about its model, besides the graph: :class:`ModelMeta` (name,
version, task, feature spec, classes, holdout metrics, training window) and the
training-data :class:`ReferenceDistributions` (one quantile :class:`Histogram` per
feature and one of the model score) that drift detection compares live traffic with.

Pure: plain data with its JSON-ready ``to_dict``/``from_dict`` (the bundle header holds
it; see :mod:`streamscore.models.container`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.records import FeatureSpec, Task

__all__ = [
    "HIST_BINS",
    "Histogram",
    "ModelMeta",
    "ReferenceDistributions",
    "TrainingSource",
    "compute_histogram",
]

HIST_BINS = 10


@dataclass(frozen=True, slots=True)
class Histogram:
    """Quantile histogram of one variable on the training data.

    ``edges`` has ``len(proportions) + 1`` entries; the outer edges are the training min
    and max and the outer bins are meant to be read as open-ended (``searchsorted`` on the
    interior edges ``edges[1:-1]`` with ``side="right"`` gives the bin index).
    ``missing`` is the fraction of NaN values, which are not counted in ``proportions``.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float = 0.0

    def bin_index(self, values: npt.ArrayLike) -> npt.NDArray[np.intp]:
        return np.searchsorted(np.asarray(self.edges[1:-1]), values, side="right")

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls(
            tuple(float(x) for x in d["edges"]),
            tuple(float(x) for x in d["proportions"]),
            float(d.get("missing", 0.0)),
        )
        if len(h.edges) != len(h.proportions) + 1:
            raise ValueError("histogram edges/proportions length mismatch")
        return h


def compute_histogram(values: npt.ArrayLike, bins: int = HIST_BINS) -> Histogram:
    """Quantile bins (deduplicated) with open-ended outer bins; NaN counted as missing."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    finite = v[np.isfinite(v)]
    missing = float(np.isnan(v).sum() / n) if n else 0.0
    if finite.size == 0:
        return Histogram((0.0, 0.0), (0.0,), missing)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        return Histogram((float(edges[0]), float(edges[0])), (1.0,), missing)
    idx = np.searchsorted(edges[1:-1], finite, side="right")
    counts = np.bincount(idx, minlength=edges.size - 1)
    props = counts / finite.size
    return Histogram(tuple(float(e) for e in edges), tuple(float(p) for p in props), missing)


@dataclass(frozen=True, slots=True)
class ReferenceDistributions:
    """Training-data histograms per feature (by name) and of the model score."""

    features: Mapping[str, Histogram] = field(default_factory=lambda: MappingProxyType({}))
    score: Histogram | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": {k: h.to_dict() for k, h in self.features.items()},
            "score": None if self.score is None else self.score.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceDistributions:
        feats = {str(k): Histogram.from_dict(h) for k, h in d.get("features", {}).items()}
        s = d.get("score")
        return cls(MappingProxyType(feats), None if s is None else Histogram.from_dict(s))


@dataclass(frozen=True, slots=True)
class TrainingSource:
    """Where a model's training data was read: the ground-truth table's URI (no
    credentials: those are never part of it), the table version read (``None``: no table
    yet), the event-time range asked for and the rows read, and the field names the rows
    had. ``read_rows(uri, since, until, version=table_version)`` reads the same data
    back while the table's retention keeps its files."""

    uri: str
    table_version: int | None
    since_ms: int | None = None
    until_ms: int | None = None
    rows: int = 0
    id_field: str = "event_id"
    time_field: str = "event_time"
    label_field: str = "label"

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "table_version": self.table_version,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "rows": self.rows,
            "id_field": self.id_field,
            "time_field": self.time_field,
            "label_field": self.label_field,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingSource:
        def opt(k: str) -> int | None:
            v = d.get(k)
            return None if v is None else int(v)

        return cls(
            uri=str(d["uri"]),
            table_version=opt("table_version"),
            since_ms=opt("since_ms"),
            until_ms=opt("until_ms"),
            rows=int(d.get("rows", 0)),
            id_field=str(d.get("id_field", "event_id")),
            time_field=str(d.get("time_field", "event_time")),
            label_field=str(d.get("label_field", "label")),
        )


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """Everything about a model except its graph."""

    name: str
    version: int
    task: Task
    feature_spec: FeatureSpec
    created_at_ms: int
    train_window: tuple[int, int] | None = None
    holdout_metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    classes: tuple[str, ...] = ()
    reference_distributions: ReferenceDistributions = field(default_factory=ReferenceDistributions)
    #: the ground-truth table version the model was trained from (None: not from it)
    training_source: TrainingSource | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"model version must be an int, got {self.version!r}")
        if self.version < 1:
            raise ValueError(f"model version must be >= 1, got {self.version}")
        if self.task is Task.CLASSIFICATION and len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        if self.task is Task.REGRESSION and self.classes:
            raise ValueError("a regressor has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate classes: {self.classes}")

    @property
    def n_features(self) -> int:
        return len(self.feature_spec.fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task.value,
            "feature_spec": self.feature_spec.to_dict(),
            "created_at_ms": self.created_at_ms,
            "train_window": None if self.train_window is None else list(self.train_window),
            "holdout_metrics": {k: float(v) for k, v in self.holdout_metrics.items()},
            "classes": list(self.classes),
            "reference_distributions": self.reference_distributions.to_dict(),
            "training_source": (
                None if self.training_source is None else self.training_source.to_dict()
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMeta:
        tw = d.get("train_window")
        return cls(
            name=str(d["name"]),
            version=int(d["version"]),
            task=Task(d["task"]),
            feature_spec=FeatureSpec.from_dict(d["feature_spec"]),
            created_at_ms=int(d["created_at_ms"]),
            train_window=None if tw is None else (int(tw[0]), int(tw[1])),
            holdout_metrics=MappingProxyType(
                {str(k): float(v) for k, v in d.get("holdout_metrics", {}).items()}
            ),
            classes=tuple(str(c) for c in d.get("classes", ())),
            reference_distributions=ReferenceDistributions.from_dict(
                d.get("reference_distributions", {})
            ),
            training_source=(
                None
                if d.get("training_source") is None
                else TrainingSource.from_dict(d["training_source"])
            ),
        )
