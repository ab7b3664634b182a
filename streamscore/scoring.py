"""One micro-batch, from raw messages to encoded outputs. Pure: no Kafka imports.

``BatchScorer.score`` decodes every message, applies the late-event policy, validates the
batch against the primary's feature spec, builds one feature matrix per distinct spec,
calls each active model once (primary, canary, shadow), and encodes the predictions.
Messages that cannot be scored come back as :class:`DeadLetter` with their typed error;
nothing is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import LoadedModel, ScoreBatch
from .config import LatePolicy, ScoringSettings
from .errors import ModelError, NoModelError, StreamscoreError
from .features import Columns, extract, impute
from .model_store import FallbackResult, ModelSnapshot, score_with_fallback
from .records import EVENT_ID_FIELD, EVENT_TIME_FIELD, Role, StageTimings, Task
from .validation import validate

Decoder = Callable[[bytes | None], dict[str, Any]]
BatchEncoder = Callable[[list[dict[str, Any]]], list[bytes]]


@dataclass(frozen=True, slots=True)
class InMessage:
    """What the scorer needs of a consumed message (the Kafka loop fills it)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: InMessage
    error: StreamscoreError


@dataclass(frozen=True, slots=True)
class RoleOutput:
    """Accounting of one model's share of a batch."""

    model_name: str
    model_version: int
    role: Role
    count: int
    scores: np.ndarray
    degraded: int = 0


@dataclass(slots=True)
class ScoredBatch:
    predictions: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late_routed: list[InMessage] = field(default_factory=list)
    n_messages: int = 0
    n_scored: int = 0
    n_late: int = 0
    outputs: list[RoleOutput] = field(default_factory=list)
    shadow_skipped: dict[str, int] = field(default_factory=dict)
    event_times_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    timings: StageTimings = field(default_factory=StageTimings)
    model_versions: dict[str, int] = field(default_factory=dict)


def _decode_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()


class BatchScorer:
    def __init__(
        self,
        decode: Decoder,
        encode_predictions: BatchEncoder,
        settings: ScoringSettings,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._decode = decode
        self._encode = encode_predictions
        self._settings = settings
        self._clock_ms = clock_ms

    def score(self, messages: Sequence[InMessage], snapshot: ModelSnapshot) -> ScoredBatch:
        if snapshot.primary is None:
            raise NoModelError("scoring needs an active primary model")
        out = ScoredBatch(n_messages=len(messages), model_versions=snapshot.versions())
        t0 = time.perf_counter()

        # ---- decode: one typed error per bad message, never a crash
        events: list[dict[str, Any]] = []
        good: list[InMessage] = []
        decode = self._decode
        for m in messages:
            try:
                events.append(decode(m.value))
                good.append(m)
            except StreamscoreError as exc:
                out.dead_letters.append(DeadLetter(m, exc))
        t1 = time.perf_counter()

        # ---- late events
        now = self._clock_ms()
        times = np.fromiter(
            (e[EVENT_TIME_FIELD] for e in events), dtype=np.int64, count=len(events)
        )
        late = np.zeros(len(events), dtype=bool)
        if self._settings.late_after_ms is not None and events:
            late = (now - times) > self._settings.late_after_ms
            out.n_late = int(late.sum())
            if out.n_late and self._settings.late_policy is LatePolicy.ROUTE:
                keep = ~late
                out.late_routed = [
                    m for m, is_late in zip(good, late.tolist(), strict=True) if is_late
                ]
                events = [e for e, k in zip(events, keep.tolist(), strict=True) if k]
                good = [m for m, k in zip(good, keep.tolist(), strict=True) if k]
                times, late = times[keep], late[keep]

        # ---- validate against the primary's spec
        primary = snapshot.primary
        spec = primary.meta.feature_spec
        cols = extract(events, spec)
        result = validate(cols, spec)
        for i, err in result.errors.items():
            out.dead_letters.append(DeadLetter(good[i], err))
        t2 = time.perf_counter()

        valid = result.valid
        idx = np.flatnonzero(valid)
        x = impute(cols, spec)[idx]
        v_events = [events[i] for i in idx.tolist()]
        v_msgs = [good[i] for i in idx.tolist()]
        keys = [_decode_key(m.key) for m in v_msgs]
        out.event_times_ms = times[idx]
        v_late = late[idx].tolist()
        t3 = time.perf_counter()

        # ---- predict: one call per role
        records: list[dict[str, Any]] = []
        rec_keys: list[bytes | None] = []
        n = len(v_events)
        answered_by_canary = np.zeros(n, dtype=bool)
        ctx = _RowContext(v_events, v_msgs, keys, v_late, now)
        if n:
            canary = snapshot.canary
            if canary is not None:
                mask = snapshot.canary_mask(keys, self._settings.canary_fraction)
                rows = np.flatnonzero(mask)
                if rows.size:
                    got = self._score_other(canary, Role.CANARY, ctx, rows, v_events, x, spec, out)
                    if got is not None:
                        ok_rows, batch, xc = got
                        answered_by_canary[ok_rows] = True
                        self._emit(
                            records,
                            rec_keys,
                            ctx,
                            canary,
                            Role.CANARY,
                            ok_rows,
                            batch,
                            np.zeros(ok_rows.size, dtype=bool),
                            xc,
                            out,
                        )
            rows = np.flatnonzero(~answered_by_canary)
            if rows.size:
                fr: FallbackResult = score_with_fallback(snapshot, x[rows])
                self._emit(
                    records,
                    rec_keys,
                    ctx,
                    primary,
                    Role.PRIMARY,
                    rows,
                    fr.batch,
                    fr.degraded,
                    x[rows],
                    out,
                    fallback=fr,
                )
            shadow = snapshot.shadow
            if shadow is not None:
                got = self._score_other(
                    shadow, Role.SHADOW, ctx, np.arange(n), v_events, x, spec, out
                )
                if got is not None:
                    ok_rows, batch, xs = got
                    self._emit(
                        records,
                        rec_keys,
                        ctx,
                        shadow,
                        Role.SHADOW,
                        ok_rows,
                        batch,
                        np.zeros(ok_rows.size, dtype=bool),
                        xs,
                        out,
                    )
        out.n_scored = n
        t4 = time.perf_counter()

        # ---- encode
        encoded = self._encode(records)
        out.predictions = list(zip(rec_keys, encoded, strict=True))
        t5 = time.perf_counter()
        out.timings = StageTimings(
            decode_s=t1 - t0,
            validate_s=t2 - t1,
            features_s=t3 - t2,
            predict_s=t4 - t3,
            encode_s=t5 - t4,
        )
        return out

    def _score_other(
        self,
        model: LoadedModel,
        role: Role,
        ctx: _RowContext,
        rows: np.ndarray,
        v_events: list[dict[str, Any]],
        x_primary: np.ndarray,
        primary_spec: Any,
        out: ScoredBatch,
    ) -> tuple[np.ndarray, ScoreBatch, np.ndarray] | None:
        """Score ``rows`` with a canary or shadow; rows invalid for its own spec are skipped
        (counted); a failing model scores nothing this batch (the primary answers)."""
        spec = model.meta.feature_spec
        if spec == primary_spec:
            ok_rows, xm = rows, x_primary[rows]
        else:
            sub = [v_events[i] for i in rows.tolist()]
            cols: Columns = extract(sub, spec)
            res = validate(cols, spec)
            ok_rows = rows[res.valid]
            xm = impute(cols, spec)[res.valid]
            skipped = int(rows.size - ok_rows.size)
            if skipped:
                out.shadow_skipped[role.value] = out.shadow_skipped.get(role.value, 0) + skipped
        if ok_rows.size == 0:
            return None
        try:
            batch = model.predict(xm.astype(np.float32))
        except ModelError:
            out.shadow_skipped[role.value] = out.shadow_skipped.get(role.value, 0) + int(
                ok_rows.size
            )
            return None
        finite = batch.finite_mask()
        if not finite.all():
            out.shadow_skipped[role.value] = out.shadow_skipped.get(role.value, 0) + int(
                ok_rows.size
            )
            return None
        return ok_rows, batch, xm

    def _emit(
        self,
        records: list[dict[str, Any]],
        rec_keys: list[bytes | None],
        ctx: _RowContext,
        model: LoadedModel,
        role: Role,
        rows: np.ndarray,
        batch: ScoreBatch,
        degraded: np.ndarray,
        xm: np.ndarray,
        out: ScoredBatch,
        fallback: FallbackResult | None = None,
    ) -> None:
        meta = model.meta
        names = list(meta.feature_spec.names)
        role_value = role.value
        versions = (
            fallback.model_versions().tolist() if fallback is not None and degraded.any() else None
        )
        feats = xm.tolist()
        if batch.task is Task.REGRESSION:
            assert batch.values is not None
            values: list[Any] = batch.values.tolist()
            labels: list[Any] = [None] * rows.size
            probs: list[Any] = [[]] * rows.size
            classes: list[str] = []
        else:
            assert batch.probabilities is not None and batch.labels is not None
            values = [None] * rows.size
            labels = batch.labels.tolist()
            probs = batch.probabilities.tolist()
            classes = list(batch.classes)
        deg = degraded.tolist()
        name, version = meta.name, meta.version
        for j, i in enumerate(rows.tolist()):
            e = ctx.events[i]
            records.append(
                {
                    "event_id": e[EVENT_ID_FIELD],
                    "key": ctx.keys[i],
                    "event_time": e[EVENT_TIME_FIELD],
                    "scored_time": ctx.now,
                    "model_name": name,
                    "model_version": version if versions is None else versions[j],
                    "role": role_value,
                    "value": values[j],
                    "label": labels[j],
                    "probabilities": probs[j],
                    "classes": classes,
                    "degraded": deg[j],
                    "late": ctx.late[i],
                    "feature_names": names,
                    "features": feats[j],
                }
            )
            rec_keys.append(ctx.msgs[i].key)
        n_degraded = int(degraded.sum())
        out.outputs.append(
            RoleOutput(name, version, role, int(rows.size) - n_degraded, batch.score(), n_degraded)
        )
        if n_degraded and fallback is not None and fallback.fallback is not None:
            fb = fallback.fallback
            out.outputs.append(
                RoleOutput(fb.name, fb.version, role, n_degraded, np.empty(0), n_degraded)
            )


@dataclass(frozen=True, slots=True)
class _RowContext:
    events: list[dict[str, Any]]
    msgs: list[InMessage]
    keys: list[str | None]
    late: list[bool]
    now: int


def dead_letter_headers(
    dl: DeadLetter, *, worker_id: str, model_version: int | None
) -> list[tuple[str, bytes]]:
    """Headers that say why a message is in the dead-letter topic and where it came from."""
    err, m = dl.error, dl.message
    headers = [
        ("streamscore.error.class", type(err).__name__.encode()),
        ("streamscore.error.reason", err.reason.encode()),
        ("streamscore.error.message", str(err).encode("utf-8", "replace")[:1000]),
        ("streamscore.source.topic", m.topic.encode()),
        ("streamscore.source.partition", str(m.partition).encode()),
        ("streamscore.source.offset", str(m.offset).encode()),
        ("streamscore.source.timestamp", str(m.timestamp_ms).encode()),
        ("streamscore.worker.id", worker_id.encode()),
        ("streamscore.model.version", str(model_version or "").encode()),
    ]
    if err.field is not None:
        headers.append(("streamscore.error.field", err.field.encode()))
    return headers
