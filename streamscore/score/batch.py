"""One micro-batch, from raw messages to encoded outputs. Pure: no Kafka imports.

``BatchScorer.score`` decodes every message, applies the late-event policy, validates the
batch against the primary's feature spec, builds one feature matrix per distinct spec,
calls each active model once (primary, canary, shadow), and encodes the predictions.
Messages that cannot be scored come back as :class:`DeadLetter` with their typed error;
nothing is dropped.

One concern, hence its length: the scoring batch (per-role prediction, fallback, canary
routing and output sizing are parts of it).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from ..core.columns import RecordColumns, take_events
from ..core.config import EventFields, LatePolicy, ScoringSettings
from ..core.errors import ModelError, NoModelError, OutputTooLargeError, StreamscoreError
from ..core.records import FeatureKind, Role, StageTimings, Task, event_id_values, model_headers
from ..features.event_fields import event_ids, event_keys, event_times_ms
from ..features.extract import Columns, extract, impute
from ..features.validation import validate
from ..kafka.headers import RowHeaders
from ..kafka.output_limits import RECORD_OVERHEAD, wire_size
from ..models.runtime import LoadedModel, ScoreBatch
from ..models.store import FallbackResult, ModelSnapshot, score_with_fallback
from .codecs import (
    BatchDecoder,
    BatchEncoder,
    Decoder,
    RowsEncoder,
    batch_decoder,
    batch_encoder,
    decode_batch,
)
from .keys import KeyDecoder, key_decoder


@dataclass(frozen=True, slots=True)
class InMessage:
    """What the scorer needs of a consumed message (the Kafka loop fills it)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    #: the message's headers (read only when the project copies some to predictions)
    headers: list[tuple[str, bytes | None]] | None = None


class MessageBatch(Sequence[InMessage]):
    """Consumed messages, column-wise: the values and keys the scorer reads for every
    message, and a full :class:`InMessage` built only when one is asked for (dead letters,
    late routing). The worker hands one of these to :meth:`BatchScorer.score` so that no
    per-message object is created on the hot path; any ``Sequence[InMessage]`` works too."""

    __slots__ = ("_make", "headers", "keys", "values")

    def __init__(
        self,
        values: list[bytes | None],
        keys: list[bytes | None],
        make: Callable[[int], InMessage],
        headers: list[list[tuple[str, bytes | None]] | None] | None = None,
    ) -> None:
        """``headers``: each message's, when the scorer copies some (else None)."""
        if len(values) != len(keys):
            raise ValueError("values and keys must have the same length")
        self.values = values
        self.keys = keys
        self.headers = headers
        self._make = make

    @classmethod
    def of(cls, messages: Sequence[InMessage]) -> MessageBatch:
        msgs = list(messages)
        headers = [m.headers for m in msgs]
        return cls([m.value for m in msgs], [m.key for m in msgs], msgs.__getitem__, headers)

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, i: int) -> InMessage: ...

    @overload
    def __getitem__(self, i: slice) -> list[InMessage]: ...

    def __getitem__(self, i: int | slice) -> InMessage | list[InMessage]:
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(len(self.values)))]
        n = len(self.values)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("message index out of range")
        return self._make(i)


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
    #: every prediction: the answers (primary, canary) first, then the shadow's
    predictions: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: each prediction's headers (model name, version, role, event id)
    prediction_headers: RowHeaders = field(default_factory=RowHeaders)
    #: ``predictions[:n_answers]`` answer (``predictions``), the rest are the shadow's
    #: (``predictions.shadow``)
    n_answers: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late_routed: list[InMessage] = field(default_factory=list)
    n_messages: int = 0
    n_scored: int = 0
    n_late: int = 0
    outputs: list[RoleOutput] = field(default_factory=list)
    shadow_skipped: dict[str, int] = field(default_factory=dict)
    event_times_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    timings: StageTimings = field(default_factory=StageTimings)
    #: for drift: the primary's rows as extracted (before imputation; NaN = missing) and
    #: the scores it gave them
    primary_raw_x: np.ndarray | None = None
    primary_scores: np.ndarray | None = None
    model_versions: dict[str, int] = field(default_factory=dict)
    #: which consumed message each of ``predictions`` answers, and which share of
    #: ``outputs`` counts it (for an output refused after scoring: see :meth:`unpredict`)
    _placed: list[_Placed] = field(default_factory=list, repr=False)
    _source: Callable[[int], InMessage] | None = field(default=None, repr=False)

    def prediction_source(self, i: int) -> InMessage:
        """The consumed message that ``predictions[i]`` answers."""
        assert self._source is not None
        start = 0
        for p in self._placed:
            if i < start + p.rows.size:
                return self._source(int(p.rows[i - start]))
            start += int(p.rows.size)
        raise IndexError(f"no prediction {i}")

    def unpredict(self, i: int) -> None:
        """``predictions[i]`` was not produced after all (the producer refused it): take
        it out of the counts of its model and role. Its message is dead-lettered by the
        caller."""
        start = 0
        for p in self._placed:
            if i < start + p.rows.size:
                drop = np.zeros(p.rows.size, dtype=bool)
                drop[i - start] = True
                _uncount(self, p, drop)
                if p.role is not Role.SHADOW:
                    self.n_scored -= 1
                return
            start += int(p.rows.size)
        raise IndexError(f"no prediction {i}")


@dataclass(frozen=True, slots=True)
class _Placed:
    """One model's predictions queued by ``_emit``: the valid rows they answer, which of
    them the fallback answered, and the index of their entries in ``outputs``."""

    rows: np.ndarray
    degraded: np.ndarray
    role: Role
    output: int
    fallback_output: int | None


def _uncount(out: ScoredBatch, p: _Placed, drop: np.ndarray) -> None:
    """Take the rows ``drop`` (a mask over ``p.rows``) out of ``p``'s output counts."""
    n_deg = int((drop & p.degraded).sum())
    n_main = int(drop.sum()) - n_deg
    ro = out.outputs[p.output]
    out.outputs[p.output] = dataclasses.replace(
        ro,
        count=ro.count - n_main,
        degraded=ro.degraded - n_deg,
        scores=ro.scores[~drop] if ro.scores.size == drop.size else ro.scores,
    )
    if p.fallback_output is not None and n_deg:
        fb = out.outputs[p.fallback_output]
        out.outputs[p.fallback_output] = dataclasses.replace(
            fb, count=fb.count - n_deg, degraded=fb.degraded - n_deg
        )


class BatchScorer:
    """Scores micro-batches. ``decoder`` turns message values into events, ``encoder``
    turns predictions into encoded values (see :mod:`streamscore.score.codecs`).

    The worker passes its Avro codecs, a :class:`~streamscore.score.codecs.BatchDecoder`
    and a :class:`~streamscore.score.codecs.BatchEncoder`: the whole batch is decoded in
    one call, and the predictions are encoded column-wise (constants once per batch, NumPy
    arrays as they are) instead of one dict per prediction. Plain callables are taken too
    (one value -> event dict; prediction dicts -> encoded values), decoded and encoded
    one record at a time. Results are identical either way."""

    def __init__(
        self,
        decoder: BatchDecoder | Decoder,
        encoder: BatchEncoder | RowsEncoder,
        settings: ScoringSettings,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        prediction_limit: Callable[[], int] | None = None,
        events: EventFields | None = None,
        shadow_limit: Callable[[], int] | None = None,
        keys: KeyDecoder | None = None,
        shadow_encoder: BatchEncoder | RowsEncoder | None = None,
    ) -> None:
        """``prediction_limit()``: the largest prediction record (key, value and headers,
        as :func:`~streamscore.kafka.output_limits.wire_size` counts) the predictions topic
        takes, asked once per batch; ``shadow_limit()`` the same for the shadow topic
        (default: ``prediction_limit``). An event with a prediction larger than its topic
        takes is not predicted: it is dead-lettered
        (:class:`~streamscore.core.errors.OutputTooLargeError`). ``events``: the event's own
        id, time and key fields (default: the shipped event schema's); an event whose id or
        time cannot be read is dead-lettered. ``shadow_encoder``: the shadow predictions'
        encoder (their topic's subject; default ``encoder``)."""
        self._prediction_limit = prediction_limit
        self._shadow_limit = shadow_limit or prediction_limit
        self._decoder = batch_decoder(decoder)
        self._encoder = batch_encoder(encoder)
        self._shadow_encoder = (
            self._encoder if shadow_encoder is None else batch_encoder(shadow_encoder)
        )
        self._settings = settings
        self._clock_ms = clock_ms
        self._events = events or EventFields()
        #: message keys -> strings, once per batch (``events.key_format``; Avro keys:
        #: the registry-backed decoder the caller passes); unused with ``key_field``
        self._keys = keys if keys is not None else key_decoder(self._events.key_format)
        #: the event's fields every prediction carries already (not repeated in ``inputs``)
        self._envelope = frozenset({self._events.id_field, self._events.time_field, "key"})
        #: the model headers of each (name, version, role): one shared list each
        self._headers: dict[tuple[str, int, Role], list[tuple[str, bytes]]] = {}

    @property
    def copies_headers(self) -> bool:
        """Whether :meth:`score` reads the messages' headers (``[events] copy_headers``)."""
        return bool(self._events.copy_headers)

    def _copied(
        self, messages: Sequence[InMessage], v_good: list[int]
    ) -> list[list[tuple[str, bytes]]] | None:
        """Each valid row's event headers to copy, or None when none are copied."""
        if not self._events.copy_headers:
            return None
        names = frozenset(self._events.copy_headers)
        if isinstance(messages, MessageBatch):
            every = messages.headers or [None] * len(messages)
            return [copied_headers(every[g], names) for g in v_good]
        return [copied_headers(messages[g].headers, names) for g in v_good]

    def _model_headers(self, name: str, version: int, role: Role) -> list[tuple[str, bytes]]:
        """The headers every prediction of one model in one role repeats (the same list
        for every batch: one run of :class:`RowHeaders` per model and batch)."""
        got = self._headers.get((name, version, role))
        if got is None:
            if len(self._headers) > 64:  # versions come and go: keep the recent ones
                self._headers.clear()
            got = self._headers[(name, version, role)] = model_headers(name, version, role.value)
        return got

    def score(self, messages: Sequence[InMessage], snapshot: ModelSnapshot) -> ScoredBatch:
        if snapshot.primary is None:
            raise NoModelError("scoring needs an active primary model")
        out = ScoredBatch(n_messages=len(messages), model_versions=snapshot.versions())
        if isinstance(messages, MessageBatch):
            values, raw_keys = messages.values, messages.keys
        else:
            values, raw_keys = [m.value for m in messages], [m.key for m in messages]
        t0 = time.perf_counter()

        # ---- decode: one typed error per bad message, never a crash
        good, events, failed = decode_batch(self._decoder, values)
        for i, exc in failed:
            out.dead_letters.append(DeadLetter(messages[i], exc))
        t1 = time.perf_counter()

        # ---- the event's own id, time and key (by the configured names), once per batch
        fields = self._events
        times, bad = event_times_ms(events, fields.time_field, fields.time_encoding)
        ids, bad_ids = event_ids(events, fields.id_field)
        bad_keys: dict[int, StreamscoreError] = {}
        if fields.key_field is None:
            key_text, bad_keys = self._keys.decode_keys([raw_keys[g] for g in good])
        if bad or bad_ids or bad_keys:
            # an event without an id (or a key that does not decode) is dead-lettered as such
            bad = {**bad, **bad_ids, **bad_keys}
            for i in sorted(bad):
                out.dead_letters.append(DeadLetter(messages[good[i]], bad[i]))
            keep_rows = np.ones(len(events), dtype=bool)
            keep_rows[list(bad)] = False
            kept = np.flatnonzero(keep_rows).tolist()
            events = take_events(events, kept)
            good = [good[j] for j in kept]
            ids = [ids[j] for j in kept]
            times = times[keep_rows]
            if fields.key_field is None:
                key_text = [key_text[j] for j in kept]

        # ---- late events
        now = self._clock_ms()
        late = np.zeros(len(events), dtype=bool)
        if self._settings.late_after_ms is not None and events:
            late = (now - times) > self._settings.late_after_ms
            out.n_late = int(late.sum())
            if out.n_late and self._settings.late_policy is LatePolicy.ROUTE:
                keep = ~late
                out.late_routed = [messages[good[j]] for j in np.flatnonzero(late).tolist()]
                kept = np.flatnonzero(keep).tolist()
                events = take_events(events, kept)
                good = [good[j] for j in kept]
                ids = [ids[j] for j in kept]
                times, late = times[keep], late[keep]
                if fields.key_field is None:
                    key_text = [key_text[j] for j in kept]

        # ---- validate against the primary's spec
        primary = snapshot.primary
        spec = primary.meta.feature_spec
        cols = extract(events, spec)
        result = validate(cols, spec)
        for i, err in result.errors.items():
            out.dead_letters.append(DeadLetter(messages[good[i]], err))
        t2 = time.perf_counter()

        valid = result.valid
        if valid.all():
            x = impute(cols, spec)
            v_events, v_good, v_ids = events, good, ids
            out.event_times_ms = times
            v_late = late.tolist()
        else:
            idx = np.flatnonzero(valid)
            x = impute(cols, spec)[idx]
            take = idx.tolist()
            v_events = take_events(events, take)
            v_good = [good[i] for i in take]
            v_ids = [ids[i] for i in take]
            out.event_times_ms = times[idx]
            v_late = late[idx].tolist()
        if fields.key_field is None:
            v_raw_keys = [raw_keys[g] for g in v_good]
            keys = key_text if valid.all() else [key_text[i] for i in take]
        else:
            keys = event_keys(v_events, fields.key_field)
            v_raw_keys = [None if k is None else k.encode() for k in keys]
        inputs = _inputs(
            v_events,
            spec,
            cols.missing if valid.all() else cols.missing[valid],
            self._envelope,
        )
        t3 = time.perf_counter()

        # ---- predict: one call per role
        pieces: list[RecordColumns] = []
        rec_keys: list[bytes | None] = []
        n = len(v_events)
        answered_by_canary = np.zeros(n, dtype=bool)
        ctx = _RowContext(
            v_ids,
            out.event_times_ms.tolist(),
            v_raw_keys,
            keys,
            v_late,
            now,
            inputs,
            self._copied(messages, v_good),
        )
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
                            pieces,
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
                xp = x if rows.size == n else x[rows]
                fr: FallbackResult = score_with_fallback(snapshot, xp)
                raw_x = cols.values if valid.all() else cols.values[valid]
                out.primary_raw_x = raw_x if rows.size == n else raw_x[rows]
                out.primary_scores = fr.batch.score()
                self._emit(
                    pieces,
                    rec_keys,
                    ctx,
                    primary,
                    Role.PRIMARY,
                    rows,
                    fr.batch,
                    fr.degraded,
                    xp,
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
                        pieces,
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
        encoded: list[bytes] = []
        for piece, placed in zip(pieces, out._placed, strict=True):
            # each topic's records with its own subject's schema id
            enc = self._shadow_encoder if placed.role is Role.SHADOW else self._encoder
            encoded.extend(enc.encode_columns(piece))
        out.predictions = list(zip(rec_keys, encoded, strict=True))
        if self._prediction_limit is not None and encoded:
            limit = self._prediction_limit()
            shadow_limit = limit if self._shadow_limit is None else self._shadow_limit()
            _drop_oversized(out, encoded, rec_keys, (limit, shadow_limit), messages, v_good)
        out.n_answers = sum(int(p.rows.size) for p in out._placed if p.role is not Role.SHADOW)
        out._source = _sources(messages, v_good)
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
        v_events: Sequence[Mapping[str, Any]],
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
            sub = take_events(v_events, rows.tolist())
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
        pieces: list[RecordColumns],
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
        """Queue ``rows``' predictions by ``model`` as one column-wise piece."""
        meta = model.meta
        n = int(rows.size)
        inputs, copied = ctx.inputs, ctx.copied
        if n == len(ctx.ids):  # rows are increasing and unique: every row, in order
            ids, keys, times, late, raw = ctx.ids, ctx.keys, ctx.times, ctx.late, ctx.raw_keys
        else:
            take = rows.tolist()
            ids = [ctx.ids[i] for i in take]
            keys = [ctx.keys[i] for i in take]
            times = [ctx.times[i] for i in take]
            late = [ctx.late[i] for i in take]
            raw = [ctx.raw_keys[i] for i in take]
            if copied is not None:
                copied = [copied[i] for i in take]
            if inputs is not None:
                inputs = [inputs[i] for i in take]
        # the record (prediction schema v3): flat scalars, then the nested detail
        scores = batch.score()
        constants: dict[str, Any] = {
            "scored_time": ctx.now,
            "model_name": meta.name,
            "role": role.value,
        }
        detail_constants: dict[str, Any] = {"feature_names": list(meta.feature_spec.names)}
        if inputs is None:
            detail_constants["inputs"] = {}
        detail: dict[str, Any] = {"features": np.asarray(xm, dtype=np.float64)}
        if inputs is not None:
            detail["inputs"] = inputs
        columns: dict[str, Any] = {
            "event_id": ids,
            "key": keys,
            "event_time": times,
            "score": np.asarray(scores, dtype=np.float64),
        }
        n_degraded = int(degraded.sum())
        if fallback is not None and n_degraded:
            columns["model_version"] = fallback.model_versions().tolist()
        else:
            constants["model_version"] = meta.version
        if n_degraded:
            columns["degraded"] = degraded.tolist()
        else:
            constants["degraded"] = False
        if any(late):
            columns["late"] = late
        else:
            constants["late"] = False
        if batch.task is Task.REGRESSION:
            assert batch.values is not None
            columns["value"] = np.asarray(batch.values, dtype=np.float64)
            constants["label"] = None
            detail_constants.update(probabilities=[], classes=[])
        else:
            assert batch.probabilities is not None and batch.labels is not None
            columns["label"] = batch.labels.tolist()
            detail["probabilities"] = np.asarray(batch.probabilities, dtype=np.float64)
            constants["value"] = None
            detail_constants["classes"] = list(batch.classes)
        columns["detail"] = RecordColumns(n, detail_constants, detail)
        pieces.append(RecordColumns(n, constants, columns))
        rec_keys.extend(raw)
        version = meta.version
        # headers: the model's shared per batch, then the event id's
        id_bytes = event_id_values(ids)
        if "model_version" in columns:  # the fallback answered some rows
            # (as the record says: the model name, the version that answered)
            start = 0
            for v, run in itertools.groupby(columns["model_version"]):
                stop = start + len(list(run))
                out.prediction_headers.add(
                    self._model_headers(meta.name, v, role),
                    id_bytes[start:stop],
                    None if copied is None else copied[start:stop],
                )
                start = stop
        else:
            shared = self._model_headers(meta.name, version, role)
            out.prediction_headers.add(shared, id_bytes, copied)
        main = len(out.outputs)
        out.outputs.append(RoleOutput(meta.name, version, role, n - n_degraded, scores, n_degraded))
        fb_index = None
        if n_degraded and fallback is not None and fallback.fallback is not None:
            fb = fallback.fallback
            fb_index = len(out.outputs)
            out.outputs.append(
                RoleOutput(fb.name, fb.version, role, n_degraded, np.empty(0), n_degraded)
            )
        out._placed.append(_Placed(rows, degraded, role, main, fb_index))


def _sources(messages: Sequence[InMessage], v_good: list[int]) -> Callable[[int], InMessage]:
    return lambda row: messages[v_good[row]]


def _total_len(chunks: list[bytes] | list[bytes | None]) -> int:
    """The bytes of ``chunks`` together (None counts 0)."""
    try:
        return len(b"".join(chunks))  # type: ignore[arg-type]
    except TypeError:  # a None among them
        return sum(map(len, filter(None, chunks)))


def _drop_oversized(
    out: ScoredBatch,
    encoded: list[bytes],
    rec_keys: list[bytes | None],
    limits: tuple[int, int],
    messages: Sequence[InMessage],
    v_good: list[int],
) -> None:
    """Events with a prediction larger than its topic takes (``limits``: the predictions
    topic's, the shadow topic's) are dead-lettered, not predicted (none of their
    predictions is produced: consumed = predicted + dead-lettered).

    Per batch, a bound first: no record is larger than all of the batch's keys and values
    together plus the largest headers (an event id header is never longer than the value
    that holds the same id), which C-level joins measure (no Python call per record); only
    when that bound does not fit, the largest key and value, and only when those do not
    fit either, each record."""
    headers = out.prediction_headers
    limit = min(limits)
    largest_headers = headers.largest()
    values = _total_len(encoded)
    if 2 * values + _total_len(rec_keys) + largest_headers + RECORD_OVERHEAD <= limit:
        return
    longest = max(map(len, encoded))
    longest += longest + max(map(len, filter(None, rec_keys)), default=0) + largest_headers
    if longest + RECORD_OVERHEAD <= limit:
        return
    too_big: dict[int, tuple[int, str, int]] = {}  # valid row -> size, role, limit
    start = 0
    for p in out._placed:
        limit = limits[1] if p.role is Role.SHADOW else limits[0]
        for j, row in enumerate(p.rows.tolist()):
            i = start + j
            size = wire_size(rec_keys[i], encoded[i], headers.at(i))
            prev = too_big.get(row)
            if size > limit and (prev is None or size - limit > prev[0] - prev[2]):
                too_big[row] = (size, p.role.value, limit)
        start += int(p.rows.size)
    if not too_big:
        return
    bad = np.fromiter(too_big, dtype=np.int64, count=len(too_big))
    kept: list[tuple[bytes | None, bytes]] = []
    kept_rows: list[int] = []
    placed: list[_Placed] = []
    start = 0
    for p in out._placed:
        n = int(p.rows.size)
        drop = np.isin(p.rows, bad)
        if drop.any():
            _uncount(out, p, drop)
            keep = ~drop
            take = np.flatnonzero(keep).tolist()
            kept.extend(out.predictions[start + j] for j in take)
            kept_rows.extend(start + j for j in take)
            p = dataclasses.replace(p, rows=p.rows[keep], degraded=p.degraded[keep])
        else:
            kept.extend(out.predictions[start : start + n])
            kept_rows.extend(range(start, start + n))
        placed.append(p)
        start += n
    out.predictions = kept
    out.prediction_headers = headers.select(kept_rows)
    out._placed = placed
    for row, (size, role, limit) in sorted(too_big.items()):
        topic = "shadow predictions" if role == Role.SHADOW.value else "predictions"
        err = OutputTooLargeError(
            f"the {role} prediction of this event is {size} bytes, more than the "
            f"{topic} topic accepts ({limit} bytes)",
            size=size,
            limit=limit,
        )
        out.dead_letters.append(DeadLetter(messages[v_good[row]], err))
    out.n_scored -= len(too_big)
    keep_rows = np.ones(out.event_times_ms.size, dtype=bool)
    keep_rows[bad] = False
    out.event_times_ms = out.event_times_ms[keep_rows]


@dataclass(frozen=True, slots=True)
class _RowContext:
    """Per valid row of the batch, what every prediction repeats."""

    ids: list[Any]
    times: list[int]
    raw_keys: list[bytes | None]
    keys: list[str | None]
    late: list[bool]
    now: int
    inputs: list[dict[str, Any]] | None  # None: every prediction's ``inputs`` is empty
    #: the event headers copied to its predictions (None: the project copies none)
    copied: list[list[tuple[str, bytes]]] | None = None


def copied_headers(
    headers: list[tuple[str, bytes | None]] | None, names: frozenset[str]
) -> list[tuple[str, bytes]]:
    """The headers ``names`` of one event, each at most once (its first), in its order;
    a null value is not copied."""
    if not headers:
        return []
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for k, v in headers:
        if k in names and k not in seen and v is not None:
            seen.add(k)
            out.append((k, v))
            if len(seen) == len(names):
                break
    return out


def _input_value(v: Any) -> float | str | None:
    if v is None or isinstance(v, str):
        return v
    if type(v) is bool:  # as a boolean feature reads it back (and as the vector holds it)
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return str(v)


def _flatten(prefix: str, record: Mapping[str, Any], out: dict[str, Any]) -> None:
    """A nested record's fields into ``out`` by dotted name (``device.os``), as a
    feature's path names them."""
    for k, v in record.items():
        name = f"{prefix}.{k}"
        if type(v) is dict:
            _flatten(name, v, out)
        else:
            out[name] = _input_value(v)


def _inputs(
    events: Sequence[Mapping[str, Any]], spec: Any, missing: np.ndarray, envelope: frozenset[str]
) -> list[dict[str, Any]] | None:
    """Per event, what the scored feature vector does not hold as it was, so that the
    ground truth can rebuild the raw event for retraining: fields the model does not
    use, raw values of categorical features, and numeric or boolean features that were
    missing (and imputed); a nested record's fields by their dotted names. ``None`` when
    that is nothing for the whole batch (no per-row work: an event whose fields are all
    numeric model inputs costs nothing here)."""
    if not events:
        return None
    as_is = (FeatureKind.NUMERIC, FeatureKind.BOOLEAN)  # the vector holds their values
    numeric = {f.name for f in spec.fields if f.kind in as_is and f.source == f.name}
    other = [k for k in events[0] if k not in envelope and k not in numeric]
    miss_cols = [
        (j, f.name) for j, f in enumerate(spec.fields) if f.kind in as_is and missing[:, j].any()
    ]
    if not other and not miss_cols:
        return None
    out = [_raw_fields(e, other) for e in events]
    for j, name in miss_cols:
        for i in np.flatnonzero(missing[:, j]).tolist():
            out[i][name] = None
    return out


def _raw_fields(event: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k in names:
        v = event.get(k)
        if type(v) is dict:  # a nested record (per-message decoded events only)
            _flatten(k, v, row)
        else:
            row[k] = _input_value(v)
    return row
