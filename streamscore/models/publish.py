"""Publish, list and roll back models on the compacted model topic (thin Kafka I/O)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer

from ..core.config import KafkaSettings
from ..core.errors import BundleTooLargeError, DeliveryError, ModelError, SerdeError
from ..core.records import Role
from ..kafka.clients import model_reader_limits, plain_producer, read_to_end, reader_consumer
from . import envelope as env_mod
from .container import decode_bundle, sign_bundle
from .envelope import Action, ModelEnvelope
from .signing import HmacSigner, Verifier, as_verifier
from .topic_state import TopicState, fold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    key: str
    version: int
    size: int
    sha256: str


class ModelTopic:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        encode: Callable[[dict[str, Any]], bytes],
        decode: Callable[[bytes | None], dict[str, Any]],
        max_message_bytes: int,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._encode = encode
        self._decode = decode
        self._max = max_message_bytes

    # ---- reading
    def read_all(self, timeout: float = 15.0) -> list[ModelEnvelope]:
        """Every envelope the topic holds now, in offset order per partition (records
        above ``max_message_bytes`` skipped, as workers with that limit skip them)."""
        conf = reader_consumer(
            self._kafka,
            f"streamscore-model-reader-{uuid.uuid4().hex[:12]}",
            **{"enable.partition.eof": True, **model_reader_limits(self._max)},
        )
        c = Consumer(conf)
        out: list[ModelEnvelope] = []
        try:
            for msg in read_to_end(c, self._topic, metadata_timeout=timeout, deadline_s=timeout):
                if msg.value() is None:
                    continue
                if len(msg.value()) > self._max:  # as workers with this limit do
                    log.warning(
                        "skipping a %d-byte model record at offset %s (limit %d)",
                        len(msg.value()),
                        msg.offset(),
                        self._max,
                    )
                    continue
                try:
                    out.append(ModelEnvelope.from_avro(self._decode(msg.value())))
                except (SerdeError, KeyError, ValueError) as exc:
                    log.warning("skipping undecodable envelope at offset %s: %s", msg.offset(), exc)
        finally:
            c.close()
        return out

    def next_version(self, name: str) -> int:
        """One above every version any record of ``name`` carries, signed or not (not the
        topic state: a new version must never reuse the archive key of an old record)."""
        versions = [e.version for e in self.read_all() if e.model_name == name]
        return max(versions, default=0) + 1

    # ---- writing
    def _send(self, envelopes: list[ModelEnvelope]) -> None:
        p = Producer(plain_producer(self._kafka, max_message_bytes=self._max))
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for e in envelopes:
            value = self._encode(e.to_avro())
            if len(value) > self._max:
                raise BundleTooLargeError(
                    f"model envelope is {len(value)} bytes; the model topic accepts at most "
                    f"{self._max} bytes (max.message.bytes). Shrink the model or raise the limit "
                    "on the topic and in STREAMSCORE_MODEL_MAX_BYTES.",
                    size=len(value),
                    limit=self._max,
                )
            p.produce(self._topic, value, e.key.encode(), on_delivery=on_delivery)
        left = p.flush(30)
        if left or failures:
            raise DeliveryError(f"model envelope not acknowledged: {failures or left}")

    def state(self, name: str, keyring: Mapping[str, bytes] | Verifier) -> TopicState:
        """``name``'s state on the topic by the workers' rules (signed records only, in
        order; see :mod:`streamscore.models.topic_state`), its archives included."""
        return fold(self.read_all(), as_verifier(keyring), name=name)

    def publish(
        self,
        bundle_bytes: bytes,
        role: Role,
        *,
        key: bytes,
        key_id: str,
        publisher: str,
        rollback: bool = False,
        target_version: int | None = None,
    ) -> PublishResult:
        """Sign and publish a bundle as ``role``, plus its archive copy for rollbacks. A
        rollback names the version it replaces (``target_version``)."""
        if rollback and target_version is None:
            raise ModelError("a rollback must name the version it replaces")
        b = decode_bundle(bundle_bytes)  # refuse to publish what workers could not read
        signer = HmacSigner(key, key_id)
        signed = sign_bundle(bundle_bytes, signer)
        now = int(time.time() * 1000)
        common = dict(
            model_name=b.meta.name,
            role=role,
            version=b.meta.version,
            artifact=signed.payload,
            signature=signed.signature,
            key_id=key_id,
            created_at_ms=b.meta.created_at_ms,
            published_at_ms=now,
            publisher=publisher,
            signer=signer,
        )
        archive = env_mod.make(**common, action=Action.ARCHIVE)  # type: ignore[arg-type]
        active = env_mod.make(
            **common,  # type: ignore[arg-type]
            rollback=rollback,
            target_version=target_version if rollback else None,
        )
        self._send([archive, active])
        return PublishResult(active.key, active.version, active.size, active.sha256)

    def retire(
        self,
        name: str,
        role: Role,
        *,
        key: bytes,
        key_id: str,
        publisher: str,
        keyring: Mapping[str, bytes] | Verifier | None = None,
    ) -> int:
        """Publish a signed retire of the role's current version (returned)."""
        st = self.state(name, keyring or {key_id: key}).role(name, role)
        if st.current is None:
            raise ModelError(f"nothing to retire: {name}/{role.value} is not active")
        now = int(time.time() * 1000)
        e = env_mod.make(
            model_name=name,
            role=role,
            version=st.current,
            artifact=b"",
            signature=None,
            key_id=key_id,
            created_at_ms=now,
            published_at_ms=now,
            publisher=publisher,
            action=Action.RETIRE,
            target_version=st.current,
            signer=HmacSigner(key, key_id),
        )
        self._send([e])
        return st.current

    def archived(self, name: str, version: int, keyring: Mapping[str, bytes] | Verifier) -> bytes:
        """The bundle of ``name`` v``version`` from its newest archive record whose
        artifact signature verifies (records from before envelopes were signed included:
        this is how an operator re-publishes them, e.g. ``model publish --from-archive``)."""
        found = self.state(name, keyring).archive(name, version, envelope_signed=False)
        if found is None:
            raise ModelError(f"no archive of {name} v{version} with a valid artifact signature")
        return found.artifact

    def rollback(
        self, name: str, role: Role, *, key: bytes, key_id: str, keyring: Mapping[str, bytes]
    ) -> PublishResult:
        """Re-activate, for ``role``, the newest version archived for that role older than
        the current one, in a signed rollback record naming the version it replaces. The archive's
        envelope and artifact signatures are verified before it is signed again."""
        state = self.state(name, keyring)
        st = state.role(name, role)
        if st.current is None:
            raise ModelError(f"nothing to roll back: {name}/{role.value} is not active")
        target: ModelEnvelope | None = None
        for version in reversed(state.archived_versions(name)):
            if version < st.current:
                # the previous primary, not a shadow never promoted
                target = state.archive(name, version, role=role)
                if target is not None:
                    break
        if target is None:
            raise ModelError(f"no signed archive of {name} older than v{st.current}")
        return self.publish(
            target.artifact,
            role,
            key=key,
            key_id=key_id,
            publisher="rollback",
            rollback=True,
            target_version=st.current,
        )
