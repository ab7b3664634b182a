"""Apply model envelopes to a :class:`ModelStore`: verify, load, check, then swap.

Pure (no Kafka imports): the watcher hands envelopes in; this decides. A rejected update
never touches the store, so the current model keeps serving; every decision is counted
and reported through the ``report`` callback (the worker turns it into a log line and a
telemetry record).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..core.errors import BundleDecodeError, IncompatibleFeatureSpecError, ModelError
from ..core.records import Role
from ..metrics.series import Metrics
from .compat import check_feature_compat
from .envelope import FORMAT, Action, ModelEnvelope
from .runtime import LoadedModel, verify_and_load
from .signing import Verifier, as_verifier
from .store import ModelStore
from .topic_state import TopicState

log = logging.getLogger(__name__)

#: At start-up, how many accepted activations per role (since its last retire) are kept
#: to fall back on when the newest does not load here.
CATCH_UP_KEEP = 3


@dataclass(frozen=True, slots=True)
class UpdateReport:
    kind: str  # model_applied | model_rejected | model_retired
    #: None for a record that never became an envelope (too large, undecodable)
    envelope: ModelEnvelope | None
    reason: str | None = None
    detail: str | None = None
    #: where such a record was (topic, partition, offset, key)
    record: str | None = None


class ModelUpdater:
    """Verifies each envelope (signature over every field, sha256), checks it against the
    role's signed history (:class:`~streamscore.models.topic_state.TopicState`), loads and
    self-checks the model, then swaps. Live (:meth:`apply`) and at start-up
    (:meth:`catch_up`) by the same rules."""

    def __init__(
        self,
        store: ModelStore,
        *,
        keyring: Mapping[str, bytes] | Verifier,
        reader_fields: Mapping[str, str] | None,
        metrics: Metrics,
        report: Callable[[UpdateReport], None] = lambda r: None,
        max_bytes: int = 64 * 1024 * 1024,
        intra_op_threads: int = 1,
        model_name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._verifier = as_verifier(keyring)
        self._state = TopicState(self._verifier)
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
            self._verifier,
            intra_op_threads=self._threads,
            max_bytes=self._max_bytes,
        )
        meta = model.meta
        if meta.name != env.model_name or meta.version != env.version:
            raise BundleDecodeError(
                f"envelope says {env.model_name} v{env.version} but the signed bundle is "
                f"{meta.name} v{meta.version}"
            )
        if self._reader_fields is not None:  # None: events read as written, no reader
            check_feature_compat(meta.feature_spec, self._reader_fields)
        return model

    def _ours(self, env: ModelEnvelope) -> bool:
        if env.action is Action.ARCHIVE:
            return False  # archives are never served
        return self._model_name is None or env.model_name == self._model_name

    def _is_active(self, env: ModelEnvelope) -> bool:
        m = self._store.snapshot().get(env.role)
        return m is not None and m.meta.version == env.version and m.digest == env.sha256

    def apply(self, env: ModelEnvelope) -> bool:
        """Activate or retire per ``env``. True when the store changed."""
        if not self._ours(env):
            return False
        try:
            if not self._state.admit(env):
                return False  # the role's last record again
            if env.action is Action.RETIRE:
                changed = self._store.clear(env.role)
                if changed:
                    self._refresh_info()
                    self._emit(UpdateReport("model_retired", env))
                return changed
            if self._is_active(env):
                return False  # e.g. a rollback to what this worker still serves
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

    def catch_up(self) -> CatchUp:
        """Start-up: feed the topic's records in order, then :meth:`CatchUp.finish`."""
        return CatchUp(self)

    def apply_latest(self, envelopes: Iterable[ModelEnvelope]) -> None:
        """Start-up over envelopes in topic order (see :class:`CatchUp`)."""
        c = self.catch_up()
        for env in envelopes:
            c.feed(env)
        c.finish()

    def reject_record(self, reason: str, detail: str, record: str) -> None:
        """Count and report a model-topic record that could not even be read as an
        envelope (``too_large``, ``undecodable``); the current model keeps serving."""
        self._metrics.model_updates_rejected.labels(reason).inc()
        log.warning(
            "rejected model record %s: %s (%s); the current model keeps serving",
            record,
            reason,
            detail,
        )
        self._report(
            UpdateReport("model_rejected", None, reason=reason, detail=detail, record=record)
        )

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
        if report.kind == "model_applied" and report.envelope is not None:
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


class CatchUp:
    """Start-up catch-up under the live rules.

    Every record is fed in topic order through the same topic state as live updates (so a
    forged or replayed record at the end of history is rejected, and counted, exactly as
    a running worker would have); per role the last few accepted activations since its
    last accepted retire are kept. :meth:`finish` loads, per role, the newest of them
    that loads here, and the one before it for a primary (it becomes the fallback, as it
    would have live). Only the models that would serve are loaded.
    """

    def __init__(self, updater: ModelUpdater) -> None:
        self._u = updater
        self._pending: dict[str, tuple[Role, list[ModelEnvelope]]] = {}

    def feed(self, env: ModelEnvelope) -> None:
        u = self._u
        if not u._ours(env):
            return
        try:
            if not u._state.admit(env):
                return
        except ModelError as exc:
            u._reject(env, exc)
            return
        _role, kept = self._pending.setdefault(env.key, (env.role, []))
        if env.action is Action.RETIRE:
            kept.clear()
        else:
            kept.append(env)
            del kept[:-CATCH_UP_KEEP]

    def finish(self) -> None:
        u = self._u
        for role, kept in self._pending.values():
            usable: list[tuple[ModelEnvelope, LoadedModel]] = []
            for env in reversed(kept):  # newest first
                try:
                    usable.append((env, u.load(env)))
                except ModelError as exc:
                    u._reject(env, exc)
                    continue
                if len(usable) == 2 or role is not Role.PRIMARY:
                    break
            if not kept:
                u._store.clear(role)
            for env, model in reversed(usable):
                try:
                    if u._store.offer(env.role, model, allow_downgrade=True):
                        u._metrics.model_updates_applied.labels(env.role.value).inc()
                        u._emit(UpdateReport("model_applied", env))
                except ModelError as exc:
                    u._reject(env, exc)
        self._pending.clear()
        u._refresh_info()
