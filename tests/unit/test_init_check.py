"""`streamscore init` (a project file inferred from an Avro schema and a sample) and
`streamscore check` (every misfit of a project file with the schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamscore import cli
from streamscore.core.config import TimeEncoding
from streamscore.core.project import parse_project
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy
from streamscore.features.check import check, spec_differences
from streamscore.features.infer import infer_project

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Payment",
    "namespace": "t.pay",
    "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "amount", "type": "double"},
        {"name": "fee", "type": "float"},
        {"name": "n_items", "type": "int"},
        {"name": "total_cents", "type": ["null", "long"]},
        {"name": "is_new_device", "type": "boolean"},
        {
            "name": "country",
            "type": {"type": "enum", "name": "Country", "symbols": ["FR", "DE", "IT"]},
        },
        {"name": "home_country", "type": ["null", "Country"]},
        {"name": "channel", "type": "string"},
        {"name": "note", "type": ["null", "string"]},
        {
            "name": "device",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Device",
                    "fields": [
                        {"name": "os", "type": "string"},
                        {"name": "trusted", "type": "boolean"},
                        {
                            "name": "screen",
                            "type": {
                                "type": "record",
                                "name": "Screen",
                                "fields": [{"name": "width", "type": "int"}],
                            },
                        },
                    ],
                },
            ],
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "string"}},
        {"name": "blob", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9}},
        {"name": "birthday", "type": {"type": "int", "logicalType": "date"}},
        {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "either", "type": ["int", "string"]},
    ],
}

SAMPLE = [
    {
        "amount": 3.5,
        "n_items": 2,
        "channel": "web",
        "device": {"os": "ios", "screen": {"width": 300}},
    },
    {"amount": 120.0, "n_items": 7, "channel": "app", "device": None, "note": None},
    {"amount": 1, "n_items": 1, "channel": "web", "device.os": "android"},  # flattened row
]


def _inferred(sample: list[dict[str, Any]] | None = None) -> Any:
    return infer_project(SCHEMA, topic="payments", origin="test", sample=sample)


def test_init_infers_each_field_kind_from_its_avro_type() -> None:
    done = _inferred(SAMPLE)
    p = parse_project(done.text, "init.toml")
    assert p.events_topic == "payments"
    assert p.events.id_field == "payment_id" and done.id_field == "payment_id"
    assert p.events.time_field == "created_at"  # the first timestamp
    assert p.events.time_encoding is TimeEncoding.TIMESTAMP_MICROS
    assert p.features is not None
    by = {f.name: f for f in p.features.fields}
    assert list(by) == [
        "amount",
        "fee",
        "n_items",
        "total_cents",
        "is_new_device",
        "country",
        "home_country",
        "channel",
        "device_os",
        "device_trusted",
        "device_screen_width",
    ]
    assert by["amount"] == FeatureField("amount", minimum=1.0, maximum=120.0)  # the sample's
    assert by["fee"] == FeatureField("fee")  # no sample values: no range
    assert by["n_items"].minimum == 1.0 and by["n_items"].maximum == 7.0
    # a union with null: imputed
    assert by["total_cents"].missing is MissingPolicy.IMPUTE
    assert by["total_cents"].kind is FeatureKind.NUMERIC
    assert by["is_new_device"].kind is FeatureKind.BOOLEAN
    assert by["country"].categories == ("FR", "DE", "IT")
    assert by["country"].missing is MissingPolicy.REJECT
    assert by["home_country"].categories == ("FR", "DE", "IT")  # a named reference
    assert by["home_country"].missing is MissingPolicy.IMPUTE
    assert by["channel"].kind is FeatureKind.CATEGORICAL
    assert by["channel"].categories == ("app", "web")  # from the sample, sorted
    # nested records by dotted path; nullable under a nullable record
    assert by["device_os"].path == "device.os"
    assert by["device_os"].categories == ("android", "ios")
    assert by["device_os"].missing is MissingPolicy.IMPUTE
    assert by["device_trusted"].kind is FeatureKind.BOOLEAN
    assert by["device_screen_width"].path == "device.screen.width"
    assert by["device_screen_width"].maximum == 300.0
    # not features: each left as a comment saying why
    text = done.text
    for line in (
        "# note: a string with no value in the sample",
        "# tags: array: not a feature",
        "# attrs: map: not a feature",
        "# blob: bytes: not a feature",
        "# digest: fixed: not a feature",
        "# price: a decimal (bytes): not readable as a number",
        "# birthday: a date (decoded as a date/time, not a number)",
        "# updated_at: a timestamp (timestamp-millis): not a feature",
        "# either: union: not a feature",
    ):
        assert line in text, line
    assert "guessed: a string field named like an id" in text
    assert "guessed: the first timestamp field" in text
    assert set(done.skipped) == {
        "note",
        "tags",
        "attrs",
        "blob",
        "digest",
        "price",
        "birthday",
        "updated_at",
        "either",
    }


def test_init_without_a_sample_leaves_strings_commented_out() -> None:
    done = _inferred()
    p = parse_project(done.text, "init.toml")
    assert p.features is not None
    names = p.features.names
    assert "channel" not in names and "device_os" not in names
    assert "# channel: a string: categorical once its categories are listed (give --sample)" in (
        done.text
    )
    assert p.features.fields[0] == FeatureField("amount")


def test_init_says_when_it_finds_no_id_or_time() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "double"}]}
    done = infer_project(schema, topic="t", origin="r.avsc")
    assert done.id_field is None and done.time_field is None
    assert '# id_field = "..."  # no string field named like an id' in done.text
    assert "# time_field" in done.text
    p = parse_project(done.text, "init.toml")
    assert p.features == FeatureSpec((FeatureField("x"),))


def test_a_string_with_too_many_values_is_not_categorical() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    done = infer_project(schema, topic="t", origin="x", sample=[{"s": f"v{i}"} for i in range(101)])
    assert "# s: a string with 101 distinct values in the sample (more than 100)" in done.text


def test_what_init_writes_check_finds_fitting() -> None:
    p = parse_project(_inferred(SAMPLE).text, "init.toml")
    assert check(p.events, p.features, SCHEMA) == []


def _misfits(project: str) -> list[str]:
    p = parse_project(project, "p.toml")
    return [str(m) for m in check(p.events, p.features, SCHEMA)]


def test_check_lists_every_misfit_precisely() -> None:
    project = """
[events]
id_field = "paymentid"
time_field = "created_at"
time_encoding = "timestamp-millis"
key_field = "tags"

[[features]]
name = "amount"

[[features]]
name = "amout"

[[features]]
name = "os_name"
path = "device.os.name"

[[features]]
name = "wide"
path = "device.screen.height"

[[features]]
name = "country"
kind = "categorical"
categories = ["FR", "UK", "ES"]

[[features]]
name = "channel"
kind = "numeric"

[[features]]
name = "is_new_device"
kind = "numeric"

[[features]]
name = "n_items"
kind = "boolean"

[[features]]
name = "price"

[[features]]
name = "x"
path = "nowhere.x"
"""
    assert _misfits(project) == [
        "[events] id_field: the event has no field 'paymentid' (did you mean 'payment_id'?); "
        "it has: " + ", ".join(f["name"] for f in SCHEMA["fields"]),
        "[events] time_field: 'created_at' is long (timestamp-micros), which time_encoding = "
        "'timestamp-millis' cannot read (time_encoding = 'timestamp-micros' would)",
        "[events] key_field: 'tags' is array, not a string (or int, long, enum)",
        "[[features]] #2 'amout' name: the event has no field 'amout' (did you mean 'amount'?); "
        "it has: " + ", ".join(f["name"] for f in SCHEMA["fields"]),
        "[[features]] #3 'os_name' path: 'device.os' is string, nullable, not a record: "
        "'device.os.name' cannot go through it",
        "[[features]] #4 'wide' path: record 'device.screen' has no field 'height'; it has: width",
        "[[features]] #5 'country' categories: categories 'UK', 'ES' are not symbols of the "
        "enum 'country' (FR, DE, IT)",
        "[[features]] #6 'channel' name: 'channel' is string: a numeric feature reads double, "
        "float, int, long",
        "[[features]] #7 'is_new_device' name: 'is_new_device' is boolean: a numeric feature "
        "reads double, float, int, long",
        "[[features]] #8 'n_items' name: 'n_items' is int: a boolean feature reads boolean",
        "[[features]] #9 'price' name: 'price' is bytes (decimal): a numeric feature reads "
        "double, float, int, long",
        "[[features]] #10 'x' path: the event has no field 'nowhere.x' (no record 'nowhere')",
    ]


def test_check_reads_the_time_encodings() -> None:
    ok = "[events]\nid_field='payment_id'\ntime_field='updated_at'\n"
    assert _misfits(ok) == []  # timestamp-millis, the default encoding
    assert _misfits(ok + "time_encoding = 'epoch-millis'\n") == []
    assert _misfits(ok + "time_encoding = 'iso-8601'\n") == [
        "[events] time_field: 'updated_at' is long (timestamp-millis), which time_encoding = "
        "'iso-8601' cannot read (time_encoding = 'timestamp-millis' would)"
    ]
    assert (
        _misfits(
            "[events]\nid_field='payment_id'\ntime_field='channel'\ntime_encoding = 'iso-8601'\n"
        )
        == []
    )


def test_spec_differences_say_what_differs() -> None:
    project = FeatureSpec(
        (
            FeatureField("a", minimum=0.0),
            FeatureField("b", FeatureKind.CATEGORICAL, categories=("x", "y")),
            FeatureField("c"),
        )
    )
    model = FeatureSpec(
        (
            FeatureField("b", FeatureKind.CATEGORICAL, categories=("x",), path="d.b"),
            FeatureField("a", minimum=1.0),
            FeatureField("z"),
        )
    )
    assert spec_differences(project, project) == []
    assert spec_differences(project, model) == [
        "only in the project file: c",
        "only in the model: z",
        "in another order: project a, b, c; model b, a, z",
        "feature 'a': min 0.0 in the project file, 1.0 in the model",
        "feature 'b': path 'b' in the project file, 'd.b' in the model",
        "feature 'b': categories ['x', 'y'] in the project file, ['x'] in the model",
    ]


# ----------------------------------------------------------------------- the CLI


def _write(tmp_path: Path) -> Path:
    avsc = tmp_path / "payments.avsc"
    avsc.write_text(json.dumps(SCHEMA))
    return avsc


def test_cli_init_and_check_from_an_avsc_and_a_csv_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    avsc = _write(tmp_path)
    sample = tmp_path / "sample.csv"
    sample.write_text(
        "payment_id,amount,channel,device.os,is_new_device\np1,3.5,web,ios,true\np2,10,app,,false\n"
    )
    out = tmp_path / "streamscore.toml"
    argv = ["init", "--avsc", str(avsc), "--sample", str(sample), "--out", str(out)]
    assert cli.main(argv) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}: 11 features" in said
    p = cli.read_project(str(out))
    assert p.features is not None
    by = {f.name: f for f in p.features.fields}
    assert by["amount"].minimum == 3.5 and by["amount"].maximum == 10.0
    assert by["device_os"].categories == ("ios",)
    assert by["channel"].categories == ("app", "web")

    text = out.read_text()
    assert cli.main(argv) == 1  # never overwritten without --force
    assert "exists: give --force to overwrite it" in capsys.readouterr().err
    assert out.read_text() == text
    assert cli.main([*argv, "--force"]) == 0
    capsys.readouterr()

    assert cli.main(["check", "--config", str(out), "--avsc", str(avsc)]) == 0
    said = capsys.readouterr().out
    assert said == f"OK: {out} fits {avsc} (events fields and 11 features)\n"

    out.write_text(text.replace('name = "fee"', 'name = "fees"'))
    assert cli.main(["check", "--config", str(out), "--avsc", str(avsc)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(
        f"{out}: [[features]] #2 'fees' name: the event has no field 'fees' (did you mean 'fee'?)"
    )
    assert said[-1] == f"1 misfit(s) with {avsc}"


def test_cli_init_needs_one_schema_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["init", "--out", str(tmp_path / "x.toml")]) == 1
    assert "init needs one of --subject NAME (the registry) and --avsc FILE" in (
        capsys.readouterr().err
    )
    bad = tmp_path / "s.txt"
    bad.write_text("x")
    avsc = _write(tmp_path)
    argv = ["init", "--avsc", str(avsc), "--sample", str(bad), "--out", str(tmp_path / "y.toml")]
    assert cli.main(argv) == 1
    assert "must be a .csv, .avro or .parquet file" in capsys.readouterr().err
