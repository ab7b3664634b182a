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

    [topics]                        # the other topics: predictions, telemetry, models,
    predictions = "payments.scores" # feedback, dlq, late

    [kafka]                         # librdkafka properties for every client
    "bootstrap.servers" = "broker:9092"   # (bootstrap_servers: the same)
    "security.protocol" = "SASL_SSL"      # dotted keys unquoted work too
    "sasl.password" = { file = "/run/secrets/kafka-password" }   # a secret from a file
    [kafka.consumer]                # only consumers (also [kafka.producer], [kafka.admin])
    "fetch.wait.max.ms" = 20

    [registry]
    url = "http://registry:8081"

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

from .config import EventFields, TimeEncoding
from .errors import ConfigError, ProjectFileError

#: the environment variable that names the project file (``--config`` wins over it)
CONFIG_ENV = "STREAMSCORE_CONFIG"

#: ``[topics]`` keys: every topic but the events topic, which is ``[events] topic``
TOPIC_KEYS = ("predictions", "telemetry", "models", "feedback", "dlq", "late")

_TABLES: dict[str, tuple[str, ...]] = {
    "events": ("topic", "id_field", "time_field", "time_encoding", "key_field"),
    "topics": TOPIC_KEYS,
    # any librdkafka property (read by _kafka_properties); listed for suggestions only
    "kafka": ("bootstrap_servers", "consumer", "producer", "admin"),
    "registry": ("url",),
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
    """One table's keys, each read once and checked."""

    def __init__(self, path: str, name: str, data: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(data, dict):
            raise self.error(f"must be a table, not {_type_name(data)}")
        allowed = _TABLES[name]
        for key in data if name != "kafka" else ():
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


def parse_project(text: str, path: str) -> ProjectFile:
    """The project file ``text`` (read from ``path``, named in every error)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProjectFileError(f"not valid TOML: {exc}", path=path) from None
    return project_from_mapping(data, path)


def project_from_mapping(data: Mapping[str, Any], path: str) -> ProjectFile:
    """A parsed TOML document as a :class:`ProjectFile` (see :func:`parse_project`)."""
    tables = tuple(_TABLES)
    for name, value in data.items():
        if name not in _TABLES:
            kind = "table" if isinstance(value, dict) else "key"
            raise ProjectFileError(f"unknown {kind} {name!r}{_suggest(name, tables)}", path=path)
    got = {name: _Table(path, name, data[name]) for name in _TABLES if name in data}
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
    props = _kafka_properties(kafka) if kafka is not None else {}
    return ProjectFile(
        path=path,
        events=events,
        events_topic=ev.string("topic", _TOPIC_NAME, topic_name),
        topics=MappingProxyType(topics),
        bootstrap_servers=_bootstrap(kafka, props),
        registry_url=None if registry is None else registry.string("url"),
        kafka=MappingProxyType({k: MappingProxyType(v) for k, v in props.items()}),
    )


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
