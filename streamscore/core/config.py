"""Typed, frozen settings. Only ``cli.py`` reads the environment; everything else is
handed one of these objects. Secrets are wrapped in :class:`Secret` so that a settings
object can be logged or printed without leaking them.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError
from .records import EVENT_ID_FIELD, EVENT_TIME_FIELD


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


@dataclass(frozen=True)
class EventFields:
    """Which of the event's own fields the scorer reads as its id, its time and its key.
    The defaults are the shipped ``event`` schema's; ``key_field`` None: the message key.
    The prediction record keeps its own ``event_id``/``event_time``, filled from these."""

    id_field: str = EVENT_ID_FIELD
    time_field: str = EVENT_TIME_FIELD
    time_encoding: TimeEncoding = TimeEncoding.TIMESTAMP_MILLIS
    key_field: str | None = None
    #: the event headers copied to the event's predictions (e.g. ``traceparent``)
    copy_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.copy_headers) > MAX_COPIED_HEADERS:
            raise ConfigError(f"at most {MAX_COPIED_HEADERS} event headers can be copied")
        if self.id_field == self.time_field:
            raise ConfigError(f"the event id and time fields are both {self.id_field!r}")


def _frozen(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    #: Extra librdkafka properties, applied last (never logged: may hold credentials).
    extra: Mapping[str, str] = field(default_factory=lambda: _frozen(None))

    def client_config(self) -> dict[str, Any]:
        """The librdkafka properties shared by every client (secrets revealed here only)."""
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
        conf.update(self.extra)
        return conf


@dataclass(frozen=True)
class RegistrySettings:
    """The schema registry. Credentials may be in the URL (``https://user:pass@host``)
    or given apart; either way they are sent as basic auth, never as part of a URL a
    client could log, and ``repr`` shows neither."""

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

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"registry timeout must be > 0 s, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ConfigError(f"registry max retries must be >= 0, got {self.max_retries}")

    def __repr__(self) -> str:
        from .redact import redact_urls

        return (
            f"RegistrySettings(url={redact_urls(self.url)!r}, "
            f"basic_auth_user={self.basic_auth_user!r}, "
            f"basic_auth_password={self.basic_auth_password!r}, timeout_s={self.timeout_s!r}, "
            f"max_retries={self.max_retries!r}, retry_wait_ms={self.retry_wait_ms!r}, "
            f"retry_max_wait_ms={self.retry_max_wait_ms!r})"
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
        return conf


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

    def as_env(self) -> dict[str, str]:
        """Every topic as the environment variable the CLI reads it from
        (``STREAMSCORE_TOPIC_<FIELD>``): what a parent gives the processes it starts."""
        return {topic_env_var(f.name): getattr(self, f.name) for f in fields(self)}


#: the ``--shadow-topic`` flag's help (the score and feedback commands)
SHADOW_TOPIC_HELP = (
    "the shadow predictions' topic (default: $STREAMSCORE_TOPIC_PREDICTIONS_SHADOW, "
    "else [topics] shadow, else <predictions>.shadow)"
)


def topic_env_var(name: str) -> str:
    """The environment variable of the :class:`TopicSettings` field ``name``."""
    return f"STREAMSCORE_TOPIC_{name.upper()}"


class LatePolicy(enum.StrEnum):
    SCORE_AND_FLAG = "score"  # score it, set ``late`` on the prediction
    ROUTE = "route"  # send the original bytes to the late topic, unscored


@dataclass(frozen=True)
class ScoringSettings:
    group_id: str = "streamscore-score"
    worker_id: str = "worker"
    batch_size: int = 500
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
    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.0.9"
    kafka_heap: str = "512m"
    registry_heap: str = "384m"
    partitions: int = 4
    model_topic_max_bytes: int = 16 * 1024 * 1024
    start_timeout_s: float = 120.0
    #: pid files, configs, logs, the broker's data and the registry's database; ``None``
    #: means ``<cache_dir>/run``. A second (private) cluster shares the downloads in
    #: ``cache_dir`` but needs its own run dir and ports.
    run_dir: Path | None = None
    #: extra JVM options for both servers (e.g. a smaller GC footprint in tests)
    jvm_opts: tuple[str, ...] = ()

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or Path(self.cache_dir) / "run").expanduser().absolute()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.registry_port}/apis/ccompat/v7"
