"""`streamscore init --subject` and `streamscore check` against the real registry: the
starter file is inferred from the subject's latest schema, `check` reads the latest
version of the events topic's subject and exits 1 on a misfit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema

from streamscore import cli
from streamscore.serde.wire import registry_client

from ..unit.test_init_check import SCHEMA
from .conftest import Endpoints


def test_init_from_a_registry_subject_then_check_against_its_latest_version(
    cluster_endpoints: Endpoints,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STREAMSCORE_REGISTRY_URL", cluster_endpoints.registry_url)
    monkeypatch.delenv("STREAMSCORE_CONFIG", raising=False)
    topic = unique_name("payments")
    subject = f"{topic}-value"
    reg = registry_client({"url": cluster_endpoints.registry_url})
    reg.register_schema(subject, Schema(json.dumps(SCHEMA), "AVRO"))

    sample = tmp_path / "sample.csv"
    sample.write_text("amount,channel,device.os\n2.5,web,ios\n9,app,android\n")
    out = tmp_path / "streamscore.toml"
    argv = ["init", "--subject", subject, "--sample", str(sample), "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    assert f"from subject {subject} version 1" in text
    p = cli.read_project(str(out))
    assert p.events_topic == topic
    assert p.events.id_field == "payment_id" and p.events.time_field == "created_at"
    assert p.features is not None
    assert {f.name: f.categories for f in p.features.fields}["device_os"] == ("android", "ios")

    # check: the subject of the file's events topic, latest version
    assert cli.main(["check", "--config", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {out} fits subject {subject} version 1")

    evolved = {
        **SCHEMA,
        "fields": [*SCHEMA["fields"], {"name": "extra", "type": "int", "default": 0}],
    }
    reg.register_schema(subject, Schema(json.dumps(evolved), "AVRO"))
    assert cli.main(["check", "--config", str(out)]) == 0
    assert "version 2" in capsys.readouterr().out

    out.write_text(text.replace('name = "amount"', 'name = "amount_eur"'))
    assert cli.main(["check", "--config", str(out)]) == 1
    said = capsys.readouterr().out
    assert "[[features]] #1 'amount_eur' name: the event has no field 'amount_eur'" in said
    assert said.splitlines()[-1].startswith(f"1 misfit(s) with subject {subject} version 2")

    missing = unique_name("nothing") + "-value"
    assert cli.main(["check", "--config", str(out), "--subject", missing]) == 1
    assert f"the registry has no schema under subject {missing!r}" in capsys.readouterr().err
