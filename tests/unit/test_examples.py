"""The examples are complete projects, and the package knows none of their names."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from streamscore.core.project import parse_project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("breast_cancer", "penguins")


def _schema_fields(example: str) -> set[str]:
    names: set[str] = set()
    for f in (ROOT / "examples" / example / "schemas").glob("*.avsc"):
        names.update(fld["name"] for fld in json.loads(f.read_text())["fields"])
    return names


@pytest.mark.parametrize("example", EXAMPLES)
def test_project_file_parses_and_names_its_own_fields(example: str) -> None:
    path = ROOT / "examples" / example / "streamscore.toml"
    p = parse_project(path.read_text(), str(path))
    fields = _schema_fields(example)
    assert p.events.id_field in fields and p.events.id_field != "event_id"
    assert p.events.time_field in fields and p.events.time_field != "event_time"
    assert p.labels is not None and p.train is not None and p.features is not None
    assert {p.labels.id_field, p.labels.label_field, p.labels.time_field} <= fields
    assert set(p.features.names) <= fields


def test_no_example_field_name_in_the_package() -> None:
    names = set()
    for example in EXAMPLES:
        names |= _schema_fields(example)
        doc = tomllib.loads((ROOT / "examples" / example / "streamscore.toml").read_text())
        names |= {doc["events"]["topic"], doc["labels"]["topic"]}
    found = []
    for src in (ROOT / "streamscore").rglob("*.py"):
        text = src.read_text()
        for name in names:
            if re.search(rf"\b{re.escape(name)}\b", text):
                found.append(f"{src.relative_to(ROOT)}: {name}")
    assert not found, found
