"""Follows the compacted model topic in a background thread and feeds the updater.

At start it reads every partition to the high watermark it saw when it began and feeds
each envelope, in order, to the updater's start-up catch-up (the live rules; see
``ModelUpdater.catch_up``); only then is :meth:`wait_caught_up` released. After that every
envelope is applied as it comes. The scoring loop never waits on this thread: swaps land
in the store between batches.

A record larger than ``max_message_bytes`` is rejected by its size before it is decoded
(``too_large``: counted, reported) and the reader goes on: the consumer accepts fetch
responses of any size the broker may send (see ``kafka_clients.model_reader_limits``), so
a topic whose ``max.message.bytes`` is above the worker's limit cannot wedge it.
An envelope whose writer schema cannot be fetched (the registry away) is retried with
backoff, never rejected: it is the registry that is missing, not the envelope.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError

from ..core.config import KafkaSettings
from ..core.errors import ModelError, RegistryUnavailableError, SerdeError
from ..kafka.clients import model_watcher_consumer, read_to_end
from ..metrics.series import Metrics
from .envelope import ModelEnvelope
from .updates import ModelUpdater

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Stop was asked for while waiting for the schema registry."""


class ModelWatcher:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        decode: Callable[[bytes | None], dict[str, Any]],
        updater: ModelUpdater,
        metrics: Metrics,
        *,
        max_message_bytes: int,
        registry_retry_s: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self._conf = model_watcher_consumer(kafka, max_message_bytes)
        self._max = max_message_bytes
        self._topic = topic
        self._decode = decode
        self._updater = updater
        self._metrics = metrics
        self._retry_s = registry_retry_s
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        return self._caught_up.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _envelope(self, msg: Any) -> ModelEnvelope | None:
        value = msg.value()
        if value is None:
            return None  # tombstone: compaction will drop the key; nothing to serve
        if len(value) > self._max:
            self._updater.reject_record(
                "too_large",
                f"{len(value)} bytes; the limit is {self._max} (STREAMSCORE_MODEL_MAX_BYTES)",
                _where(msg),
            )
            return None
        try:
            return ModelEnvelope.from_avro(self._decoded(value))
        except (SerdeError, KeyError, ValueError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, SerdeError) else type(exc).__name__
            self._updater.reject_record("undecodable", f"{reason}: {exc}", _where(msg))
            return None

    def _decoded(self, value: bytes) -> dict[str, Any]:
        """The decoded envelope. A schema registry that cannot answer is waited for
        (backoff doubling up to a bound), never counted as a rejection: the envelope is
        fine, the registry is away. Raises ``_Stopped`` if asked to stop meanwhile."""
        wait = 0.0
        while True:
            try:
                return self._decode(value)
            except RegistryUnavailableError as exc:
                wait = min(max(2 * wait, self._retry_s[0]), self._retry_s[1])
                log.warning("model envelope: %s; retrying in %.1f s", exc, wait)
                if self._stop.wait(wait):
                    raise _Stopped from exc

    def _run(self) -> None:
        consumer = Consumer(self._conf)
        try:
            self._catch_up(consumer)
            self._caught_up.set()
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("model topic: %s", err)
                    continue
                env = self._envelope(msg)
                if env is not None:
                    try:
                        self._updater.apply(env)
                    except ModelError as exc:  # defensive: apply already reports
                        log.warning("model update failed: %s", exc)
        except _Stopped:
            self._caught_up.set()
        except BaseException as exc:
            self.error = exc
            log.exception("model watcher stopped")
            self._caught_up.set()
        finally:
            consumer.close()

    def _catch_up(self, consumer: Any) -> None:
        catch_up = self._updater.catch_up()
        # no deadline: a large compacted topic takes the time it takes (stop still works)
        for msg in read_to_end(consumer, self._topic, stop=self._stop.is_set):
            env = self._envelope(msg)
            if env is not None:
                catch_up.feed(env)
        catch_up.finish()


def _where(msg: Any) -> str:
    """Where a record is, for reports: topic[partition]@offset and its key (cut short)."""
    key = msg.key()
    shown = "none" if key is None else repr(bytes(key[:80]).decode("utf-8", "replace"))
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()} key={shown}"
