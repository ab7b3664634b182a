"""The project file (``streamscore.toml``), parsed into typed, frozen settings. Pure: the
CLI reads the file and hands its text here; nothing else is read.

Tables (every one optional; an unknown table or key is an error, so that a typo never
passes silently)::

    [events]
    topic = "payments"              # the events topic
    id_field = "payment_id"         # the event's id (default event_id)
    time_field = "created_at"       # the event's time (default event_time)
    time_encoding = "timestamp-micros"  # timestamp-millis (default), timestamp-micros,
                                    # epoch-millis (a plain long), iso-8601 (a string)
    key_field = "account"           # optional: else the message key
    key_format = "string"           # message keys: string (default), bytes, avro
    subject = "payments-value"      # optional: the scorer reads events as this subject's
                                    # latest version (else each as it was written)
    copy_headers = ["traceparent"]  # event headers copied to its predictions

    [topics]                        # the other topics: predictions, telemetry, models,
    predictions = "payments.scores" # feedback, dlq, late
    shadow = "payments.scores.shadow"   # shadow predictions (default <predictions>.shadow)

    [kafka]                         # librdkafka properties for every client
    "bootstrap.servers" = "broker:9092"   # (bootstrap_servers: the same)
    "security.protocol" = "SASL_SSL"      # dotted keys unquoted work too
    "sasl.password" = { file = "/run/secrets/kafka-password" }   # a secret from a file
    [kafka.consumer]                # only consumers (also [kafka.producer], [kafka.admin])
    "fetch.wait.max.ms" = 20

    [registry]
    url = "https://registry:8081"
    ssl_ca_location = "/etc/ssl/registry-ca.pem"   # and ssl_certificate_location,
                                    # ssl_key_location, ssl_key_password_file (mutual TLS)
    basic_auth_user = "svc"         # with basic_auth_password_file, or
    # basic_auth_user_info_file = "/run/secrets/registry"   # "user:password"
    # bearer_token_file = "/run/secrets/token"  # read again when it changes
    auto_register = false           # production registries forbid registration
    subject_strategy = "record"     # topic (default), record, topic-record
    [registry.subject_strategies]   # per topic: events, predictions, telemetry,
    predictions = "topic-record"    # models, feedback

Secrets are never written in the project file: only the files that hold them.

    [[features]]                    # the model's inputs, in order (one table each)
    name = "amount"                 # the model's column name
    path = "amount"                 # dotted path into the event ("device.os"); default name
    kind = "numeric"                # numeric | boolean | categorical
    missing = "reject"              # reject | impute
    impute = 0.0                    # missing = "impute": a number, a boolean, a category
    min = 0.0                       # numeric only
    max = 10000.0
    categories = ["FR", "DE"]       # categorical only (its strings, or the enum's symbols)

    [labels]                        # the user's label topic (LabelSettings)
    topic = "chargebacks"
    id_field = "payment_id"
    label_field = "is_fraud"
    time_field = "reported_at"
    time_encoding = "timestamp-millis"
    task = "binary"                 # binary | multiclass | regression
    positive = "true"               # binary only: the positive class, as a string

    [train]                         # the training recipe (TrainRecipe)
    model_name = "payments"
    estimator = "sklearn.ensemble.HistGradientBoostingClassifier"
    params = { max_iter = 200 }
    # fit = "mypkg.train:fit"       # OR a function: training frame -> fitted estimator
    window = "30d"                  # s, m, h, d, w (config.duration_ms)
    holdout = 0.2                   # the last fraction by event time, in (0, 1)
    metric = "roc_auc"              # accuracy | log_loss | roc_auc | macro_f1 | mae | rmse
    margin = 0.0

    [groundtruth]                   # the ground-truth table (Delta Lake)
    uri = "s3://bucket/prefix"      # or file:///abs/path, or a path (default ./groundtruth)
    retention_hours = 168           # time travel / vacuum horizon
    compact_every_s = 600           # small-file compaction by the feedback workers
    vacuum_every_s = 3600
    [groundtruth.storage]           # object-store options (delta-rs names)
    endpoint = "http://127.0.0.1:18090"
    region = "us-east-1"
    allow_http = "true"

Precedence (the CLI applies it): flags > environment > project file > defaults.

One concern, hence its length: the project file's text turned into typed tables, with
a precise error for each mistake.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import (
    MAX_COPIED_HEADERS,
    METRICS_BY_TASK,
    STRATEGY_TOPICS,
    EventFields,
    GroundTruthSettings,
    KeyFormat,
    LabelSettings,
    LabelTask,
    Metric,
    Secret,
    SubjectStrategy,
    TimeEncoding,
    TrainRecipe,
    duration_ms,
)
from .errors import ConfigError, ProjectFileError
from .records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy

#: the environment variable that names the project file (``--config`` wins over it)
CONFIG_ENV = "STREAMSCORE_CONFIG"

#: ``[topics]`` keys: every topic but the events topic, which is ``[events] topic``
TOPIC_KEYS = ("predictions", "telemetry", "models", "feedback", "dlq", "late")

_TABLES: dict[str, tuple[str, ...]] = {
    "events": (
        "topic",
        "id_field",
        "time_field",
        "time_encoding",
        "key_field",
        "key_format",
        "subject",
        "copy_headers",
    ),
    "topics": (*TOPIC_KEYS, "shadow"),
    # any librdkafka property (read by _kafka_properties); listed for suggestions only
    "kafka": ("bootstrap_servers", "consumer", "producer", "admin"),
    "registry": (
        "url",
        "ssl_ca_location",
        "ssl_certificate_location",
        "ssl_key_location",
        "ssl_key_password_file",
        "basic_auth_user",
        "basic_auth_password_file",
        "basic_auth_user_info_file",
        "bearer_token_file",
        "bearer_logical_cluster",
        "bearer_identity_pool",
        "auto_register",
        "subject_strategy",
        "subject_strategies",
        "timeout_s",
        "max_retries",
    ),
    "registry.subject_strategies": STRATEGY_TOPICS,
    "groundtruth": ("uri", "retention_hours", "compact_every_s", "vacuum_every_s", "storage"),
    "labels": (
        "topic",
        "id_field",
        "label_field",
        "time_field",
        "time_encoding",
        "task",
        "positive",
    ),
    "train": (
        "model_name",
        "estimator",
        "params",
        "fit",
        "window",
        "holdout",
        "metric",
        "margin",
    ),
}

#: arrays of tables (``[[features]]``): name -> the keys of each table
_ARRAYS: dict[str, tuple[str, ...]] = {
    "features": ("name", "path", "kind", "missing", "impute", "min", "max", "categories"),
}

_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_FIELD_NAME = "a valid Avro field name"
_TOPIC_TEXT = "a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"


@dataclass(frozen=True)
class ProjectFile:
    """What a project file says; ``None`` (or absent from ``topics``) where it is silent."""

    path: str
    events: EventFields = field(default_factory=EventFields)
    events_topic: str | None = None
    #: ``[topics]``: topic setting name (``TopicSettings`` attribute) -> topic name
    topics: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bootstrap_servers: str | None = None
    registry_url: str | None = None
    #: ``[[features]]``: the model's inputs, in order (None: the file has none)
    features: FeatureSpec | None = None
    #: ``[labels]``: the user's label topic and fields
    labels: LabelSettings | None = None
    #: ``[train]``: the training recipe
    train: TrainRecipe | None = None
    #: ``[registry]`` beyond its url: setting name -> value (see :func:`_registry_table`)
    registry: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    groundtruth: GroundTruthSettings | None = None
    #: ``[kafka]`` (scope ``"*"``) and ``[kafka.consumer|producer|admin]``: librdkafka
    #: property -> value (a string, or a :class:`FileRef` the CLI reads)
    kafka: Mapping[str, Mapping[str, str | FileRef]] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True)
class FileRef:
    """A property whose value is the content of a file (``{ file = "/path" }``): read by
    the CLI, never by this module."""

    path: str


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; expected one of: {', '.join(choices)}"


def _type_name(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


class _Table:
    """One table's keys, each read once and checked. ``item`` names one table of an array
    of tables in every error (``feature #2 ('amount')``)."""

    def __init__(self, path: str, name: str, data: Any, item: str = "") -> None:
        self.path, self.name, self.item = path, name, item
        if not isinstance(data, dict):
            raise self.error(f"must be a table, not {_type_name(data)}")
        allowed = _TABLES.get(name) or _ARRAYS[name]
        for key in data if name != "kafka" else ():
            if name == "topics" and key == "events":
                raise ProjectFileError(
                    "the events topic is set by [events] topic", path=path, table=name, key=key
                )
            if key not in allowed:
                raise self.error(f"unknown key {key!r}{_suggest(key, allowed)}", key)
        self.data: dict[str, Any] = data

    def error(self, message: str, key: str | None = None) -> ProjectFileError:
        prefix = f"{self.item}: " if self.item else ""
        return ProjectFileError(prefix + message, path=self.path, table=self.name, key=key)

    def number(self, key: str, *, integer: bool = False) -> float | None:
        """A float or integer (never a boolean); ``integer``: an integer only."""
        if key not in self.data:
            return None
        v = self.data[key]
        if type(v) not in ((int,) if integer else (int, float)):
            want = "an integer" if integer else "a number"
            raise self.error(f"must be {want}, not {_type_name(v)} ({v!r})", key)
        if v != v or v in (float("inf"), float("-inf")):
            raise self.error(f"must be a finite number, not {v!r}", key)
        return float(v)

    def strings(self, key: str) -> tuple[str, ...] | None:
        """A non-empty array of non-empty strings."""
        if key not in self.data:
            return None
        v = self.data[key]
        if not isinstance(v, list):
            raise self.error(f"must be an array of strings, not {_type_name(v)} ({v!r})", key)
        if not v:
            raise self.error("must not be empty", key)
        for x in v:
            if not isinstance(x, str) or not x:
                raise self.error(f"must hold non-empty strings only, not {x!r}", key)
        return tuple(v)

    def table(self, key: str) -> dict[str, Any] | None:
        if key not in self.data:
            return None
        v = self.data[key]
        if not isinstance(v, dict):
            raise self.error(f"must be a table ({{ a = 1 }}), not {_type_name(v)} ({v!r})", key)
        return v

    def choice(self, key: str, enum_type: Any, what: str = "value") -> Any:
        """A value of the string enum ``enum_type`` (None when absent)."""
        text = self.string(key)
        if text is None:
            return None
        try:
            return enum_type(text)
        except ValueError:
            choices = tuple(e.value for e in enum_type)
            raise self.error(f"unknown {what} {text!r}{_suggest(text, choices)}", key) from None

    def string(
        self, key: str, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str | None:
        if key not in self.data:
            return None
        v = self.data[key]
        if not isinstance(v, str):
            raise self.error(f"must be a string, not {_type_name(v)} ({v!r})", key)
        if not v.strip():
            raise self.error("must not be empty", key)
        if pattern is not None and not pattern.match(v):
            raise self.error(f"{v!r} is not {what}", key)
        return v

    def boolean(self, key: str) -> bool | None:
        if key not in self.data:
            return None
        v = self.data[key]
        if not isinstance(v, bool):
            raise self.error(f"must be true or false, not {_type_name(v)} ({v!r})", key)
        return v


def _registry_table(table: _Table | None) -> dict[str, Any]:
    """``[registry]`` (and ``[registry.subject_strategies]``) as ``RegistrySettings``
    field names -> values, for the keys the file sets."""
    if table is None:
        return {}
    out: dict[str, Any] = {}
    for key, name in (
        ("ssl_ca_location", "ca_location"),
        ("ssl_certificate_location", "certificate_location"),
        ("ssl_key_location", "key_location"),
        ("basic_auth_user", "basic_auth_user"),
        ("bearer_logical_cluster", "bearer_logical_cluster"),
        ("bearer_identity_pool", "bearer_identity_pool"),
        # files holding secrets: read by the CLI
        ("ssl_key_password_file", "key_password_file"),
        ("basic_auth_password_file", "basic_auth_password_file"),
        ("basic_auth_user_info_file", "basic_auth_user_info_file"),
        ("bearer_token_file", "bearer_token_file"),
    ):
        v = table.string(key)
        if v is not None:
            out[name] = v
    auto = table.boolean("auto_register")
    if auto is not None:
        out["auto_register"] = auto
    strategy = table.choice("subject_strategy", SubjectStrategy)
    if strategy is not None:
        out["subject_strategy"] = strategy
    timeout = table.number("timeout_s")
    if timeout is not None:
        if timeout <= 0:
            raise table.error(f"must be > 0, got {timeout}", "timeout_s")
        out["timeout_s"] = timeout
    retries = table.number("max_retries", integer=True)
    if retries is not None:
        if retries < 0:
            raise table.error(f"must be >= 0, got {int(retries)}", "max_retries")
        out["max_retries"] = int(retries)
    if "subject_strategies" in table.data:
        per = _Table(table.path, "registry.subject_strategies", table.data["subject_strategies"])
        out["subject_strategies"] = MappingProxyType(
            {
                topic: per.choice(topic, SubjectStrategy)
                for topic in STRATEGY_TOPICS
                if topic in per.data
            }
        )
    return out


def parse_project(text: str, path: str) -> ProjectFile:
    """The project file ``text`` (read from ``path``, named in every error)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProjectFileError(f"not valid TOML: {exc}", path=path) from None
    return project_from_mapping(data, path)


def project_from_mapping(data: Mapping[str, Any], path: str) -> ProjectFile:
    """A parsed TOML document as a :class:`ProjectFile` (see :func:`parse_project`)."""
    tables = (*(n for n in _TABLES if "." not in n), *_ARRAYS)  # subtables are in their table
    for name, value in data.items():
        if name not in tables:
            kind = "table" if isinstance(value, dict) else "key"
            raise ProjectFileError(f"unknown {kind} {name!r}{_suggest(name, tables)}", path=path)
    got = {name: _Table(path, name, data[name]) for name in _TABLES if name in data}
    key_format = got["events"].choice("key_format", KeyFormat) if "events" in got else None
    empty = _Table(path, "events", {})

    ev = got.get("events", empty)
    id_field = ev.string("id_field", _AVRO_NAME, _FIELD_NAME)
    time_field = ev.string("time_field", _AVRO_NAME, _FIELD_NAME)
    key_field = ev.string("key_field", _AVRO_NAME, _FIELD_NAME)
    defaults = EventFields()
    encoding = ev.choice("time_encoding", TimeEncoding, "time encoding") or defaults.time_encoding
    copy_headers = _copy_headers(ev)
    try:
        events = EventFields(
            id_field=id_field or defaults.id_field,
            time_field=time_field or defaults.time_field,
            time_encoding=encoding,
            key_field=key_field,
            key_format=key_format or defaults.key_format,
            subject=ev.string("subject"),
            copy_headers=copy_headers,
        )
    except ConfigError as exc:
        raise ev.error(exc.message, "time_field") from None

    topic_name = _TOPIC_TEXT
    topics_table = got.get("topics")
    topics: dict[str, str] = {}
    if topics_table is not None:
        for key in TOPIC_KEYS:
            v = topics_table.string(key, _TOPIC_NAME, topic_name)
            if v is not None:
                topics[key] = v
        shadow = topics_table.string("shadow", _TOPIC_NAME, topic_name)
        if shadow is not None:
            topics["predictions_shadow"] = shadow
    kafka = got.get("kafka")
    registry = got.get("registry")
    props = _kafka_properties(kafka) if kafka is not None else {}
    labels = None if "labels" not in got else _labels(got["labels"])
    gt = got.get("groundtruth")
    return ProjectFile(
        path=path,
        events=events,
        events_topic=ev.string("topic", _TOPIC_NAME, topic_name),
        topics=MappingProxyType(topics),
        bootstrap_servers=_bootstrap(kafka, props),
        registry_url=None if registry is None else registry.string("url"),
        kafka=MappingProxyType({k: MappingProxyType(v) for k, v in props.items()}),
        features=_features(path, data["features"]) if "features" in data else None,
        labels=labels,
        train=None if "train" not in got else _train(got["train"], labels),
        registry=MappingProxyType(_registry_table(registry)),
        groundtruth=None if gt is None else _groundtruth(gt),
    )


#: a header name as ``copy_headers`` takes it (printable ASCII, no spaces)
_HEADER_NAME = re.compile(r"[!-~]{1,249}\Z")


def _copy_headers(ev: _Table) -> tuple[str, ...]:
    """``[events] copy_headers``: the event headers copied to its predictions."""
    if "copy_headers" not in ev.data:
        return ()
    names = ev.data["copy_headers"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ev.error("must be a list of header names (strings)", "copy_headers")
    if len(names) > MAX_COPIED_HEADERS:
        raise ev.error(f"at most {MAX_COPIED_HEADERS} header names", "copy_headers")
    for n in names:
        if not _HEADER_NAME.match(n):
            raise ev.error(f"{n!r} is not a header name", "copy_headers")
        if n.startswith("streamscore."):
            raise ev.error(f"{n!r}: streamscore.* headers are the worker's own", "copy_headers")
    if len(set(names)) != len(names):
        raise ev.error("a header is named twice", "copy_headers")
    return tuple(names)


# ----------------------------------------------------------------- [[features]]

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
#: a feature path's depth at most (nested records within records)
MAX_PATH_DEPTH = 8


def _features(path: str, data: Any) -> FeatureSpec:
    """``[[features]]``: an array of tables, one per model input, in order."""
    if not isinstance(data, list):
        raise ProjectFileError(
            f"must be an array of tables ([[features]]), not {_type_name(data)}",
            path=path,
            table="features",
        )
    if not data:
        raise ProjectFileError("needs at least one feature", path=path, table="features")
    fields: list[FeatureField] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data, start=1):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"feature #{i}" + (f" ({name!r})" if isinstance(name, str) else "")
        t = _Table(path, "features", item, item=label)
        f = _feature(t)
        if f.name in seen:
            raise t.error(f"the name {f.name!r} is also feature #{seen[f.name]}'s", "name")
        seen[f.name] = i
        fields.append(f)
    return FeatureSpec(tuple(fields))


def _feature(t: _Table) -> FeatureField:
    name = t.string("name")
    if name is None:
        raise t.error("every feature needs a name (its column name in the model)", "name")
    source = t.string("path", _DOTTED, "a dotted path of Avro field names ('device.os')")
    if source is not None and source.count(".") >= MAX_PATH_DEPTH:
        raise t.error(f"is deeper than {MAX_PATH_DEPTH} nested records", "path")
    if source is None and not _DOTTED.match(name):
        raise t.error(
            f"{name!r} is not a field of the event: give its path ('path = \"a.b\"')", "name"
        )
    kind: FeatureKind = t.choice("kind", FeatureKind, "kind") or FeatureKind.NUMERIC
    missing: MissingPolicy = t.choice("missing", MissingPolicy, "missing policy") or (
        MissingPolicy.REJECT
    )
    lo, hi = t.number("min"), t.number("max")
    for key, v in (("min", lo), ("max", hi)):
        if v is not None and kind is not FeatureKind.NUMERIC:
            raise t.error(f"a range is for numeric features only, not {kind.value}", key)
    if lo is not None and hi is not None and lo > hi:
        raise t.error(f"min ({lo:g}) is above max ({hi:g})", "min")
    categories = t.strings("categories") or ()
    if kind is FeatureKind.CATEGORICAL:
        if not categories:
            raise t.error(
                "a categorical feature needs its categories (the strings or enum symbols "
                "it takes, in the order the model numbers them)",
                "categories",
            )
        dup = sorted({c for c in categories if categories.count(c) > 1})
        if dup:
            raise t.error(f"{', '.join(map(repr, dup))} given more than once", "categories")
    elif categories:
        raise t.error(
            f"categories are for categorical features only, not {kind.value}", "categories"
        )
    return FeatureField(
        name=name,
        kind=kind,
        minimum=lo,
        maximum=hi,
        missing=missing,
        impute_value=_impute(t, kind, missing, categories, lo, hi),
        categories=categories,
        path=None if source in (None, name) else source,
    )


def _impute(
    t: _Table,
    kind: FeatureKind,
    missing: MissingPolicy,
    categories: tuple[str, ...],
    lo: float | None,
    hi: float | None,
) -> float:
    """``impute`` as the model sees it (NaN: not given, for models that take NaN)."""
    if "impute" not in t.data:
        return math.nan
    v = t.data["impute"]
    if missing is not MissingPolicy.IMPUTE:
        raise t.error('is read only with missing = "impute"', "impute")
    if kind is FeatureKind.CATEGORICAL:
        if not isinstance(v, str) or v not in categories:
            raise t.error(f"must be one of the categories, not {v!r}", "impute")
        return float(categories.index(v))
    if kind is FeatureKind.BOOLEAN:
        if type(v) is bool or (type(v) is int and v in (0, 1)):
            return float(v)
        raise t.error(f"must be true or false, not {v!r}", "impute")
    x = t.number("impute")
    assert x is not None
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise t.error(f"{x:g} is outside the feature's range [{lo}, {hi}]", "impute")
    return x


# ------------------------------------------------------------------- [labels]


def _labels(t: _Table) -> LabelSettings:
    for key in ("topic", "id_field", "label_field", "task"):
        if key not in t.data:
            raise t.error("is required in [labels]", key)
    topic = t.string("topic", _TOPIC_NAME, _TOPIC_TEXT)
    id_field = t.string("id_field", _AVRO_NAME, _FIELD_NAME)
    label_field = t.string("label_field", _AVRO_NAME, _FIELD_NAME)
    task: LabelTask = t.choice("task", LabelTask, "task")
    assert topic and id_field and label_field and task
    positive = t.data.get("positive")
    if type(positive) is bool or type(positive) is int:  # `= true`, `= 1`: meant as text
        positive = str(positive).lower()
    elif positive is not None:
        positive = t.string("positive")
    try:
        return LabelSettings(
            topic=topic,
            id_field=id_field,
            label_field=label_field,
            task=task,
            time_field=t.string("time_field", _AVRO_NAME, _FIELD_NAME),
            time_encoding=t.choice("time_encoding", TimeEncoding, "time encoding")
            or TimeEncoding.TIMESTAMP_MILLIS,
            positive=positive,
        )
    except ConfigError as exc:
        key = "positive" if exc.message.startswith("positive") else "label_field"
        raise t.error(exc.message, key) from None


# -------------------------------------------------------------------- [train]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``package.module.Class``: a module path and a name in it
_CLASS_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})+\Z")
#: ``package.module:function``
_FUNCTION_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}\Z")


def _train(t: _Table, labels: LabelSettings | None) -> TrainRecipe:
    estimator = t.string(
        "estimator",
        _CLASS_PATH,
        "an import path 'package.module.Class' (e.g. "
        "'sklearn.ensemble.HistGradientBoostingClassifier')",
    )
    fit = t.string("fit", _FUNCTION_PATH, "a function's import path 'package.module:function'")
    if estimator is not None and fit is not None:
        raise t.error("give estimator or fit, not both", "fit")
    if estimator is None and fit is None:
        raise t.error(
            "needs an estimator (an import path, with params) or fit "
            "('package.module:function', your own code)",
            "estimator",
        )
    params = t.table("params")
    if params is not None and fit is not None:
        raise t.error("params go with estimator; a fit function sets its own", "params")
    window_text = t.string("window")
    window = None
    if window_text is not None:
        try:
            window = duration_ms(window_text)
        except ConfigError as exc:
            raise t.error(exc.message, "window") from None
    holdout = t.number("holdout")
    if holdout is not None and not 0.0 < holdout < 1.0:
        raise t.error(
            f"must be a fraction in (0, 1) (of the rows held out), not {holdout:g}", "holdout"
        )
    margin = t.number("margin")
    if margin is not None and margin < 0:
        raise t.error(f"must be >= 0, not {margin:g}", "margin")
    metric: Metric | None = t.choice("metric", Metric, "metric")
    if metric is not None and labels is not None:
        fits = METRICS_BY_TASK[labels.task]
        if metric not in fits:
            raise t.error(
                f"{metric.value!r} is not a metric of {labels.task.value} labels "
                f"([labels] task); expected one of: {', '.join(m.value for m in fits)}",
                "metric",
            )
    return TrainRecipe(
        model_name=t.string("model_name"),
        estimator=estimator,
        params=MappingProxyType(dict(params or {})),
        fit=fit,
        window_ms=window,
        holdout=0.2 if holdout is None else holdout,
        metric=metric,
        margin=margin or 0.0,
    )


def _groundtruth(t: _Table) -> GroundTruthSettings:
    """``[groundtruth]``: ``uri``, the upkeep settings, and ``[groundtruth.storage]``
    (object-store options, strings, passed as they are; values are kept secret)."""
    defaults = GroundTruthSettings()
    numbers: dict[str, float] = {}
    for key in ("retention_hours", "compact_every_s", "vacuum_every_s"):
        if key in t.data:
            v = t.data[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise t.error(f"must be a number >= 0, not {v!r}", key)
            numbers[key] = float(v)
    storage_data = t.data.get("storage", {})
    if not isinstance(storage_data, dict):
        raise t.error(f"must be a table, not {_type_name(storage_data)}", "storage")
    storage: dict[str, Secret] = {}
    for k, v in storage_data.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, str | int | float):
            raise t.error(f"[groundtruth.storage] {k} must be a string, not {_type_name(v)}")
        storage[str(k)] = Secret(str(v))
    try:
        return GroundTruthSettings(
            uri=t.string("uri") or defaults.uri,
            storage=storage,
            **numbers,
        )
    except ConfigError as exc:
        raise t.error(exc.message, "uri") from None


#: ``[kafka]`` sub-tables: properties for one kind of client only
KAFKA_SCOPES = ("consumer", "producer", "admin")
_PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")


def _property_value(table: _Table, name: str, v: Any) -> str | FileRef:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and set(v) == {"file"} and isinstance(v["file"], str):
        return FileRef(v["file"])
    raise table.error(
        f'must be a string, a number, a boolean or {{ file = "<path>" }}, '
        f"not {_type_name(v)} ({v!r})",
        name,
    )


def _flatten(table: _Table, data: dict[str, Any], prefix: str) -> dict[str, str | FileRef]:
    """TOML reads ``ssl.ca.location = "x"`` as nested tables: back to dotted names."""
    out: dict[str, str | FileRef] = {}
    for key, v in data.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and set(v) != {"file"}:
            out.update(_flatten(table, v, f"{name}."))
            continue
        if not _PROPERTY_NAME.match(name):
            raise table.error(
                "is not a librdkafka property name (lower case, dotted: ssl.ca.location)", name
            )
        out[name] = _property_value(table, name, v)
    return out


def _kafka_properties(table: _Table) -> dict[str, dict[str, str | FileRef]]:
    """``[kafka]`` and its sub-tables: scope (``*`` or a client kind) -> properties."""
    common = {k: v for k, v in table.data.items() if k not in KAFKA_SCOPES}
    out: dict[str, dict[str, str | FileRef]] = {"*": _flatten(table, common, "")}
    if "bootstrap_servers" in out["*"]:  # the older spelling
        if "bootstrap.servers" in out["*"]:
            raise table.error(
                "is given twice (bootstrap_servers and bootstrap.servers)", "bootstrap_servers"
            )
        out["*"]["bootstrap.servers"] = out["*"].pop("bootstrap_servers")
    for scope in KAFKA_SCOPES:
        if scope in table.data:
            sub = _Table(table.path, "kafka", {})
            sub.name = f"kafka.{scope}"
            if not isinstance(table.data[scope], dict):
                raise sub.error(f"must be a table, not {_type_name(table.data[scope])}")
            out[scope] = _flatten(sub, table.data[scope], "")
            if "bootstrap.servers" in out[scope]:
                raise sub.error("goes in [kafka] (every client)", "bootstrap.servers")
    return out


def _bootstrap(table: _Table | None, props: Mapping[str, Mapping[str, Any]]) -> str | None:
    if table is None:
        return None
    v = props.get("*", {}).get("bootstrap.servers")
    key = "bootstrap_servers" if "bootstrap_servers" in table.data else "bootstrap.servers"
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise table.error("must be a non-empty string of host:port pairs", key)
    return v
