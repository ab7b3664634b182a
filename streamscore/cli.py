"""Command line: the only module that reads the environment and wires objects together
(one concern: the long list of subcommands and settings is why it is long).

Environment (all optional unless said; each wins over the project file):
  STREAMSCORE_CONFIG               the project file, streamscore.toml (--config wins over
                                   it; see streamscore.core.project)
  STREAMSCORE_BOOTSTRAP            Kafka bootstrap servers (default: the local cluster)
  STREAMSCORE_REGISTRY_URL         Confluent-compatible schema registry URL (credentials
                                   in it, https://user:pass@host, are sent as basic auth)
  STREAMSCORE_REGISTRY_USER / STREAMSCORE_REGISTRY_PASSWORD   registry basic auth
  STREAMSCORE_REGISTRY_TIMEOUT_S   per registry request (default 2)
  STREAMSCORE_REGISTRY_MAX_RETRIES retries of one registry request (default 1)
  STREAMSCORE_SECURITY_PROTOCOL, STREAMSCORE_SASL_MECHANISM,
  STREAMSCORE_SASL_USERNAME, STREAMSCORE_SASL_PASSWORD        Kafka auth
  STREAMSCORE_SIGNING              ed25519 (default) or hmac (a shared secret: legacy)
  STREAMSCORE_SIGNING_KEY_FILE     publishers only: the Ed25519 private key written by
                                   `streamscore model keygen` (hmac: the shared secret)
  STREAMSCORE_SIGNING_KEY_ID       id of that key (default: the key file's own)
  STREAMSCORE_KEYRING_FILE         workers: public keys, lines "key_id=<base64>" (rotation:
                                   several ids; hmac: "key_id=secret")
  STREAMSCORE_PUBLIC_KEY_FILE      workers: one more keyring file (keygen's <id>.pub)
  STREAMSCORE_SIGNING_KEY          hmac only: the shared secret itself
  STREAMSCORE_CACHE_DIR            where the local cluster is downloaded and run
  STREAMSCORE_MODEL_MAX_BYTES      largest model envelope (default 16 MiB)
  STREAMSCORE_TOPIC_EVENTS, _PREDICTIONS, _PREDICTIONS_SHADOW, _TELEMETRY, _MODELS,
  _FEEDBACK, _DLQ, _LATE           topic names (defaults: events, predictions,
                                   predictions.shadow, telemetry, streamscore.models,
                                   feedback, events.dlq, events.late)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .core import redact
from .core.config import (
    SHADOW_TOPIC_HELP,
    ClusterSettings,
    Env,
    KafkaSettings,
    LatePolicy,
    MetricsSettings,
    RegistrySettings,
    ScoringSettings,
    Secret,
    SigningScheme,
    SigningSettings,
    TopicSettings,
    topic_env_var,
)
from .core.errors import ConfigError, InfrastructureError, ProjectFileError, StreamscoreError
from .core.project import CONFIG_ENV, ProjectFile, parse_project
from .core.records import Role
from .core.redact import redact_urls
from .core.stop import install_stop_signals
from .models.signing import keygen, publisher_keys, tool_verifier, worker_verifier
from .serde import schemas

log = logging.getLogger("streamscore")


# ------------------------------------------------------------------ settings from env


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    if env.get(name):
        return Secret(env[name])
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read {name}_FILE at {path}: {exc.strerror}") from None
    return None


def read_project(path: str) -> ProjectFile:
    """The project file at ``path`` (``--config`` or ``STREAMSCORE_CONFIG``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProjectFileError(f"cannot read it: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise ProjectFileError("is not UTF-8 text", path=path) from None
    return parse_project(text, path)


def project_path(flag: str | None, env: Mapping[str, str]) -> str | None:
    """The project file to read: ``--config`` wins over ``STREAMSCORE_CONFIG``; none is
    read when neither names one."""
    return flag or env.get(CONFIG_ENV) or None


def settings_from_env(env: Mapping[str, str], project: ProjectFile | None = None) -> Env:
    """Settings from the environment over those of the project file (if any), over the
    defaults."""
    file = project or ProjectFile(path="")
    cache = env.get("STREAMSCORE_CACHE_DIR")
    cluster = ClusterSettings(cache_dir=Path(cache)) if cache else ClusterSettings()
    kafka = KafkaSettings(
        bootstrap_servers=env.get(
            "STREAMSCORE_BOOTSTRAP", file.bootstrap_servers or cluster.bootstrap_servers
        ),
        security_protocol=env.get("STREAMSCORE_SECURITY_PROTOCOL", "PLAINTEXT"),
        sasl_mechanism=env.get("STREAMSCORE_SASL_MECHANISM"),
        sasl_username=env.get("STREAMSCORE_SASL_USERNAME"),
        sasl_password=_secret(env, "STREAMSCORE_SASL_PASSWORD"),
    )
    try:
        timeout_s = float(env.get("STREAMSCORE_REGISTRY_TIMEOUT_S", "2"))
        retries = int(env.get("STREAMSCORE_REGISTRY_MAX_RETRIES", "1"))
    except ValueError:
        raise ConfigError(
            "STREAMSCORE_REGISTRY_TIMEOUT_S must be a number and "
            "STREAMSCORE_REGISTRY_MAX_RETRIES an integer"
        ) from None
    registry = RegistrySettings(
        url=env.get("STREAMSCORE_REGISTRY_URL", file.registry_url or cluster.registry_url),
        basic_auth_user=env.get("STREAMSCORE_REGISTRY_USER"),
        basic_auth_password=_secret(env, "STREAMSCORE_REGISTRY_PASSWORD"),
        timeout_s=timeout_s,
        max_retries=retries,
    )
    signing = signing_settings(env)
    try:
        max_bytes = int(env.get("STREAMSCORE_MODEL_MAX_BYTES", cluster.model_topic_max_bytes))
    except ValueError:
        raise ConfigError("STREAMSCORE_MODEL_MAX_BYTES must be an integer") from None
    defaults = TopicSettings()
    from_file = dict(file.topics)
    if file.events_topic is not None:
        from_file["events"] = file.events_topic
    given = {
        f.name: env.get(topic_env_var(f.name), from_file.get(f.name))
        for f in dataclasses.fields(TopicSettings)
    }
    if given["predictions_shadow"] is None and given["predictions"] is not None:
        given["predictions_shadow"] = given["predictions"] + ".shadow"  # follows predictions
    topics = TopicSettings(
        **{name: getattr(defaults, name) if v is None else v for name, v in given.items()}
    )
    return Env(kafka, registry, topics, signing, cluster, max_bytes, file.events)


def signing_settings(env: Mapping[str, str]) -> SigningSettings:
    try:
        scheme = SigningScheme(env.get("STREAMSCORE_SIGNING", "ed25519").strip().lower())
    except ValueError:
        raise ConfigError("STREAMSCORE_SIGNING must be ed25519 or hmac") from None
    hmac_scheme = scheme is SigningScheme.HMAC
    inline = env.get("STREAMSCORE_SIGNING_KEY")
    key_file = env.get("STREAMSCORE_SIGNING_KEY_FILE")
    return SigningSettings(
        scheme=scheme,
        key_file=Path(key_file) if key_file and not hmac_scheme else None,
        key_id=env.get("STREAMSCORE_SIGNING_KEY_ID") or None,
        keyring_files=tuple(
            Path(env[name])
            for name in ("STREAMSCORE_KEYRING_FILE", "STREAMSCORE_PUBLIC_KEY_FILE")
            if env.get(name)
        ),
        # with Ed25519 (the default) an inline secret is refused, saying what to do instead
        hmac_key=_secret(env, "STREAMSCORE_SIGNING_KEY")
        if hmac_scheme
        else (Secret(inline) if inline else None),
    )


# ------------------------------------------------------------------------- commands


def cmd_cluster(args: argparse.Namespace, env: Env) -> int:
    from .dev.cluster_cli import main_cluster
    from .dev.localcluster import LocalCluster

    return main_cluster(args.action, LocalCluster(env.cluster, env.topics))


def _registry(env: Env) -> Any:
    from .serde.wire import registry_client

    return registry_client(env.registry.client_config())


def _model_topic(env: Env) -> Any:
    from .models.publish import ModelTopic
    from .serde.message import AvroDeserializer, AvroSerializer
    from .serde.wire import WriterSchemaCache

    reg = _registry(env)
    schema = schemas.load("model_envelope")
    return ModelTopic(
        env.kafka,
        env.topics.models,
        encode=AvroSerializer(reg, f"{env.topics.models}-value", schema),
        decode=AvroDeserializer(WriterSchemaCache(reg), schema),
        max_message_bytes=env.model_max_bytes,
    )


def _bundle_bytes(args: argparse.Namespace, version: Callable[[], int]) -> bytes:
    if args.bundle:
        return Path(args.bundle).read_bytes()
    if args.estimator:
        from .models.build import bundle_from_files

        if not (args.spec and args.data):
            raise ConfigError("--estimator needs --spec (feature spec JSON) and --data (a sample)")
        return bundle_from_files(
            Path(args.estimator),
            Path(args.spec),
            Path(args.data),
            name=args.name,
            version=args.version or version(),
        ).to_bytes()
    from .train.training import demo_bundle

    return demo_bundle(args.demo, name=args.name, version=args.version or version()).to_bytes()


def cmd_model(args: argparse.Namespace, env: Env) -> int:
    if args.action == "build":
        if not args.out:
            raise ConfigError("model build needs --out FILE")
        data = _bundle_bytes(args, lambda: 1)
        Path(args.out).write_bytes(data)
        print(
            f"wrote {args.out} ({len(data)} bytes); publish it with "
            f"`streamscore model publish --bundle {args.out}`"
        )
        return 0
    if args.action == "keygen":
        if not args.out:
            raise ConfigError("model keygen needs --out DIR")
        pair = keygen(Path(args.out), args.key_id)
        print(
            f"key id {pair.key_id}\n"
            f"  private key (publishers only, mode 0600): {pair.private_file}\n"
            f"    STREAMSCORE_SIGNING_KEY_FILE={pair.private_file}\n"
            f"  public key (workers; append it to their keyring): {pair.public_file}\n"
            f"    STREAMSCORE_PUBLIC_KEY_FILE={pair.public_file}"
        )
        return 0
    topic = _model_topic(env)
    if args.action == "list":
        from .core.errors import ModelError
        from .models import envelope as env_mod

        verifier = tool_verifier(env.signing)
        rows = topic.read_all()
        print(
            f"{'key':<28} {'action':<9} {'ver':>4} {'target':>6} {'created (UTC)':<20} "
            f"{'signer':<10} {'check':<17} {'size':>9}  sha256"
        )
        for e in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created_at_ms / 1000))
            try:  # envelope signature and sha256, with the keys this shell has
                env_mod.verify(e, verifier)
                check = "ok"
            except ModelError as exc:
                check = exc.reason
            target = "-" if e.target_version is None else str(e.target_version)
            print(
                f"{e.key:<28} {e.action.value + ('*' if e.rollback else ''):<9} {e.version:>4} "
                f"{target:>6} {created:<20} {e.key_id or '-':<10} {check:<17} {e.size:>9}  "
                f"{e.sha256[:12]}"
            )
        return 0
    signer, verifier = publisher_keys(env.signing)
    role = Role(args.role)
    if args.action == "publish":
        data = (
            topic.archived(args.name, args.from_archive, verifier)
            if args.from_archive is not None
            else _bundle_bytes(args, lambda: int(topic.next_version(args.name)))
        )
        res = topic.publish(data, role, key=signer, publisher=args.publisher)
        print(f"published {res.key} v{res.version} ({res.size} bytes, sha256 {res.sha256[:12]})")
        return 0
    if args.action == "rollback":
        res = topic.rollback(args.name, role, key=signer, keyring=verifier)
        print(f"rolled back {res.key} to v{res.version}")
        return 0
    if args.action == "retire":
        v = topic.retire(
            args.name,
            role,
            key=signer,
            publisher=args.publisher,
            keyring=verifier,
        )
        print(f"retired {args.name}/{role.value} v{v}")
        return 0
    raise ConfigError(f"unknown model action {args.action}")


def _message_limits(env: Env, scoring: ScoringSettings) -> tuple[Any, int | None]:
    """The output topics' record limits (and the events topic's, for the consumer's
    fetch sizes): ``--max-message-bytes`` for all of them, or else each topic's
    ``max.message.bytes`` read from the cluster."""
    from .kafka.output_limits import OutputLimits

    t = env.topics
    outputs = (t.predictions, t.predictions_shadow, t.dlq, t.telemetry, t.late)
    if scoring.max_message_bytes is not None:
        n = scoring.max_message_bytes
        return OutputLimits(dict.fromkeys(outputs, n), default=n), n
    from confluent_kafka.admin import AdminClient

    from .kafka.admin import topic_limits

    read = topic_limits(AdminClient(env.kafka.client_config()), [*outputs, t.events])
    input_limit = read.pop(t.events, None)
    limits = OutputLimits(read)
    log.info("output record limits (max.message.bytes): %s", limits.as_dict())
    return limits, input_limit


def cmd_score(args: argparse.Namespace, env: Env) -> int:
    from confluent_kafka import Consumer, Producer
    from prometheus_client import CollectorRegistry

    from .core.records import Telemetry
    from .kafka.clients import score_consumer, score_producer
    from .kafka.delivery import AtLeastOnceSink, TransactionalSink
    from .metrics.series import Metrics, serve
    from .models.compat import reader_fields_from_schema
    from .models.store import ModelStore
    from .models.updates import ModelUpdater, UpdateReport
    from .models.watcher import ModelWatcher
    from .score.batch import BatchScorer
    from .score.worker import ScoreLoop
    from .serde.message import AvroDeserializer, AvroSerializer
    from .serde.wire import WriterSchemaCache

    verifier = worker_verifier(env.signing)  # public keys only: this process cannot sign
    scoring = ScoringSettings(
        group_id=args.group_id,
        worker_id=args.worker_id or f"{os.uname().nodename}-{os.getpid()}",
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        late_after_ms=args.late_after_ms,
        late_policy=LatePolicy(args.late_policy),
        exactly_once=args.exactly_once,
        eos_retry_s=args.eos_retry_s,
        canary_fraction=args.canary_fraction,
        drift=not args.no_drift,
        max_message_bytes=args.max_message_bytes,
    )
    metrics_settings = MetricsSettings(host=args.metrics_host, port=args.metrics_port)
    # before anything a supervisor can see (the /metrics port): a SIGTERM from then on
    # stops the worker cleanly, however far its start has got
    stop = threading.Event()
    install_stop_signals(stop)
    registry = CollectorRegistry()
    metrics = Metrics(registry, "score")
    server = (
        serve(registry, metrics_settings.host, metrics_settings.port)
        if metrics_settings.port >= 0
        else None
    )
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", metrics_settings.host, server.port)

    reg = _registry(env)
    cache = WriterSchemaCache(reg)
    reader_schema = (
        schemas.load("event")
        if not args.reader_schema
        else __import__("json").loads(Path(args.reader_schema).read_text())
    )
    decode = AvroDeserializer(cache, reader_schema)
    predictions = AvroSerializer(
        reg,
        f"{env.topics.predictions}-value",
        schemas.load("prediction"),
        also_subjects=[f"{env.topics.predictions_shadow}-value"],
    )
    telemetry = AvroSerializer(reg, f"{env.topics.telemetry}-value", schemas.load("telemetry"))
    envelope_decoder = AvroDeserializer(cache, schemas.load("model_envelope"))

    limits, input_limit = _message_limits(env, scoring)
    producer_config = score_producer(env.kafka, scoring, limits)

    def new_producer() -> Any:  # exactly-once: a hung producer is replaced by another
        return Producer(producer_config)

    producer = new_producer()
    tele_lock = threading.Lock()

    def report(r: UpdateReport) -> None:
        e = r.envelope
        t = Telemetry(
            worker_id=scoring.worker_id,
            kind=r.kind,
            time_ms=int(time.time() * 1000),
            model_versions={} if e is None else {e.role.value: e.version},
            detail=(f"record {r.record}" if e is None else f"{e.key} v{e.version}")
            + (f": {r.reason}: {r.detail}" if r.reason else ""),
        )
        if scoring.exactly_once:  # a transactional producer only sends inside a batch
            return
        try:
            value = telemetry(t.to_avro())
        except InfrastructureError as exc:  # the registry away: the log line has to do
            log.warning("model %s not reported on telemetry: %s", r.kind, exc)
            return
        with tele_lock:
            producer.produce(env.topics.telemetry, value, scoring.worker_id.encode())

    store = ModelStore()
    updater = ModelUpdater(
        store,
        keyring=verifier,
        reader_fields=reader_fields_from_schema(reader_schema),
        metrics=metrics,
        report=report,
        max_bytes=env.model_max_bytes,
        intra_op_threads=args.threads,
        model_name=args.model_name,
    )
    watcher = ModelWatcher(
        env.kafka,
        env.topics.models,
        envelope_decoder,
        updater,
        metrics,
        max_message_bytes=env.model_max_bytes,
    )
    sink: AtLeastOnceSink | TransactionalSink | None = None
    watcher.start()
    metrics.model_loaded.set(0)
    try:
        watcher.wait_caught_up(60)
        if watcher.error is not None:
            raise watcher.error
        waited = 0.0
        while not store.has_primary and not stop.is_set():
            if waited % 10 == 0:
                log.warning("waiting for a primary model on %s (none valid yet)", env.topics.models)
            store.wait_for_primary(1.0)
            waited += 1
        if stop.is_set():
            return 0
        consumer = Consumer(score_consumer(env.kafka, scoring, max_input_bytes=input_limit))
        sink = (
            TransactionalSink(
                producer,
                consumer,
                new_producer=new_producer,
                retry_s=scoring.eos_retry_s,
                stop=stop,
                metrics=metrics,
            )
            if scoring.exactly_once
            else AtLeastOnceSink(producer, consumer)
        )
        loop = ScoreLoop(
            consumer=consumer,
            sink=sink,
            scorer=BatchScorer(
                decode,  # a BatchDecoder: whole batches, column-wise
                predictions,  # a BatchEncoder: predictions encoded column-wise
                scoring,
                prediction_limit=lambda: limits.limit(env.topics.predictions),
                events=env.events,
                shadow_limit=lambda: limits.limit(env.topics.predictions_shadow),
            ),
            store=store,
            metrics=metrics,
            settings=scoring,
            topics=env.topics,
            encode_telemetry=telemetry,
            stop=stop,
            limits=limits,
        )
        log.info(
            "worker %s scoring %s (group %s, %s)",
            scoring.worker_id,
            env.topics.events,
            scoring.group_id,
            "exactly-once" if scoring.exactly_once else "at-least-once",
        )
        stats = loop.run()
        log.info(
            "worker %s stopped after %d batches, %d messages",
            scoring.worker_id,
            stats.batches,
            stats.consumed,
        )
        return 0
    finally:
        watcher.stop()
        # the sink's producer: never one it abandoned in a hung call
        (sink.producer if isinstance(sink, TransactionalSink) else producer).flush(10)
        if server is not None:
            server.stop()


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_demo(args: argparse.Namespace, env: Env) -> int:
    from .dev.demo import Demo, DemoSettings
    from .dev.report import print_summary

    # Ctrl-C and SIGTERM unwind the demo (its finally blocks stop every child), even when
    # SIGINT was inherited as ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    settings = DemoSettings(
        duration_s=args.duration,
        rate=args.rate,
        results_dir=Path(args.results_dir),
        keep_cluster=not args.down,
    )
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    external = "STREAMSCORE_BOOTSTRAP" in os.environ
    demo = Demo(settings, env.kafka, env.registry, None if external else env.cluster)
    try:
        summary = demo.run()
    finally:
        if args.down and not external:
            from .dev.localcluster import LocalCluster

            LocalCluster(env.cluster, env.topics).down()
    print_summary(summary)
    if not args.down and not external:
        print(
            "\nThe local cluster is still up. Look around, then stop it with "
            "`make cluster-down` (or `streamscore cluster down`)."
        )
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamscore", description=__doc__.split("\n")[0] if __doc__ else None
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cluster", help="local Kafka (KRaft) + Apicurio Registry on loopback")
    c.add_argument("action", choices=["install", "up", "down", "reset", "status"])
    c.set_defaults(func=cmd_cluster)

    s = sub.add_parser("score", help="run a score worker")
    s.add_argument("--group-id", default="streamscore-score")
    s.add_argument(
        "--worker-id", default=None, help="stable id (transactional id in --exactly-once)"
    )
    s.add_argument("--batch-size", type=int, default=500)
    s.add_argument("--batch-wait-ms", type=int, default=10)
    s.add_argument("--exactly-once", action="store_true")
    s.add_argument("--shadow-topic", default=None, help=SHADOW_TOPIC_HELP)
    s.add_argument(
        "--eos-retry-s",
        type=float,
        default=ScoringSettings.eos_retry_s,
        help="exactly-once: how long a transaction retries while the broker is away before "
        "it is aborted and the batch consumed again (default %(default)s)",
    )
    s.add_argument("--late-after-ms", type=int, default=None)
    s.add_argument("--late-policy", choices=[p.value for p in LatePolicy], default="score")
    s.add_argument("--canary-fraction", type=float, default=0.1)
    s.add_argument("--metrics-host", default="127.0.0.1")
    s.add_argument(
        "--metrics-port", type=int, default=9400, help="0 picks a free port; -1 disables"
    )
    s.add_argument(
        "--reader-schema",
        default=None,
        help="Avro reader schema file (default: schemas/event latest)",
    )
    s.add_argument("--model-name", default=None, help="only serve this model name")
    s.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    s.add_argument("--no-drift", action="store_true", help="turn off drift monitoring")
    s.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        help="largest output record, for every output topic (default: each output "
        "topic's max.message.bytes, read at start)",
    )
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("model", help="publish / list / roll back models on the model topic")
    m.add_argument("action", choices=["build", "publish", "list", "rollback", "retire", "keygen"])
    m.add_argument("--name", default="demo")
    m.add_argument("--role", choices=[r.value for r in Role], default="primary")
    src = m.add_mutually_exclusive_group()
    src.add_argument(
        "--bundle",
        help="a bundle file written by `streamscore train` or models.container.Bundle.to_bytes()",
    )
    src.add_argument(
        "--estimator",
        help="a fitted scikit-learn estimator/Pipeline saved with joblib (your own, local, "
        "trusted file); converted to ONNX here. Needs --spec and --data",
    )
    src.add_argument(
        "--demo",
        choices=["ab", "abc"],
        default="ab",
        help="train the demo regressor on synthetic data (ab: without c; abc: with c)",
    )
    src.add_argument(
        "--from-archive",
        type=int,
        metavar="VERSION",
        help="model publish: re-publish the archived, signed bundle of this version (e.g. "
        "records from before envelopes were signed, which workers now refuse)",
    )
    m.add_argument("--spec", help="feature spec JSON (FeatureSpec.to_dict format)")
    m.add_argument("--data", help="a sample of inputs: .npy or CSV with the spec's columns")
    m.add_argument(
        "--out", help="model build: where to write the bundle; model keygen: the directory"
    )
    m.add_argument(
        "--key-id", default=None, help="model keygen: the new key's id (default: its fingerprint)"
    )
    m.add_argument("--version", type=int, default=None)
    m.add_argument("--publisher", default=os.environ.get("USER", "cli"))
    m.set_defaults(func=cmd_model)

    d = sub.add_parser("demo", help="run the whole loop on the local cluster")
    d.add_argument("--duration", type=float, default=120.0, help="seconds of traffic")
    d.add_argument("--rate", type=float, default=400.0, help="events per second")
    d.add_argument("--results-dir", default="results")
    d.add_argument("--down", action="store_true", help="stop the local cluster at the end")
    d.set_defaults(func=cmd_demo)

    from .cli_feedback import add_commands

    add_commands(sub)
    _add_config_flag(p, sub)
    return p


def _add_config_flag(p: argparse.ArgumentParser, sub: Any) -> None:
    """``--config PATH`` before or after the subcommand (``streamscore --config x score``,
    ``streamscore score --config x``), on every subcommand at every depth."""
    text = f"the project file (streamscore.toml); default: ${CONFIG_ENV}, else none"
    p.add_argument("--config", metavar="PATH", default=None, help=text)
    todo = [sub]
    while todo:
        action = todo.pop()
        for child in dict.fromkeys(action.choices.values()):
            # SUPPRESS: a subcommand without the flag keeps the value given before it
            child.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=text)
            todo.extend(a for a in child._actions if isinstance(a, argparse._SubParsersAction))


def setup_logging(*, verbose: bool = False) -> None:
    """Log to stderr, with credentials in URLs redacted from every record whoever logs
    it (httpx logs each registry request's URL at INFO)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact.install()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        path = project_path(args.config, os.environ)
        env = settings_from_env(os.environ, read_project(path) if path else None)
        if getattr(args, "shadow_topic", None):
            topics = dataclasses.replace(env.topics, predictions_shadow=args.shadow_topic)
            env = dataclasses.replace(env, topics=topics)
        return int(args.func(args, env))
    except StreamscoreError as exc:
        print(f"streamscore: {type(exc).__name__}: {redact_urls(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
