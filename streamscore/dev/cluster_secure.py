"""The local cluster's secured profile (``streamscore cluster up --secure``): the same
Kafka with a ``SASL_SSL`` listener (SCRAM-SHA-512 users created when its storage is
formatted), KRaft's ``StandardAuthorizer`` with ACLs per process, and the registry served
over TLS. The private CA and the servers' certificates are generated on the spot with the
``cryptography`` package (nothing downloaded) and kept in ``<run dir>/secure/``.

Principals (each process its own; passwords random, in ``secure/users.json``, mode 0600):

=========================== ===================================================
admin                       super user (the broker's SCRAM user, topic creation,
                            ACLs)
CN=streamscore-controller   super user: the broker on its link to its KRaft
                            controller (a certificate, see below)
score                       the score workers (:func:`process_acls` says what each
                            may do)
feedback                    the feedback workers
publisher                   ``streamscore model publish|rollback|retire``, ``train``
=========================== ===================================================

The KRaft controller listener is ``SSL`` with ``ssl.client.auth=required``. Since Kafka
3.7 (KIP-919) an admin client may talk to the controllers directly
(``bootstrap.controllers``): a PLAINTEXT controller listener, whose clients are
``User:ANONYMOUS``, would have to make ``ANONYMOUS`` a super user for the broker's sake,
and then any local process reaching the port could create ACLs or users. Why a
certificate and not a password there:

* SCRAM cannot do it: its credentials live in the metadata log the
  controller itself serves (bootstrapped by ``kafka-storage format --add-scram``,
  KIP-900); SCRAM on KRaft controller links is an open Kafka issue (KAFKA-15513), and
  Confluent's cp-ansible refuses it for inter-controller links.
* PLAIN would put a second password in clear in ``server.properties`` (``user_<name>=``
  in the listener's JAAS line) and send it on every connection (in clear on
  ``SASL_PLAINTEXT``); nothing changes it short of a restart.
* SSL with a required client certificate needs no new secret: the cluster's CA issues a
  certificate for ``CN=streamscore-controller`` (server *and* client extended key usage),
  in its own key store ``controller-keystore.pem`` (``listener.name.controller.ssl.*``,
  which the broker also uses as the client of that listener); the principal is
  ``User:CN=streamscore-controller``. The registry's certificate is another one, so the
  registry's key is no super user's. A client certificate the CA issued to a user
  (``CN=score``...) passes the handshake there but holds no cluster ACL: refused.

Clients only ever use the ``SASL_SSL`` (or mutual-TLS ``SSL``) listener.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ClusterSettings, TopicSettings

#: the principals of the secured profile; ``admin`` is the super user
USERS = ("admin", "score", "feedback", "publisher")
#: the common name of the controller listener's certificate: the broker's identity on its
#: link to the controller (principal ``User:CN=<it>``, a super user)
CONTROLLER_CN = "streamscore-controller"
CONTROLLER_PRINCIPAL = f"User:CN={CONTROLLER_CN}"
SCRAM = "SCRAM-SHA-512"
SECURE_DIR = "secure"


@dataclass(frozen=True)
class SecureFiles:
    """Where a secured cluster's material is (under its run dir)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def keystore(self) -> Path:
        """The broker's PEM key store: its key, then its certificate and the CA's."""
        return self.root / "server-keystore.pem"

    @property
    def controller_keystore(self) -> Path:
        """The KRaft controller listener's PEM key store (key, certificate, CA's): its
        server certificate and the broker's client certificate on its link to the
        controller, principal ``User:CN=<CONTROLLER_CN>``, the only super user besides
        ``admin``. Used by nothing else (the registry has its own key)."""
        return self.root / "controller-keystore.pem"

    @property
    def users(self) -> Path:
        return self.root / "users.json"

    def passwords(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.users.read_text())
        return data

    def password_file(self, user: str) -> Path:
        """A file holding ``user``'s password alone (for ``..._PASSWORD_FILE``)."""
        return self.root / f"{user}.password"

    def client_cert(self, user: str) -> Path:
        """``user``'s client certificate (mutual TLS; its principal is ``User:CN=<user>``)."""
        return self.root / f"{user}.pem"

    def client_key(self, user: str) -> Path:
        return self.root / f"{user}-key.pem"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_ca(common_name: str) -> tuple[Any, Any]:
    """A new self-signed CA: (private key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca_key: Any, ca_cert: Any, common_name: str, hosts: Iterable[str]) -> tuple[Any, Any]:
    """A key and a certificate for ``common_name`` signed by the CA, valid for ``hosts``
    (IP addresses or DNS names) as server and as client (mutual TLS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_material(run_dir: Path, host: str) -> SecureFiles:
    """The CA, the servers' certificates and the users' passwords of the cluster in
    ``run_dir``: made on its first secured start, kept afterwards (the users exist in the
    broker's formatted storage). A run dir made before the controller listener had its
    own certificate gets one, signed by its CA."""
    files = SecureFiles(run_dir / SECURE_DIR)
    if files.users.is_file() and files.keystore.is_file():
        if not files.controller_keystore.is_file():
            _issue_controller(files, *_load_ca(files), host)
        return files
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    ca_key, ca_cert = make_ca("streamscore local CA")
    key, cert = issue(ca_key, ca_cert, "localhost", [host, "localhost", "127.0.0.1"])
    files.ca.write_bytes(pem_cert(ca_cert))
    _write_private(files.ca_key, pem_key(ca_key))
    files.server_cert.write_bytes(pem_cert(cert) + pem_cert(ca_cert))
    _write_private(files.server_key, pem_key(key))
    _write_private(files.keystore, pem_key(key) + pem_cert(cert) + pem_cert(ca_cert))
    _issue_controller(files, ca_key, ca_cert, host)
    passwords = {u: secrets.token_hex(16) for u in USERS}
    for user, pw in passwords.items():
        _write_private(files.password_file(user), pw.encode())
        user_key, user_cert = issue(ca_key, ca_cert, user, [])
        files.client_cert(user).write_bytes(pem_cert(user_cert))
        _write_private(files.client_key(user), pem_key(user_key))
    _write_private(files.users, json.dumps(passwords, indent=2).encode())
    return files


def _load_ca(files: SecureFiles) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    return key, x509.load_pem_x509_certificate(files.ca.read_bytes())


def _issue_controller(files: SecureFiles, ca_key: Any, ca_cert: Any, host: str) -> None:
    key, cert = issue(ca_key, ca_cert, CONTROLLER_CN, [host, "localhost", "127.0.0.1"])
    _write_private(files.controller_keystore, pem_key(key) + pem_cert(cert) + pem_cert(ca_cert))


def scram_format_args(files: SecureFiles) -> list[str]:
    """``kafka-storage format`` arguments that create every user at format time."""
    out: list[str] = []
    for user, pw in files.passwords().items():
        out += ["--add-scram", f"{SCRAM}=[name={user},password={pw}]"]
    return out


def secure_broker_properties(settings: ClusterSettings, files: SecureFiles) -> dict[str, str]:
    """What the secured profile changes in ``server.properties``."""
    h = settings.host
    admin_pw = files.passwords()["admin"]
    listeners = f"SASL_SSL://{h}:{settings.kafka_port}"
    mtls: dict[str, str] = {}
    if settings.mtls_port is not None:
        listeners += f",SSL://{h}:{settings.mtls_port}"
        mtls["listener.name.ssl.ssl.client.auth"] = "required"
    return {
        "listeners": f"{listeners},CONTROLLER://{h}:{settings.controller_port}",
        "advertised.listeners": listeners,
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
        **mtls,
        # the controller listener: mutual TLS, its own certificate (the broker's client
        # identity on its link to the controller too); see the module's docstring
        "listener.name.controller.ssl.client.auth": "required",
        "listener.name.controller.ssl.keystore.type": "PEM",
        "listener.name.controller.ssl.keystore.location": str(files.controller_keystore),
        "sasl.enabled.mechanisms": SCRAM,
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{admin_pw}";'
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(files.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(files.ca),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:admin;{CONTROLLER_PRINCIPAL}",
        "allow.everyone.if.no.acl.found": "false",
    }


def secure_registry_properties(settings: ClusterSettings, files: SecureFiles) -> dict[str, str]:
    """Apicurio (Quarkus) over TLS only, on the registry port."""
    return {
        "quarkus.http.ssl-port": str(settings.registry_port),
        "quarkus.http.port": "0",
        "quarkus.http.ssl.certificate.files": str(files.server_cert),
        "quarkus.http.ssl.certificate.key-files": str(files.server_key),
        "quarkus.http.insecure-requests": "disabled",
    }


def client_properties(settings: ClusterSettings, files: SecureFiles, user: str) -> dict[str, str]:
    """librdkafka properties of a client of the secured cluster as ``user``."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM,
        "sasl.username": user,
        "sasl.password": files.passwords()[user],
        "ssl.ca.location": str(files.ca),
    }


def mtls_client_env(settings: ClusterSettings, files: SecureFiles, user: str) -> dict[str, str]:
    """The environment of a process of the secured cluster that authenticates with its
    client certificate (principal ``User:CN=<user>``) on the mutual-TLS listener."""
    assert settings.mtls_port is not None, "this cluster has no mutual-TLS listener"
    return {
        "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS": f"{settings.host}:{settings.mtls_port}",
        "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMSCORE_KAFKA_SSL_CA_LOCATION": str(files.ca),
        "STREAMSCORE_KAFKA_SSL_CERTIFICATE_LOCATION": str(files.client_cert(user)),
        "STREAMSCORE_KAFKA_SSL_KEY_LOCATION": str(files.client_key(user)),
        "STREAMSCORE_REGISTRY_URL": settings.registry_url,
        "STREAMSCORE_REGISTRY_SSL_CA_LOCATION": str(files.ca),
    }


def client_env(settings: ClusterSettings, files: SecureFiles, user: str) -> dict[str, str]:
    """The environment of a streamscore process of the secured cluster as ``user`` (its
    password read from a file)."""
    return {
        "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMSCORE_KAFKA_SASL_MECHANISM": SCRAM,
        "STREAMSCORE_KAFKA_SASL_USERNAME": user,
        "STREAMSCORE_KAFKA_SASL_PASSWORD_FILE": str(files.password_file(user)),
        "STREAMSCORE_KAFKA_SSL_CA_LOCATION": str(files.ca),
        "STREAMSCORE_REGISTRY_URL": settings.registry_url,
        "STREAMSCORE_REGISTRY_SSL_CA_LOCATION": str(files.ca),
    }


# ---------------------------------------------------------------------------- ACLs


@dataclass(frozen=True)
class Grant:
    """One ACL: ``operation`` on a ``resource`` (topic, group, transactional_id) named
    ``name`` (``prefixed``: every name that starts with it)."""

    resource: str
    name: str
    operation: str
    prefixed: bool = False


def process_acls(role: str, topics: TopicSettings, group: str) -> list[Grant]:
    """What each process's principal needs, and no more (README, 'Production
    clusters'). ``group``: the process's consumer group (``--group-id``)."""
    t = topics
    model_readers = [
        Grant("group", "streamscore-model-watcher-", "read", prefixed=True),
        Grant("group", "streamscore-model-reader-", "read", prefixed=True),
    ]
    if role == "score":
        return [
            Grant("topic", t.events, "read"),
            Grant("topic", t.models, "read"),
            *(
                Grant("topic", name, "write")
                for name in (t.predictions, t.predictions_shadow, t.telemetry, t.dlq, t.late)
            ),
            # each output topic's max.message.bytes is read at start
            *(
                Grant("topic", name, "describe_configs")
                for name in (
                    t.events,
                    t.predictions,
                    t.predictions_shadow,
                    t.telemetry,
                    t.dlq,
                    t.late,
                )
            ),
            Grant("group", group, "read"),
            *model_readers,
            # --exactly-once: transactional ids streamscore-score-<group>-<worker>
            Grant("transactional_id", f"streamscore-score-{group}-", "write", prefixed=True),
            Grant("transactional_id", f"streamscore-score-{group}-", "describe", prefixed=True),
        ]
    if role == "feedback":
        join = f"{group}.join"
        return [
            Grant("topic", t.predictions, "read"),
            Grant("topic", t.predictions_shadow, "read"),
            Grant("topic", t.feedback, "read"),
            # <group>.join and its state's changelog <group>.join.changelog
            Grant("topic", join, "create", prefixed=True),
            Grant("topic", join, "read", prefixed=True),
            Grant("topic", join, "write", prefixed=True),
            Grant("topic", join, "describe_configs", prefixed=True),
            *(Grant("topic", name, "write") for name in (t.dlq, t.telemetry)),
            *(Grant("topic", name, "describe_configs") for name in (t.dlq, t.telemetry)),
            # <group>, <group>.router and <group>.restore
            Grant("group", group, "read", prefixed=True),
            # the changelog's transactions: <group>.<worker id>
            Grant("transactional_id", f"{group}.", "write", prefixed=True),
            Grant("transactional_id", f"{group}.", "describe", prefixed=True),
        ]
    if role == "publisher":
        return [
            Grant("topic", t.models, "read"),
            Grant("topic", t.models, "write"),
            *model_readers,
        ]
    raise ValueError(f"no ACLs for role {role!r}")


def acl_bindings(user: str, grants: Iterable[Grant]) -> list[Any]:
    """``grants`` for ``User:<user>`` as admin-client ``AclBinding`` objects."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }
    return [
        AclBinding(
            kinds[g.resource],
            g.name,
            ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation[g.operation.upper()],
            AclPermissionType.ALLOW,
        )
        for g in grants
    ]


def apply_acls(
    admin: Any, bindings: list[Any], *, delete: bool = False, timeout: float = 30.0
) -> None:
    """Create (or delete) ACL bindings and wait for the broker's answer."""
    from confluent_kafka.admin import AclBindingFilter  # type: ignore[attr-defined]

    if not bindings:
        return
    if delete:
        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in bindings
        ]
        futures = admin.delete_acls(filters, request_timeout=timeout)
    else:
        futures = admin.create_acls(bindings, request_timeout=timeout)
    for f in futures.values():
        f.result(timeout)


def grant_process(
    admin: Any, role: str, topics: TopicSettings, group: str, user: str | None = None
) -> None:
    """Create the ACLs of process ``role`` (user ``user``, default the role's own)."""
    apply_acls(admin, acl_bindings(user or role, process_acls(role, topics, group)))
