"""The package's layout holds as the README draws it: its layout table names every module
of each package, each package imports only the packages above it (read top to bottom:
``core/`` first, ``dev/`` last, the command line on top), and the pure core never imports
the Kafka client."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streamscore"
#: modules of the pure core outside the wholly pure packages (DESIGN: the join state, the
#: drift math, the model store, the bundle format, the scoring batch)
PURE_MODULES = (
    "feedback/join.py",
    "feedback/state.py",
    "score/batch.py",
    "score/drift.py",
    "models/store.py",
    "models/runtime.py",
    "models/container.py",
)
PURE_PACKAGES = ("core", "metrics", "features")


def packages() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def readme_order() -> list[str]:
    """The order the README gives: `core/` → `metrics/` → ... → `cli.py`."""
    m = re.search(r"each package imports only packages above it \(([^)]*)\)", readme())
    assert m is not None, "the README's sentence on the import order moved"
    return re.findall(r"`([a-z_]+)/`", m.group(1))


def imported(py: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``py``, relative ones made absolute."""
    package = ".".join(py.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_of(py.read_text(encoding="utf-8"), package)


def imports_of(source: str, package: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):  # inside functions too
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def test_the_layout_table_names_every_module_of_each_package() -> None:
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z]+)/` \| (.*) \|$", readme(), re.M)
    }
    assert sorted(rows) == packages()
    unnamed = [
        f"{folder}/{py.stem}"
        for folder in packages()
        for py in sorted((PACKAGE / folder).glob("*.py"))
        if py.stem != "__init__" and f"`{py.stem}`" not in rows[folder]
    ]
    assert unnamed == []


def test_each_package_imports_only_the_packages_above_it() -> None:
    order = readme_order()
    assert sorted(order) == packages()
    rank = {name: i for i, name in enumerate(order)}
    upward = []
    for name in order:
        for py in sorted((PACKAGE / name).rglob("*.py")):
            for line, mod in imported(py):
                parts = mod.split(".")
                if parts[0] != "streamscore" or len(parts) < 2:
                    continue
                target = parts[1]
                if target.startswith("cli") or rank.get(target, -1) > rank[name]:
                    upward.append(f"{py.relative_to(ROOT)}:{line} imports {mod}")
    assert upward == []


def test_the_pure_core_never_imports_the_kafka_client() -> None:
    files = [p for name in PURE_PACKAGES for p in sorted((PACKAGE / name).rglob("*.py"))]
    files += [PACKAGE / m for m in PURE_MODULES]
    modules = [".".join(f.relative_to(ROOT).with_suffix("").parts) for f in files]
    # imported in a fresh interpreter: what they load, at any depth, is in sys.modules
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'confluent_kafka'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_import_reader_resolves_relative_imports() -> None:
    source = (
        "from ..feedback.state import META\n"
        "from . import clients\n"
        "import confluent_kafka\n"
        "def f():\n"
        "    from ..train.recipe import fit_recipe\n"
    )
    assert sorted(imports_of(source, "streamscore.kafka")) == [
        (1, "streamscore.feedback.state"),
        (2, "streamscore.kafka"),
        (3, "confluent_kafka"),
        (5, "streamscore.train.recipe"),
    ]
