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
  STREAMSCORE_REGISTRY_BASIC_AUTH_USER_INFO[_FILE]   "user:password" (basic.auth.user.info)
  STREAMSCORE_REGISTRY_SSL_CA_LOCATION, _SSL_CERTIFICATE_LOCATION, _SSL_KEY_LOCATION,
  STREAMSCORE_REGISTRY_SSL_KEY_PASSWORD[_FILE]      registry TLS (CA, client certificate)
  STREAMSCORE_REGISTRY_BEARER_TOKEN, or _BEARER_TOKEN_FILE (read again when it changes),
  STREAMSCORE_REGISTRY_BEARER_LOGICAL_CLUSTER, _BEARER_IDENTITY_POOL   bearer auth
  STREAMSCORE_REGISTRY_AUTO_REGISTER  true (default) / false: use the subjects' latest
                                   versions, never register (production registries)
  STREAMSCORE_REGISTRY_SUBJECT_STRATEGY[_EVENTS|_PREDICTIONS|_TELEMETRY|_MODELS|_FEEDBACK]
                                   topic (default), record, topic-record
  STREAMSCORE_KAFKA_<PROPERTY>     any librdkafka property for every Kafka client, dots as
                                   underscores: STREAMSCORE_KAFKA_SSL_CA_LOCATION is
                                   ssl.ca.location (over the project file's [kafka])
  STREAMSCORE_KAFKA_CONSUMER_<PROPERTY>, _PRODUCER_<PROPERTY>, _ADMIN_<PROPERTY>
                                   the same for one kind of client only
  STREAMSCORE_KAFKA_..._FILE       the property's value is read from this file (secrets:
                                   STREAMSCORE_KAFKA_SASL_PASSWORD_FILE=/run/secrets/pw)
  STREAMSCORE_SECURITY_PROTOCOL, STREAMSCORE_SASL_MECHANISM,
  STREAMSCORE_SASL_USERNAME, STREAMSCORE_SASL_PASSWORD(_FILE)  older names of
                                   STREAMSCORE_KAFKA_SECURITY_PROTOCOL etc. (still read)
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
  STREAMSCORE_GROUNDTRUTH          the ground-truth table: file:///path, a path, or
                                   s3://bucket/prefix (default ./groundtruth); on S3 the
                                   usual AWS_* variables (AWS_ACCESS_KEY_ID, AWS_REGION,
                                   AWS_ENDPOINT_URL, ...) are read by the object store
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
from types import MappingProxyType
from typing import Any

from .cli_project import project_path, read_project
from .core.config import (
    SHADOW_TOPIC_HELP,
    STRATEGY_TOPICS,
    ClusterSettings,
    Env,
    GroundTruthSettings,
    KafkaSettings,
    KeyFormat,
    LatePolicy,
    MetricsSettings,
    RegistrySettings,
    ScoringSettings,
    Secret,
    SigningScheme,
    SigningSettings,
    SubjectStrategy,
    TopicSettings,
    topic_env_var,
)
from .core.errors import ConfigError, InfrastructureError, StreamscoreError
from .core.project import CONFIG_ENV, ProjectFile
from .core.records import Role, Task
from .core.redact import redact_urls, setup_logging
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


def settings_from_env(env: Mapping[str, str], project: ProjectFile | None = None) -> Env:
    """Settings from the environment over those of the project file (if any), over the
    defaults."""
    file = project or ProjectFile(path="")
    cache = env.get("STREAMSCORE_CACHE_DIR")
    cluster = ClusterSettings(cache_dir=Path(cache)) if cache else ClusterSettings()
    kafka = kafka_settings(env, file, cluster.bootstrap_servers)
    registry = registry_settings(env, file, cluster.registry_url)
    signing = signing_settings(env)
    try:
        max_bytes = int(env.get("STREAMSCORE_MODEL_MAX_BYTES", cluster.model_topic_max_bytes))
    except ValueError:
        raise ConfigError("STREAMSCORE_MODEL_MAX_BYTES must be an integer") from None
    defaults = TopicSettings()
    from_file = dict(file.topics)
    if file.events_topic is not None:
        from_file["events"] = file.events_topic
    if file.labels is not None:  # the user's label topic is the feedback side's input
        from_file["feedback"] = file.labels.topic
    given = {
        f.name: env.get(topic_env_var(f.name), from_file.get(f.name))
        for f in dataclasses.fields(TopicSettings)
    }
    if given["predictions_shadow"] is None and given["predictions"] is not None:
        given["predictions_shadow"] = given["predictions"] + ".shadow"  # follows predictions
    topics = TopicSettings(
        **{name: getattr(defaults, name) if v is None else v for name, v in given.items()}
    )
    return Env(
        kafka,
        registry,
        topics,
        signing,
        cluster,
        max_bytes,
        file.events,
        features=file.features,
        labels=file.labels,
        train=file.train,
        groundtruth=groundtruth_env(env, file),
    )


def _file_secret(path: str, what: str) -> Secret:
    try:
        return Secret(Path(path).read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {what} at {path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}"
        ) from None


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    text = env.get(name)
    if text is None or not text.strip():
        return None
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {text!r}")


def _strategy(env: Mapping[str, str], name: str) -> SubjectStrategy | None:
    text = env.get(name)
    if not text:
        return None
    try:
        return SubjectStrategy(text.strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in SubjectStrategy)
        raise ConfigError(f"{name} must be one of {choices}, not {text!r}") from None


def registry_settings(
    env: Mapping[str, str], file: ProjectFile, default_url: str
) -> RegistrySettings:
    """``[registry]`` of the project file under the ``STREAMSCORE_REGISTRY_*``
    environment (the ``_FILE`` variants read a secret from a file)."""
    p = "STREAMSCORE_REGISTRY_"
    f = file.registry
    try:
        timeout_s = float(env.get(p + "TIMEOUT_S", f.get("timeout_s", 2.0)))
        retries = int(env.get(p + "MAX_RETRIES", f.get("max_retries", 1)))
    except ValueError:
        raise ConfigError(f"{p}TIMEOUT_S must be a number and {p}MAX_RETRIES an integer") from None
    user = env.get(p + "USER", f.get("basic_auth_user"))
    password = _secret(env, p + "PASSWORD")
    if password is None and f.get("basic_auth_password_file"):
        password = _file_secret(
            f["basic_auth_password_file"], "[registry] basic_auth_password_file"
        )
    user_info = _secret(env, p + "BASIC_AUTH_USER_INFO")
    if user_info is None and f.get("basic_auth_user_info_file"):
        user_info = _file_secret(
            f["basic_auth_user_info_file"], "[registry] basic_auth_user_info_file"
        )
    if user_info is not None:
        if user is not None or password is not None:
            raise ConfigError(
                f"registry basic auth is given twice: {p}BASIC_AUTH_USER_INFO and a user/password"
            )
        name, sep, pw = user_info.reveal().partition(":")
        if not sep or not name:
            raise ConfigError(f"{p}BASIC_AUTH_USER_INFO must be user:password")
        user, password = name, Secret(pw)
    key_password = _secret(env, p + "SSL_KEY_PASSWORD")
    if key_password is None and f.get("key_password_file"):
        key_password = _file_secret(f["key_password_file"], "[registry] ssl_key_password_file")
    token_file = env.get(p + "BEARER_TOKEN_FILE") or f.get("bearer_token_file")
    token = Secret(env[p + "BEARER_TOKEN"]) if env.get(p + "BEARER_TOKEN") else None
    auto = _flag(env, p + "AUTO_REGISTER")
    strategies = dict(f.get("subject_strategies", {}))
    for topic in STRATEGY_TOPICS:
        one = _strategy(env, f"{p}SUBJECT_STRATEGY_{topic.upper()}")
        if one is not None:
            strategies[topic] = one
    return RegistrySettings(
        url=env.get(p + "URL", file.registry_url or default_url),
        basic_auth_user=user,
        basic_auth_password=password,
        timeout_s=timeout_s,
        max_retries=retries,
        ca_location=env.get(p + "SSL_CA_LOCATION", f.get("ca_location")),
        certificate_location=env.get(p + "SSL_CERTIFICATE_LOCATION", f.get("certificate_location")),
        key_location=env.get(p + "SSL_KEY_LOCATION", f.get("key_location")),
        key_password=key_password,
        bearer_token=token,
        bearer_token_file=Path(token_file) if token_file and token is None else None,
        bearer_logical_cluster=env.get(
            p + "BEARER_LOGICAL_CLUSTER", f.get("bearer_logical_cluster")
        ),
        bearer_identity_pool=env.get(p + "BEARER_IDENTITY_POOL", f.get("bearer_identity_pool")),
        auto_register=auto if auto is not None else f.get("auto_register", True),
        subject_strategy=_strategy(env, p + "SUBJECT_STRATEGY")
        or f.get("subject_strategy", SubjectStrategy.TOPIC),
        subject_strategies=MappingProxyType(strategies),
    )


def groundtruth_env(env: Mapping[str, str], file: ProjectFile) -> GroundTruthSettings:
    """``[groundtruth]`` of the project file, its URI overridden by
    ``STREAMSCORE_GROUNDTRUTH`` (the object store also reads the ``AWS_*`` variables)."""
    from dataclasses import replace

    gt = file.groundtruth or GroundTruthSettings()
    uri = env.get("STREAMSCORE_GROUNDTRUTH")
    return replace(gt, uri=uri) if uri else gt


#: ``STREAMSCORE_KAFKA_<NAME>``: a librdkafka property for every client (``_`` for ``.``:
#: ``STREAMSCORE_KAFKA_SSL_CA_LOCATION`` is ``ssl.ca.location``);
#: ``STREAMSCORE_KAFKA_CONSUMER_<NAME>`` (``_PRODUCER_``, ``_ADMIN_``): for one kind of
#: client; ``<...>_FILE``: the value is the content of that file (secrets)
KAFKA_ENV_PREFIX = "STREAMSCORE_KAFKA_"


def _read_value_file(path: str, origin: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read {origin} at {path}: {why}") from None


def kafka_properties_from_env(
    env: Mapping[str, str],
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """``STREAMSCORE_KAFKA_*``: (scope ``*``/client kind -> property -> value, origins)."""
    from .core.project import KAFKA_SCOPES

    props: dict[str, dict[str, str]] = {}
    origins: dict[str, str] = {}
    for var in sorted(env):
        if not var.startswith(KAFKA_ENV_PREFIX) or not env[var]:
            continue
        rest, scope = var[len(KAFKA_ENV_PREFIX) :], "*"
        for kind in KAFKA_SCOPES:
            if rest.startswith(f"{kind.upper()}_"):
                rest, scope = rest[len(kind) + 1 :], kind
        from_file = rest.endswith("_FILE")
        if from_file:
            rest = rest[: -len("_FILE")]
        name = rest.lower().replace("_", ".")
        if not name:
            raise ConfigError(f"{var} names no Kafka property")
        if name in props.get(scope, {}):
            raise ConfigError(f"{var} sets {name!r}, which {origins[f'{scope}:{name}']} sets too")
        value = _read_value_file(env[var], var) if from_file else env[var]
        props.setdefault(scope, {})[name] = value
        origins[f"{scope}:{name}"] = var
    return props, origins


def kafka_settings(
    env: Mapping[str, str], file: ProjectFile, default_bootstrap: str
) -> KafkaSettings:
    """Kafka settings: for each scope (every client, then consumers / producers / admin
    clients apart), the project file's ``[kafka]`` tables under the ``STREAMSCORE_KAFKA_*``
    environment; a client kind's own properties win over the common ones. The older
    ``STREAMSCORE_BOOTSTRAP``, ``STREAMSCORE_SECURITY_PROTOCOL`` and
    ``STREAMSCORE_SASL_*`` still work (``STREAMSCORE_KAFKA_*`` wins over them)."""
    from .core.project import FileRef

    merged: dict[str, dict[str, str]] = {}
    origins: dict[str, str] = {}
    for scope, props in file.kafka.items():
        table = "[kafka]" if scope == "*" else f"[kafka.{scope}]"
        for name, value in props.items():
            where = f"{file.path} {table} {name}"
            merged.setdefault(scope, {})[name] = (
                _read_value_file(value.path, where) if isinstance(value, FileRef) else value
            )
            origins[f"{scope}:{name}"] = where
    # the older names, as if spelt STREAMSCORE_KAFKA_* (which wins over them)
    translated = dict(env)
    for old, prop in LEGACY_KAFKA_ENV.items():
        for suffix in ("", "_FILE"):
            if env.get(old + suffix) and not env.get(f"{KAFKA_ENV_PREFIX}{prop}{suffix}"):
                translated[f"{KAFKA_ENV_PREFIX}{prop}{suffix}"] = env[old + suffix]
    from_env, env_origins = kafka_properties_from_env(translated)
    for key, var in env_origins.items():
        legacy = [
            o for o, prop in LEGACY_KAFKA_ENV.items() if var.startswith(KAFKA_ENV_PREFIX + prop)
        ]
        if legacy and var not in env:
            env_origins[key] = legacy[0] + ("_FILE" if var.endswith("_FILE") else "")
    for scope, props in from_env.items():
        merged.setdefault(scope, {}).update(props)
    origins.update(env_origins)
    common = merged.get("*", {})
    return KafkaSettings(
        bootstrap_servers=common.pop("bootstrap.servers", default_bootstrap),
        security_protocol=common.pop("security.protocol", "PLAINTEXT"),
        extra=common,
        consumer=merged.get("consumer", {}),
        producer=merged.get("producer", {}),
        admin=merged.get("admin", {}),
        origins=origins,
    )


#: environment variables older than ``STREAMSCORE_KAFKA_*``: the property each sets
LEGACY_KAFKA_ENV = {
    "STREAMSCORE_BOOTSTRAP": "BOOTSTRAP_SERVERS",
    "STREAMSCORE_SECURITY_PROTOCOL": "SECURITY_PROTOCOL",
    "STREAMSCORE_SASL_MECHANISM": "SASL_MECHANISM",
    "STREAMSCORE_SASL_USERNAME": "SASL_USERNAME",
    "STREAMSCORE_SASL_PASSWORD": "SASL_PASSWORD",
}


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

    settings = env.cluster
    if getattr(args, "secure", False):
        settings = secure_cluster_settings(settings)
    return main_cluster(args.action, LocalCluster(settings, env.topics))


def secure_cluster_settings(plain: ClusterSettings) -> ClusterSettings:
    """``cluster ... --secure``: the secured profile, beside the plain cluster (its own
    run dir and ports, the same downloads)."""
    from dataclasses import replace

    return replace(
        plain,
        secure=True,
        run_dir=Path(plain.cache_dir) / "run-secure",
        kafka_port=plain.kafka_port + 100,
        controller_port=plain.controller_port + 100,
        registry_port=plain.registry_port + 100,
        mtls_port=plain.kafka_port + 102,
    )


def _registry(env: Env) -> Any:
    from .serde.wire import registry_client

    return registry_client(env.registry.client_config())


def _model_topic(env: Env) -> Any:
    from .models.publish import ModelTopic
    from .serde.message import AvroDeserializer, topic_serializer
    from .serde.wire import WriterSchemaCache

    reg = _registry(env)
    schema = schemas.load("model_envelope")
    return ModelTopic(
        env.kafka,
        env.topics.models,
        encode=topic_serializer(reg, env.registry, "models", env.topics.models, schema),
        decode=AvroDeserializer(WriterSchemaCache(reg), schema),
        max_message_bytes=env.model_max_bytes,
    )


def _features(args: argparse.Namespace, project: Any) -> Any:
    """The feature spec: ``--spec FILE``, else the project file's ``[[features]]``."""
    from .models.build import load_spec

    if args.spec:
        return load_spec(Path(args.spec))
    features = getattr(project, "features", None)
    if features is None:
        raise ConfigError("needs --spec FILE, or [[features]] in the project file (--config)")
    return features


def _model_spec(args: argparse.Namespace, project: Any) -> Any:
    """The feature spec (and, for ONNX/MLflow, the model's description): ``--spec FILE``,
    else the project file's ``[[features]]`` with ``[labels] task``, ``--task``,
    ``--classes``, ``--output`` and ``--logits``."""
    from .models.build import load_model_spec
    from .models.onnx_import import OnnxModelSpec, OutputKind

    if args.spec:
        return load_model_spec(Path(args.spec))
    features = _features(args, project)
    labels = getattr(project, "labels", None)
    task = Task(args.task) if args.task else labels.task.task if labels else Task.REGRESSION
    return OnnxModelSpec(
        features=features,
        task=task,
        classes=tuple(c for c in (args.classes or "").split(",") if c),
        output=args.output,
        output_kind=OutputKind.LOGITS if args.logits else None,
    )


def _bundle_bytes(args: argparse.Namespace, env: Env, version: Callable[[], int]) -> bytes:
    if args.bundle:
        return Path(args.bundle).read_bytes()
    project = env  # the project file's [[features]], [labels] and [train]
    from .train.recipe import LABEL_COLUMN, recipe_from

    recipe = recipe_from(args.estimator, args.params, args.fit, env.train)
    sources = args.estimator_file or args.onnx or args.mlflow or recipe
    if not sources:
        raise ConfigError(
            "say which model: --bundle FILE, --estimator/--fit (or [train] in the project "
            "file), --estimator-file, --onnx or --mlflow"
        )
    from .models import build

    if not args.data:
        raise ConfigError("needs --data: a sample of model inputs (.npy, or CSV by column name)")
    data = Path(args.data)
    if args.estimator_file:
        if not args.spec:
            raise ConfigError("--estimator-file needs --spec (feature spec JSON) and --data")
        return build.bundle_from_files(
            Path(args.estimator_file),
            Path(args.spec),
            data,
            name=args.name,
            version=args.version or version(),
        ).to_bytes()
    if args.onnx:
        bundle = build.bundle_from_onnx_file(
            Path(args.onnx),
            _model_spec(args, project),
            data,
            name=args.name,
            version=args.version or version(),
        )
    elif args.mlflow:
        # the sklearn flavour needs only the features; the onnx flavour its description too
        described = args.spec or args.classes or args.task or args.output or args.logits
        bundle = build.bundle_from_mlflow_uri(
            args.mlflow,
            _model_spec(args, project) if described else _features(args, project),
            data,
            name=args.name,
            version=args.version or version(),
            tracking_uri=args.mlflow_tracking_uri,
        )
    else:
        assert recipe is not None
        labels = getattr(project, "labels", None)
        task = Task(args.task) if args.task else labels.task.task if labels else None
        from .train.recipe import bundle_from_recipe

        bundle = bundle_from_recipe(
            recipe,
            _features(args, project),
            data,
            label=args.label or (labels.label_field if labels else LABEL_COLUMN),
            task=task,
            name=args.name,
            version=args.version or version(),
        )
    return bundle.to_bytes()


def training_data_of(artifact: bytes) -> str:
    """``model list``'s last column: the ground-truth table and version a bundle was
    trained from (``-`` for a bundle not trained from it, or no bundle)."""
    from .models.container import decode_bundle

    if not artifact:
        return "-"
    try:
        src = decode_bundle(artifact).meta.training_source
    except StreamscoreError:
        return "-"
    if src is None:
        return "-"
    return f"{src.uri}@v{src.table_version} ({src.rows} rows)"


def cmd_model(args: argparse.Namespace, env: Env) -> int:
    if args.name is None and env.train is not None:
        args.name = env.train.model_name
    if args.name is None and args.action not in ("keygen", "list"):
        raise ConfigError("no model name: --name NAME, or [train] model_name in the project file")
    if args.action == "build":
        if not args.out:
            raise ConfigError("model build needs --out FILE")
        data = _bundle_bytes(args, env, lambda: 1)
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
            f"{'signer':<10} {'check':<17} {'size':>9}  {'sha256':<12}  trained on"
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
                f"{e.sha256[:12]:<12}  {training_data_of(e.artifact)}"
            )
        return 0
    signer, verifier = publisher_keys(env.signing)
    role = Role(args.role)
    from .kafka.access import preflight

    preflight(env.kafka, None, "", read=[env.topics.models], write=[env.topics.models])
    if args.action == "publish":
        data = (
            topic.archived(args.name, args.from_archive, verifier)
            if args.from_archive is not None
            else _bundle_bytes(args, env, lambda: int(topic.next_version(args.name)))
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
    from .kafka.clients import admin_config

    read = topic_limits(AdminClient(admin_config(env.kafka)), [*outputs, t.events])
    input_limit = read.pop(t.events, None)
    limits = OutputLimits(read)
    log.info("output record limits (max.message.bytes): %s", limits.as_dict())
    return limits, input_limit


def events_reader_schema(path: str | None, env: Env) -> dict[str, Any] | None:
    """The scorer's reader schema: the file ``path`` (``--reader-schema``), else the
    latest version of the project's ``[events] subject``, else None: each event is read
    with the schema it was written with (so a worker can start before any schema is
    registered, and knows no field names but the project file's)."""
    from .cli_project import avsc_record, latest_record

    if path:
        schema, origin = avsc_record(path)
    elif env.events.subject:
        schema, origin = latest_record(env, env.events.subject)
    else:
        log.info("events read with the schema each was written with (no reader schema)")
        return None
    log.info("events read as %s", origin)
    return schema


def cmd_score(args: argparse.Namespace, env: Env) -> int:
    from confluent_kafka import Consumer, Producer
    from prometheus_client import CollectorRegistry

    from .core.records import Telemetry
    from .kafka.access import preflight
    from .kafka.clients import score_consumer, score_producer
    from .kafka.delivery import AtLeastOnceSink, TransactionalSink
    from .metrics.series import Metrics, serve
    from .models.compat import reader_fields_from_schema
    from .models.store import ModelStore
    from .models.updates import ModelUpdater, UpdateReport
    from .models.watcher import ModelWatcher
    from .score.batch import BatchScorer
    from .score.worker import ScoreLoop
    from .serde.keys import AvroKeyDecoder
    from .serde.message import (
        AvroDeserializer,
        check_output_subjects,
        topic_serializer,
        topic_serializers,
    )
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
    t = env.topics
    outputs = ["predictions", "predictions_shadow", "telemetry", "dlq"]
    if scoring.late_policy is LatePolicy.ROUTE:
        outputs.append("late")
    # credentials, certificates, ACLs and the output topics first: one clear line and
    # exit 1 if refused or missing, before anything is consumed
    preflight(
        env.kafka,
        reg,
        redact_urls(env.registry.url),
        read=[t.events, t.models],
        write=[getattr(t, name) for name in outputs],
        group=scoring.group_id,
        must_exist=t.where_set(outputs),
    )
    cache = WriterSchemaCache(reg)
    reader_schema = events_reader_schema(args.reader_schema, env)
    decode = AvroDeserializer(cache, reader_schema)
    # the shadow predictions under their own topic's subject (and its schema id)
    predictions, shadow = topic_serializers(
        reg,
        env.registry,
        "predictions",
        [env.topics.predictions, env.topics.predictions_shadow],
        schemas.load("prediction"),
    )
    telemetry = topic_serializer(
        reg, env.registry, "telemetry", env.topics.telemetry, schemas.load("telemetry")
    )
    check_output_subjects(predictions, shadow, telemetry)
    envelope_decoder = AvroDeserializer(cache, schemas.load("model_envelope"))

    limits, input_limit = _message_limits(env, scoring)
    producer_config = score_producer(env.kafka, scoring, limits)

    def new_producer() -> Any:  # exactly-once: a hung producer is replaced by another
        return Producer(producer_config)

    producer = new_producer()
    tele_lock = threading.Lock()

    def report(r: UpdateReport) -> None:
        compare_spec(r)
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

    def compare_spec(r: UpdateReport) -> None:
        """A model applied whose feature spec is not the project file's: say what differs."""
        e = r.envelope
        if r.kind != "model_applied" or e is None or env.features is None:
            return
        model = store.snapshot().get(e.role)
        if model is None:
            return
        from .features.check import spec_differences

        diffs = spec_differences(env.features, model.meta.feature_spec)
        if diffs:
            log.warning(
                "model %s v%d (%s) does not have the project file's [[features]]: %s",
                e.key,
                e.version,
                e.role.value,
                "; ".join(diffs),
            )

    store = ModelStore()
    updater = ModelUpdater(
        store,
        keyring=verifier,
        # each event as written: no reader schema to check a model against at load (an
        # event without a feature's field is then a missing value, per the feature)
        reader_fields=None if reader_schema is None else reader_fields_from_schema(reader_schema),
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
                keys=AvroKeyDecoder(cache) if env.events.key_format is KeyFormat.AVRO else None,
                shadow_encoder=shadow,
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
    external = bool(
        {"STREAMSCORE_BOOTSTRAP", f"{KAFKA_ENV_PREFIX}BOOTSTRAP_SERVERS"} & set(os.environ)
    )
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
    c.add_argument(
        "--secure",
        action="store_true",
        help="the secured profile (SASL_SSL + SCRAM users, a mutual-TLS listener, ACLs, "
        "registry over TLS) on ports 19192 (19194: mutual TLS) and 18181, beside the "
        "plain cluster",
    )
    c.set_defaults(func=cmd_cluster)

    s = sub.add_parser("score", help="run a score worker")
    s.add_argument("--group-id", default="streamscore-score")
    s.add_argument(
        "--worker-id", default=None, help="stable id (transactional id in --exactly-once)"
    )
    s.add_argument(
        "--batch-size",
        type=int,
        default=ScoringSettings.batch_size,
        help=f"most messages per micro-batch (default {ScoringSettings.batch_size})",
    )
    s.add_argument("--batch-wait-ms", type=int, default=ScoringSettings.batch_wait_ms)
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
        help="Avro reader schema file (default: the latest version of [events] subject if "
        "the project file names one, else each event as it was written)",
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
    m.add_argument("--name", default=None, help="the model's name (default: [train] model_name)")
    m.add_argument("--role", choices=[r.value for r in Role], default="primary")
    src = m.add_mutually_exclusive_group()
    src.add_argument(
        "--bundle",
        help="a bundle file written by `streamscore train` or models.container.Bundle.to_bytes()",
    )
    src.add_argument(
        "--estimator",
        metavar="IMPORT_PATH",
        help="train this estimator class (e.g. sklearn.ensemble.HistGradientBoostingClassifier) "
        "on --data (a CSV with the label column), then convert it; default: the project "
        "file's [train]",
    )
    src.add_argument(
        "--fit",
        metavar="MODULE:FUNCTION",
        help="train with your own function (training frame -> fitted estimator or Pipeline)",
    )
    src.add_argument(
        "--estimator-file",
        help="a fitted scikit-learn/XGBoost/LightGBM estimator or Pipeline saved with joblib "
        "(your own, local, trusted file); converted to ONNX here. Needs --spec and --data",
    )
    src.add_argument(
        "--onnx",
        metavar="FILE",
        help="a ready ONNX model (e.g. from torch.onnx.export: one float input [N, k]) with "
        "--spec or the project file's [[features]]",
    )
    src.add_argument(
        "--mlflow",
        metavar="URI",
        help="an MLflow model: models:/name@alias, models:/name/3, runs:/ID/model or a local "
        "model directory (sklearn or onnx flavour; extra [mlflow])",
    )
    src.add_argument(
        "--from-archive",
        type=int,
        metavar="VERSION",
        help="model publish: re-publish the archived, signed bundle of this version (e.g. "
        "records from before envelopes were signed, which workers now refuse)",
    )
    m.add_argument("--params", metavar="JSON", help="--estimator's parameters, a JSON object")
    m.add_argument(
        "--label", help="the label column of --data (default: [labels] label_field, else label)"
    )
    m.add_argument(
        "--task",
        choices=[t.value for t in Task],
        default=None,
        help="default: [labels] task, else the estimator's kind",
    )
    m.add_argument("--classes", help="--onnx/--mlflow: the classes, comma-separated, in order")
    m.add_argument("--output", help="--onnx/--mlflow: the graph output to read")
    m.add_argument("--logits", action="store_true", help="--onnx/--mlflow: the output gives logits")
    m.add_argument(
        "--mlflow-tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="where --mlflow URIs resolve (default: $MLFLOW_TRACKING_URI)",
    )
    m.add_argument(
        "--spec",
        help="feature spec JSON (FeatureSpec.to_dict format; for --onnx/--mlflow also task, "
        "classes, output, output_kind); default: the project file's [[features]]",
    )
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
    from .cli_project import add_commands as add_project_commands

    add_commands(sub)
    add_project_commands(sub)
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


def _bad_client_setting(exc: Exception) -> str | None:
    """librdkafka's refusal of a property (an unknown name, a bad value) as one line."""
    from confluent_kafka import KafkaError, KafkaException

    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(err, KafkaError) or err.code() != KafkaError._INVALID_ARG:
        return None
    return (
        f"a Kafka client setting was refused: {redact_urls(err.str())}; check the project "
        "file's [kafka] tables and the STREAMSCORE_KAFKA_* environment"
    )


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
    except Exception as exc:
        bad = _bad_client_setting(exc)
        if bad is None:
            raise
        print(f"streamscore: ConfigError: {bad}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
