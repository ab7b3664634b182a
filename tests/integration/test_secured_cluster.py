"""The secured profile (issue 14, points 1, 4 and 6) on a real broker and registry:
SASL_SSL with SCRAM-SHA-512 users, a private CA, the StandardAuthorizer with ACLs per
process, the registry over TLS, the KRaft controller listener over mutual TLS
(``secure_cluster``: one start per session).

Each process runs under its own principal with only its ACLs; each way of being refused
(a wrong password, an unknown CA, a missing ACL) ends the process with one clear line
naming the cause and the setting to check, exit 1, no traceback, and, for a missing
write ACL, no input offset committed and nothing lost once the ACL is granted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streamscore.dev.cluster_secure import (
    Grant,
    SecureFiles,
    acl_bindings,
    apply_acls,
    grant_process,
    make_ca,
    mtls_client_env,
    pem_cert,
)
from streamscore.dev.localcluster import LocalCluster
from streamscore.dev.synthetic import demo_bundle
from tests.processes import launch

from .feedback_stack import produce_labels, wait_rows
from .stack import Stack, WorkerProcess, compile_java, secure_env, worker_launcher


@pytest.fixture
def start_worker(secure_stack: Stack) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_launcher(secure_stack) as start:
        yield start


def _cli(stack: Stack, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", *args],
        env=stack.env(publisher=True, **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _exit_of(w: WorkerProcess, timeout: float = 90.0) -> int:
    try:
        return int(w.proc.wait(timeout))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{w.worker_id} still running:\n{w.log()}") from None


def _assert_one_clear_line(log: str, *needles: str) -> None:
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.startswith("streamscore: AccessError")]
    assert len(lines) == 1, log
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _publish_v1(stack: Stack, cluster: LocalCluster) -> None:
    bundle = stack.tmp / "v1.bundle"
    bundle.write_bytes(demo_bundle("ab", version=1).to_bytes())
    res = _cli(
        stack,
        secure_env(cluster, "publisher"),
        "model",
        "publish",
        "--name",
        "demo",
        "--bundle",
        str(bundle),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "published demo/primary v1" in res.stdout


def test_publish_score_and_feedback_over_sasl_ssl_each_under_its_own_principal(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    stack = secure_stack
    _publish_v1(stack, secure_cluster)  # as `publisher`
    w = start_worker("secure-w1", env=secure_env(secure_cluster, "score"))
    ids = stack.produce_events(2000)  # as `admin`
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 2000)
    got = stack.primary_ids(preds)
    assert set(got) == set(ids)
    assert w.sample("streamscore_predictions_total", {"role": "primary"}) == 2000
    # the score principal holds its ACLs and no more: it may not write models
    files = secure_cluster.secure_files
    assert files is not None
    errors: list[KafkaError] = []
    p = Producer(
        {
            **secure_cluster.client_config("score"),
            "log_level": 0,
            "error_cb": errors.append,
        }
    )
    p.produce(
        stack.topics.models,
        b"forged",
        b"demo/primary",
        on_delivery=lambda err, _m: errors.append(err),
    )
    p.flush(30)
    assert [e.code() for e in errors if e is not None][-1:] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    ]
    assert w.terminate() == 0

    # the feedback worker, as `feedback`, joins labels with those predictions
    group = f"{stack.group_id}-feedback"
    grant_process(
        AdminClient(secure_cluster.client_config("admin")), "feedback", stack.topics, group
    )
    labelled = dict.fromkeys(ids[:300], 1.0)
    produce_labels(stack, labelled)  # as `admin`
    store = tmp_path / "store"
    fb = launch(
        "feedback",
        "--store-dir",
        str(store),
        "--state-dir",
        str(tmp_path / "state"),
        "--checkpoint-s",
        "0.5",
        worker_id="secure-fb",
        group_id=group,
        env=stack.env(**secure_env(secure_cluster, "feedback")),
        log_path=tmp_path / "feedback.log",
    )
    try:
        rows = wait_rows(store, len(labelled), proc=fb)
        assert {r["event_id"] for r in rows} == set(labelled)
        assert fb.terminate() == 0
    finally:
        fb.close()


def test_a_wrong_password_exits_naming_the_password_setting(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    env = secure_env(secure_cluster, "score", STREAMSCORE_KAFKA_SASL_PASSWORD_FILE=str(wrong))
    w = start_worker("wrong-pw", env=env, wait=False)
    assert _exit_of(w) == 1
    log = w.log(20_000)
    _assert_one_clear_line(
        log,
        "Kafka refused the credentials of user 'score'",
        "sasl.password (from STREAMSCORE_KAFKA_SASL_PASSWORD_FILE)",
    )
    assert "not-the-password" not in log


def test_an_unknown_ca_exits_naming_the_ca_setting(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(pem_cert(make_ca("not the cluster's CA")[1]))
    # Kafka with a CA that did not sign the broker's certificate
    env = secure_env(secure_cluster, "score", STREAMSCORE_KAFKA_SSL_CA_LOCATION=str(other))
    w = start_worker("unknown-ca", env=env, wait=False)
    assert _exit_of(w) == 1
    _assert_one_clear_line(
        w.log(20_000),
        "the broker's TLS certificate is not trusted",
        "ssl.ca.location (from STREAMSCORE_KAFKA_SSL_CA_LOCATION)",
    )
    # the registry with a CA that did not sign its certificate
    env = secure_env(secure_cluster, "score", STREAMSCORE_REGISTRY_SSL_CA_LOCATION=str(other))
    w = start_worker("unknown-registry-ca", env=env, wait=False)
    assert _exit_of(w) == 1
    _assert_one_clear_line(
        w.log(20_000),
        "the schema registry's TLS certificate",
        "is not trusted",
        "STREAMSCORE_REGISTRY_SSL_CA_LOCATION",
    )


def _committed(cluster: LocalCluster, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = AdminClient(cluster.client_config("admin"))
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = admin.list_consumer_group_offsets([req])[group].result(30)
    return [tp.offset for tp in res.topic_partitions]


def test_a_missing_write_acl_exits_commits_nothing_and_loses_nothing_once_granted(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    stack = secure_stack
    admin = AdminClient(secure_cluster.client_config("admin"))
    write_predictions = acl_bindings("score", [Grant("topic", stack.topics.predictions, "write")])
    apply_acls(admin, write_predictions, delete=True)
    _publish_v1(stack, secure_cluster)
    ids = stack.produce_events(500)

    w = start_worker("no-write-acl", env=secure_env(secure_cluster, "score"), wait=False)
    assert _exit_of(w) == 1
    _assert_one_clear_line(
        w.log(20_000),
        "Kafka does not allow user 'score' (SCRAM-SHA-512) to write topic "
        f"'{stack.topics.predictions}'",
        "grant the ACL (WRITE on topic",
    )
    # no input offset committed (a negative offset: none stored for the group)
    assert all(o < 0 for o in _committed(secure_cluster, stack.group_id, stack.topics.events, 4))
    assert stack.read_to_end(stack.topics.predictions) == []

    apply_acls(admin, write_predictions)
    w2 = start_worker("acl-granted", env=secure_env(secure_cluster, "score"))
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 500)
    assert set(stack.primary_ids(preds)) == set(ids)  # nothing lost
    assert w2.terminate() == 0


def test_score_over_mutual_tls_under_the_certificate_principal(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    stack = secure_stack
    files = secure_cluster.secure_files
    assert files is not None
    # the score worker's ACLs for its certificate's principal, User:CN=score
    grant_process(
        AdminClient(secure_cluster.client_config("admin")),
        "score",
        stack.topics,
        stack.group_id,
        user="CN=score",
    )
    _publish_v1(stack, secure_cluster)
    env = mtls_client_env(secure_cluster.settings, files, "score")
    w = start_worker("mtls-w1", env=env)
    ids = stack.produce_events(500)
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 500)
    assert set(stack.primary_ids(preds)) == set(ids)
    assert w.terminate() == 0
    # another certificate (CN=feedback) holds no score ACLs: refused, one clear line
    env = mtls_client_env(secure_cluster.settings, files, "feedback")
    other = start_worker("mtls-wrong-principal", env=env, wait=False)
    assert _exit_of(other) == 1
    _assert_one_clear_line(
        other.log(20_000),
        "Kafka does not allow the principal of this client's certificate to read",
    )


def test_a_write_acl_revoked_while_scoring_stops_the_worker_without_losing_input(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    stack = secure_stack
    admin = AdminClient(secure_cluster.client_config("admin"))
    write_predictions = acl_bindings("score", [Grant("topic", stack.topics.predictions, "write")])
    _publish_v1(stack, secure_cluster)
    w = start_worker("revoked", env=secure_env(secure_cluster, "score"))
    first = stack.produce_events(200, seed=1)
    stack.read(stack.topics.predictions, until=lambda got: len(got) >= 200)
    apply_acls(admin, write_predictions, delete=True)
    later = stack.produce_events(300, seed=2)
    assert _exit_of(w) == 1
    _assert_one_clear_line(
        w.log(20_000), f"to write topic '{stack.topics.predictions}'", "grant the ACL"
    )
    # whatever was committed, no committed offset passes an event without its prediction
    scored = set(stack.primary_ids(stack.read_to_end(stack.topics.predictions)))
    assert set(first) <= scored
    assert sum(
        o for o in _committed(secure_cluster, stack.group_id, stack.topics.events, 4) if o > 0
    ) <= len(scored)

    apply_acls(admin, write_predictions)
    w2 = start_worker("regranted", env=secure_env(secure_cluster, "score"))
    preds = stack.read(
        stack.topics.predictions, until=lambda got: len(set(stack.primary_ids(got))) >= 500
    )
    assert set(stack.primary_ids(preds)) == set(first) | set(later)  # nothing lost
    assert w2.terminate() == 0


def test_exactly_once_under_the_score_principal(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    stack = secure_stack
    _publish_v1(stack, secure_cluster)
    w = start_worker("eos-w1", "--exactly-once", env=secure_env(secure_cluster, "score"))
    ids = stack.produce_events(500)
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 500)
    got = stack.primary_ids(preds)
    assert set(got) == set(ids)
    assert max(got.values()) == 1
    assert w.terminate() == 0


def test_a_registry_refusing_the_output_schema_stops_the_worker_before_it_consumes(
    secure_cluster: LocalCluster,
    secure_stack: Stack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    from confluent_kafka.schema_registry import Schema

    stack = secure_stack
    subject = f"{stack.topics.predictions}-value"
    # the subject exists with another record and FULL compatibility: ours is refused
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    stack.registry.register_schema(subject, Schema(json.dumps(other), "AVRO"))
    stack.registry.set_compatibility(subject, "FULL")
    _publish_v1(stack, secure_cluster)
    stack.produce_events(100)
    w = start_worker("refused-schema", env=secure_env(secure_cluster, "score"), wait=False)
    assert _exit_of(w) == 1
    log = w.log(20_000)
    assert "Traceback" not in log
    line = [x for x in log.splitlines() if x.startswith("streamscore: SchemaRegistrationError")]
    assert len(line) == 1, log
    assert f"registry refused registering a schema for subject '{subject}' (status 409)" in line[0]
    assert "check its compatibility" in line[0]
    assert all(o < 0 for o in _committed(secure_cluster, stack.group_id, stack.topics.events, 4))
    assert stack.read_to_end(stack.topics.dlq) == []  # not the input's fault: no dead letter


def _controller_admin(
    cluster: LocalCluster, classpath: str, conf: Path | None, action: str, principal: str
) -> str:
    """What ``java/ControllerAcls.java`` (Kafka's Java admin client with
    ``bootstrap.controllers``, KIP-919) answers on the controller port: ``OK ...`` or
    ``FAILED <exception class>: <message>``."""
    java = shutil.which("java")
    assert java is not None
    s = cluster.settings
    res = subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "ControllerAcls",
            f"{s.host}:{s.controller_port}",
            str(conf) if conf is not None else "-",
            action,
            principal,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith(("OK", "FAILED"))]
    assert len(lines) == 1, res.stdout + res.stderr[-3000:]
    return lines[0]


def _controller_handshake_failures(cluster: LocalCluster) -> int:
    """How many connections the controller listener refused at the TLS handshake (the
    broker's log)."""
    log = cluster.status().kafka_log.read_text(errors="replace")
    return sum(
        "listenerType=CONTROLLER" in line and "(SSL handshake failed)" in line
        for line in log.splitlines()
    )


def _tls_client_conf(path: Path, files: SecureFiles, key: Path, cert: Path) -> Path:
    """Java client properties: TLS trusting the cluster's CA, ``cert`` as the client's
    certificate (written beside ``path`` as one PEM key store)."""
    keystore = path.with_suffix(".keystore.pem")
    keystore.write_bytes(key.read_bytes() + cert.read_bytes())
    path.write_text(
        "security.protocol=SSL\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={files.ca}\n"
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={keystore}\n"
    )
    return path


def test_the_controller_port_refuses_unauthenticated_and_unprivileged_admin_clients(
    secure_cluster: LocalCluster, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """An admin client may talk to the controllers directly (``bootstrap.controllers``,
    KIP-919): the controller listener takes only the certificates the cluster's CA
    signed, and only the broker's own (``User:CN=streamscore-controller``) is a super user
    there, so a local process can neither read nor create ACLs through it."""
    files = secure_cluster.secure_files
    assert files is not None
    classpath = compile_java(secure_cluster, "ControllerAcls", tmp_path / "classes")
    intruder = f"User:{unique_name('intruder')}"

    def attempt(conf: Path | None, action: str) -> str:
        return _controller_admin(secure_cluster, classpath, conf, action, intruder)

    # no credentials at all, what the PLAINTEXT controller listener let in as the super
    # user ANONYMOUS: the controller drops the connection at the TLS handshake, the
    # client never gets an answer
    refused_before = _controller_handshake_failures(secure_cluster)
    for action, call in (("describe", "describeAcls"), ("create", "createAcls")):
        assert attempt(None, action) == (
            "FAILED org.apache.kafka.common.errors.TimeoutException: "
            f"Timed out waiting for a node assignment. Call: {call}"
        )
    assert _controller_handshake_failures(secure_cluster) > refused_before
    # TLS without a client certificate: the handshake fails
    no_cert = tmp_path / "no-cert.properties"
    no_cert.write_text(
        f"security.protocol=SSL\nssl.truststore.type=PEM\nssl.truststore.location={files.ca}\n"
    )
    for action in ("describe", "create"):
        assert attempt(no_cert, action).startswith(
            "FAILED org.apache.kafka.common.errors.SslAuthenticationException: "
        )
    # a certificate the CA signed for another principal (User:CN=score): authenticated on
    # the controller listener, not authorized there (only super users hold cluster rights)
    score = _tls_client_conf(
        tmp_path / "score.properties", files, files.client_key("score"), files.client_cert("score")
    )
    for action in ("describe", "create"):
        outcome = attempt(score, action)
        assert outcome.startswith(
            "FAILED org.apache.kafka.common.errors.ClusterAuthorizationException: "
        ), outcome
        assert "listenerName=ListenerName(CONTROLLER), securityProtocol=SSL" in outcome
    # the broker's own identity may (the listener works; the refusals above are about who)
    controller = tmp_path / "controller.properties"
    controller.write_text(
        "security.protocol=SSL\nssl.truststore.type=PEM\n"
        f"ssl.truststore.location={files.ca}\n"
        f"ssl.keystore.type=PEM\nssl.keystore.location={files.controller_keystore}\n"
    )
    assert attempt(controller, "describe").startswith("OK ")
    # and the refused create left nothing behind (asked through the broker, as admin)
    admin = AdminClient(secure_cluster.client_config("admin"))
    mine = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        intruder,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    assert admin.describe_acls(mine, request_timeout=30).result(30) == []
