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
    copy_headers = ["traceparent"]  # event headers copied to its predictions

    [topics]                        # the other topics: predictions, telemetry, models,
    predictions = "payments.scores" # feedback, dlq, late
    shadow = "payments.scores.shadow"   # shadow predictions (default <predictions>.shadow)

    [kafka]
    bootstrap_servers = "broker:9092"

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

from .config import MAX_COPIED_HEADERS, EventFields, TimeEncoding
from .errors import ConfigError, ProjectFileError

#: the environment variable that names the project file (``--config`` wins over it)
CONFIG_ENV = "STREAMSCORE_CONFIG"

#: ``[topics]`` keys: every topic but the events topic, which is ``[events] topic``
TOPIC_KEYS = ("predictions", "telemetry", "models", "feedback", "dlq", "late")

_TABLES: dict[str, tuple[str, ...]] = {
    "events": ("topic", "id_field", "time_field", "time_encoding", "key_field", "copy_headers"),
    "topics": (*TOPIC_KEYS, "shadow"),
    "kafka": ("bootstrap_servers",),
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
    copy_headers = _copy_headers(ev)
    try:
        events = EventFields(
            id_field=id_field or defaults.id_field,
            time_field=time_field or defaults.time_field,
            time_encoding=encoding,
            key_field=key_field,
            copy_headers=copy_headers,
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
        shadow = topics_table.string("shadow", _TOPIC_NAME, topic_name)
        if shadow is not None:
            topics["predictions_shadow"] = shadow
    kafka = got.get("kafka")
    registry = got.get("registry")
    return ProjectFile(
        path=path,
        events=events,
        events_topic=ev.string("topic", _TOPIC_NAME, topic_name),
        topics=MappingProxyType(topics),
        bootstrap_servers=None if kafka is None else kafka.string("bootstrap_servers"),
        registry_url=None if registry is None else registry.string("url"),
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
