"""confluent-kafka's own schema-registry serdes against streamscore's batch codecs, on the
same records (the bench events, and predictions like the scorer's): microseconds per
record. The worker keeps its batch codecs where they win (issue 14); both write the same
bytes (tests/unit/test_subjects.py).

Run: ``python -m benchmarks.serdes [--batch 500] [--batches 40]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka.schema_registry.avro import AvroDeserializer as ConfluentDeserializer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client
from tests.unit.test_fast_encode import prediction_columns

from . import workload


def _per_record(fn: Callable[[], object], n_records: int, repeat: int) -> float:
    fn()  # warm caches (schema lookups)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / (repeat * n_records) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--batches", type=int, default=40)
    a = ap.parse_args()
    reg = registry_client({"url": f"mock://serdes-{time.monotonic_ns()}"})
    ctx = SerializationContext("events", MessageField.VALUE)

    schema = workload.event_schema()
    ser = AvroSerializer(reg, "events-value", schema)
    values = [ser(e) for e in workload.events(a.batch, np.random.default_rng(0))]
    ours_dec = AvroDeserializer(WriterSchemaCache(reg), schema)
    theirs_dec = ConfluentDeserializer(reg, json.dumps(schema))
    dec_ours = _per_record(lambda: ours_dec.decode_many(values), a.batch, a.batches)
    dec_theirs = _per_record(lambda: [theirs_dec(v, ctx) for v in values], a.batch, a.batches)

    pred = schemas.load("prediction")
    cols = prediction_columns(a.batch, np.random.default_rng(1), classifier=True)
    rows = cols.rows()
    ours_enc = AvroSerializer(reg, "predictions-value", pred)
    theirs_enc = ConfluentSerializer(reg, json.dumps(pred), conf={"auto.register.schemas": True})
    pctx = SerializationContext("predictions", MessageField.VALUE)
    enc_ours = _per_record(lambda: ours_enc.encode_columns(cols), a.batch, a.batches)
    enc_theirs = _per_record(lambda: [theirs_enc(r, pctx) for r in rows], a.batch, a.batches)

    print(f"batch={a.batch} x {a.batches} (us/record)")
    print(f"  decode events      streamscore {dec_ours:7.2f}   confluent {dec_theirs:7.2f}")
    print(f"  encode predictions streamscore {enc_ours:7.2f}   confluent {enc_theirs:7.2f}")


if __name__ == "__main__":
    main()
