"""Publish, list and roll back models on the compacted model topic (thin Kafka I/O)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer

from . import envelope as env_mod
from .bundle import decode_bundle, sign_bundle, verify_signature
from .config import KafkaSettings
from .envelope import Action, ModelEnvelope
from .errors import BundleTooLargeError, DeliveryError, ModelError, SerdeError
from .kafka_clients import plain_producer, read_to_end, reader_consumer
from .records import Role

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
        """Every envelope the topic holds now, in offset order per partition."""
        conf = reader_consumer(
            self._kafka,
            f"streamscore-model-reader-{uuid.uuid4().hex[:12]}",
            **{
                "enable.partition.eof": True,
                "fetch.max.bytes": self._max + 65_536,
                "max.partition.fetch.bytes": self._max + 65_536,
            },
        )
        c = Consumer(conf)
        out: list[ModelEnvelope] = []
        try:
            for msg in read_to_end(c, self._topic, metadata_timeout=timeout, deadline_s=timeout):
                if msg.value() is None:
                    continue
                try:
                    out.append(ModelEnvelope.from_avro(self._decode(msg.value())))
                except (SerdeError, KeyError, ValueError) as exc:
                    log.warning("skipping undecodable envelope at offset %s: %s", msg.offset(), exc)
        finally:
            c.close()
        return out

    def next_version(self, name: str) -> int:
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

    def publish(
        self,
        bundle_bytes: bytes,
        role: Role,
        *,
        key: bytes,
        key_id: str,
        publisher: str,
        rollback: bool = False,
    ) -> PublishResult:
        """Sign and publish a bundle as ``role``, plus its archive copy for rollbacks."""
        b = decode_bundle(bundle_bytes)  # refuse to publish what workers could not read
        signed = sign_bundle(bundle_bytes, key, key_id)
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
        )
        archive = env_mod.make(**common, action=Action.ARCHIVE)  # type: ignore[arg-type]
        active = env_mod.make(**common, rollback=rollback)  # type: ignore[arg-type]
        self._send([archive, active])
        return PublishResult(active.key, active.version, active.size, active.sha256)

    def retire(self, name: str, role: Role, *, publisher: str) -> None:
        now = int(time.time() * 1000)
        e = env_mod.make(
            model_name=name,
            role=role,
            version=0,
            artifact=b"",
            signature=None,
            key_id=None,
            created_at_ms=now,
            published_at_ms=now,
            publisher=publisher,
            action=Action.RETIRE,
        )
        self._send([e])

    def rollback(
        self, name: str, role: Role, *, key: bytes, key_id: str, keyring: Mapping[str, bytes]
    ) -> PublishResult:
        """Re-activate, for ``role``, the newest archived version older than the active one.
        The archived artifact's own signature is verified before it is signed again."""
        envs = self.read_all()
        active = [
            e
            for e in envs
            if e.model_name == name and e.role is role and e.action is Action.ACTIVATE
        ]
        if not active:
            raise ModelError(f"nothing to roll back: no {name}/{role.value} was ever published")
        current = active[-1].version
        older = sorted(
            (
                e
                for e in envs
                if e.model_name == name and e.action is Action.ARCHIVE and e.version < current
            ),
            key=lambda e: e.version,
        )
        if not older:
            raise ModelError(f"no archived version of {name} older than v{current}")
        target = older[-1]
        verify_signature(target.artifact, target.signature, target.key_id, keyring)
        return self.publish(
            target.artifact, role, key=key, key_id=key_id, publisher="rollback", rollback=True
        )
