"""The registry client's settings: TLS, basic auth, bearer tokens, registration and
subject name strategies, from the project file and the environment; secrets never shown;
the credentials really sent (a loopback HTTP server records the requests)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamscore.cli import settings_from_env
from streamscore.core.config import (
    KeyFormat,
    RegistrySettings,
    Secret,
    SubjectStrategy,
    TokenFile,
)
from streamscore.core.errors import ConfigError, ProjectFileError
from streamscore.core.project import parse_project
from streamscore.serde.wire import registry_client

PREDICTION = {"type": "record", "name": "Prediction", "namespace": "streamscore", "fields": []}


def test_subject_name_strategies() -> None:
    assert SubjectStrategy.TOPIC.subject("preds", PREDICTION) == "preds-value"
    assert SubjectStrategy.RECORD.subject("preds", PREDICTION) == "streamscore.Prediction"
    assert (
        SubjectStrategy.TOPIC_RECORD.subject("preds", PREDICTION) == "preds-streamscore.Prediction"
    )
    full_name = {"type": "record", "name": "a.b.Rec", "namespace": "ignored", "fields": []}
    assert SubjectStrategy.RECORD.subject("t", full_name) == "a.b.Rec"
    no_namespace = {"type": "record", "name": "Rec", "fields": []}
    assert SubjectStrategy.TOPIC_RECORD.subject("t", no_namespace) == "t-Rec"


def test_client_config_tls_and_bearer_and_repr_hides_secrets(tmp_path: Path) -> None:
    s = RegistrySettings(
        url="https://registry:8081",
        ca_location="/etc/ca.pem",
        certificate_location="/etc/client.pem",
        key_location="/etc/client.key",
        key_password=Secret("key-pass-123"),
        bearer_token=Secret("tok-456"),
        bearer_logical_cluster="lsrc-1",
        bearer_identity_pool="pool-9",
    )
    conf = s.client_config()
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["ssl.certificate.location"] == "/etc/client.pem"
    assert conf["ssl.key.location"] == "/etc/client.key"
    assert conf["ssl.key.password"] == "key-pass-123"
    assert conf["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert conf["bearer.auth.token"] == "tok-456"
    assert conf["bearer.auth.logical.cluster"] == "lsrc-1"
    assert conf["bearer.auth.identity.pool.id"] == "pool-9"
    assert "basic.auth.user.info" not in conf
    text = repr(s) + str(s)
    assert "key-pass-123" not in text and "tok-456" not in text
    assert "/etc/ca.pem" in text  # paths are not secrets


def test_basic_auth_and_bearer_together_refused() -> None:
    with pytest.raises(ConfigError, match="basic auth and a bearer token"):
        RegistrySettings(basic_auth_user="u", bearer_token=Secret("t"))
    with pytest.raises(ConfigError, match="basic auth and a bearer token"):
        RegistrySettings(url="http://u:p@r:8081", bearer_token=Secret("t")).client_config()
    with pytest.raises(ConfigError, match=r"ssl\.certificate\.location"):
        RegistrySettings(key_location="/k.pem")
    with pytest.raises(ConfigError, match="no subject strategy can be set for 'dlq'"):
        RegistrySettings(subject_strategies={"dlq": SubjectStrategy.RECORD})


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("first\n")
    tf = TokenFile(f)
    assert tf({"bearer.auth.logical.cluster": ""})["bearer.auth.token"] == "first"
    f.write_text("second-longer\n")
    assert tf.token() == "second-longer"
    assert "second" not in repr(tf)
    f.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        tf.token()
    f.unlink()
    with pytest.raises(ConfigError, match=f"cannot read the registry bearer token file {f}"):
        tf.token()


def test_environment(tmp_path: Path) -> None:
    (tmp_path / "userinfo").write_text("svc:s3cret-ui\n")
    (tmp_path / "keypass").write_text("kp-secret\n")
    env = settings_from_env(
        {
            "STREAMSCORE_REGISTRY_URL": "https://r:8081",
            "STREAMSCORE_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(tmp_path / "userinfo"),
            "STREAMSCORE_REGISTRY_SSL_CA_LOCATION": "/ca.pem",
            "STREAMSCORE_REGISTRY_SSL_CERTIFICATE_LOCATION": "/c.pem",
            "STREAMSCORE_REGISTRY_SSL_KEY_LOCATION": "/k.pem",
            "STREAMSCORE_REGISTRY_SSL_KEY_PASSWORD_FILE": str(tmp_path / "keypass"),
            "STREAMSCORE_REGISTRY_AUTO_REGISTER": "false",
            "STREAMSCORE_REGISTRY_SUBJECT_STRATEGY": "record",
            "STREAMSCORE_REGISTRY_SUBJECT_STRATEGY_TELEMETRY": "topic-record",
        }
    )
    r = env.registry
    assert r.basic_auth_user == "svc" and r.basic_auth_password == Secret("s3cret-ui")
    assert r.key_password == Secret("kp-secret")
    assert r.auto_register is False
    assert r.strategy("predictions") is SubjectStrategy.RECORD
    assert r.strategy("telemetry") is SubjectStrategy.TOPIC_RECORD
    conf = r.client_config()
    assert conf["basic.auth.user.info"] == "svc:s3cret-ui"
    assert (conf["ssl.ca.location"], conf["ssl.key.location"]) == ("/ca.pem", "/k.pem")
    assert "s3cret-ui" not in repr(env) and "kp-secret" not in repr(env)

    token = tmp_path / "token"
    token.write_text("tok")
    r2 = settings_from_env({"STREAMSCORE_REGISTRY_BEARER_TOKEN_FILE": str(token)}).registry
    assert r2.bearer_token_file == token
    conf2 = r2.client_config()
    assert conf2["bearer.auth.credentials.source"] == "CUSTOM"
    assert (
        conf2["bearer.auth.custom.provider.function"](conf2["bearer.auth.custom.provider.config"])[
            "bearer.auth.token"
        ]
        == "tok"
    )
    # the defaults: registration on (the local dev cluster), the topic strategy
    d = settings_from_env({}).registry
    assert d.auto_register is True and d.strategy("predictions") is SubjectStrategy.TOPIC


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMSCORE_REGISTRY_AUTO_REGISTER": "maybe"}, "must be true or false, not 'maybe'"),
        ({"STREAMSCORE_REGISTRY_SUBJECT_STRATEGY": "name"}, "must be one of topic, record"),
        ({"STREAMSCORE_REGISTRY_BASIC_AUTH_USER_INFO": "nocolon"}, "must be user:password"),
        (
            {"STREAMSCORE_REGISTRY_BASIC_AUTH_USER_INFO": "a:b", "STREAMSCORE_REGISTRY_USER": "c"},
            "basic auth is given twice",
        ),
        (
            {"STREAMSCORE_REGISTRY_SSL_KEY_PASSWORD_FILE": "/nonexistent/kp"},
            "cannot read STREAMSCORE_REGISTRY_SSL_KEY_PASSWORD_FILE at /nonexistent/kp",
        ),
    ],
)
def test_environment_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_env(env)
    assert message in str(err.value)
    assert "nocolon" not in str(err.value)


def test_project_file_registry_table(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("file-pw\n")
    p = parse_project(
        f"""
[events]
key_format = "avro"

[registry]
url = "https://registry:8081"
ssl_ca_location = "/ca.pem"
basic_auth_user = "svc"
basic_auth_password_file = "{pw}"
auto_register = false
subject_strategy = "topic-record"
timeout_s = 5
max_retries = 3

[registry.subject_strategies]
predictions = "record"
""",
        "cfg.toml",
    )
    assert p.events.key_format is KeyFormat.AVRO
    env = settings_from_env({}, p)
    r = env.registry
    assert r.url == "https://registry:8081" and r.ca_location == "/ca.pem"
    assert r.basic_auth_user == "svc" and r.basic_auth_password == Secret("file-pw")
    assert r.auto_register is False and r.timeout_s == 5.0 and r.max_retries == 3
    assert r.strategy("predictions") is SubjectStrategy.RECORD
    assert r.strategy("telemetry") is SubjectStrategy.TOPIC_RECORD
    assert env.events.key_format is KeyFormat.AVRO
    # the environment wins over the file
    r2 = settings_from_env({"STREAMSCORE_REGISTRY_AUTO_REGISTER": "1"}, p).registry
    assert r2.auto_register is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[registry]\nauto_register = "no"\n', "[registry] auto_register: must be true or false"),
        (
            '[registry]\nsubject_strategy = "records"\n',
            "[registry] subject_strategy: unknown value 'records' (did you mean 'record'?)",
        ),
        (
            '[registry]\nbearer_token = "x"\n',
            "[registry] bearer_token: unknown key 'bearer_token' (did you mean "
            "'bearer_token_file'?)",
        ),
        (
            '[registry.subject_strategies]\ndlq = "record"\n',
            "[registry.subject_strategies] dlq: unknown key 'dlq'",
        ),
        ("[registry]\ntimeout_s = 0\n", "[registry] timeout_s: must be > 0"),
        ('[events]\nkey_format = "json"\n', "[events] key_format: unknown value 'json'"),
    ],
)
def test_project_file_registry_errors(text: str, message: str) -> None:
    with pytest.raises(ProjectFileError) as err:
        parse_project(text, "cfg.toml")
    assert message in str(err.value)


# ------------------------------------------------- what the client really sends


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = json.dumps({"message": "no such subject", "error_code": 40401}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _ask(settings: RegistrySettings) -> None:
    client = registry_client(settings.client_config())
    with pytest.raises(Exception) as err:
        client.get_latest_version("some-subject")
    assert getattr(err.value, "http_status_code", None) == 404


def test_credentials_sent(
    recorder: tuple[str, list[dict[str, str]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, seen = recorder
    caplog.set_level(logging.DEBUG)
    _ask(RegistrySettings(url=url, basic_auth_user="svc", basic_auth_password=Secret("pw-1")))
    assert seen[-1]["Authorization"] == "Basic c3ZjOnB3LTE="  # svc:pw-1
    _ask(RegistrySettings(url=url, bearer_token=Secret("static-tok")))
    assert seen[-1]["Authorization"] == "Bearer static-tok"
    token = tmp_path / "token"
    token.write_text("file-tok-1\n")
    s = RegistrySettings(url=url, bearer_token_file=token, bearer_logical_cluster="lsrc-7")
    client = registry_client(s.client_config())
    for expected in ("file-tok-1", "file-tok-22"):
        token.write_text(expected + "\n")
        with pytest.raises(Exception) as err:
            client.get_latest_version("other-subject")
        assert getattr(err.value, "http_status_code", None) == 404
        assert seen[-1]["Authorization"] == f"Bearer {expected}"
        assert seen[-1]["target-sr-cluster"] == "lsrc-7"
    for secret in ("pw-1", "static-tok", "file-tok"):
        assert secret not in caplog.text
