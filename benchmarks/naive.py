"""The naive baseline ``make bench`` compares the worker with: per message one ``poll``,
one Avro decode, one scikit-learn ``predict_proba`` (the same fitted estimator the bundle
was built from), one Avro encode and one ``produce``, in this process; same broker, same
events."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer

from streamscore.core.config import KafkaSettings
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache

from . import workload
from .results import NaiveRun


def run(
    kafka: KafkaSettings,
    registry: Any,
    bm: workload.BenchModel,
    events: str,
    predictions: str,
    group: str,
    n: int,
) -> NaiveRun:
    """Score ``n`` events of ``events`` (from the start, as consumer group ``group``) onto
    ``predictions`` one message at a time; events/s and CPU seconds per 1,000 events from
    the first message on."""
    est = bm.estimator
    decode = AvroDeserializer(WriterSchemaCache(registry), workload.event_schema())
    encode = AvroSerializer(registry, f"{predictions}-value", schemas.load("prediction"))
    encode.schema_id  # noqa: B018 - register before timing
    c = Consumer(
        {
            **kafka.client_config(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    p = Producer({**kafka.client_config(), "log_level": 0})
    c.subscribe([events])
    classes = [str(x) for x in est.classes_]
    names = list(workload.FEATURES)
    done = 0
    t0 = 0.0
    cpu0 = 0.0
    try:
        while done < n:
            m = c.poll(1.0)
            if m is None or m.error() is not None:
                continue
            if done == 0:
                t0, cpu0 = time.perf_counter(), time.process_time()
            e = decode(m.value())
            feats = [float(e[f]) for f in names]
            proba = est.predict_proba(np.array([feats]))[0]
            record = {
                "event_id": e["event_id"],
                "key": e["key"],
                "event_time": e["event_time"],
                "scored_time": int(time.time() * 1000),
                "model_name": bm.name,
                "model_version": 1,
                "role": "primary",
                "value": None,
                "score": float(proba[1]) if len(proba) == 2 else float(max(proba)),
                "label": classes[int(np.argmax(proba))],
                "degraded": False,
                "late": False,
                "detail": {
                    "probabilities": [float(x) for x in proba],
                    "classes": classes,
                    "feature_names": names,
                    "features": feats,
                },
            }
            while True:
                try:
                    p.produce(predictions, encode(record), m.key())
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            done += 1
        p.flush(60)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        c.close()
    return NaiveRun(bm.kind, n, n / elapsed, cpu / n * 1000)
