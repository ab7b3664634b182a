"""Plain records that cross module boundaries. No Kafka imports here.

Events stay as the ``dict`` that Avro decoding produced (cheap, schema-agnostic);
every other record is a frozen dataclass with an ``to_avro()`` / ``from_avro()`` pair
matching its schema in ``schemas/``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: Fields every event schema must carry (the rest are features or passengers).
EVENT_ID_FIELD = "event_id"
EVENT_TIME_FIELD = "event_time"

Event = dict[str, Any]

_T = TypeVar("_T")


def positional_maker(cls: type[_T]) -> Callable[..., _T]:
    """``cls(*values)`` for a frozen, slotted dataclass, every field given in order:
    the same object, its fields set through their slot descriptors. (A frozen class's
    generated ``__init__`` sets each field with ``object.__setattr__``, which looks the
    name up first: twice the cost, paid per label where the feedback join builds one.)
    Refuses a class this could not build as its ``__init__`` would (not frozen, not
    slotted, a ``__post_init__``, a field left out of ``__init__``)."""
    params = getattr(cls, "__dataclass_params__", None)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (
        params is None
        or not params.frozen
        or "__slots__" not in cls.__dict__
        or hasattr(cls, "__post_init__")
        or not all(f.init for f in fields)
    ):
        raise TypeError(f"{cls.__name__}: not a frozen, slotted dataclass built by __init__")
    names = [f.name for f in fields]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    env.update((f"_set_{n}", getattr(cls, n).__set__) for n in names)
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    src = f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n"
    exec(src, env)
    make: Callable[..., _T] = env["make"]
    make.__qualname__ = f"positional_maker({cls.__name__})"
    return make


#: Headers on every prediction (``predictions`` and ``predictions.shadow``), so that a
#: router or a filter needs no decode; named like the dead letters' ``streamscore.error.*``
#: and ``streamscore.source.*``. Values are UTF-8 text (the version in decimal).
MODEL_NAME_HEADER = "streamscore.model.name"
MODEL_VERSION_HEADER = "streamscore.model.version"
MODEL_ROLE_HEADER = "streamscore.model.role"
EVENT_ID_HEADER = "streamscore.event.id"

#: A record's headers, in produce order
HeaderList = list[tuple[str, bytes]]


def model_headers(name: str, version: int, role: str) -> HeaderList:
    """The headers every prediction of one model in one role repeats (the event id
    header follows them: :func:`prediction_headers`)."""
    return [
        (MODEL_NAME_HEADER, name.encode()),
        (MODEL_VERSION_HEADER, str(version).encode()),
        (MODEL_ROLE_HEADER, role.encode()),
    ]


def event_id_values(ids: list[Any]) -> list[str] | list[bytes]:
    """Event ids as header values, with no per-id work when they are all text (the
    producer takes ``str`` header values and writes them as UTF-8): ``ids`` itself;
    else :func:`event_id_bytes`."""
    if set(map(type, ids)) <= {str}:
        return ids
    return event_id_bytes(ids)


def event_id_bytes(ids: Sequence[Any]) -> list[bytes]:
    """Event ids as header values (UTF-8; a non-text id as its decimal text; none: empty)."""
    try:
        return [i.encode() for i in ids]
    except AttributeError:
        return [b"" if i is None else str(i).encode() for i in ids]


def prediction_headers(name: str, version: int, role: str, event_id: Any) -> HeaderList:
    """The headers of one prediction."""
    return [*model_headers(name, version, role), (EVENT_ID_HEADER, event_id_bytes([event_id])[0])]


class Task(enum.StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Role(enum.StrEnum):
    PRIMARY = "primary"
    SHADOW = "shadow"
    CANARY = "canary"


class FeatureKind(enum.StrEnum):
    """How a field becomes a model input (always a float): ``numeric`` as its value (Avro
    int/long/float/double), ``boolean`` as 0.0/1.0 (Avro boolean), ``categorical`` as the
    index of its value in :attr:`FeatureField.categories` (Avro string or enum)."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class MissingPolicy(enum.StrEnum):
    REJECT = "reject"  # a missing value makes the event invalid (dead-lettered)
    IMPUTE = "impute"  # a missing value is replaced by ``impute_value``


@dataclass(frozen=True, slots=True)
class FeatureField:
    """One input of the model: where it comes from and what values it accepts.

    ``name`` is the model's column name; ``path`` the dotted path of the value in the
    event (``"device.os"``: field ``os`` of the nested record ``device``), None when it is
    the top-level field ``name`` (see :attr:`source`). ``impute_value`` is what a missing
    value becomes under ``MissingPolicy.IMPUTE``, as the model sees it (a categorical
    field's category index, a boolean's 0.0/1.0)."""

    name: str
    kind: FeatureKind = FeatureKind.NUMERIC
    minimum: float | None = None
    maximum: float | None = None
    missing: MissingPolicy = MissingPolicy.REJECT
    impute_value: float = math.nan
    categories: tuple[str, ...] = ()
    path: str | None = None

    @property
    def source(self) -> str:
        """Where the value is read in the event: ``path``, else ``name``."""
        return self.path or self.name

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "missing": self.missing.value,
            "impute_value": None if math.isnan(self.impute_value) else self.impute_value,
            "categories": list(self.categories),
        }
        if self.path is not None and self.path != self.name:
            d["path"] = self.path  # absent otherwise: the same dict as before paths existed
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureField:
        iv = d.get("impute_value")
        return cls(
            name=str(d["name"]),
            kind=FeatureKind(d.get("kind", "numeric")),
            minimum=None if d.get("minimum") is None else float(d["minimum"]),
            maximum=None if d.get("maximum") is None else float(d["maximum"]),
            missing=MissingPolicy(d.get("missing", "reject")),
            impute_value=math.nan if iv is None else float(iv),
            categories=tuple(str(c) for c in d.get("categories", ())),
            path=None if d.get("path") is None else str(d["path"]),
        )


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Ordered model inputs. Column ``i`` of every feature matrix is ``fields[i]``."""

    fields: tuple[FeatureField, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in spec: {names}")
        if not names:
            raise ValueError("a feature spec needs at least one field")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        return cls(tuple(FeatureField.from_dict(f) for f in d["fields"]))


#: (topic, partition, offset) of a consumed message.
Position = tuple[str, int, int]

_NOT_INPUTS = frozenset({EVENT_ID_FIELD, "key", EVENT_TIME_FIELD})
_ROLE_OF = {r.value: r for r in Role}
_SHADOW = Role.SHADOW  # a module name: an enum member read off its class costs ten times more


@dataclass(frozen=True, slots=True)
class Prediction:
    """A record of the predictions topics (``prediction`` schema v1, v2 or v3: v3 holds the
    arrays and the inputs in its nested ``detail``), as the feedback
    side reads it, with where it was read from. The score worker writes these records
    column-wise (``streamscore.serde``), never through this class."""

    event_id: str
    key: str | None
    event_time_ms: int
    model_name: str
    model_version: int
    role: Role
    value: float | None  # regressors
    label: str | None  # classifiers: predicted class
    probabilities: tuple[float, ...]  # classifiers, ordered as ``classes``
    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    features: tuple[float, ...]
    inputs: Mapping[str, Any]  # v2: the event's fields the scored vector does not hold
    position: Position | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any], position: Position | None = None) -> Prediction:
        detail = d.get("detail") or d  # v3: nested; v1/v2: top level
        return cls(
            event_id=str(d["event_id"]),
            key=d.get("key"),
            event_time_ms=_millis(d["event_time"]),
            model_name=str(d["model_name"]),
            model_version=int(d["model_version"]),
            role=_ROLE_OF.get(d["role"]) or Role(d["role"]),
            value=d.get("value"),
            label=d.get("label"),
            probabilities=tuple(detail.get("probabilities") or ()),
            classes=tuple(detail.get("classes") or ()),
            feature_names=tuple(detail.get("feature_names") or ()),
            features=tuple(detail.get("features") or ()),
            inputs=dict(detail.get("inputs") or {}),
            position=position,
        )

    @classmethod
    def many_from_columns(cls, c: Mapping[str, Any]) -> list[Prediction]:
        """What :meth:`from_avro` makes of each v3 record, from the records' columns
        (each field's values in a list; ``detail``'s the same, in a dict), as
        :meth:`~streamscore.serde.record_heads.HeadReader.columns` reads them."""
        d = c["detail"]
        roles = [_ROLE_OF.get(r) or Role(r) for r in c["role"]]
        times = [v if isinstance(v, int) else _millis(v) for v in c["event_time"]]
        make = _make_prediction
        return [
            make(eid, key, t, name, version, role, value, label, tuple(probs), tuple(classes),
                tuple(names), tuple(features), dict(inputs) if inputs else inputs, None)
            for eid, key, t, name, version, role, value, label, probs, classes, names,
            features, inputs in zip(
                c["event_id"], c["key"], times, c["model_name"], c["model_version"], roles,
                c["value"], c["label"], d["probabilities"], d["classes"], d["feature_names"],
                d["features"], d["inputs"], strict=True,
            )
        ]  # fmt: skip

    @property
    def answers(self) -> bool:
        """True for the prediction that was the answer (primary or canary)."""
        return self.role is not _SHADOW

    def raw_inputs(self) -> dict[str, Any]:
        """The event's raw fields: the scored features by name (NaN as None), overlaid
        with ``inputs``, which carries every field the scored vector does not hold as it
        was (fields the model did not use, raw categorical values, missing values)."""
        features = self.features
        raw: dict[str, Any] = dict(zip(self.feature_names, features, strict=False))
        total = sum(features)  # NaN when any is NaN (or +inf and -inf both): then look
        if total != total and any(v != v for v in features):  # NaN: unequal to itself
            raw = {
                n: (None if isinstance(v, float) and math.isnan(v) else v) for n, v in raw.items()
            }
        if self.inputs:
            raw.update((k, v) for k, v in self.inputs.items() if k not in _NOT_INPUTS)
        return raw


@dataclass(frozen=True, slots=True)
class Feedback:
    """A record of the feedback topic: the truth about one event, learnt after the fact,
    with where it was read from."""

    event_id: str
    label: float | str
    observed_time_ms: int
    position: Position | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any], position: Position | None = None) -> Feedback:
        return cls(str(d["event_id"]), d["label"], _millis(d["observed_time"]), position)

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "label": self.label,
            "observed_time": self.observed_time_ms,
        }


@dataclass(frozen=True, slots=True)
class JoinedRow:
    """One ground-truth row as the feedback join makes it: the label, the prediction
    whose event it answers (the answering one, primary or canary; or a shadow when the
    label met only shadows: then the row carries no model output), and the versions of
    the shadow models that scored the event too. The ground-truth writer turns a batch
    of them into the table's columns at once (no dict per row)."""

    label: Feedback
    prediction: Prediction
    joined_time_ms: int
    #: role -> model version of the other (non-answering) predictions of the event
    shadow_versions: Mapping[str, int]

    @property
    def event_id(self) -> str:
        return self.label.event_id


def raw_input_columns(preds: Sequence[Prediction]) -> dict[str, list[Any]]:
    """What :meth:`Prediction.raw_inputs` gives for each prediction, column-wise: every
    raw field's values over ``preds`` (None where a prediction has no such field), in
    order of first appearance. Predictions that share their feature names (the usual
    batch: one model) have their features transposed at once."""
    n = len(preds)
    cols: dict[str, list[Any]] = {}
    # by names and count: a vector shorter than its names reads as raw_inputs reads it
    groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for i, p in enumerate(preds):
        group = (p.feature_names, len(p.features))
        g = groups.get(group)
        if g is None:
            groups[group] = [i]
        else:
            g.append(i)
    for (names, _count), rows in groups.items():
        if not names:
            continue
        whole = len(rows) == n
        vectors = [preds[i].features for i in rows]
        for name, values in zip(names, zip(*vectors, strict=False), strict=False):
            vals: list[Any] = list(values)
            total = sum(vals)  # NaN when any is NaN: then look (as raw_inputs does)
            if total != total:
                vals = [None if isinstance(v, float) and math.isnan(v) else v for v in vals]
            col = cols.get(name)
            if col is None and whole:
                cols[name] = vals
                continue
            if col is None:
                col = cols[name] = [None] * n
            for i, v in zip(rows, vals, strict=True):
                col[i] = v
    for i, p in enumerate(preds):
        if not p.inputs:
            continue
        for k, v in p.inputs.items():
            if k in _NOT_INPUTS:
                continue
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * n
            col[i] = v
    return cols


@dataclass(frozen=True, slots=True)
class StageTimings:
    decode_s: float = 0.0
    validate_s: float = 0.0
    features_s: float = 0.0
    predict_s: float = 0.0
    encode_s: float = 0.0
    produce_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One record per batch (kind ``batch``) or per model lifecycle event."""

    worker_id: str
    kind: str  # batch | model_applied | model_rejected | promotion | ...
    time_ms: int
    topic: str | None = None
    partition_offsets: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    batch_size: int = 0
    valid: int = 0
    invalid: int = 0
    late: int = 0
    timings: StageTimings = StageTimings()
    model_versions: Mapping[str, int] = field(default_factory=dict)  # role -> version
    detail: str | None = None

    def to_avro(self) -> dict[str, Any]:
        t = self.timings
        return {
            "worker_id": self.worker_id,
            "kind": self.kind,
            "time": self.time_ms,
            "topic": self.topic,
            "partitions": [
                {"partition": p, "first_offset": lo, "last_offset": hi}
                for p, (lo, hi) in sorted(self.partition_offsets.items())
            ],
            "batch_size": self.batch_size,
            "valid": self.valid,
            "invalid": self.invalid,
            "late": self.late,
            "timings": {
                "decode_s": t.decode_s,
                "validate_s": t.validate_s,
                "features_s": t.features_s,
                "predict_s": t.predict_s,
                "encode_s": t.encode_s,
                "produce_s": t.produce_s,
            },
            "model_versions": dict(self.model_versions),
            "detail": self.detail,
        }


def _millis(v: Any) -> int:
    """fastavro hands timestamp-millis back as aware datetimes; normalise to epoch ms."""
    if isinstance(v, int):
        return v
    return round(float(v.timestamp()) * 1000)


#: positional constructors of the records the feedback join builds per label
_make_prediction = positional_maker(Prediction)
make_feedback = positional_maker(Feedback)
make_joined_row = positional_maker(JoinedRow)
