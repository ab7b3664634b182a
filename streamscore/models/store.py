"""The active models of one worker, per role, behind an atomic swap.

The model watcher thread calls :meth:`ModelStore.offer` / :meth:`ModelStore.clear` with
models that :func:`streamscore.models.runtime.verify_and_load` already verified and self-checked.
The scoring loop calls :meth:`ModelStore.snapshot` once per batch and uses that immutable
:class:`ModelSnapshot` for the whole batch, so a batch never sees a half-applied swap.

Versions only go up per role: ``offer`` refuses a version lower than or equal to the
active one (:class:`StaleModelVersionError`), except that re-offering the *same* artifact
(same version, same digest: a re-read of the compacted topic) is an idempotent no-op.
``rollback`` therefore republishes the previous good model under a new, higher version;
``allow_downgrade=True`` exists for operators who really mean it.

Fallback: when a new primary replaces a primary, the old one becomes the fallback
(if it reads the same features), unless a baseline was pinned with
:meth:`ModelStore.set_baseline`. :func:`score_with_fallback` lets the fallback answer the
rows the primary fails on, marked degraded.

This module never imports ``confluent_kafka``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ..core.errors import ModelError, NoModelError, NonFiniteOutputError, StaleModelVersionError
from ..core.records import Role
from .meta import ModelMeta
from .runtime import LoadedModel, ScoreBatch

__all__ = [
    "FallbackResult",
    "ModelSnapshot",
    "ModelStore",
    "NonFiniteRowsError",
    "StaleModelVersionError",
    "canary_mask",
    "score_with_fallback",
]

BoolArray = npt.NDArray[np.bool_]


class NonFiniteRowsError(NonFiniteOutputError):
    """Some rows got non-finite outputs from every model available; ``rows`` are their
    indices in the batch (candidate for errors.py)."""

    def __init__(self, message: str, *, rows: npt.NDArray[np.intp]) -> None:
        super().__init__(message)
        self.rows = rows


_U64 = np.dtype(">u8")
_TWO_64 = 2**64


def canary_mask(keys: Sequence[str | None], fraction: float) -> BoolArray:
    """True for keys in the canary slice: the first 8 bytes of blake2b(key) read as a
    big-endian uint64, divided by 2**64, below ``fraction``. Stable across processes and
    runs; a ``None`` key is never in the canary."""
    n = len(keys)
    if n == 0 or fraction <= 0.0:
        return np.zeros(n, dtype=np.bool_)
    present = np.fromiter((k is not None for k in keys), dtype=np.bool_, count=n)
    if fraction >= 1.0:
        return present
    digests = b"".join(
        hashlib.blake2b(k.encode("utf-8") if k is not None else b"", digest_size=8).digest()
        for k in keys
    )
    h = np.frombuffer(digests, dtype=_U64)
    threshold = np.uint64(min(int(fraction * _TWO_64), _TWO_64 - 1))
    mask: BoolArray = (h < threshold) & present
    return mask


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What one batch scores with. Immutable; ``generation`` counts applied changes."""

    primary: LoadedModel | None = None
    shadow: LoadedModel | None = None
    canary: LoadedModel | None = None
    fallback: LoadedModel | None = None
    generation: int = 0

    def get(self, role: Role) -> LoadedModel | None:
        if role is Role.PRIMARY:
            return self.primary
        if role is Role.SHADOW:
            return self.shadow
        return self.canary

    def versions(self) -> dict[str, int]:
        """``{role: version}`` of the active models (``"fallback"`` included)."""
        out = {r.value: m.meta.version for r in Role if (m := self.get(r)) is not None}
        if self.fallback is not None:
            out["fallback"] = self.fallback.meta.version
        return out

    def canary_mask(self, keys: Sequence[str | None], fraction: float) -> BoolArray:
        """Rows the canary serves; all False when no canary is active."""
        if self.canary is None:
            return np.zeros(len(keys), dtype=np.bool_)
        return canary_mask(keys, fraction)


def _same_features(a: LoadedModel, b: LoadedModel) -> bool:
    return a.meta.feature_spec.names == b.meta.feature_spec.names


class ModelStore:
    """Thread-safe holder of the active model per role plus a fallback."""

    def __init__(self, baseline: LoadedModel | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._snapshot = ModelSnapshot(fallback=baseline)
        self._baseline_pinned = baseline is not None

    def snapshot(self) -> ModelSnapshot:
        with self._cond:
            return self._snapshot

    @property
    def has_primary(self) -> bool:
        return self.snapshot().primary is not None

    def wait_for_primary(self, timeout: float | None = None) -> bool:
        """Block until a primary is active; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._snapshot.primary is not None, timeout)

    def offer(self, role: Role, model: LoadedModel, *, allow_downgrade: bool = False) -> bool:
        """Activate ``model`` for ``role``. Returns True if applied, False if it is the
        artifact already active (no-op). Raises StaleModelVersionError for a version
        <= the active one unless ``allow_downgrade``."""
        with self._cond:
            snap = self._snapshot
            current = snap.get(role)
            if current is not None:
                if (
                    current.meta.version == model.meta.version
                    and current.digest == model.digest
                    and not allow_downgrade
                ):
                    return False
                if model.meta.version <= current.meta.version and not allow_downgrade:
                    raise StaleModelVersionError(
                        f"{role.value} update {model.meta.name} v{model.meta.version} is not "
                        f"newer than the active v{current.meta.version}"
                    )
            fallback = snap.fallback
            if (
                role is Role.PRIMARY
                and current is not None
                and not self._baseline_pinned
                and current is not model
            ):
                fallback = current if _same_features(current, model) else None
            new = replace(
                snap,
                primary=model if role is Role.PRIMARY else snap.primary,
                shadow=model if role is Role.SHADOW else snap.shadow,
                canary=model if role is Role.CANARY else snap.canary,
                fallback=fallback,
                generation=snap.generation + 1,
            )
            self._snapshot = new
            self._cond.notify_all()
            return True

    def clear(self, role: Role) -> bool:
        """Deactivate ``role`` (e.g. a tombstone). The fallback is kept. True if changed."""
        with self._cond:
            snap = self._snapshot
            if snap.get(role) is None:
                return False
            self._snapshot = replace(
                snap,
                primary=None if role is Role.PRIMARY else snap.primary,
                shadow=None if role is Role.SHADOW else snap.shadow,
                canary=None if role is Role.CANARY else snap.canary,
                generation=snap.generation + 1,
            )
            self._cond.notify_all()
            return True

    def set_baseline(self, model: LoadedModel | None) -> None:
        """Pin an explicit fallback (None unpins: the next primary swap sets it again)."""
        with self._cond:
            self._baseline_pinned = model is not None
            self._snapshot = replace(
                self._snapshot, fallback=model, generation=self._snapshot.generation + 1
            )
            self._cond.notify_all()


@dataclass(frozen=True, slots=True, eq=False)
class FallbackResult:
    """Scores for a batch; rows where ``degraded`` is true came from ``fallback``."""

    batch: ScoreBatch
    degraded: BoolArray
    primary: ModelMeta | None
    fallback: ModelMeta | None

    def model_versions(self) -> npt.NDArray[np.int64]:
        """The version of the model that answered each row."""
        p = self.primary.version if self.primary is not None else 0
        f = self.fallback.version if self.fallback is not None else 0
        return np.where(self.degraded, np.int64(f), np.int64(p))

    def meta_for_row(self, i: int) -> ModelMeta:
        m = self.fallback if self.degraded[i] else self.primary
        assert m is not None
        return m


def score_with_fallback(
    snapshot: ModelSnapshot, X: npt.ArrayLike, model: LoadedModel | None = None
) -> FallbackResult:
    """Score ``X`` with ``model`` (default: the snapshot's primary).

    If it raises, the fallback answers every row; if it returns non-finite outputs for
    some rows, the fallback answers those rows. Those rows are marked degraded. Without a
    usable fallback (none, or it reads other features), the primary's ModelError
    propagates, or NonFiniteRowsError is raised. If the fallback's classes differ from the
    primary's it answers the whole batch (a batch carries one class list). If the fallback
    is also non-finite on some rows, NonFiniteRowsError names them.
    """
    primary = model if model is not None else snapshot.primary
    fb = snapshot.fallback
    if primary is None and fb is None:
        raise NoModelError("no model is active")
    if fb is not None and primary is not None and not _same_features(primary, fb):
        fb = None
    if fb is primary:
        fb = None
    x = np.asarray(X, dtype=np.float32)
    n = x.shape[0]

    if primary is None:
        assert fb is not None
        return _all_fallback(fb, x, None)
    try:
        out = primary.predict(x)
    except ModelError:
        if fb is None:
            raise
        return _all_fallback(fb, x, primary.meta)
    bad = ~out.finite_mask()
    if not bad.any():
        return FallbackResult(out, np.zeros(n, dtype=np.bool_), primary.meta, None)
    if fb is None:
        rows = np.flatnonzero(bad)
        raise NonFiniteRowsError(
            f"model {primary.meta.name} v{primary.meta.version} gave non-finite outputs "
            f"for {rows.size} of {n} rows and no fallback is available",
            rows=rows,
        )
    fb_out = fb.predict(x[bad])
    if not out.compatible_with(fb_out):
        return _all_fallback(fb, x, primary.meta)
    _raise_if_nonfinite(fb_out, np.flatnonzero(bad), fb)
    return FallbackResult(_scatter(out, bad, fb_out), bad, primary.meta, fb.meta)


def _all_fallback(
    fb: LoadedModel, x: npt.NDArray[np.float32], pm: ModelMeta | None
) -> FallbackResult:
    out = fb.predict(x)
    _raise_if_nonfinite(out, np.arange(x.shape[0]), fb)
    return FallbackResult(out, np.ones(x.shape[0], dtype=np.bool_), pm, fb.meta)


def _raise_if_nonfinite(out: ScoreBatch, rows: npt.NDArray[np.intp], m: LoadedModel) -> None:
    bad = ~out.finite_mask()
    if bad.any():
        raise NonFiniteRowsError(
            f"fallback {m.meta.name} v{m.meta.version} also gave non-finite outputs for "
            f"{int(bad.sum())} rows",
            rows=rows[bad],
        )


def _scatter(template: ScoreBatch, mask: BoolArray, part: ScoreBatch) -> ScoreBatch:
    """A batch shaped like ``template`` holding ``part``'s rows at ``mask``."""
    if part.values is not None:
        assert template.values is not None
        v = template.values.copy()
        v[mask] = part.values
        return ScoreBatch(template.task, values=v)
    assert template.probabilities is not None and template.labels is not None
    assert part.probabilities is not None and part.labels is not None
    p = template.probabilities.copy()
    p[mask] = part.probabilities
    lab = template.labels.copy()
    lab[mask] = part.labels
    return ScoreBatch(template.task, labels=lab, probabilities=p, classes=template.classes)
