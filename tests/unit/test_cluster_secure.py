"""The secured profile's material and configuration (issue 14, point 4), without
servers: the CA and the certificate it signs, the users, the broker's and registry's
settings, and the ACLs of each process (only what it needs)."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from streamscore.core.config import ClusterSettings, TopicSettings
from streamscore.dev.cluster_config import render_server_properties
from streamscore.dev.cluster_secure import (
    CONTROLLER_CN,
    USERS,
    Grant,
    client_env,
    ensure_material,
    process_acls,
    scram_format_args,
    secure_broker_properties,
    secure_registry_properties,
)

TOPICS = TopicSettings()


def test_material_is_made_once_with_private_files_and_a_certificate_the_ca_signed(
    tmp_path: Path,
) -> None:
    files = ensure_material(tmp_path, "127.0.0.1")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    for private in (files.ca_key, files.server_key, files.keystore, files.users):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert set(files.passwords()) == set(USERS)
    assert len(set(files.passwords().values())) == len(USERS)
    again = ensure_material(tmp_path, "127.0.0.1")  # kept: the users live in the storage
    assert again.passwords() == files.passwords()
    args = scram_format_args(files)
    assert args.count("--add-scram") == len(USERS)
    assert f"SCRAM-SHA-512=[name=score,password={files.passwords()['score']}]" in args


def test_broker_and_registry_settings_of_the_secured_profile(tmp_path: Path) -> None:
    settings = ClusterSettings(secure=True, kafka_port=29092, registry_port=28081)
    files = ensure_material(tmp_path, settings.host)
    broker = secure_broker_properties(settings, files)
    assert broker["listeners"].startswith("SASL_SSL://127.0.0.1:29092,")
    assert broker["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert broker["authorizer.class.name"].endswith("StandardAuthorizer")
    assert broker["allow.everyone.if.no.acl.found"] == "false"
    assert "User:admin" in broker["super.users"].split(";")
    assert "User:score" not in broker["super.users"]
    assert "SSL://" not in broker["listeners"].replace("SASL_SSL://", "")
    mtls = secure_broker_properties(ClusterSettings(secure=True, mtls_port=29094), files)
    assert ",SSL://127.0.0.1:29094," in mtls["listeners"]
    assert mtls["listener.name.ssl.ssl.client.auth"] == "required"
    # each user's client certificate: signed by the CA, principal User:CN=<user>
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.client_cert("score").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=score"
    assert stat.S_IMODE(files.client_key("score").stat().st_mode) == 0o600
    registry = secure_registry_properties(settings, files)
    assert registry["quarkus.http.insecure-requests"] == "disabled"
    assert registry["quarkus.http.ssl-port"] == "28081"
    assert settings.registry_url.startswith("https://")
    env = client_env(settings, files, "score")
    assert env["STREAMSCORE_KAFKA_SASL_PASSWORD_FILE"] == str(files.password_file("score"))
    assert files.passwords()["score"] not in "".join(env.values())


def _ops(grants: list[Grant], resource: str, name: str) -> set[str]:
    return {g.operation for g in grants if g.resource == resource and g.name == name}


def test_each_process_gets_only_what_it_needs() -> None:
    score = process_acls("score", TOPICS, "g")
    assert _ops(score, "topic", TOPICS.events) == {"read", "describe_configs"}
    assert _ops(score, "topic", TOPICS.models) == {"read"}  # never write: it cannot publish
    for out in (TOPICS.predictions, TOPICS.predictions_shadow, TOPICS.telemetry, TOPICS.dlq):
        assert "write" in _ops(score, "topic", out)
        assert "read" not in _ops(score, "topic", out)
    assert _ops(score, "topic", TOPICS.feedback) == set()
    assert _ops(score, "group", "g") == {"read"}
    feedback = process_acls("feedback", TOPICS, "fb")
    assert _ops(feedback, "topic", TOPICS.models) == set()
    assert _ops(feedback, "topic", TOPICS.events) == set()
    assert "create" in _ops(feedback, "topic", "fb.join")
    # the feedback side reads the answers and the shadows, writes neither
    for read in (TOPICS.predictions, TOPICS.predictions_shadow):
        assert _ops(feedback, "topic", read) == {"read"}
    publisher = process_acls("publisher", TOPICS, "-")
    assert {g.name for g in publisher if g.resource == "topic"} == {TOPICS.models}


def test_cluster_secure_flag_picks_the_secured_profile_beside_the_plain_cluster() -> None:
    from streamscore.cli import build_parser, secure_cluster_settings

    args = build_parser().parse_args(["cluster", "up", "--secure"])
    assert args.secure is True
    plain = ClusterSettings()
    secure = secure_cluster_settings(plain)
    assert secure.secure and secure.registry_url.startswith("https://127.0.0.1:18181/")
    assert secure.run_path != plain.run_path
    ports = {secure.kafka_port, secure.controller_port, secure.registry_port, secure.mtls_port}
    assert not ports & {plain.kafka_port, plain.controller_port, plain.registry_port}
    assert len(ports) == 4


def _pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_the_controller_listener_authenticates_by_certificate_and_anonymous_is_no_super_user(
    tmp_path: Path,
) -> None:
    settings = ClusterSettings(secure=True, kafka_port=29092, controller_port=29093)
    files = ensure_material(tmp_path, settings.host)
    rendered = render_server_properties(
        settings, tmp_path / "data", secure_broker_properties(settings, files)
    )
    props = dict(line.split("=", 1) for line in rendered.splitlines() if not line.startswith("#"))
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert props["controller.listener.names"] == "CONTROLLER"
    assert protocols["CONTROLLER"] == "SSL"
    assert "PLAINTEXT" not in protocols.values()
    assert "CONTROLLER://127.0.0.1:29093" in props["listeners"].split(",")
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["listener.name.controller.ssl.keystore.location"] == str(files.controller_keystore)
    assert props["super.users"].split(";") == ["User:admin", f"User:CN={CONTROLLER_CN}"]
    assert "ANONYMOUS" not in rendered
    # its certificate: the CA's, for the controller's address, usable both as the
    # listener's server certificate and as the broker's client certificate on that link;
    # not the registry's (whose key must not be a super user's)
    cert, ca = _pem_certs(files.controller_keystore)
    cert.verify_directly_issued_by(ca)
    assert ca == x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={CONTROLLER_CN}"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert cert != _pem_certs(files.server_cert)[0]
    assert stat.S_IMODE(files.controller_keystore.stat().st_mode) == 0o600


def test_a_run_dir_from_before_the_controller_certificate_gets_one_from_its_own_ca(
    tmp_path: Path,
) -> None:
    files = ensure_material(tmp_path, "127.0.0.1")
    passwords, keystore = files.passwords(), files.keystore.read_bytes()
    files.controller_keystore.unlink()  # as made by the earlier version
    again = ensure_material(tmp_path, "127.0.0.1")
    cert, ca = _pem_certs(again.controller_keystore)
    assert ca == x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN={CONTROLLER_CN}"
    # nothing else changed: the users in the formatted storage keep their passwords
    assert again.passwords() == passwords
    assert again.keystore.read_bytes() == keystore
