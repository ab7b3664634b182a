"""Apply model envelopes to a :class:`ModelStore`: verify, load, check, then swap.

Pure (no Kafka imports): the watcher hands envelopes in; this decides. A rejected update
never touches the store, so the current model keeps serving; every decision is counted
and reported through the ``report`` callback (the worker turns it into a log line and a
telemetry record).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .bundle import LoadedModel, check_feature_compat, verify_and_load
from .envelope import FORMAT, Action, ModelEnvelope
from .errors import BundleDecodeError, IncompatibleFeatureSpecError, ModelError
from .metrics import Metrics
from .model_store import ModelStore
from .records import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpdateReport:
    kind: str  # model_applied | model_rejected | model_retired | model_unchanged
    envelope: ModelEnvelope
    reason: str | None = None
    detail: str | None = None


class ModelUpdater:
    def __init__(
        self,
        store: ModelStore,
        *,
        keyring: Mapping[str, bytes],
        reader_fields: Mapping[str, str],
        metrics: Metrics,
        report: Callable[[UpdateReport], None] = lambda r: None,
        max_bytes: int = 64 * 1024 * 1024,
        intra_op_threads: int = 1,
        model_name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._reader_fields = reader_fields
        self._metrics = metrics
        self._report = report
        self._max_bytes = max_bytes
        self._threads = intra_op_threads
        self._model_name = model_name
        self._clock = clock

    def load(self, env: ModelEnvelope) -> LoadedModel:
        """Verify and load without activating (raises a typed ModelError)."""
        if env.format != FORMAT:
            raise BundleDecodeError(f"unknown artifact format {env.format!r}")
        model = verify_and_load(
            env.artifact,
            env.signature,
            env.key_id,
            self._keyring,
            intra_op_threads=self._threads,
            max_bytes=self._max_bytes,
        )
        meta = model.meta
        if meta.name != env.model_name or meta.version != env.version:
            raise BundleDecodeError(
                f"envelope says {env.model_name} v{env.version} but the signed bundle is "
                f"{meta.name} v{meta.version}"
            )
        check_feature_compat(meta.feature_spec, self._reader_fields)
        return model

    def apply(self, env: ModelEnvelope) -> bool:
        """Activate or retire per ``env``. True when the store changed."""
        if env.action is Action.ARCHIVE:
            return False
        if self._model_name is not None and env.model_name != self._model_name:
            return False
        if env.action is Action.RETIRE:
            changed = self._store.clear(env.role)
            if changed:
                self._refresh_info()
                self._emit(UpdateReport("model_retired", env))
            return changed
        try:
            model = self.load(env)
            changed = self._store.offer(env.role, model, allow_downgrade=env.rollback)
        except ModelError as exc:
            self._reject(env, exc)
            return False
        if changed:
            self._metrics.model_updates_applied.labels(env.role.value).inc()
            self._metrics.model_swap_seconds.observe(
                max(0.0, self._clock() - env.published_at_ms / 1000.0)
            )
            self._refresh_info()
            self._emit(UpdateReport("model_applied", env))
        return changed

    def apply_latest(self, history: Mapping[str, list[ModelEnvelope]]) -> None:
        """Start-up: for each role key, activate the newest envelope that validates.

        Older valid ones are applied first (oldest to newest) so that a primary's
        previous good version becomes the fallback, as it would have live. Rejected ones
        are reported once, like live updates.
        """
        for _key, envs in history.items():
            usable: list[tuple[ModelEnvelope, LoadedModel]] = []
            for env in reversed(envs):  # newest first
                if env.action is Action.ARCHIVE:
                    continue
                if self._model_name is not None and env.model_name != self._model_name:
                    continue
                if env.action is Action.RETIRE:
                    if not usable:
                        self._store.clear(env.role)
                    break
                try:
                    usable.append((env, self.load(env)))
                except ModelError as exc:
                    self._reject(env, exc)
                    continue
                if len(usable) == 2 or env.role is not Role.PRIMARY:
                    break
            for env, model in reversed(usable):
                try:
                    if self._store.offer(env.role, model, allow_downgrade=True):
                        self._metrics.model_updates_applied.labels(env.role.value).inc()
                        self._emit(UpdateReport("model_applied", env))
                except ModelError as exc:
                    self._reject(env, exc)
        self._refresh_info()

    def _reject(self, env: ModelEnvelope, exc: ModelError) -> None:
        reason = exc.reason
        if isinstance(exc, IncompatibleFeatureSpecError):
            reason = IncompatibleFeatureSpecError.reason
        self._metrics.model_updates_rejected.labels(reason).inc()
        log.warning(
            "rejected model update %s/%s v%s: %s (%s); the current model keeps serving",
            env.model_name,
            env.role.value,
            env.version,
            reason,
            exc,
        )
        self._emit(UpdateReport("model_rejected", env, reason=reason, detail=str(exc)))

    def _emit(self, report: UpdateReport) -> None:
        if report.kind == "model_applied":
            log.info(
                "activated %s v%s as %s",
                report.envelope.model_name,
                report.envelope.version,
                report.envelope.role.value,
            )
        self._report(report)

    def _refresh_info(self) -> None:
        snap = self._store.snapshot()
        self._metrics.model_info.clear()
        self._metrics.model_holdout_metric.clear()
        for role in Role:
            m = snap.get(role)
            if m is not None:
                version = str(m.meta.version)
                self._metrics.model_info.labels(m.meta.name, version, role.value).set(1)
                for metric, value in m.meta.holdout_metrics.items():
                    self._metrics.model_holdout_metric.labels(version, role.value, metric).set(
                        value
                    )
        self._metrics.model_loaded.set(1 if snap.primary is not None else 0)
