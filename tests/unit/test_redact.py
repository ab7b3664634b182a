"""Credentials in registry URLs never reach a log line, a settings repr or an error."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from streamscore import cli
from streamscore.core import errors
from streamscore.core.config import RegistrySettings, Secret
from streamscore.core.redact import RedactingFilter, redact_urls, split_userinfo
from streamscore.serde import schemas
from streamscore.serde.wire import WriterSchemaCache, registry_client

SECRET = "s3cr3t-pw"


def test_redact_urls_hides_the_userinfo_of_every_url() -> None:
    text = "GET https://bob:s3cr3t-pw@reg.example:8081/schemas/ids/1 and http://u:p@h/x?y=1"
    assert (
        redact_urls(text) == "GET https://***@reg.example:8081/schemas/ids/1 and http://***@h/x?y=1"
    )
    assert (
        redact_urls("mail bob@example.com, http://host/a@b")
        == "mail bob@example.com, http://host/a@b"
    )


def test_split_userinfo_decodes_percent_escapes() -> None:
    assert split_userinfo("https://bob:p%40ss@h:1/api") == ("https://h:1/api", ("bob", "p@ss"))
    assert split_userinfo("http://h/api") == ("http://h/api", None)


def test_settings_send_url_credentials_as_basic_auth_and_never_show_them() -> None:
    s = RegistrySettings(url=f"https://bob:{SECRET}@reg.example/apis/ccompat/v7")
    conf = s.client_config()
    assert conf["url"] == "https://reg.example/apis/ccompat/v7"
    assert conf["basic.auth.user.info"] == f"bob:{SECRET}"
    assert conf["timeout"] == 2.0 and conf["max.retries"] == 1
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert "https://***@reg.example" in repr(s)
    both = RegistrySettings(
        url=f"https://bob:{SECRET}@reg.example",
        basic_auth_user="al",
        basic_auth_password=Secret("x"),
    )
    with pytest.raises(errors.ConfigError) as info:
        both.client_config()
    assert SECRET not in str(info.value)


class _Registry(BaseHTTPRequestHandler):
    """Answers ``GET .../schemas/ids/<id>`` with the event schema; records auth headers."""

    auth: list[str | None] = []

    def do_GET(self) -> None:
        type(self).auth.append(self.headers.get("Authorization"))
        body = json.dumps({"schema": json.dumps(schemas.load("event", 1))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def registry_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    _Registry.auth = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def cli_logs() -> Iterator[io.StringIO]:
    """What the CLI's logging setup lets through, at INFO for every logger (httpx's
    request log included), into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        cli.setup_logging()
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_real_request_logs_no_credentials_and_still_authenticates(
    registry_server: int, cli_logs: io.StringIO
) -> None:
    url = f"http://bob:{SECRET}@127.0.0.1:{registry_server}/apis/ccompat/v7"
    # as the CLI builds it: credentials out of the URL, sent as basic auth
    client = registry_client(RegistrySettings(url=url).client_config())
    assert WriterSchemaCache(client).get(1)[0]["name"] == "Event"
    # a client handed the raw URL: httpx logs the URL, the CLI's filter redacts it
    raw = registry_client({"url": url})
    assert WriterSchemaCache(raw).get(2)[0]["name"] == "Event"

    logged = cli_logs.getvalue()
    assert logged.count("HTTP Request: GET") == 2  # the request log line is there...
    assert SECRET not in logged  # ...without the password
    expected = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert _Registry.auth == [expected, expected]


def test_an_unreachable_registry_with_credentials_leaks_them_nowhere(
    cli_logs: io.StringIO,
) -> None:
    url = f"http://bob:{SECRET}@127.0.0.1:9/apis/ccompat/v7"  # nothing listens on port 9
    client = registry_client(RegistrySettings(url=url).client_config())
    with pytest.raises(errors.RegistryUnavailableError) as info:
        WriterSchemaCache(client).get(1)
    logging.getLogger("streamscore.test").exception("lookup failed: %s", url, exc_info=info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    logged = cli_logs.getvalue()
    assert "lookup failed: http://***@127.0.0.1:9" in logged
    assert SECRET not in logged


def test_settings_from_env_read_registry_timeouts_and_keep_the_url_secret() -> None:
    env = cli.settings_from_env(
        {
            "STREAMSCORE_REGISTRY_URL": f"https://bob:{SECRET}@reg.example",
            "STREAMSCORE_REGISTRY_TIMEOUT_S": "0.5",
            "STREAMSCORE_REGISTRY_MAX_RETRIES": "0",
        }
    )
    assert (env.registry.timeout_s, env.registry.max_retries) == (0.5, 0)
    assert SECRET not in repr(env)
    with pytest.raises(errors.ConfigError):
        cli.settings_from_env({"STREAMSCORE_REGISTRY_TIMEOUT_S": "soon"})
