"""Can this process do its work? Checked once at start, before it consumes anything
(:func:`check_access`, :func:`check_registry`), and the same clear messages for access
failures met later (:func:`access_error`: a delivery report, a consumer error).

Every failure here is an :class:`~streamscore.core.errors.AccessError` (wrong
credentials, a certificate that is not trusted, a missing ACL), or a
:class:`~streamscore.core.errors.MissingTopicError` (an output topic that does not
exist). Each message says the cause and the setting (or ACL) to check, in one line,
with no secret in it; the CLI prints it and exits non-zero. A broker or registry that
is merely away is not an access failure: the check lets the process start and its loops
retry as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient  # type: ignore[attr-defined]

from ..core.config import KafkaSettings
from ..core.errors import AccessError, MissingTopicError

log = logging.getLogger(__name__)

_AUTHENTICATION = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_DENIED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)
_UNTRUSTED = ("certificate verify failed", "unable to get local issuer", "self-signed certificate")


def _where(kafka: KafkaSettings | None, name: str) -> str:
    """``name`` and where it is set (``sasl.password`` from STREAMSCORE_KAFKA_...)."""
    if kafka is None:
        return name
    for key in (f"*:{name}", f"consumer:{name}", f"producer:{name}", f"admin:{name}"):
        if key in kafka.origins:
            return f"{name} (from {kafka.origins[key]})"
    return f"{name} (not set)"


def principal(kafka: KafkaSettings | None) -> str:
    """Who this process is to the cluster, in words (for messages)."""
    if kafka is None:
        return "this process's principal"
    conf = kafka.client_config()
    if conf.get("sasl.username"):
        return f"user {conf['sasl.username']!r} ({conf.get('sasl.mechanism', 'GSSAPI')})"
    if conf.get("ssl.certificate.location") or conf.get("ssl.certificate.pem"):
        return "the principal of this client's certificate"
    return "the anonymous principal"


def connection_error(kafka: KafkaSettings | None, err: KafkaError) -> AccessError | None:
    """The clear error for a failed authentication or TLS handshake; None for others."""
    text = err.str()
    if err.code() in _AUTHENTICATION or "Authentication failed" in text:
        return AccessError(
            f"Kafka refused the credentials of {principal(kafka)}: {text}; check "
            f"{_where(kafka, 'sasl.username')}, {_where(kafka, 'sasl.password')} and "
            f"{_where(kafka, 'sasl.mechanism')}"
        )
    if err.code() == KafkaError._SSL or "SSL handshake failed" in text:
        if any(u in text for u in _UNTRUSTED):
            return AccessError(
                f"the broker's TLS certificate is not trusted: {text}; check "
                f"{_where(kafka, 'ssl.ca.location')} (the CA that signed the broker's "
                "certificate)"
            )
        return AccessError(
            f"TLS with the broker failed: {text}; check the ssl.* settings "
            f"({_where(kafka, 'ssl.ca.location')}, {_where(kafka, 'ssl.certificate.location')}, "
            f"{_where(kafka, 'ssl.key.location')})"
        )
    return None


def denied(
    kafka: KafkaSettings | None, what: str, operation: str, *, detail: str = ""
) -> AccessError:
    """``principal`` may not ``operation`` (READ, WRITE...) ``what`` (``topic 'x'``)."""
    return AccessError(
        f"Kafka does not allow {principal(kafka)} to {operation.lower()} {what}"
        f"{f' ({detail})' if detail else ''}: grant the ACL "
        f"({operation.upper()} on {what} for this process's principal; README "
        "'Production clusters') or check sasl.username / the client certificate"
    )


def access_error(
    kafka: KafkaSettings | None, err: Any, *, topic: str | None = None
) -> AccessError | None:
    """The clear error for a Kafka error that is an access failure (authentication, TLS,
    a missing ACL), or None. ``topic``: the topic of the message it is about."""
    if not isinstance(err, KafkaError):
        return None
    found = connection_error(kafka, err)
    if found is not None:
        return found
    code = err.code()
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        what = f"topic {topic!r}" if topic else "a topic it uses"
        return denied(kafka, what, "write" if topic else "use", detail=err.str())
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return denied(kafka, "its consumer group", "read", detail=err.str())
    if code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return denied(kafka, "its transactional id", "write", detail=err.str())
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        return denied(kafka, "the cluster", "idempotent_write", detail=err.str())
    return None


def check_access(
    kafka: KafkaSettings,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    group: str | None = None,
    must_exist: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Before a process consumes anything: can it connect (credentials, TLS), read the
    ``read`` topics, write the ``write`` topics and use its consumer ``group``? Raises
    :class:`AccessError` naming the cause and the setting or ACL to check. The topics of
    ``must_exist`` (topic -> the setting that names it, for the message) must exist:
    :class:`MissingTopicError` names every one that does not (after the access errors,
    which say more). A cluster that does not answer within ``timeout_s`` is left to the
    process's own retries."""
    errors: list[KafkaError] = []
    # an admin client's properties, as clients.admin_config gives them (clients imports
    # delivery, which imports this module)
    conf = kafka.config("admin")
    conf["error_cb"] = errors.append
    conf.setdefault("log_level", 0)  # the error callback says it once, clearly
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    required = dict(must_exist or {})
    topics = list(dict.fromkeys([*read, *write, *required]))
    missing: list[str] = []
    pending: dict[str, Any] = {}
    if topics:
        pending.update(
            admin.describe_topics(
                TopicCollection(topics),
                include_authorized_operations=True,
                request_timeout=timeout_s,
            )
        )
    if group is not None:
        futures = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=timeout_s
        )
        pending.update({f"group:{k}": f for k, f in futures.items()})
    while pending:
        for e in errors:
            found = connection_error(kafka, e)
            if found is not None:
                raise found
        done = [k for k, f in pending.items() if f.done()]
        for key in done:
            if _check_one(kafka, key, pending.pop(key), read, write) and key in required:
                missing.append(key)
        if not pending:
            break
        if time.monotonic() > deadline:
            _refuse_missing(kafka, missing, required)
            log.warning(
                "Kafka at %s did not answer the access check within %.0f s (%s): going on",
                kafka.bootstrap_servers,
                timeout_s,
                "; ".join(e.str() for e in errors[-2:]) or "no error reported",
            )
            return
        admin.poll(0.1)
    _refuse_missing(kafka, missing, required)


def _refuse_missing(kafka: KafkaSettings, missing: list[str], where: Mapping[str, str]) -> None:
    """:class:`MissingTopicError` naming each of ``missing`` and the setting that names
    it (``where``); nothing when none is."""
    if not missing:
        return
    missing = sorted(missing, key=list(where).index)  # in the caller's order
    named = ", ".join(f"{t!r} ({where[t]})" for t in missing)
    one = len(missing) == 1
    raise MissingTopicError(
        f"{'topic' if one else f'{len(missing)} topics'} this process writes to "
        f"{'does' if one else 'do'} not exist on the Kafka cluster "
        f"({kafka.bootstrap_servers}): {named}; create {'it' if one else 'them'} before "
        "starting (streamscore does not create its output topics), or correct the "
        "setting; nothing was consumed",
        topics=tuple(missing),
    )


def _check_one(
    kafka: KafkaSettings, key: str, future: Any, read: Sequence[str], write: Sequence[str]
) -> bool:
    """Check one topic's (or group's) description; True when the topic does not exist."""
    try:
        result = future.result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError):
            if key.startswith("group:") and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise denied(kafka, f"consumer group {key[6:]!r}", "read") from None
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                op = "read" if key in read else "write"
                raise denied(kafka, f"topic {key!r}", op) from None
            found = access_error(kafka, err)
            if found is not None:
                raise found from None
            if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and not key.startswith("group:"):
                log.info("access check: topic %r does not exist", key)
                return True
        # a group coordinator still loading, a timeout: not a refusal; the process's own
        # handling says more if it matters
        log.info("access check of %s: %s", key, exc)
        return False
    ops = getattr(result, "authorized_operations", None)
    if ops is None:
        return False
    allowed = set(ops) | (
        {AclOperation.READ, AclOperation.WRITE} if AclOperation.ALL in ops else set()
    )
    if key.startswith("group:"):
        if AclOperation.READ not in allowed:
            raise denied(kafka, f"consumer group {key[6:]!r}", "read")
        return False
    if key in read and AclOperation.READ not in allowed:
        raise denied(kafka, f"topic {key!r}", "read")
    if key in write and AclOperation.WRITE not in allowed:
        raise denied(kafka, f"topic {key!r}", "write")
    return False


def check_registry(client: Any, url: str, ca_setting: str) -> None:
    """Can this process talk to the schema registry at ``url``? An untrusted TLS
    certificate or refused credentials raise :class:`AccessError`; a registry that is
    away is left to the process's retries. ``ca_setting``: the setting that names the
    registry's CA (for the message)."""
    try:
        client.get_subjects()
    except Exception as exc:
        text = _chain_text(exc)
        if any(u in text for u in _UNTRUSTED) or "CERTIFICATE_VERIFY_FAILED" in text:
            raise AccessError(
                f"the schema registry's TLS certificate at {url} is not trusted "
                f"(certificate verify failed); check {ca_setting}"
            ) from None
        status = getattr(exc, "http_status_code", None)
        if status in (401, 403):
            raise AccessError(
                f"the schema registry at {url} refused this process (HTTP {status}); check "
                "its credentials (STREAMSCORE_REGISTRY_USER / STREAMSCORE_REGISTRY_PASSWORD)"
            ) from None
        log.warning("schema registry at %s did not answer the start check: %s", url, text[:200])


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 8:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def preflight(
    kafka: KafkaSettings,
    registry: Any | None,
    registry_url: str,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    group: str | None = None,
    must_exist: Mapping[str, str] | None = None,
) -> None:
    """A process's start check: the registry (when it uses one), then Kafka
    (:func:`check_access`; ``must_exist``: the output topics that must exist)."""
    if registry is not None:
        check_registry(registry, registry_url, "STREAMSCORE_REGISTRY_SSL_CA_LOCATION")
    check_access(kafka, read=read, write=write, group=group, must_exist=must_exist)
