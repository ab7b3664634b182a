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

    [topics]                        # the other topics: predictions, telemetry, models,
    predictions = "payments.scores" # feedback, dlq, late

    [kafka]
    bootstrap_servers = "broker:9092"

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

Precedence (the CLI applies it): flags > environment > project file > defaults.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import STRATEGY_TOPICS, EventFields, KeyFormat, SubjectStrategy, TimeEncoding
from .errors import ConfigError, ProjectFileError

#: the environment variable that names the project file (``--config`` wins over it)
CONFIG_ENV = "STREAMSCORE_CONFIG"

#: ``[topics]`` keys: every topic but the events topic, which is ``[events] topic``
TOPIC_KEYS = ("predictions", "telemetry", "models", "feedback", "dlq", "late")

_TABLES: dict[str, tuple[str, ...]] = {
    "events": ("topic", "id_field", "time_field", "time_encoding", "key_field", "key_format"),
    "topics": TOPIC_KEYS,
    "kafka": ("bootstrap_servers",),
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
}

_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")


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
    #: ``[registry]`` beyond its url: setting name -> value (see :func:`_registry_table`)
    registry: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


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
    """One table's keys, each read once and checked."""

    def __init__(self, path: str, name: str, data: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(data, dict):
            raise self.error(f"must be a table, not {_type_name(data)}")
        allowed = _TABLES[name]
        for key in data:
            if name == "topics" and key == "events":
                raise ProjectFileError(
                    "the events topic is set by [events] topic", path=path, table=name, key=key
                )
            if key not in allowed:
                raise ProjectFileError(
                    f"unknown key {key!r}{_suggest(key, allowed)}",
                    path=path,
                    table=name,
                    key=key,
                )
        self.data: dict[str, Any] = data

    def error(self, message: str, key: str | None = None) -> ProjectFileError:
        return ProjectFileError(message, path=self.path, table=self.name, key=key)

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

    def number(self, key: str, *, integer: bool = False) -> float | None:
        if key not in self.data:
            return None
        v = self.data[key]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            want = "an integer" if integer else "a number"
            raise self.error(f"must be {want}, not {_type_name(v)} ({v!r})", key)
        return float(v)

    def choice(self, key: str, enum_type: Any) -> Any:
        text = self.string(key)
        if text is None:
            return None
        try:
            return enum_type(text)
        except ValueError:
            choices = tuple(e.value for e in enum_type)
            raise self.error(f"unknown value {text!r}{_suggest(text, choices)}", key) from None


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
    tables = tuple(n for n in _TABLES if "." not in n)  # subtables are in their table
    for name, value in data.items():
        if name not in tables:
            kind = "table" if isinstance(value, dict) else "key"
            raise ProjectFileError(f"unknown {kind} {name!r}{_suggest(name, tables)}", path=path)
    got = {name: _Table(path, name, data[name]) for name in _TABLES if name in data}
    key_format = got["events"].choice("key_format", KeyFormat) if "events" in got else None
    empty = _Table(path, "events", {})

    ev = got.get("events", empty)
    field_name = "a valid Avro field name"
    id_field = ev.string("id_field", _AVRO_NAME, field_name)
    time_field = ev.string("time_field", _AVRO_NAME, field_name)
    key_field = ev.string("key_field", _AVRO_NAME, field_name)
    encoding_text = ev.string("time_encoding")
    defaults = EventFields()
    encoding = defaults.time_encoding
    if encoding_text is not None:
        try:
            encoding = TimeEncoding(encoding_text)
        except ValueError:
            raise ev.error(
                f"unknown time encoding {encoding_text!r}"
                f"{_suggest(encoding_text, tuple(e.value for e in TimeEncoding))}",
                "time_encoding",
            ) from None
    try:
        events = EventFields(
            id_field=id_field or defaults.id_field,
            time_field=time_field or defaults.time_field,
            time_encoding=encoding,
            key_field=key_field,
            key_format=key_format or defaults.key_format,
        )
    except ConfigError as exc:
        raise ev.error(exc.message, "time_field") from None

    topic_name = "a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
    topics_table = got.get("topics")
    topics: dict[str, str] = {}
    if topics_table is not None:
        for key in TOPIC_KEYS:
            v = topics_table.string(key, _TOPIC_NAME, topic_name)
            if v is not None:
                topics[key] = v
    kafka = got.get("kafka")
    registry = got.get("registry")
    return ProjectFile(
        path=path,
        events=events,
        events_topic=ev.string("topic", _TOPIC_NAME, topic_name),
        topics=MappingProxyType(topics),
        bootstrap_servers=None if kafka is None else kafka.string("bootstrap_servers"),
        registry_url=None if registry is None else registry.string("url"),
        registry=MappingProxyType(_registry_table(registry)),
    )
