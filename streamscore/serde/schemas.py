"""Access to the project's Avro schemas (``schemas/*.avsc``, versioned ``name.vN.avsc``)."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

_FILE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


def schema_dir() -> Path:
    """``streamscore/_schemas`` in an installed wheel, the repo's ``schemas/`` otherwise
    (found from the top package, wherever in it this module lives)."""
    package = Path(str(resources.files("streamscore")))
    packaged = package / "_schemas"
    if packaged.is_dir():
        return packaged
    return package.resolve().parent / "schemas"


def versions(name: str) -> list[int]:
    """All versions of schema ``name`` shipped, ascending."""
    found = []
    for p in schema_dir().glob(f"{name}.v*.avsc"):
        m = _FILE.match(p.name)
        if m and m.group("name") == name:
            found.append(int(m.group("version")))
    return sorted(found)


def families() -> list[str]:
    names = {m.group("name") for p in schema_dir().glob("*.avsc") if (m := _FILE.match(p.name))}
    return sorted(names)


@cache
def _load_text(name: str, version: int) -> str:
    path = schema_dir() / f"{name}.v{version}.avsc"
    if not path.is_file():
        raise FileNotFoundError(f"no schema {name} v{version} at {path}")
    return path.read_text()


def load(name: str, version: int | None = None) -> dict[str, Any]:
    """The schema as a JSON object (a fresh copy); the latest version unless one is named."""
    if version is None:
        vs = versions(name)
        if not vs:
            raise FileNotFoundError(f"no schema named {name!r} in {schema_dir()}")
        version = vs[-1]
    loaded: dict[str, Any] = json.loads(_load_text(name, version))
    return loaded


def record_fields(schema: dict[str, Any]) -> dict[str, str]:
    """Top-level field name -> normalised type: ``double``, ``long``, ``string`` ...;
    an optional (``["null", T]``) field gets a trailing ``?``; anything else ``complex``."""
    out: dict[str, str] = {}
    for f in schema["fields"]:
        t = f["type"]
        optional = False
        if isinstance(t, list):
            non_null = [x for x in t if x != "null"]
            optional = len(non_null) < len(t)
            t = non_null[0] if len(non_null) == 1 else "complex"
        if isinstance(t, dict):
            t = (
                t["type"]
                if t.get("type") in {"int", "long", "float", "double", "string"}
                else "complex"
            )
        out[f["name"]] = f"{t}?" if optional else str(t)
    return out
