"""Typed, frozen settings. Only ``cli.py`` reads the environment; everything else is
handed one of these objects. Secrets are wrapped in :class:`Secret` so that a settings
object can be logged or printed without leaking them.

One concern, hence its length: the typed settings of every process (one frozen
dataclass per part: Kafka, registry, topics, scoring, feedback, ground truth, metrics)
and their validation.
"""

from __future__ import annotations

import copyreg
import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .errors import ConfigError
from .records import EVENT_ID_FIELD, EVENT_TIME_FIELD, FeatureSpec, Task


def read_only(mapping: dict[Any, Any]) -> Mapping[Any, Any]:
    """A read-only view of ``mapping`` (what a pickled view is rebuilt with)."""
    return MappingProxyType(mapping)


def _reduce_view(view: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return read_only, (dict(view),)


# settings hold read-only views of their mappings, and a stage run in a child process
# receives its settings pickled (``feedback/router_process.py``): a view pickles as a
# view of a copy of its mapping
copyreg.pickle(MappingProxyType, _reduce_view)


@dataclass(frozen=True)
class Env:
    """Every setting a command reads from the environment (built by the CLI only)."""

    kafka: KafkaSettings
    registry: RegistrySettings
    topics: TopicSettings
    signing: SigningSettings
    cluster: ClusterSettings
    model_max_bytes: int
    #: which of the event's own fields are its id, time and key (the project file's
    #: ``[events]``; the defaults are the shipped event schema's)
    events: EventFields = field(default_factory=lambda: EventFields())
    #: the project file's ``[[features]]`` (None: it has none)
    features: FeatureSpec | None = None
    #: the project file's ``[labels]`` and ``[train]`` (None: it has none)
    labels: LabelSettings | None = None
    train: TrainRecipe | None = None
    #: where the ground-truth table lives (the project file's ``[groundtruth]``)
    groundtruth: GroundTruthSettings = field(default_factory=lambda: GroundTruthSettings())


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TimeEncoding(enum.StrEnum):
    """How an event's time field holds its time."""

    TIMESTAMP_MILLIS = "timestamp-millis"  # Avro long, logical type timestamp-millis
    TIMESTAMP_MICROS = "timestamp-micros"  # Avro long, logical type timestamp-micros
    EPOCH_MILLIS = "epoch-millis"  # a plain long: milliseconds since the epoch
    ISO_8601 = "iso-8601"  # a string, with a UTC offset (``2026-01-02T03:04:05Z``)


#: The most event headers a project may copy to its predictions
MAX_COPIED_HEADERS = 16


class KeyFormat(enum.StrEnum):
    """How the events' message keys are written (``[events] key_format``)."""

    STRING = "string"  # UTF-8 text
    BYTES = "bytes"  # opaque bytes (shown and hashed as lowercase hex)
    AVRO = "avro"  # the wire format: a key schema in the registry (<topic>-key)


@dataclass(frozen=True)
class EventFields:
    """Which of the event's own fields the scorer reads as its id, its time and its key.
    The defaults are the shipped ``event`` schema's; ``key_field`` None: the message key.
    The prediction record keeps its own ``event_id``/``event_time``, filled from these."""

    id_field: str = EVENT_ID_FIELD
    time_field: str = EVENT_TIME_FIELD
    time_encoding: TimeEncoding = TimeEncoding.TIMESTAMP_MILLIS
    key_field: str | None = None
    #: how message keys are decoded (used when ``key_field`` is None)
    key_format: KeyFormat = KeyFormat.STRING
    #: the registry subject whose latest version the scorer reads events as (None: each
    #: event is read with the schema it was written with)
    subject: str | None = None
    #: the event headers copied to the event's predictions (e.g. ``traceparent``)
    copy_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.copy_headers) > MAX_COPIED_HEADERS:
            raise ConfigError(f"at most {MAX_COPIED_HEADERS} event headers can be copied")
        if self.id_field == self.time_field:
            raise ConfigError(f"the event id and time fields are both {self.id_field!r}")


def _frozen(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


#: The kinds of Kafka client streamscore creates; each may have its own properties
#: (``[kafka.consumer]``, ``STREAMSCORE_KAFKA_CONSUMER_*``, ...) over the common ones.
ClientKind = Literal["consumer", "producer", "admin"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("consumer", "producer", "admin")

#: A librdkafka property's value as the user gave it (secrets wrapped, see
#: :func:`streamscore.core.redact.is_secret_property`).
PropertyValue = str | Secret

#: librdkafka properties whose value streamscore sets itself because its guarantees rest
#: on them: a user value that differs from streamscore's for that client is refused
#: (:class:`ConfigError` naming the property), never applied. Value: why, and what to use
#: instead.
OWNED_PROPERTIES: Mapping[str, str] = MappingProxyType(
    {
        "enable.auto.commit": "offsets are committed only after a batch's outputs are "
        "acknowledged (at-least-once) or inside its transaction (--exactly-once)",
        "enable.auto.offset.store": "a batch's offsets are stored only once its outputs "
        "are acknowledged",
        "isolation.level": "streamscore reads committed data only (read_committed)",
        "enable.idempotence": "outputs are written by an idempotent producer (no duplicates "
        "from producer retries)",
        "acks": "an output counts as written only when every in-sync replica has it (all)",
        "transactional.id": "each worker's transactional id is derived from --group-id and "
        "--worker-id by --exactly-once",
        "group.id": "the consumer group is chosen with --group-id",
        "enable.partition.eof": "the model topic is read to its end before scoring starts",
        "partition.assignment.strategy": "the assignment protocol each loop's rebalance "
        "handling is written for",
        "auto.offset.reset": "a new group starts from the beginning: no event is skipped",
        "delivery.report.only.error": "the sinks count refused outputs only (offsets are "
        "stored at flush checkpoints)",
        "metadata.recovery.strategy": "reconnecting to the known brokers after an outage "
        "(librdkafka#5511)",
    }
)


def _same_value(a: object, b: object) -> bool:
    def norm(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v).strip().lower()

    return norm(a) == norm(b)


@dataclass(frozen=True)
class KafkaSettings:
    """How every Kafka client connects. ``extra`` holds librdkafka properties for every
    client, ``consumer``/``producer``/``admin`` those for one kind of client (applied
    over ``extra``); the CLI fills them from the project file's ``[kafka]`` tables and the
    ``STREAMSCORE_KAFKA_*`` environment. Secret values are :class:`Secret` (never shown);
    ``origins`` says where each property came from (``"<kind or *>:<name>"`` -> a file
    table or an environment variable), for error messages."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    #: librdkafka properties for every client, applied over streamscore's own settings
    #: (a property streamscore owns, :data:`OWNED_PROPERTIES`, only with the same value)
    extra: Mapping[str, PropertyValue] = field(default_factory=lambda: _frozen(None))
    consumer: Mapping[str, PropertyValue] = field(default_factory=lambda: _frozen(None))
    producer: Mapping[str, PropertyValue] = field(default_factory=lambda: _frozen(None))
    admin: Mapping[str, PropertyValue] = field(default_factory=lambda: _frozen(None))
    origins: Mapping[str, str] = field(default_factory=lambda: _frozen(None))

    def __post_init__(self) -> None:
        from .redact import is_secret_property

        for scope in ("extra", *CLIENT_KINDS):
            props: dict[str, PropertyValue] = {}
            for name, value in getattr(self, scope).items():
                if not isinstance(value, Secret) and is_secret_property(name):
                    value = Secret(str(value))
                props[name] = value
            object.__setattr__(self, scope, MappingProxyType(props))
            if "transactional.id" in props:
                raise ConfigError(self._refusal("transactional.id", scope, None))
        object.__setattr__(self, "origins", MappingProxyType(dict(self.origins)))

    def __repr__(self) -> str:
        def show(m: Mapping[str, PropertyValue]) -> dict[str, str]:
            return {k: repr(v) if isinstance(v, Secret) else v for k, v in m.items()}

        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, "
            f"sasl_mechanism={self.sasl_mechanism!r}, sasl_username={self.sasl_username!r}, "
            f"sasl_password={self.sasl_password!r}, extra={show(self.extra)}, "
            f"consumer={show(self.consumer)}, producer={show(self.producer)}, "
            f"admin={show(self.admin)})"
        )

    def _origin(self, name: str, scope: str) -> str:
        kind = "*" if scope == "extra" else scope
        return self.origins.get(f"{kind}:{name}") or (
            "[kafka]" if scope == "extra" else f"[kafka.{scope}]"
        )

    def _refusal(self, name: str, scope: str, ours: object) -> str:
        given = "" if ours is None else f" (streamscore sets {ours!r} for this client)"
        return (
            f"Kafka property {name!r} from {self._origin(name, scope)} cannot be set{given}: "
            f"{OWNED_PROPERTIES.get(name, 'streamscore sets it')}; remove it"
        )

    def client_config(self) -> dict[str, Any]:
        """The librdkafka properties shared by every client (secrets revealed here only)."""
        return self.config(None)

    def config(
        self, kind: ClientKind | None, ours: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One client's librdkafka properties: the connection, then streamscore's own
        settings for it (``ours``), then the user's (``extra``, then ``kind``'s own).
        A user property that :data:`OWNED_PROPERTIES` lists raises :class:`ConfigError`
        naming it when it differs from streamscore's value for this client, or when it is
        given for this kind of client and streamscore does not set it; given for every
        client, it is left out of the clients that do not use it."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            # When every broker it knows is away (a whole-cluster outage, a single-broker
            # restart), librdkafka 2.16 re-bootstraps by default, decommissioning those
            # brokers; after that, seen here, an idempotent producer can stay stuck on
            # partitions whose leader is "not found in cache" once the broker is back, and
            # a transactional one blocks forever on the group coordinator it had cached
            # (confluentinc/librdkafka#5511). Reconnecting to the known brokers instead
            # is the behaviour librdkafka had before 2.10.
            "metadata.recovery.strategy": "none",
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.reveal()
        conf.update(ours or {})
        scopes: list[str] = ["extra"] if kind is None else ["extra", kind]
        for scope in scopes:
            for name, value in getattr(self, scope).items():
                if name in OWNED_PROPERTIES:
                    if name in conf and _same_value(conf[name], value):
                        continue
                    # not set by streamscore for this kind of client: one given for every
                    # client is not this one's (isolation.level on a producer); one given
                    # for this kind, or a different value, would change what it relies on
                    if name in conf or scope != "extra":
                        raise ConfigError(self._refusal(name, scope, conf.get(name)))
                    continue
                conf[name] = value.reveal() if isinstance(value, Secret) else value
        return conf


class SubjectStrategy(enum.StrEnum):
    """How a topic's value schema is named in the registry (the ecosystem's three
    ``subject.name.strategy`` choices)."""

    TOPIC = "topic"  # <topic>-value
    RECORD = "record"  # <namespace.name> of the record
    TOPIC_RECORD = "topic-record"  # <topic>-<namespace.name>

    def subject(self, topic: str, schema: Mapping[str, Any]) -> str:
        """The subject of values of ``topic`` written with ``schema``."""
        if self is SubjectStrategy.TOPIC:
            return f"{topic}-value"
        name = str(schema.get("name", ""))
        namespace = schema.get("namespace")
        full = name if "." in name or not namespace else f"{namespace}.{name}"
        return full if self is SubjectStrategy.RECORD else f"{topic}-{full}"


#: the topics a subject strategy can be set for (``TopicSettings`` attribute names)
STRATEGY_TOPICS = ("events", "predictions", "telemetry", "models", "feedback")


@dataclass(frozen=True)
class RegistrySettings:
    """The schema registry client, with the ecosystem's settings (confluent-kafka's
    ``SchemaRegistryClient`` names in the comments). Credentials may be in the URL
    (``https://user:pass@host``) or given apart; either way they are sent as basic auth,
    never as part of a URL a client could log. Secrets are :class:`Secret` and ``repr``
    shows none of them."""

    url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    basic_auth_user: str | None = None
    basic_auth_password: Secret | None = None
    #: Per request. Short: a batch waiting on a registry that is away is put back, and
    #: retried later, at the first lookup that fails (``worker.py``).
    timeout_s: float = 2.0
    #: Retries of one request (connection refused, timeout, 5xx) before it fails.
    max_retries: int = 1
    retry_wait_ms: int = 100
    retry_max_wait_ms: int = 500
    #: ``ssl.ca.location``: the CA (file or directory) the registry's certificate is
    #: checked against (default: the system's)
    ca_location: str | None = None
    #: ``ssl.certificate.location`` / ``ssl.key.location`` / ``ssl.key.password``: a
    #: client certificate (mutual TLS)
    certificate_location: str | None = None
    key_location: str | None = None
    key_password: Secret | None = None
    #: a bearer token sent as ``Authorization: Bearer`` (``bearer.auth.token``), or a file
    #: holding it, read again when it changes (a token a sidecar rotates)
    bearer_token: Secret | None = None
    bearer_token_file: Path | None = None
    #: ``bearer.auth.logical.cluster`` / ``bearer.auth.identity.pool.id`` (Confluent Cloud)
    bearer_logical_cluster: str | None = None
    bearer_identity_pool: str | None = None
    #: ``auto.register.schemas``: register the outputs' schemas on first use. Off, the
    #: latest version of each output subject is used (``use.latest.version``), once
    #: checked to read what streamscore writes; a missing subject is an error
    auto_register: bool = True
    #: ``subject.name.strategy`` of every topic, and per topic (``STRATEGY_TOPICS``)
    subject_strategy: SubjectStrategy = SubjectStrategy.TOPIC
    subject_strategies: Mapping[str, SubjectStrategy] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"registry timeout must be > 0 s, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ConfigError(f"registry max retries must be >= 0, got {self.max_retries}")
        if self.key_location and not self.certificate_location:
            raise ConfigError(
                "registry ssl.key.location is set without ssl.certificate.location "
                "(STREAMSCORE_REGISTRY_SSL_CERTIFICATE_LOCATION)"
            )
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ConfigError("registry bearer token is given twice: inline and as a file")
        bearer = self.bearer_token is not None or self.bearer_token_file is not None
        if bearer and self.basic_auth_user is not None:
            raise ConfigError("registry credentials are given twice: basic auth and a bearer token")
        for topic in self.subject_strategies:
            if topic not in STRATEGY_TOPICS:
                raise ConfigError(
                    f"no subject strategy can be set for {topic!r}; "
                    f"expected one of: {', '.join(STRATEGY_TOPICS)}"
                )

    def strategy(self, topic_key: str) -> SubjectStrategy:
        """The subject name strategy of the topic ``topic_key`` (``STRATEGY_TOPICS``)."""
        return self.subject_strategies.get(topic_key, self.subject_strategy)

    def __repr__(self) -> str:
        from .redact import redact_urls

        return (
            f"RegistrySettings(url={redact_urls(self.url)!r}, "
            f"basic_auth_user={self.basic_auth_user!r}, "
            f"basic_auth_password={self.basic_auth_password!r}, timeout_s={self.timeout_s!r}, "
            f"max_retries={self.max_retries!r}, retry_wait_ms={self.retry_wait_ms!r}, "
            f"retry_max_wait_ms={self.retry_max_wait_ms!r}, ca_location={self.ca_location!r}, "
            f"certificate_location={self.certificate_location!r}, "
            f"key_location={self.key_location!r}, key_password={self.key_password!r}, "
            f"bearer_token={self.bearer_token!r}, bearer_token_file={self.bearer_token_file!r}, "
            f"bearer_logical_cluster={self.bearer_logical_cluster!r}, "
            f"auto_register={self.auto_register!r}, "
            f"subject_strategy={self.subject_strategy.value!r}, "
            f"subject_strategies={ {k: v.value for k, v in self.subject_strategies.items()}!r})"
        )

    def client_config(self) -> dict[str, Any]:
        """``SchemaRegistryClient`` settings (secrets revealed here only)."""
        from .redact import split_userinfo

        urls: list[str] = []
        from_url: tuple[str, str] | None = None
        for one in self.url.split(","):
            clean, userinfo = split_userinfo(one.strip())
            urls.append(clean)
            from_url = from_url or userinfo
        conf: dict[str, Any] = {
            "url": ",".join(urls),
            "timeout": self.timeout_s,
            "max.retries": self.max_retries,
            "retries.wait.ms": self.retry_wait_ms,
            "retries.max.wait.ms": self.retry_max_wait_ms,
        }
        if self.basic_auth_user is not None:
            if from_url is not None:
                raise ConfigError(
                    "registry credentials are given twice: in the URL and as a user/password"
                )
            pw = self.basic_auth_password.reveal() if self.basic_auth_password else ""
            conf["basic.auth.user.info"] = f"{self.basic_auth_user}:{pw}"
        elif from_url is not None:
            conf["basic.auth.user.info"] = f"{from_url[0]}:{from_url[1]}"
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        if self.certificate_location:
            conf["ssl.certificate.location"] = self.certificate_location
        if self.key_location:
            conf["ssl.key.location"] = self.key_location
        if self.key_password is not None:
            conf["ssl.key.password"] = self.key_password.reveal()
        if self.bearer_token is not None or self.bearer_token_file is not None:
            if "basic.auth.user.info" in conf:
                raise ConfigError(
                    "registry credentials are given twice: basic auth and a bearer token"
                )
            fields: dict[str, str] = {
                "bearer.auth.logical.cluster": self.bearer_logical_cluster or "",
            }
            if self.bearer_identity_pool:
                fields["bearer.auth.identity.pool.id"] = self.bearer_identity_pool
            if self.bearer_token is not None:
                conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
                conf["bearer.auth.token"] = self.bearer_token.reveal()
                conf.update(fields)
            else:
                assert self.bearer_token_file is not None
                conf["bearer.auth.credentials.source"] = "CUSTOM"
                conf["bearer.auth.custom.provider.function"] = TokenFile(self.bearer_token_file)
                conf["bearer.auth.custom.provider.config"] = fields
        return conf


class TokenFile:
    """A bearer token read from a file, again whenever the file changes (a token that a
    sidecar rotates): confluent-kafka's ``bearer.auth.custom.provider.function``. The
    token is never in its ``repr``; a file that cannot be read is a :class:`ConfigError`
    naming the file."""

    __slots__ = ("_lock", "_path", "_seen", "_token")

    def __init__(self, path: Path) -> None:
        import threading

        self._path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._token = ""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenFile({str(self._path)!r})"

    def token(self) -> str:
        with self._lock:
            try:
                st = self._path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._seen:
                    self._token = self._path.read_text(encoding="utf-8").strip()
                    self._seen = stamp
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read the registry bearer token file {self._path}: "
                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
                ) from None
            if not self._token:
                raise ConfigError(f"the registry bearer token file {self._path} is empty")
            return self._token

    def __call__(self, fields: Mapping[str, str]) -> dict[str, str]:
        return {**fields, "bearer.auth.token": self.token()}


@dataclass(frozen=True)
class TopicSettings:
    events: str = "events"
    predictions: str = "predictions"
    telemetry: str = "telemetry"
    models: str = "streamscore.models"
    feedback: str = "feedback"
    dlq: str = "events.dlq"
    late: str = "events.late"
    #: shadow models' predictions (never the answer: ``predictions`` holds exactly one
    #: record per scored event, the primary's or the canary's)
    predictions_shadow: str = "predictions.shadow"

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.predictions,
            self.telemetry,
            self.models,
            self.feedback,
            self.dlq,
            self.late,
            self.predictions_shadow,
        )

    def where_set(self, names: Sequence[str]) -> dict[str, str]:
        """The topics of the settings ``names`` (attribute names), each with where it
        is set, for messages: ``{"payments.scores": "predictions (STREAMSCORE_TOPIC_
        PREDICTIONS / [topics] predictions)"}``; two settings naming one topic are both
        said."""
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(getattr(self, name), []).append(f"{name} ({topic_setting(name)})")
        return {topic: " and ".join(how) for topic, how in out.items()}

    def as_env(self) -> dict[str, str]:
        """Every topic as the environment variable the CLI reads it from
        (``STREAMSCORE_TOPIC_<FIELD>``): what a parent gives the processes it starts."""
        return {topic_env_var(f.name): getattr(self, f.name) for f in fields(self)}


#: the most messages the feedback router and join each handle at once (``--batch-size``):
#: each batch has a fixed cost (a multi-get per partition, vectorised decoding), which a
#: larger batch spreads over more messages
FEEDBACK_BATCH = 5000

#: the ``--shadow-topic`` flag's help (the score and feedback commands)
SHADOW_TOPIC_HELP = (
    "the shadow predictions' topic (default: $STREAMSCORE_TOPIC_PREDICTIONS_SHADOW, "
    "else [topics] shadow, else <predictions>.shadow)"
)


def topic_env_var(name: str) -> str:
    """The environment variable of the :class:`TopicSettings` field ``name``."""
    return f"STREAMSCORE_TOPIC_{name.upper()}"


#: the project-file key of a topic setting, where it is not ``[topics] <name>``
_TOPIC_PROJECT_KEYS = {
    "events": "[events] topic",
    "feedback": "[labels] topic or [topics] feedback",
    "predictions_shadow": "[topics] shadow, default <predictions>.shadow",
}


def topic_setting(name: str) -> str:
    """Where the :class:`TopicSettings` field ``name`` is set, in words for messages:
    the flag (if any), the environment variable, the project-file key."""
    flag = "--shadow-topic / " if name == "predictions_shadow" else ""
    return f"{flag}{topic_env_var(name)} / {_TOPIC_PROJECT_KEYS.get(name, f'[topics] {name}')}"


class LatePolicy(enum.StrEnum):
    SCORE_AND_FLAG = "score"  # score it, set ``late`` on the prediction
    ROUTE = "route"  # send the original bytes to the late topic, unscored


@dataclass(frozen=True)
class ScoringSettings:
    group_id: str = "streamscore-score"
    worker_id: str = "worker"
    #: At most this many messages per micro-batch. Per-batch costs (NumPy calls of the
    #: batch codecs, one model call per role, one telemetry record) are shared by more
    #: events at 2000 than at 500 (+17 % HGB, +24 % LR events/s in ``make bench``, session
    #: 6); a batch is this large only when the worker is behind.
    batch_size: int = 2000
    #: A batch closes on ``batch_size`` or after this wait, whichever comes first.
    batch_wait_ms: int = 10
    late_after_ms: int | None = None
    late_policy: LatePolicy = LatePolicy.SCORE_AND_FLAG
    exactly_once: bool = False
    #: Exactly-once: how long a batch's transaction retries retriable errors (the broker
    #: away) before it is aborted and the batch consumed again. The consumer's
    #: ``max.poll.interval.ms`` is set above the longest a batch can take with this
    #: budget (``delivery.send_bound_s``), so a worker that rode out an outage is still in
    #: its group.
    eos_retry_s: float = 240.0
    canary_fraction: float = 0.1
    #: Producer queue fill (messages) above which consumption pauses.
    max_in_flight: int = 100_000
    #: Feature / score drift (PSI against the bundle's reference) per batch.
    drift: bool = True
    #: The largest output record, for every output topic. None: each output topic's
    #: ``max.message.bytes`` is read from the cluster at start.
    max_message_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_message_bytes is not None and self.max_message_bytes < 4096:
            raise ConfigError(f"max_message_bytes must be >= 4096, got {self.max_message_bytes}")
        if self.eos_retry_s < 0:
            raise ConfigError(f"eos_retry_s must be >= 0, got {self.eos_retry_s}")
        if not 0.0 <= self.canary_fraction <= 1.0:
            raise ConfigError(f"canary_fraction must be in [0, 1], got {self.canary_fraction}")


#: every environment variable that sets how models are signed or verified
SIGNING_ENV = frozenset(
    {
        "STREAMSCORE_SIGNING",
        "STREAMSCORE_SIGNING_KEY",
        "STREAMSCORE_SIGNING_KEY_FILE",
        "STREAMSCORE_SIGNING_KEY_ID",
        "STREAMSCORE_KEYRING_FILE",
        "STREAMSCORE_PUBLIC_KEY_FILE",
    }
)


class SigningScheme(enum.Enum):
    """How model records are signed. ``ed25519`` (default): publishers hold a private key,
    workers public keys only. ``hmac``: one shared secret that every worker holds and so
    could sign with (for deployments whose model topic was signed that way)."""

    ED25519 = "ed25519"
    HMAC = "hmac"


@dataclass(frozen=True)
class SigningSettings:
    """Where the model signing keys are (``streamscore.models.signing`` reads them):
    ``key_file`` the publishers' Ed25519 private key; ``keyring_files`` the public keys
    workers verify with (HMAC scheme: ``hmac_key`` and keyring files of secrets)."""

    scheme: SigningScheme = SigningScheme.ED25519
    key_file: Path | None = None
    key_id: str | None = None
    keyring_files: tuple[Path, ...] = ()
    hmac_key: Secret | None = None

    def __post_init__(self) -> None:
        if self.scheme is SigningScheme.ED25519 and self.hmac_key is not None:
            raise ConfigError(
                "STREAMSCORE_SIGNING_KEY is an HMAC secret: Ed25519 (the default) reads the "
                "private key from STREAMSCORE_SIGNING_KEY_FILE (`streamscore model keygen`); "
                "set STREAMSCORE_SIGNING=hmac to keep a shared secret"
            )

    @property
    def can_sign(self) -> bool:
        return bool(self.hmac_key if self.scheme is SigningScheme.HMAC else self.key_file)


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9400  # 0 disables the /metrics server


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamscore"


@dataclass(frozen=True)
class ClusterSettings:
    """The local single-node Kafka (KRaft) + Apicurio Registry on loopback."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    controller_port: int = 19093
    registry_port: int = 18081
    #: the local S3 API server (S3Proxy) for the ground-truth table on object storage
    s3_port: int = 18090
    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.0.9"
    s3proxy_version: str = "2.6.0"
    kafka_heap: str = "512m"
    registry_heap: str = "384m"
    s3_heap: str = "256m"
    partitions: int = 4
    model_topic_max_bytes: int = 16 * 1024 * 1024
    start_timeout_s: float = 120.0
    #: pid files, configs, logs, the broker's data and the registry's database; ``None``
    #: means ``<cache_dir>/run``. A second (private) cluster shares the downloads in
    #: ``cache_dir`` but needs its own run dir and ports.
    run_dir: Path | None = None
    #: extra JVM options for both servers (e.g. a smaller GC footprint in tests)
    jvm_opts: tuple[str, ...] = ()
    #: the secured profile: SASL_SSL (SCRAM-SHA-512) listener, ACLs, registry over TLS
    #: (``streamscore.dev.cluster_secure``)
    secure: bool = False
    #: the secured profile's mutual-TLS listener (``SSL``, client certificates
    #: required; principals ``User:CN=<user>``); None: none
    mtls_port: int | None = None
    #: the servers this process starts die with it (Linux: the kernel kills them when
    #: it ends, however it ends): a test's private cluster; never the shared one that
    #: ``streamscore cluster up`` starts and leaves running
    stop_with_parent: bool = False

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or Path(self.cache_dir) / "run").expanduser().absolute()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.registry_port}/apis/ccompat/v7"


# ------------------------------------------------- the project file's labels and recipe

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*\Z")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def duration_ms(text: str) -> int:
    """A duration with its unit (``"90s"``, ``"15m"``, ``"12h"``, ``"30d"``, ``"2w"``;
    decimals allowed: ``"1.5h"``) in milliseconds. The one parser of durations: whoever
    reads one (the project file, a flag) uses it. Raises ConfigError naming the text."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(
            f"{text!r} is not a duration: a number and one unit of "
            "s (seconds), m (minutes), h (hours), d (days), w (weeks), e.g. '30d'"
        )
    ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise ConfigError(f"{text!r} is not a duration: it must be longer than 0")
    return ms


class LabelTask(enum.StrEnum):
    """What the labels are: two classes, several classes (string or int labels), or a
    number."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"

    @property
    def task(self) -> Task:
        """The model's task (classification or regression)."""
        return Task.REGRESSION if self is LabelTask.REGRESSION else Task.CLASSIFICATION


class Metric(enum.StrEnum):
    """The holdout metric that decides whether a candidate beats the current model."""

    ACCURACY = "accuracy"
    LOG_LOSS = "log_loss"
    ROC_AUC = "roc_auc"
    MACRO_F1 = "macro_f1"
    MAE = "mae"
    RMSE = "rmse"

    @property
    def higher_is_better(self) -> bool:
        return self not in (Metric.LOG_LOSS, Metric.MAE, Metric.RMSE)


#: the metrics that apply to each task, its default first
METRICS_BY_TASK: Mapping[LabelTask, tuple[Metric, ...]] = MappingProxyType(
    {
        LabelTask.BINARY: (
            Metric.ROC_AUC,
            Metric.ACCURACY,
            Metric.LOG_LOSS,
            Metric.MACRO_F1,
        ),
        LabelTask.MULTICLASS: (Metric.MACRO_F1, Metric.ACCURACY, Metric.LOG_LOSS),
        LabelTask.REGRESSION: (Metric.RMSE, Metric.MAE),
    }
)


#: ``[groundtruth.storage]`` keys whose values are never shown (all values are kept as
#: :class:`Secret` anyway; this list only decides what ``describe`` prints in full)
_PUBLIC_STORAGE_KEYS = frozenset(
    {"endpoint", "aws_endpoint_url", "region", "aws_region", "allow_http", "aws_allow_http"}
)


@dataclass(frozen=True)
class LabelSettings:
    """The project file's ``[labels]``: where the truth about events arrives, in the
    user's own label schema. ``topic`` the label topic; ``id_field`` the label's field
    that holds the event id it answers; ``label_field`` the label itself; ``time_field``
    when it was observed (None: the message timestamp), read with ``time_encoding``;
    ``task`` what the labels are; ``positive`` (binary only) the positive class, as a
    string (``"true"``, ``"1"``, ``"fraud"``; None: not stated)."""

    topic: str
    id_field: str
    label_field: str
    task: LabelTask
    time_field: str | None = None
    time_encoding: TimeEncoding = TimeEncoding.TIMESTAMP_MILLIS
    positive: str | None = None

    def __post_init__(self) -> None:
        if self.positive is not None and self.task is not LabelTask.BINARY:
            raise ConfigError(f"positive is for binary labels only, not {self.task.value}")
        if self.id_field == self.label_field:
            raise ConfigError(f"the label's id and label fields are both {self.id_field!r}")


@dataclass(frozen=True)
class TrainRecipe:
    """The project file's ``[train]``: how a candidate model is made and judged.

    Exactly one of ``estimator`` (an import path ``package.module.Class``, built with
    ``params``) and ``fit`` (``package.module:function``, called with the training frame,
    returning a fitted estimator or Pipeline; the user's own code, run only where training
    runs). ``window_ms`` how far back the training rows go (None: all); ``holdout`` the
    last fraction of rows by event time, held out for the comparison; ``metric`` the one
    that decides (None: the task's default, :data:`METRICS_BY_TASK`); ``margin`` by how
    much the candidate must beat the current model on it."""

    model_name: str | None = None
    estimator: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    fit: str | None = None
    window_ms: int | None = None
    holdout: float = 0.2
    metric: Metric | None = None
    margin: float = 0.0

    def __post_init__(self) -> None:
        if (self.estimator is None) == (self.fit is None):
            raise ConfigError("give exactly one of estimator (an import path) and fit")
        if self.fit is not None and self.params:
            raise ConfigError("params go with estimator; a fit function sets its own")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.window_ms is not None and self.window_ms <= 0:
            raise ConfigError(f"window must be longer than 0, got {self.window_ms} ms")
        if self.margin < 0 or self.margin != self.margin:
            raise ConfigError(f"margin must be >= 0, got {self.margin}")

    def metric_for(self, task: LabelTask) -> Metric:
        """The deciding metric: the recipe's, else ``task``'s default."""
        return self.metric or METRICS_BY_TASK[task][0]


@dataclass(frozen=True)
class GroundTruthSettings:
    """Where the ground-truth table lives and how it is kept (``[groundtruth]``).

    ``uri``: ``file:///abs/path`` (the embedded default; a plain path works too) or
    ``s3://bucket/prefix``. ``storage``: object-store options handed to delta-rs
    (``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``, ``allow_http``,
    ...; the ``AWS_*`` environment variables are read by the object store as well).
    ``retention_hours``: how long files no longer in the table's current version are
    kept (time travel reaches back that far); ``compact_every_s`` / ``vacuum_every_s``:
    how often a feedback worker compacts small files and vacuums old ones (0: never)."""

    uri: str = "groundtruth"
    storage: Mapping[str, Secret] = field(default_factory=lambda: MappingProxyType({}))
    retention_hours: float = 168.0
    compact_every_s: float = 600.0
    vacuum_every_s: float = 3600.0

    def __post_init__(self) -> None:
        parse_table_uri(self.uri)  # raises ConfigError
        if self.retention_hours < 0:
            raise ConfigError(f"retention_hours must be >= 0, got {self.retention_hours}")
        if self.compact_every_s < 0 or self.vacuum_every_s < 0:
            raise ConfigError("compact_every_s and vacuum_every_s must be >= 0 (0: never)")
        object.__setattr__(self, "storage", MappingProxyType(dict(self.storage)))

    @property
    def location(self) -> TableUri:
        return parse_table_uri(self.uri)

    def storage_options(self) -> dict[str, str]:
        """The object-store options (secrets revealed here only). On S3 the table's
        commits are made safe for several writers with conditional puts
        (``aws_conditional_put=etag``) unless the options say otherwise."""
        opts = {k: v.reveal() for k, v in self.storage.items()}
        if self.location.scheme == "s3" and not any(
            k.lower() in ("conditional_put", "aws_conditional_put") for k in opts
        ):
            opts["aws_conditional_put"] = "etag"
        return opts

    def describe(self) -> str:
        """For logs: the URI and the option names (values only for endpoint/region)."""
        shown = ", ".join(
            f"{k}={v.reveal()}" if k.lower() in _PUBLIC_STORAGE_KEYS else f"{k}=***"
            for k, v in sorted(self.storage.items())
        )
        return self.uri + (f" ({shown})" if shown else "")


@dataclass(frozen=True)
class TableUri:
    """A parsed ground-truth URI: ``file`` with an absolute ``path``, or ``s3`` with a
    ``bucket`` and a ``prefix`` (no leading or trailing slash; may be empty)."""

    scheme: str
    path: str

    def child(self, name: str) -> str:
        """The URI delta-rs opens for the table ``name`` under this location."""
        if self.scheme == "file":
            return str(Path(self.path) / name)
        return f"s3://{self.path.rstrip('/')}/{name}"


def parse_table_uri(text: str) -> TableUri:
    """``file:///abs``, a plain path (relative to the working directory), or
    ``s3://bucket[/prefix]``; anything else is a :class:`ConfigError`."""
    if not text or not text.strip():
        raise ConfigError("the ground-truth URI is empty")
    if "://" not in text:
        return TableUri("file", str(Path(text).expanduser().absolute()))
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            raise ConfigError(f"a file URI needs an absolute path (file:///abs/path), got {text!r}")
        return TableUri("file", str(Path(rest)))
    if scheme in ("s3", "s3a"):
        bucket, _, prefix = rest.partition("/")
        if not bucket or "@" in bucket or ":" in bucket:
            raise ConfigError(
                f"not an S3 location: {text!r} (s3://bucket/prefix; credentials go in "
                "[groundtruth.storage] or AWS_* variables, never in the URI)"
            )
        prefix = prefix.strip("/")
        return TableUri("s3", f"{bucket}/{prefix}" if prefix else bucket)
    raise ConfigError(
        f"unsupported ground-truth URI scheme {scheme!r} in {text!r}: use file:///path or "
        "s3://bucket/prefix"
    )
