"""``streamscore feedback`` and ``streamscore train``: argparse setup and wiring.

Hook into ``cli.py`` with ``cli_feedback.add_commands(sub)`` on its subparsers; until
then ``python -m streamscore.cli_feedback {feedback,train} ...`` runs them directly
(same environment variables as ``streamscore``, see :mod:`streamscore.cli`).

One concern, hence its length: the argument parsing and wiring of the feedback and
train commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.config import FEEDBACK_BATCH, SHADOW_TOPIC_HELP
from .core.errors import ConfigError, DeliveryError, KafkaIOError, StreamscoreError
from .core.records import Prediction, Role, Task
from .core.redact import redact_urls
from .serde import schemas

if TYPE_CHECKING:
    from .core.config import Env, GroundTruthSettings
    from .feedback.groundtruth import RowFields
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
    from .serde.message import AvroDeserializer, topic_serializer
    from .serde.wire import WriterSchemaCache

    reg = reg if reg is not None else _registry(env)
    schema = schemas.load("model_envelope")
    return ModelTopic(
        env.kafka,
        env.topics.models,
        encode=topic_serializer(reg, env.registry, "models", env.topics.models, schema),
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


def groundtruth_settings(args: argparse.Namespace, env: Env) -> GroundTruthSettings:
    """The table's settings: flags over the environment / project file (``env``)."""
    from dataclasses import replace

    from .core.config import Secret

    gt = env.groundtruth
    changes: dict[str, Any] = {}
    if getattr(args, "groundtruth", None):
        changes["uri"] = args.groundtruth
    opts = dict(gt.storage)
    for item in getattr(args, "groundtruth_option", None) or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--groundtruth-option wants KEY=VALUE, got {key!r}")
        opts[key.strip()] = Secret(value)
    changes["storage"] = opts
    for name in ("retention_hours", "compact_every_s", "vacuum_every_s"):
        v = getattr(args, name, None)
        if v is not None:
            changes[name] = v
    return replace(gt, **changes)


def row_fields(args: argparse.Namespace, env: Env) -> RowFields:
    """The user's id/time field names (``[events]``) and the label field's:
    ``--label-field``, else ``[labels] label_field``, else ``label``."""
    from .feedback.groundtruth import DEFAULT_LABEL_FIELD, RowFields

    label = args.label_field or (env.labels.label_field if env.labels else DEFAULT_LABEL_FIELD)
    return RowFields(env.events.id_field, env.events.time_field, label)


def _add_groundtruth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--groundtruth",
        "--store-dir",
        dest="groundtruth",
        default=None,
        metavar="URI",
        help="the ground-truth table's location: file:///path, a path, or "
        "s3://bucket/prefix (default: [groundtruth] uri, else ./groundtruth)",
    )
    p.add_argument(
        "--groundtruth-option",
        action="append",
        metavar="KEY=VALUE",
        help="an object-store option (endpoint, region, access_key_id, allow_http, ...); "
        "repeat it; over [groundtruth.storage]",
    )
    p.add_argument(
        "--label-field",
        default=None,
        help="the label's column name in the table (default: [labels] label_field, else label)",
    )


# ----------------------------------------------------------------------- feedback


def join_window_ms(args: argparse.Namespace) -> int:
    """``--window`` (a duration with its unit), or the deprecated ``--window-s``."""
    from .core.config import duration_ms

    if args.window is not None and args.window_s is not None:
        raise ConfigError("give --window or the deprecated --window-s, not both")
    if args.window_s is not None:
        log.warning("--window-s is deprecated: use --window (e.g. --window %gs)", args.window_s)
        if args.window_s <= 0:
            raise ConfigError(f"--window-s must be > 0, got {args.window_s}")
        return int(args.window_s * 1000)
    return duration_ms(args.window if args.window is not None else "1h")


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, bounded by its cgroup's CPU
    quota (cgroup v2 ``cpu.max``: a container's CPU limit), rounded up."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    n = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return n
    if quota == "max":
        return n
    try:
        return max(1, min(n, -(-int(quota) // int(period))))
    except (ValueError, ZeroDivisionError):
        return n


def router_mode(choice: str, cores: int | None = None) -> str:
    """Where the router runs: ``process`` or ``thread``; ``auto``: a process when the
    worker may use two cores or more (:func:`usable_cores`), a thread on one."""
    if choice != "auto":
        return choice
    n = cores if cores is not None else usable_cores()
    return "process" if n >= 2 else "thread"


def cmd_feedback(args: argparse.Namespace, env: Env) -> int:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from prometheus_client import CollectorRegistry

    from .core.stop import install_stop_signals
    from .feedback.groundtruth import GroundTruthStore
    from .feedback.join import JoinState
    from .feedback.labels import FEEDBACK_FIELDS, LabelFields, LabelReader
    from .feedback.loop import PREDICTION_HEAD, FeedbackLoop, make_telemetry, promote_shadow
    from .feedback.memory import tune_malloc
    from .feedback.promotion import (
        LiveQuality,
        PromotionDecision,
        PromotionPolicy,
        PromotionSettings,
    )
    from .feedback.router import RouteTopics, join_topic_for
    from .feedback.router_process import RouterHandle, RouterProcess, RouterSpec, RouterThread
    from .feedback.state import relax_gc
    from .kafka.access import preflight
    from .kafka.admin import ensure_topic, partition_count
    from .kafka.changelog import CHANGELOG_CONFIG, Changelog, changelog_topic_for
    from .kafka.clients import (
        admin_config,
        feedback_consumer,
        plain_producer,
    )
    from .metrics.series import Metrics, serve
    from .serde.message import (
        AvroDeserializer,
        LayoutDeserializer,
        check_output_subjects,
        topic_serializer,
    )
    from .serde.record_heads import HeadReader
    from .serde.wire import WriterSchemaCache

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    relax_gc()
    worker_id = args.worker_id or f"feedback-{os.uname().nodename}-{os.getpid()}"
    recipe, labels = env.train, env.labels
    promo = PromotionSettings(
        enabled=args.auto_promote,
        min_labels=args.promote_min_labels,
        margin=args.promote_margin
        if args.promote_margin is not None
        else (recipe.margin if recipe is not None else 0.05),
        metric=None if recipe is None or recipe.metric is None else recipe.metric.value,
        positive=None if labels is None else labels.positive,
    )
    label_fields = FEEDBACK_FIELDS if labels is None else LabelFields.of(labels)
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
    tune_malloc(os.environ, stop)  # before the worker's threads start (feedback/memory.py)
    registry = CollectorRegistry()
    metrics = Metrics(registry, "feedback")
    server = (
        serve(registry, args.metrics_host, args.metrics_port) if args.metrics_port >= 0 else None
    )
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)

    gt = groundtruth_settings(args, env)
    window_ms = join_window_ms(args)
    store = GroundTruthStore(
        gt,
        fields=row_fields(args, env),
        max_buffered_rows=args.max_buffered_rows,
        # what a restart can re-read: the join state is durable, so only what came after
        # the last checkpoint (and a router's uncommitted re-sends), never the window
        recent_ms=min(2 * window_ms, 3_600_000) + 600_000,
    )
    report = store.open()
    log.info(
        "ground-truth table %s: rows at version %d, unmatched at version %d",
        gt.describe(),
        report.rows_version,
        report.unmatched_version,
    )
    reg = _registry(env)
    # the outputs it does not create itself (the join topic and the changelog it does)
    outputs = ["dlq", "telemetry"] + (["models"] if promo.enabled else [])
    preflight(
        env.kafka,
        reg,
        redact_urls(env.registry.url),
        read=[env.topics.predictions, env.topics.predictions_shadow, env.topics.feedback],
        write=[getattr(env.topics, name) for name in outputs],
        group=args.group_id,
        must_exist=env.topics.where_set(outputs),
    )
    cache = WriterSchemaCache(reg)
    # v3 predictions with the v3 reader, older ones with v2's (their arrays kept)
    decode_pred = LayoutDeserializer(
        cache, schemas.load("prediction"), schemas.load("prediction", 2), "detail"
    )
    # the user's label schema (any, from the registry) or the project's feedback schema
    decode_fb = AvroDeserializer(cache, None if labels is not None else schemas.load("feedback"))
    telemetry = topic_serializer(
        reg, env.registry, "telemetry", env.topics.telemetry, schemas.load("telemetry")
    )
    check_output_subjects(telemetry)
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
    admin = AdminClient(admin_config(env.kafka))
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

    # one row per event id is the table's merge's to guarantee (groundtruth module doc);
    # ``contains`` only settles re-read messages of recently written rows at once
    join = JoinState(
        window_ms,
        already_written=store.contains,
        decode_prediction=lambda raw: Prediction.from_avro(decode_pred(raw)),
    )
    # the join state's changelog: one compacted partition per join partition
    changelog_topic = changelog_topic_for(topics.join)
    ensure_topic(admin, changelog_topic, n_join, dict(CHANGELOG_CONFIG))
    changelog = Changelog.connect(env.kafka, args.group_id, worker_id)
    spec = RouterSpec(
        kafka=env.kafka,
        registry=env.registry,
        topics=topics,
        label_id_field=label_fields.id_field,
        limits=limits,
        group_id=args.group_id,
        worker_id=worker_id,
        batch_size=args.batch_size,
        verbose=bool(getattr(args, "verbose", False)),
        malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    )
    router: RouterHandle = (
        RouterProcess((spec,), metrics, stop)
        if router_mode(args.router) == "process"
        else RouterThread(spec, metrics, stop)
    )
    loop = FeedbackLoop(
        consumer=Consumer(feedback_consumer(env.kafka, args.group_id, worker_id)),
        join_topic=topics.join,
        decode_prediction=decode_pred,
        decode_feedback=decode_fb,
        read_label=LabelReader(label_fields),
        read_heads=HeadReader(
            schemas.load("prediction"), PREDICTION_HEAD, lambda sid: cache.get(sid)[0]
        ),
        join=join,
        store=store,
        metrics=metrics,
        quality=LiveQuality(metrics, window=args.quality_window, positive=promo.positive),
        policy=PromotionPolicy(promo) if promo.enabled else None,
        on_decision=on_decision,
        stop=stop,
        dead_letter=dead_letter,
        changelog=changelog,
        state_dir=Path(args.state_dir) / args.group_id,
        cache_entries=args.cache_entries,
        max_changes=args.max_changes,
        checkpoint_s=args.checkpoint_s,
        batch_size=args.batch_size,
    )
    log.info(
        "feedback worker %s: joining %s with %s through %s (%d partitions; group %s, "
        "window %.0f s, state in %s, changelog %s, auto-promote %s)",
        worker_id,
        topics.feedback,
        topics.predictions,
        topics.join,
        n_join,
        args.group_id,
        window_ms / 1000,
        args.state_dir,
        changelog_topic,
        "on" if promo.enabled else "off",
    )
    try:
        router.start()
        stats = loop.run()
        log.info("feedback worker stopped: %s; join %s", stats, join.stats)
    finally:
        stop.set()
        router.close()
        producer.flush(10)
        changelog.close()
        store.close()
        if server is not None:
            server.stop()
    if router.failure is not None:
        raise KafkaIOError(f"feedback router failed: {router.failure}")
    return 0


# -------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace, env: Env) -> int:
    from .feedback.groundtruth import read_rows_at
    from .models.meta import TrainingSource
    from .train.recipe import recipe_from
    from .train.training import retrain

    spec, recipe = env.features, env.train
    if spec is None:
        raise ConfigError(
            "streamscore train needs a project file with [[features]] (and [train]) "
            "(--config PATH or STREAMSCORE_CONFIG)"
        )
    # --estimator/--params/--fit win over the project file's [train] estimator or fit
    model_recipe = recipe_from(args.estimator, args.params, args.fit, recipe)
    if model_recipe is None:
        raise ConfigError("no training recipe: [train] estimator or fit, or --estimator/--fit")
    name = args.name or (recipe.model_name if recipe is not None else None)
    if not name:
        raise ConfigError("no model name: set [train] model_name or --name")
    labels = env.labels
    task = labels.task.task if labels is not None else Task.REGRESSION
    holdout = recipe.holdout if recipe is not None else 0.2
    margin = recipe.margin if recipe is not None else 0.0
    metric = (
        recipe.metric_for(labels.task).value if recipe is not None and labels is not None else None
    )
    since, until = parse_time_ms(args.since), parse_time_ms(args.until)
    if since is None and recipe is not None and recipe.window_ms is not None:
        since = (until or int(dt.datetime.now(dt.UTC).timestamp() * 1000)) - recipe.window_ms
    gt = groundtruth_settings(args, env)
    fields = row_fields(args, env)
    read = read_rows_at(gt, since, until, fields=fields)
    rows = read.rows
    log.info("read %d rows from %s at version %s", len(rows), gt.describe(), read.version)
    source = TrainingSource(
        uri=gt.uri,
        table_version=read.version,
        since_ms=since,
        until_ms=until,
        rows=len(rows),
        id_field=fields.id_field,
        time_field=fields.time_field,
        label_field=fields.label_field,
    )
    topic = None if args.offline else model_topic(env)
    current = None
    if topic is not None:
        from .models.signing import tool_verifier

        current = current_primary(topic, name, tool_verifier(env.signing))
    version = args.version or (topic.next_version(name) if topic is not None else 1)
    res = retrain(
        rows,
        spec,
        current=current,
        name=name,
        version=version,
        task=task,
        recipe=model_recipe,
        holdout_fraction=holdout,
        min_rows=args.min_rows,
        margin=margin,
        metric=metric,
        positive=None if labels is None else labels.positive,
        fields=fields,
        source=source,
    )
    cur = f"v{current.meta.version}" if current is not None else "none"
    print(
        f"candidate {name} v{version} on {','.join(spec.names)}: trained on "
        f"{res.n_train} rows, held out {res.n_holdout} (current primary: {cur}); "
        f"ground truth {gt.uri} version {read.version}"
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
    _add_groundtruth_flags(f)
    f.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="keep files that left the table this long (time travel reaches back as far)",
    )
    f.add_argument(
        "--compact-every-s", type=float, default=None, help="compaction interval (0: never)"
    )
    f.add_argument("--vacuum-every-s", type=float, default=None, help="vacuum interval (0: never)")
    f.add_argument(
        "--window",
        default=None,
        help="join window in event time, with a unit: 90m, 36h, 30d, 2w (default 1h)",
    )
    f.add_argument("--window-s", type=float, default=None, help="deprecated: --window in seconds")
    f.add_argument(
        "--state-dir",
        default="feedback-state",
        help="where the join state lives (RocksDB per join partition, under <group-id>/); "
        "restored from the changelog topic when empty",
    )
    f.add_argument(
        "--cache-entries",
        type=int,
        default=20_000,
        help="committed join-state entries kept in memory (encoded) by the worker, shared by "
        "its partitions (the rest on disk, in RocksDB)",
    )
    f.add_argument(
        "--max-changes",
        type=int,
        default=50_000,
        help="join-state changes held in memory (all partitions, a checkpoint in flight "
        "included): a checkpoint starts at half of them, and the join waits for the one in "
        "flight beyond",
    )
    f.add_argument(
        "--checkpoint-s",
        type=float,
        default=5.0,
        help="flush + commit interval (each is one Delta merge and one transaction)",
    )
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
    f.add_argument(
        "--batch-size",
        type=int,
        default=FEEDBACK_BATCH,
        help="most messages the router and the join each handle at once (default "
        f"{FEEDBACK_BATCH}: every batch has a fixed cost, a larger one spreads it)",
    )
    f.add_argument(
        "--max-buffered-rows",
        type=int,
        default=100_000,
        help="ground-truth rows buffered before a checkpoint is forced",
    )
    f.add_argument("--quality-window", type=int, default=1000, help="rolling metric window")
    f.add_argument("--metrics-host", default="127.0.0.1")
    f.add_argument(
        "--metrics-port", type=int, default=9500, help="0 picks a free port; -1 disables"
    )
    f.add_argument(
        "--router",
        choices=["auto", "process", "thread"],
        default="auto",
        help="where the router runs: a child process, beside the join on another core, or "
        "a thread of the worker (one core); auto: a process when this worker may use two "
        "cores or more, by its CPU affinity and its cgroup's CPU limit (default)",
    )
    f.add_argument("--auto-promote", action="store_true", help="promote better shadows")
    f.add_argument("--promote-min-labels", type=int, default=500)
    f.add_argument(
        "--promote-margin",
        type=float,
        default=None,
        help="required improvement on the recipe's metric: relative for errors (mae, rmse, "
        "log_loss), absolute for scores (default: [train] margin, else 0.05)",
    )
    f.set_defaults(func=cmd_feedback)

    t = sub.add_parser(
        "train",
        help="retrain from the ground-truth store; publish only if better",
        description=f"Exit status: 0 published (or dry run), {EXIT_NOT_BETTER} candidate "
        "not better by the margin, 1 error (e.g. too few rows).",
    )
    _add_groundtruth_flags(t)
    t.add_argument("--since", default=None, help="ISO-8601 or epoch ms (inclusive)")
    t.add_argument("--until", default=None, help="ISO-8601 or epoch ms (exclusive)")
    t.add_argument("--name", default=None, help="the model's name (default: [train] model_name)")
    t.add_argument("--as", dest="role", choices=["primary", "shadow"], default="primary")
    t.add_argument(
        "--estimator",
        default=None,
        help="an estimator class's import path (e.g. "
        "sklearn.ensemble.HistGradientBoostingRegressor); default: the project file's [train]",
    )
    t.add_argument("--params", metavar="JSON", help="--estimator's parameters, a JSON object")
    t.add_argument(
        "--fit", metavar="MODULE:FUNCTION", help="your own function: training frame -> model"
    )
    t.add_argument("--min-rows", type=int, default=200)
    t.add_argument("--version", type=int, default=None)
    t.add_argument("--out", default=None, help="also write the candidate bundle here")
    t.add_argument("--dry-run", action="store_true", help="compare, do not publish")
    t.add_argument(
        "--offline", action="store_true", help="no Kafka: no current model, nothing published"
    )
    t.add_argument("--publisher", default=os.environ.get("USER", "train"))
    t.set_defaults(func=cmd_train)
