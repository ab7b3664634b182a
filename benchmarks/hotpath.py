"""The worker's per-batch hot path without a real broker, for profiling.

Run: ``python -m benchmarks.hotpath [--model hgb|lr] [--batch 500] [--profile]
[--reader-schema]`` (events read as written, the worker's default; or with a reader schema).
``--decode`` times ``AvroDeserializer.decode_many`` alone instead (see :func:`bench_decode`).

Drives :meth:`streamscore.score.worker.ScoreLoop._batch` (wrap consumed messages, decode,
validate, features, predict, encode, build outputs, produce, record metrics) on
pre-encoded bench events. Consumed messages are in-memory stand-ins; the producer is a
real librdkafka producer against librdkafka's in-process mock cluster
(``test.mock.num.brokers``), so produce calls and delivery reports are real. Prints
microseconds per event per stage.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import threading
import time
from typing import Any

import numpy as np
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from streamscore.core.config import KafkaSettings, ScoringSettings, TopicSettings
from streamscore.core.records import Role
from streamscore.dev import synthetic
from streamscore.kafka.clients import score_producer
from streamscore.kafka.delivery import AtLeastOnceSink
from streamscore.metrics.series import Metrics
from streamscore.models.container import sign_bundle
from streamscore.models.runtime import verify_and_load
from streamscore.models.store import ModelStore
from streamscore.score.batch import BatchScorer
from streamscore.score.worker import ScoreLoop
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client
from tests.unit.kafka_fakes import FakeConsumer, FakeMessage

from . import workload

KEY = b"hotpath-bench-key"


def build(
    model_kind: str, batch: int, *, reader_schema: bool = False
) -> tuple[ScoreLoop, Any, Producer]:
    """The loop as ``streamscore score`` runs it: by default each event is read with the
    schema it was written with (the worker's default); ``reader_schema``: with the
    events' schema given as the reader (``--reader-schema`` / ``[events] subject``)."""
    reg = registry_client({"url": f"mock://hotpath-{time.monotonic_ns()}"})
    schema = workload.event_schema()
    ser = AvroSerializer(reg, "events-value", schema)
    decode = AvroDeserializer(WriterSchemaCache(reg), schema if reader_schema else None)
    pred = AvroSerializer(reg, "predictions-value", schemas.load("prediction"))
    tele = AvroSerializer(reg, "telemetry-value", schemas.load("telemetry"))
    bm = workload.train(model_kind)
    signed = sign_bundle(bm.bundle.to_bytes(), KEY, "k")
    model = verify_and_load(signed.payload, signed.signature, "k", {"k": KEY})
    store = ModelStore()
    store.offer(Role.PRIMARY, model)
    settings = ScoringSettings(batch_size=batch)
    # the worker's own producer settings (score_producer), on the mock cluster
    conf = score_producer(KafkaSettings(), settings)
    conf.pop("bootstrap.servers", None)
    producer = Producer({**conf, "test.mock.num.brokers": 1, "log_level": 0})
    sink = AtLeastOnceSink(producer, FakeConsumer())
    loop = ScoreLoop(
        consumer=FakeConsumer(),
        sink=sink,
        scorer=BatchScorer(decode, pred, settings, prediction_limit=lambda: 1_048_588),
        store=store,
        metrics=Metrics(CollectorRegistry()),
        settings=settings,
        topics=TopicSettings(),
        encode_telemetry=tele,
        stop=threading.Event(),
    )
    enc = workload.EventEncoder(ser.schema_id)
    return loop, enc, producer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=workload.MODEL_KINDS, default="hgb")
    ap.add_argument("--batch", type=int, default=ScoringSettings.batch_size)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--reader-schema",
        action="store_true",
        help="decode with the events' schema as reader (default: each as written)",
    )
    ap.add_argument("--decode", action="store_true", help="time decode_many alone")
    ap.add_argument("--repeats", type=int, default=7, help="--decode: runs per scenario")
    args = ap.parse_args()
    if args.decode:
        bench_decode(args.batch, args.batches, args.repeats)
        return

    loop, enc, producer = build(args.model, args.batch, reader_schema=args.reader_schema)
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    n = args.batch * 20  # a pool of distinct events, reused round-robin
    # a consumed batch holds runs of one partition (a fetch is per partition): 4 runs
    run_len = max(1, args.batch // 4)
    pool = [
        FakeMessage(
            "events", (i // run_len) % 4, i, enc.encode(e), key=e["key"].encode(), timestamp_ms=now
        )
        for i, e in enumerate(workload.events(n, rng, event_time_ms=now))
    ]
    batches = [pool[i : i + args.batch] for i in range(0, n, args.batch)]

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            loop._batch(batches[i % len(batches)])
            loop._sink.poll(0)
        producer.flush(30)
        loop._sink.poll(0)
        return time.perf_counter() - t0

    run(20)  # warm up
    m = loop._m
    before = {s: _hist_sum(m, s) for s in _STAGES}
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
    elapsed = run(args.batches)
    if args.profile:
        prof.disable()
    events = args.batches * args.batch
    print(
        f"model={args.model} batch={args.batch} "
        f"reader={'events schema' if args.reader_schema else 'as written'}: "
        f"{events / elapsed:,.0f} events/s "
        f"({elapsed / events * 1e6:.2f} us/event, incl. produce + acks on the mock broker)"
    )
    for s in _STAGES:
        print(f"  {s:<9} {(_hist_sum(m, s) - before[s]) / events * 1e6:6.2f} us/event")
    if args.profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def bench_decode(batch: int, batches: int, repeats: int) -> None:
    """Median µs/event of ``decode_many`` on ``batch``-event batches of the demo events,
    read with the v2 reader schema (what the workers run during the v1 -> v2 migration):
    written with v2 (the reader's own schema), with v1 (resolved: ``c`` defaulted), and
    half of each, interleaved at random."""
    reg = registry_client({"url": f"mock://hotpath-decode-{time.monotonic_ns()}"})
    v1 = AvroSerializer(reg, "events-value", schemas.load("event", 1))
    v2 = AvroSerializer(reg, "events-value", schemas.load("event", 2))
    dec = AvroDeserializer(WriterSchemaCache(reg), schemas.load("event", 2))
    rng = np.random.default_rng(0)
    pool = 20 * batch  # distinct events, reused round-robin
    old = [v1(e) for e, _y in synthetic.events(pool, rng, with_c=False)]
    new = [v2(e) for e, _y in synthetic.events(pool, rng, with_c=True)]
    pick = rng.random(pool) < 0.5
    mixed = [o if p else n for o, n, p in zip(old, new, pick.tolist(), strict=True)]
    for name, values in (("v2-written", new), ("v1-written", old), ("50/50 mixed", mixed)):
        chunks = [values[i : i + batch] for i in range(0, pool, batch)]
        for c in chunks[:3]:  # warm up (schema fetches, plans)
            dec.decode_many(c)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(batches):
                dec.decode_many(chunks[i % len(chunks)])
            runs.append((time.perf_counter() - t0) / (batches * batch) * 1e6)
        kind = type(dec.decode_many(chunks[0])[1]).__name__
        print(
            f"decode_many batch={batch} {name:<12} median {np.median(runs):5.2f} us/event "
            f"(min {min(runs):.2f}, max {max(runs):.2f}, {repeats} runs x {batches} batches; "
            f"records: {kind})"
        )


_STAGES = ("decode", "validate", "features", "predict", "encode", "produce", "drift")


def _hist_sum(m: Metrics, stage: str) -> float:
    for fam in m.stage_seconds.collect():
        for s in fam.samples:
            if s.name.endswith("_sum") and s.labels.get("stage") == stage:
                return float(s.value)
    return 0.0


if __name__ == "__main__":
    main()
