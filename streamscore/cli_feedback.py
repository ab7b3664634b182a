"""``streamscore feedback`` and ``streamscore train``: argparse setup and wiring.

Hook into ``cli.py`` with ``cli_feedback.add_commands(sub)`` on its subparsers; until
then ``python -m streamscore.cli_feedback {feedback,train} ...`` runs them directly
(same environment variables as ``streamscore``, see :mod:`streamscore.cli`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.config import SHADOW_TOPIC_HELP
from .core.errors import ConfigError, DeliveryError, KafkaIOError, StreamscoreError
from .core.records import Role, Task
from .serde import schemas

if TYPE_CHECKING:
    from .core.config import Env
    from .models.publish import ModelTopic
    from .models.runtime import LoadedModel

log = logging.getLogger("streamscore")

EXIT_NOT_BETTER = 3


# ------------------------------------------------------------------------ helpers


def parse_time_ms(text: str | None) -> int | None:
    """Epoch milliseconds, or an ISO-8601 time (naive means UTC)."""
    if text is None or text == "":
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not a time: {text!r} (use ISO-8601 or epoch milliseconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _registry(env: Env) -> Any:
    from .serde.wire import registry_client

    return registry_client(env.registry.client_config())


def model_topic(env: Env, reg: Any = None) -> ModelTopic:
    from .models.publish import ModelTopic
    from .serde.message import AvroDeserializer, AvroSerializer
    from .serde.wire import WriterSchemaCache

    reg = reg if reg is not None else _registry(env)
    schema = schemas.load("model_envelope")
    return ModelTopic(
        env.kafka,
        env.topics.models,
        encode=AvroSerializer(reg, f"{env.topics.models}-value", schema),
        decode=AvroDeserializer(WriterSchemaCache(reg), schema),
        max_message_bytes=env.model_max_bytes,
    )


def current_primary(topic: ModelTopic, name: str, keyring: Any) -> LoadedModel | None:
    """The active primary of ``name`` on the model topic (None if none or retired), by
    the workers' rules: forged or replayed records are not taken for it."""
    from .models.runtime import verify_and_load

    latest = topic.state(name, keyring).role(name, Role.PRIMARY).record
    if latest is None:
        return None
    return verify_and_load(latest.artifact, latest.signature, latest.key_id, keyring)


# ----------------------------------------------------------------------- feedback


def cmd_feedback(args: argparse.Namespace, env: Env) -> int:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from prometheus_client import CollectorRegistry

    from .core.stop import install_stop_signals
    from .feedback.groundtruth import GroundTruthStore
    from .feedback.join import JoinState
    from .feedback.loop import FeedbackLoop, make_telemetry, promote_shadow
    from .feedback.promotion import (
        LiveQuality,
        PromotionDecision,
        PromotionPolicy,
        PromotionSettings,
    )
    from .feedback.router import FeedbackRouter, RouteTopics, join_topic_for
    from .kafka.admin import ensure_topic, partition_count
    from .kafka.clients import feedback_consumer, plain_producer, router_consumer
    from .kafka.delivery import AtLeastOnceSink
    from .metrics.series import Metrics, serve
    from .serde.event_ids import EventIdReader
    from .serde.message import AvroDeserializer, AvroSerializer, LayoutDeserializer
    from .serde.wire import WriterSchemaCache

    worker_id = args.worker_id or f"feedback-{os.uname().nodename}-{os.getpid()}"
    promo = PromotionSettings(
        enabled=args.auto_promote, min_labels=args.promote_min_labels, margin=args.promote_margin
    )
    signer = verifier = None
    if promo.enabled:  # a publisher: it signs what it promotes, so it holds the private key
        from .models.signing import publisher_keys

        if not env.signing.can_sign:
            raise ConfigError(
                "--auto-promote publishes models, so this feedback worker is a publisher: set "
                "STREAMSCORE_SIGNING_KEY_FILE to the private key (`streamscore model keygen`)"
            )
        signer, verifier = publisher_keys(env.signing)
    # before anything a supervisor can see (the /metrics port): a SIGTERM from then on
    # stops the worker cleanly, however far its start has got
    stop = threading.Event()
    install_stop_signals(stop)
    registry = CollectorRegistry()
    metrics = Metrics(registry, "feedback")
    server = (
        serve(registry, args.metrics_host, args.metrics_port) if args.metrics_port >= 0 else None
    )
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)

    store = GroundTruthStore(Path(args.store_dir), max_buffered_rows=args.max_buffered_rows)
    report = store.open()
    log.info(
        "ground-truth store %s: %d rows, %d unmatched labels, %d unfinished file(s) removed",
        args.store_dir,
        report.rows,
        report.unmatched,
        len(report.removed_inprogress),
    )
    reg = _registry(env)
    cache = WriterSchemaCache(reg)
    # v3 predictions with the v3 reader, older ones with v2's (their arrays kept)
    decode_pred = LayoutDeserializer(
        cache, schemas.load("prediction"), schemas.load("prediction", 2), "detail"
    )
    decode_fb = AvroDeserializer(cache, schemas.load("feedback"))
    telemetry = AvroSerializer(reg, f"{env.topics.telemetry}-value", schemas.load("telemetry"))
    topic = model_topic(env, reg) if promo.enabled else None

    def on_decision(d: PromotionDecision) -> bool:
        ok, note = True, ""
        if d.promote:
            assert topic is not None and signer is not None and verifier is not None
            try:
                note = promote_shadow(topic, d, signer=signer, verifier=verifier)
            except StreamscoreError as exc:
                ok, note = False, f"promotion failed: {type(exc).__name__}: {exc}"
                log.error("%s", note)
        outcome = "failed" if not ok else ("promoted" if d.promote else "declined")
        metrics.promotion_decisions.labels(outcome).inc()
        log.info("promotion %s: %s %s", outcome, d.detail, note)
        t = make_telemetry(worker_id, d, note)
        producer.produce(env.topics.telemetry, telemetry(t.to_avro()), worker_id.encode())
        producer.flush(10)
        return ok

    # the join topic: predictions and labels re-keyed by event id (feedback_router.py)
    admin = AdminClient(env.kafka.client_config())
    topics = RouteTopics(
        predictions=env.topics.predictions,
        predictions_shadow=env.topics.predictions_shadow,
        feedback=env.topics.feedback,
        join=args.join_topic or join_topic_for(args.group_id),
        dlq=env.topics.dlq,
    )
    sources = [partition_count(admin, t) for t in topics.sources()]
    want = args.join_partitions or max([n for n in sources if n] + [1])
    retention_ms = int(args.join_retention_h * 3_600_000)
    n_join = ensure_topic(admin, topics.join, want, {"retention.ms": str(retention_ms)})
    from .kafka.admin import topic_limits
    from .kafka.output_limits import OutputLimits

    limits = OutputLimits(topic_limits(admin, [topics.join, topics.dlq, env.topics.telemetry]))
    log.info("output record limits (max.message.bytes): %s", limits.as_dict())
    producer = Producer(plain_producer(env.kafka, max_message_bytes=limits.producer_max_bytes()))

    def dead_letter(msg: Any, err: StreamscoreError) -> None:
        from .kafka.dead_letters import Consumed, dead_letter

        out = dead_letter(
            Consumed(msg),
            err,
            dlq_topic=topics.dlq,
            worker_id=worker_id,
            limit=limits.limit(topics.dlq),
        )
        headers: Any = out.headers
        producer.produce(out.topic, out.value, out.key, headers=headers)
        metrics.dead_letters.labels(err.reason).inc()
        if producer.flush(10):
            raise DeliveryError("a dead letter was not acknowledged within 10 s")

    join = JoinState(int(args.window_s * 1000), args.max_pending, already_written=store.contains)
    router_c = Consumer(router_consumer(env.kafka, args.group_id, worker_id))
    router = FeedbackRouter(
        consumer=router_c,
        sink=AtLeastOnceSink(
            Producer(plain_producer(env.kafka, max_message_bytes=limits.producer_max_bytes())),
            router_c,
        ),
        topics=topics,
        event_id=EventIdReader(cache),
        metrics=metrics,
        worker_id=worker_id,
        stop=stop,
        limits=limits,
    )
    router_failure: list[BaseException] = []

    def run_router() -> None:
        try:
            router.run()
        except BaseException as exc:  # the worker must not go on joining without it
            router_failure.append(exc)
            log.error("feedback router failed: %s: %s", type(exc).__name__, exc)
            stop.set()

    loop = FeedbackLoop(
        consumer=Consumer(feedback_consumer(env.kafka, args.group_id, worker_id)),
        join_topic=topics.join,
        decode_prediction=decode_pred,
        decode_feedback=decode_fb,
        join=join,
        store=store,
        metrics=metrics,
        quality=LiveQuality(metrics, window=args.quality_window),
        policy=PromotionPolicy(promo) if promo.enabled else None,
        on_decision=on_decision,
        stop=stop,
        dead_letter=dead_letter,
        checkpoint_s=args.checkpoint_s,
    )
    log.info(
        "feedback worker %s: joining %s with %s through %s (%d partitions; group %s, "
        "window %.0f s, auto-promote %s)",
        worker_id,
        topics.feedback,
        topics.predictions,
        topics.join,
        n_join,
        args.group_id,
        args.window_s,
        "on" if promo.enabled else "off",
    )
    router_thread = threading.Thread(target=run_router, name="feedback-router", daemon=True)
    router_thread.start()
    try:
        stats = loop.run()
        log.info("feedback worker stopped: %s; join %s", stats, join.stats)
    finally:
        stop.set()
        router_thread.join(30)
        producer.flush(10)
        store.close()
        if server is not None:
            server.stop()
    if router_failure:
        raise KafkaIOError(f"feedback router failed: {router_failure[0]}") from router_failure[0]
    return 0


# -------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace, env: Env) -> int:
    from .feedback.groundtruth import read_rows
    from .train.training import retrain, spec_by_name

    spec = spec_by_name(args.features)
    since, until = parse_time_ms(args.since), parse_time_ms(args.until)
    rows = read_rows(Path(args.store_dir), since, until)
    log.info("read %d rows from %s", len(rows), args.store_dir)
    topic = None if args.offline else model_topic(env)
    current = None
    if topic is not None:
        from .models.signing import tool_verifier

        current = current_primary(topic, args.name, tool_verifier(env.signing))
    version = args.version or (topic.next_version(args.name) if topic is not None else 1)
    res = retrain(
        rows,
        spec,
        current=current,
        name=args.name,
        version=version,
        task=Task(args.task),
        estimator=args.estimator,
        holdout_fraction=args.holdout,
        min_rows=args.min_rows,
        margin=args.margin,
    )
    cur = f"v{current.meta.version}" if current is not None else "none"
    print(
        f"candidate {args.name} v{version} on {','.join(spec.names)}: trained on "
        f"{res.n_train} rows, held out {res.n_holdout} (current primary: {cur})"
    )
    print(res.comparison.table())
    print(("PUBLISH: " if res.decision.publish else "KEEP CURRENT: ") + res.decision.reason)
    if args.out:
        Path(args.out).write_bytes(res.bundle.to_bytes())
        print(f"bundle written to {args.out}")
    if not res.decision.publish:
        return EXIT_NOT_BETTER
    if topic is None or args.dry_run:
        print("not published (--dry-run / --offline)")
        return 0
    from .models.signing import signer_from

    pub = topic.publish(
        res.bundle.to_bytes(),
        Role(args.role),
        key=signer_from(env.signing),
        publisher=args.publisher,
    )
    print(f"published {pub.key} v{pub.version} ({pub.size} bytes, sha256 {pub.sha256[:12]})")
    return 0


# ------------------------------------------------------------------------- parser


def add_commands(sub: Any) -> None:
    """Add ``feedback`` and ``train`` to an ``add_subparsers()`` object."""
    f = sub.add_parser("feedback", help="join labels with predictions, fill the ground truth")
    f.add_argument("--group-id", default="streamscore-feedback")
    f.add_argument("--worker-id", default=None)
    f.add_argument("--shadow-topic", default=None, help=SHADOW_TOPIC_HELP)
    f.add_argument("--store-dir", default="groundtruth", help="ground-truth store directory")
    f.add_argument(
        "--window-s", type=float, default=3600.0, help="join window in event-time seconds"
    )
    f.add_argument(
        "--max-pending", type=int, default=500_000, help="cap on event ids held in the join"
    )
    f.add_argument("--checkpoint-s", type=float, default=1.0, help="flush + commit interval")
    f.add_argument(
        "--join-topic",
        default=None,
        help="internal topic of predictions and labels keyed by event id "
        "(default: <group-id>.join; created if missing)",
    )
    f.add_argument(
        "--join-partitions",
        type=int,
        default=0,
        help="partitions of a join topic this worker creates (default: as many as the "
        "larger of predictions / feedback); they bound the useful number of workers",
    )
    f.add_argument(
        "--join-retention-h",
        type=float,
        default=168.0,
        help="retention of a join topic this worker creates; keep it above the join "
        "window plus the longest outage you want to recover from",
    )
    f.add_argument("--max-buffered-rows", type=int, default=20_000)
    f.add_argument("--quality-window", type=int, default=1000, help="rolling metric window")
    f.add_argument("--metrics-host", default="127.0.0.1")
    f.add_argument(
        "--metrics-port", type=int, default=9500, help="0 picks a free port; -1 disables"
    )
    f.add_argument("--auto-promote", action="store_true", help="promote better shadows")
    f.add_argument("--promote-min-labels", type=int, default=500)
    f.add_argument(
        "--promote-margin",
        type=float,
        default=0.05,
        help="required improvement: relative for MAE, absolute for accuracy",
    )
    f.set_defaults(func=cmd_feedback)

    t = sub.add_parser(
        "train",
        help="retrain from the ground-truth store; publish only if better",
        description=f"Exit status: 0 published (or dry run), {EXIT_NOT_BETTER} candidate "
        "not better by the margin, 1 error (e.g. too few rows).",
    )
    t.add_argument("--store-dir", default="groundtruth")
    t.add_argument("--since", default=None, help="ISO-8601 or epoch ms (inclusive)")
    t.add_argument("--until", default=None, help="ISO-8601 or epoch ms (exclusive)")
    t.add_argument("--name", default="demo")
    t.add_argument("--as", dest="role", choices=["primary", "shadow"], default="primary")
    t.add_argument("--features", default="a,b,c", help="demo feature spec: a,b or a,b,c")
    t.add_argument("--task", choices=[x.value for x in Task], default="regression")
    t.add_argument("--estimator", choices=["linear", "hgb"], default="linear")
    t.add_argument("--holdout", type=float, default=0.2, help="most recent fraction held out")
    t.add_argument("--margin", type=float, default=0.05)
    t.add_argument("--min-rows", type=int, default=200)
    t.add_argument("--version", type=int, default=None)
    t.add_argument("--out", default=None, help="also write the candidate bundle here")
    t.add_argument("--dry-run", action="store_true", help="compare, do not publish")
    t.add_argument(
        "--offline", action="store_true", help="no Kafka: no current model, nothing published"
    )
    t.add_argument("--publisher", default=os.environ.get("USER", "train"))
    t.set_defaults(func=cmd_train)
