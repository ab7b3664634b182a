#!/usr/bin/env python3
"""Re-lay the flat ``streamscore/`` package out by concern (issue 11). Stdlib only.

Run it once, at the root of a clean checkout of any later main::

    python3 scripts/relayout.py --dry-run   # print the plan, change nothing
    python3 scripts/relayout.py             # move, rewrite, format; then review and commit

What it does, driven only by module NAMES (never by a module's lines, so it applies after
other branches changed the modules' contents):

1. ``git mv`` every ``streamscore/<old>.py`` of :data:`MODULE_MAP` (and the resource folders
   of :data:`RESOURCE_MOVES`) to its subpackage, and writes each subpackage's
   ``__init__.py`` (one docstring: what the room holds, from :data:`PACKAGES`).
2. Rewrites every import of a moved module in ``streamscore/``, ``tests/``, ``benchmarks/``
   and ``scripts/``: ``from .x import a``, ``from . import x``, ``from streamscore import
   x``, ``from streamscore.x import a``, ``import streamscore.x [as y]``. Relative imports
   stay relative (recomputed from the module's new place); ``from P import x`` of a
   renamed module keeps the old name as an alias (``from ..serde import codec as serde``).
3. Rewrites dotted references ``streamscore.<old>`` (strings such as monkeypatch targets,
   ``python -m streamscore.<old>``, docstrings, pyproject entries) and paths
   ``streamscore/<old>.py`` in every tracked text file, and, in Python files, string
   literals that are exactly ``"<old>.py"`` (file names joined to the package folder).
   ``streamscore.<old>.<name>`` is rewritten only when ``<name>`` is a top-level name of
   that module, so header names such as ``streamscore.worker.id`` stay as they are.
4. Regenerates README.md's module table (the table under ``| module | holds |``).
5. Runs ``ruff check --select I --fix`` and ``ruff format`` on the Python files it changed
   (from ``.venv/bin`` or the PATH), to sort and wrap the rewritten imports.
6. Checks the result: no module left at the top but :data:`TOP`, no package import cycle,
   and every package imports only packages listed before it in :data:`PACKAGES`.

It refuses to run twice (a target already exists), on a dirty work tree (``--allow-dirty``
to override), and when ``streamscore/`` holds a module the map does not place (add it to
:data:`MODULE_MAP`, or pass ``--keep-unmapped`` to leave it at the top).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT_PACKAGE = "streamscore"

# subpackage -> what it is for. The order is the reading order, from the ground up: every
# package imports only packages listed before it (checked after the move).
PACKAGES: dict[str, str] = {
    "core": "The words every other part uses; no Kafka, no I/O.",
    "metrics": "What the processes export to Prometheus.",
    "features": "Decoded events → feature matrix, one path for serving and training.",
    "serde": "Bytes on a topic ↔ records: the Confluent wire format with fastavro.",
    "kafka": "The Kafka edge: clients, limits, delivery.",
    "models": "How a signed model travels from a file to a worker's store.",
    "score": "The scoring path.",
    "feedback": "The feedback path: labels joined with predictions, judged, kept.",
    "train": "Retraining from the ground truth.",
    "dev": "Developer tools, never imported by a worker.",
}

# streamscore/<old>.py -> (streamscore/<package>/<new>.py, what it holds). Within a package
# in reading order. A module missing from a checkout is skipped (the map also names
# modules that other branches add).
MODULES: dict[str, tuple[str, str]] = {
    "records": ("core.records", "plain records that cross module boundaries"),
    "errors": ("core.errors", "the exception tree (one root, typed subclasses)"),
    "config": ("core.config", "frozen settings, secrets hidden"),
    "stop": ("core.stop", "stop signals of the long-running commands"),
    "redact": ("core.redact", "credentials in URLs kept out of logs"),
    "metrics": ("metrics.series", "every series, on an injected registry, per process kind"),
    "features": ("features.extract", "events → raw columns → imputed matrix"),
    "validation": ("features.validation", "per-field checks, one typed error per bad row"),
    "prepare": ("features.prepare", "extract, check, impute: the training entry point"),
    "serde": ("serde.codec", "wire header, schema cache, per-message and column-wise codecs"),
    "avro_scan": ("serde.avro_scan", "bounded scanning of Avro bodies"),
    "schemas": ("serde.schemas", "the project's versioned .avsc schemas"),
    "event_ids": ("serde.event_ids", "the event id of a message, without a full decode"),
    "kafka_clients": ("kafka.clients", "librdkafka settings per client, topic helpers"),
    "output_limits": ("kafka.output_limits", "how large an output may be"),
    "delivery": ("kafka.delivery", "at-least-once and transactional sinks"),
    "putback": ("kafka.putback", "putting a batch back while a service is away"),
    "bundle": ("models.bundle", "the signed ONNX bundle: format, checks, runtime"),
    "signing": ("models.signing", "signing keys and verifiers"),
    "envelope": ("models.envelope", "a model-topic record"),
    "model_store": ("models.store", "a worker's active models per role, swapped atomically"),
    "model_updates": ("models.updates", "applying envelopes to the store"),
    "model_watcher": ("models.watcher", "follows the compacted model topic"),
    "publish": ("models.publish", "publishes, lists and rolls back models"),
    "model_build": ("models.build", "a bundle from a data scientist's files"),
    "scoring": ("score.batch", "one micro-batch: decode, late policy, validate, predict, encode"),
    "worker": ("score.worker", "the score worker's Kafka loop"),
    "drift": ("score.drift", "feature and score drift (PSI) against the bundle's reference"),
    "feedback_router": ("feedback.router", "predictions and labels re-keyed by event id"),
    "join": ("feedback.join", "the label ↔ prediction join state (pure)"),
    "groundtruth": ("feedback.groundtruth", "the ground-truth table (Delta Lake)"),
    "promotion": ("feedback.promotion", "live quality and the shadow-promotion policy"),
    "feedback": ("feedback.loop", "the feedback worker's Kafka loop"),
    "train": ("train.training", "fit, evaluate, compare, retrain"),
    "synthetic": ("train.synthetic", "the demo's synthetic world"),
    "localcluster": ("dev.localcluster", "downloads, starts and stops Kafka + registry"),
    "demo": ("dev.demo", "`streamscore demo`: the whole loop, with a picture"),
}
MODULE_MAP: dict[str, str] = {old: new for old, (new, _what) in MODULES.items()}

# modules that stay at the top: the command line (it parses, builds settings, wires)
TOP = ("__init__", "__main__", "cli", "cli_feedback")

# Avro schemas (.avsc) and dashboards (.json) are data: never rewritten.
# folders of data files that move with the modules that read them (relative to the repo)
RESOURCE_MOVES: dict[str, str] = {"streamscore/resources": "streamscore/dev/resources"}

PY_DIRS = ("streamscore", "tests", "benchmarks", "scripts")
TEXT_SUFFIXES = {
    ".md", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".sh", ".xml",
    ".rst", ".py",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile", "run"}
SELF = Path("scripts/relayout.py")


# ----------------------------------------------------------------------------- model


@dataclass
class Plan:
    moves: dict[str, str]  # old module -> new dotted path under the root package
    skipped: list[str]  # map entries whose module is not in this checkout
    unmapped: list[str]  # modules at the top the map does not place
    top_names: dict[str, set[str]]  # old module -> its top-level names
    resources: dict[str, str]
    left_as_is: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def new_module(self, old_abs: str) -> str | None:
        """``streamscore.<old>`` -> its new absolute name (None if it does not move)."""
        parts = old_abs.split(".")
        if len(parts) == 2 and parts[0] == ROOT_PACKAGE and parts[1] in self.moves:
            return f"{ROOT_PACKAGE}.{self.moves[parts[1]]}"
        return None

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def git(*args: str, capture: bool = False) -> str:
    out = subprocess.run(["git", *args], check=True, text=True, capture_output=capture)
    return out.stdout if capture else ""


def top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()

    def visit(body: Iterable[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(
                node.target, ast.Name
            ):
                names.add(node.target.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for a in node.names:
                    names.add((a.asname or a.name).split(".")[0])
            elif isinstance(node, ast.If | ast.Try | ast.With):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return names


def make_plan(keep_unmapped: bool) -> Plan:
    pkg = Path(ROOT_PACKAGE)
    tracked = git("ls-files", f"{ROOT_PACKAGE}/*.py", capture=True).split()
    present = sorted(Path(f).stem for f in tracked if Path(f).parent == pkg)
    moves = {m: new for m, new in MODULE_MAP.items() if m in present}
    skipped = sorted(m for m in MODULE_MAP if m not in present)
    unmapped = [m for m in present if m not in MODULE_MAP and m not in TOP]
    if unmapped and not keep_unmapped:
        sys.exit(
            "relayout: refusing: streamscore/ holds module(s) the map does not place: "
            + ", ".join(f"{m}.py" for m in unmapped)
            + "\n  add each to MODULE_MAP in scripts/relayout.py (or pass --keep-unmapped)"
        )
    for pkg_name in {v.split(".")[0] for v in moves.values()}:
        if pkg_name not in PACKAGES:
            sys.exit(f"relayout: MODULE_MAP names package {pkg_name!r} missing from PACKAGES")
    top_names = {m: top_level_names(pkg / f"{m}.py") for m in moves}
    resources = {s: d for s, d in RESOURCE_MOVES.items() if Path(s).exists()}
    return Plan(moves, skipped, unmapped, top_names, resources)


# ---------------------------------------------------------------- rewriting python


def module_name_of(path: Path) -> tuple[str, bool]:
    """(dotted module name of a .py file, whether it is a package's __init__)."""
    parts = list(path.with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def resolve(current: str, is_pkg: bool, level: int, module: str | None) -> str:
    """The absolute name ``from <level dots><module>`` names, seen from ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def relative(from_package: str, target: str) -> tuple[int, str]:
    """(level, module) of a relative import of ``target`` from inside ``from_package``."""
    a, b = from_package.split("."), target.split(".")
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return len(a) - common + 1, ".".join(b[common:])


def fmt_from(level: int, module: str, names: list[tuple[str, str | None]]) -> str:
    items = ", ".join(n if a is None or a == n else f"{n} as {a}" for n, a in names)
    return f"from {'.' * level}{module} import {items}"


class PyRewriter:
    def __init__(self, plan: Plan, path: Path, new_path: Path) -> None:
        self.plan, self.path = plan, path
        self.current, self.is_pkg = module_name_of(path)
        new_current, _ = module_name_of(new_path)
        self.new_package = new_current if self.is_pkg else new_current.rpartition(".")[0]
        self.in_package = new_path.parts[0] == ROOT_PACKAGE
        self.changed = False

    # -- one import statement -> replacement text (None: leave as is)
    def import_from(self, node: ast.ImportFrom) -> str | None:
        target = resolve(self.current, self.is_pkg, node.level, node.module)
        if node.level == 0 and not target.startswith(ROOT_PACKAGE):
            return None
        if node.level and not self.current.startswith(ROOT_PACKAGE):
            return None  # a test or benchmark importing its own siblings
        moved = self.plan.new_module(target)
        names = [(a.name, a.asname) for a in node.names]
        relative_style = node.level > 0
        if moved is not None:  # from <moved module> import names
            return self.render([(moved, names)], relative_style)
        if target != ROOT_PACKAGE:
            return None
        # from streamscore import x, y: each name may be a moved module
        groups: dict[str, list[tuple[str, str | None]]] = {}
        touched = False
        for n, a in names:
            new = self.plan.new_module(f"{ROOT_PACKAGE}.{n}")
            if new is None:
                groups.setdefault(ROOT_PACKAGE, []).append((n, a))
                continue
            touched = True
            parent, _, leaf = new.rpartition(".")
            groups.setdefault(parent, []).append((leaf, a or (n if leaf != n else None)))
        if not touched:
            return None
        return self.render(list(groups.items()), relative_style)

    def render(
        self, groups: list[tuple[str, list[tuple[str, str | None]]]], relative_style: bool
    ) -> str:
        lines = []
        for module, names in groups:
            if relative_style and self.in_package:
                level, rel = relative(self.new_package, module)
                lines.append(fmt_from(level, rel, names))
            else:
                lines.append(fmt_from(0, module, names))
        return "\n".join(lines)

    def import_plain(self, node: ast.Import) -> str | None:
        out, touched = [], False
        for a in node.names:
            new = self.plan.new_module(a.name)
            if new is None:
                out.append(a.name if a.asname is None else f"{a.name} as {a.asname}")
            else:
                touched = True
                out.append(new if a.asname is None else f"{new} as {a.asname}")
        return f"import {', '.join(out)}" if touched else None

    def rewrite(self, source: str) -> str:
        tree = ast.parse(source)
        data = source.encode("utf-8")
        starts = [0]
        for line in source_lines(source):
            starts.append(starts[-1] + len(line.encode("utf-8")))

        def offset(line: int, col: int) -> int:
            return starts[line - 1] + col

        spans: list[tuple[int, int, str | None]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                new = (
                    self.import_from(node)
                    if isinstance(node, ast.ImportFrom)
                    else self.import_plain(node)
                )
                a = offset(node.lineno, node.col_offset)
                b = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
                if new is not None:
                    indent = " " * node.col_offset
                    new = new.replace("\n", "\n" + indent)
                    if b"#" in data[a:b]:
                        print(f"  warning: comments inside {self.path}:{node.lineno} dropped")
                    self.plan.count("imports rewritten")
                spans.append((a, b, new))
        spans += self.token_spans(source, tree, starts, spans)
        spans.sort()
        out, pos = [], 0
        for a, b, new in spans:
            out.append(data[pos:a].decode("utf-8"))
            out.append(data[a:b].decode("utf-8") if new is None else new)
            pos = b
        out.append(data[pos:].decode("utf-8"))
        return "".join(out)

    def token_spans(
        self,
        source: str,
        tree: ast.AST,
        starts: list[int],
        imports: list[tuple[int, int, str | None]],
    ) -> list[tuple[int, int, str | None]]:
        """Replacements outside import statements. Comments and docstrings are prose:
        every reference is rewritten. Other string literals are data unless they name a
        module's attribute (``"streamscore.worker.time"``, a patch target), follow ``"-m"``,
        or are a path or file name of a module; a bare ``"streamscore.<old>"`` elsewhere (a
        marker, a namespace) is left as is and listed. In code, ``streamscore.<old>``."""
        lines = source_lines(source)
        docstrings: set[tuple[int, int]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0] if node.body else None
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    docstrings.add((first.lineno, first.col_offset))

        def at(row: int, col: int) -> int:
            return starts[row - 1] + len(lines[row - 1][:col].encode("utf-8"))

        def inside_import(a: int) -> bool:
            return any(x <= a < y for x, y, _ in imports)

        where = str(self.path)
        out: list[tuple[int, int, str | None]] = []
        toks = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type
            not in (
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.INDENT,
                tokenize.DEDENT,
                tokenize.ENDMARKER,
            )
        ]
        for i, t in enumerate(toks):
            a, b = at(*t.start), at(*t.end)
            if inside_import(a):
                continue
            new = t.string
            if t.type == tokenize.COMMENT:
                new = rewrite_text(self.plan, t.string, where)
            elif t.type == tokenize.STRING:
                line_bytes = lines[t.start[0] - 1].encode("utf-8")
                col_bytes = len(line_bytes[: len(lines[t.start[0] - 1][: t.start[1]].encode())])
                if (t.start[0], col_bytes) in docstrings:
                    new = rewrite_text(self.plan, t.string, where)
                else:
                    prev = toks[i - 2].string if i >= 2 and toks[i - 1].string == "," else ""
                    dash_m = prev in ('"-m"', "'-m'")
                    new = rewrite_text(self.plan, t.string, where, strict=not dash_m)
                    new = FILE_STRING.sub(self.file_string, new)
            elif (
                t.type == tokenize.NAME
                and t.string == ROOT_PACKAGE
                and i + 2 < len(toks)
                and toks[i + 1].string == "."
                and toks[i + 2].string in self.plan.moves
                and (i == 0 or toks[i - 1].string != ".")
            ):
                b = at(*toks[i + 2].end)
                new = f"{ROOT_PACKAGE}.{self.plan.moves[toks[i + 2].string]}"
                self.plan.count("dotted references rewritten")
                out.append((a, b, new))
                continue
            if new != t.string:
                out.append((a, b, new))
        return out

    def text(self, s: str) -> str:
        return rewrite_text(self.plan, s, str(self.path))

    def file_string(self, m: re.Match[str]) -> str:
        q, old = m.group(1), m.group(2)
        if old not in self.plan.moves:
            return m.group(0)
        self.plan.count("file-name strings rewritten")
        return f"{q}{self.plan.moves[old].replace('.', '/')}.py{q}"


def source_lines(source: str) -> list[str]:
    """Physical lines as tokenize counts them (split at newlines only), ends kept."""
    return [line + "\n" for line in source.split("\n")[:-1]] + [source.split("\n")[-1]]


FILE_STRING = re.compile(r"([\"'])([a-z_][a-z0-9_]*)\.py\1")


# ------------------------------------------------------------------ rewriting text


def patterns(plan: Plan) -> tuple[re.Pattern[str], re.Pattern[str]]:
    names = "|".join(sorted(plan.moves, key=len, reverse=True))
    dotted = re.compile(rf"(?<![\w.]){ROOT_PACKAGE}\.({names})(?![\w])(\.\w+)?")
    paths = [re.escape(f"{ROOT_PACKAGE}/{m}.py") for m in plan.moves]
    paths += [re.escape(s) + r"(?=[/\s`'\")]|$)" for s in plan.resources]
    path = re.compile(rf"(?<![\w])({'|'.join(paths)})")
    return dotted, path


_PATTERNS: dict[int, tuple[re.Pattern[str], re.Pattern[str]]] = {}


def rewrite_text(plan: Plan, s: str, where: str, *, strict: bool = False) -> str:
    dotted, path = _PATTERNS.setdefault(id(plan), patterns(plan))

    def dot(m: re.Match[str]) -> str:
        old, attr = m.group(1), m.group(2)
        if (attr is not None and attr[1:] not in plan.top_names[old]) or (strict and attr is None):
            plan.left_as_is.append(f"{where}: {m.group(0)}")
            return m.group(0)
        plan.count("dotted references rewritten")
        return f"{ROOT_PACKAGE}.{plan.moves[old]}{attr or ''}"

    def pth(m: re.Match[str]) -> str:
        found = m.group(1)
        plan.count("paths rewritten")
        for src, dst in plan.resources.items():
            if found == src:
                return dst
        old = found[len(ROOT_PACKAGE) + 1 : -3]
        return f"{ROOT_PACKAGE}/{plan.moves[old].replace('.', '/')}.py"

    return path.sub(pth, dotted.sub(dot, s))


# ------------------------------------------------------------------- README table

README_HEAD = "| module | holds |"


def package_contents(plan: Plan) -> dict[str, list[tuple[str, str]]]:
    """package -> [(module, what it holds)], in reading order, for this checkout."""
    out: dict[str, list[tuple[str, str]]] = {p: [] for p in PACKAGES}
    for old, new in plan.moves.items():
        p, _, leaf = new.partition(".")
        out[p].append((leaf, MODULES[old][1]))
    return out


def readme_table(plan: Plan) -> str:
    contents = package_contents(plan)
    rows = [README_HEAD, "|---|---|"]
    for p, purpose in PACKAGES.items():
        if contents[p]:
            mods = "; ".join(f"`{m}` {what}" for m, what in contents[p])
            rows.append(f"| `{p}/` | {purpose} {mods} |")
    top = [m for m in TOP if Path(ROOT_PACKAGE, f"{m}.py").exists() and m != "__init__"]
    rows.append(
        f"| {', '.join(f'`{m}.py`' for m in top)} | the command line: subcommands, the only "
        "code that reads the environment; builds the settings and wires the parts |"
    )
    order = " → ".join(f"`{p}/`" for p in PACKAGES if contents[p])
    rows += [
        "",
        "Read the tree top to bottom, as the table lists it: each package imports only "
        f"packages above it ({order} → `cli.py`). `core/` gives the words; `features/`, "
        "`serde/` and `kafka/` turn bytes on a topic into columns and a matrix; `models/` "
        "is how a signed model reaches a worker; `score/` is the scoring path that uses all "
        "of them; `feedback/` and `train/` close the loop from labels back to a better "
        "model; `dev/` and the command line sit on top.",
    ]
    return "\n".join(rows)


def rewrite_readme(plan: Plan, text: str) -> str:
    lines = text.split("\n")
    try:
        i = lines.index(README_HEAD)
    except ValueError:
        print(f"  warning: README.md has no {README_HEAD!r} table; table not regenerated")
        return text
    j = i
    while j < len(lines) and lines[j].startswith("|"):
        j += 1
    # an earlier run's reading guide (paragraph right under the table) is replaced too
    if j + 1 < len(lines) and lines[j] == "" and lines[j + 1].startswith("Read the tree "):
        j += 2
        while j < len(lines) and lines[j] != "":
            j += 1
    plan.count("README table regenerated")
    return "\n".join([*lines[:i], readme_table(plan), *lines[j:]])


# --------------------------------------------------------------------------- checks


def package_graph(root: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent)
        current, is_pkg = module_name_of(rel)
        parts = current.split(".")
        src = parts[1] if len(parts) > 2 or (is_pkg and len(parts) == 2) else "(top)"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = resolve(current, is_pkg, node.level, node.module)
                targets = (
                    [base] if base != ROOT_PACKAGE else [f"{base}.{a.name}" for a in node.names]
                )
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                tp = t.split(".")
                if tp[0] != ROOT_PACKAGE or len(tp) < 2:
                    continue
                dst = tp[1] if tp[1] in PACKAGES else "(top)"
                if dst != src:
                    graph.setdefault(src, set()).add(dst)
    return graph


def check(plan: Plan) -> list[str]:
    problems = []
    left = [p.stem for p in Path(ROOT_PACKAGE).glob("*.py") if p.stem not in TOP]
    if left and not plan.unmapped:
        problems.append(f"modules still at the top: {left}")
    graph = package_graph(Path(ROOT_PACKAGE))
    order = list(PACKAGES)
    for src, dsts in sorted(graph.items()):
        if src == "(top)":
            continue
        for dst in sorted(dsts):
            if dst == "(top)":
                problems.append(f"{src}/ imports a module at the top of the package")
            elif order.index(dst) > order.index(src):
                problems.append(f"{src}/ imports {dst}/, which the table lists after it")
    print("package imports (each imports only packages listed before it):")
    for p in order:
        print(f"  {p:<9} -> {', '.join(sorted(graph.get(p, set()))) or '-'}")
    print(f"  {'(top)':<9} -> {', '.join(sorted(graph.get('(top)', set())))}")
    return problems


# ----------------------------------------------------------------------------- main


def tracked_text_files() -> list[Path]:
    out = []
    for name in git("ls-files", capture=True).splitlines():
        p = Path(name)
        if p == SELF or not p.is_file():
            continue
        if p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES:
            out.append(p)
    return out


def find_ruff() -> str | None:
    local = Path(".venv/bin/ruff")
    return str(local) if local.exists() else shutil.which("ruff")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--allow-dirty", action="store_true", help="run on a dirty work tree")
    ap.add_argument(
        "--keep-unmapped", action="store_true", help="leave modules the map lacks at the top"
    )
    args = ap.parse_args(argv)

    if not Path(ROOT_PACKAGE, "__init__.py").is_file() or not Path(".git").exists():
        sys.exit("relayout: run me at the repository root (streamscore/ and .git here)")
    done = [p for p in PACKAGES if Path(ROOT_PACKAGE, p, "__init__.py").exists()]
    if done:
        sys.exit(f"relayout: refusing: already applied (streamscore/{done[0]}/ exists)")
    dirty = git("status", "--porcelain", "--untracked-files=no", capture=True)
    if dirty and not args.dry_run and not args.allow_dirty:
        sys.exit("relayout: refusing: the work tree is dirty (commit or stash first)")

    plan = make_plan(args.keep_unmapped)
    for old, new in plan.moves.items():
        if Path(ROOT_PACKAGE, *new.split(".")).with_suffix(".py").exists():
            sys.exit(f"relayout: refusing: target of {old} exists already")
    print(f"relayout: {len(plan.moves)} modules into {len(PACKAGES)} packages")
    for old, new in plan.moves.items():
        print(f"  streamscore/{old}.py -> streamscore/{new.replace('.', '/')}.py")
    for src, dst in plan.resources.items():
        print(f"  {src}/ -> {dst}/")
    if plan.skipped:
        print(f"  not in this checkout (skipped): {', '.join(plan.skipped)}")
    if plan.unmapped:
        print(f"  left at the top (unmapped): {', '.join(plan.unmapped)}")

    # 1. compute every new text from the old tree
    new_path = {
        Path(ROOT_PACKAGE, f"{o}.py"): Path(ROOT_PACKAGE, *n.split(".")).with_suffix(".py")
        for o, n in plan.moves.items()
    }
    outputs: dict[Path, str] = {}
    for f in tracked_text_files():
        if not f.exists():
            continue
        old_text = f.read_text(encoding="utf-8")
        dest = new_path.get(f, f)
        for src, dst in plan.resources.items():
            if f.is_relative_to(src):
                dest = Path(dst) / f.relative_to(src)
        if f.suffix == ".py" and f.parts[0] in PY_DIRS:
            text = PyRewriter(plan, f, dest).rewrite(old_text)
        else:
            text = rewrite_text(plan, old_text, str(f))
        if f == Path("README.md"):
            text = rewrite_readme(plan, text)
        if text != old_text or dest != f:
            outputs[dest] = text

    if args.dry_run:
        for k, v in sorted(plan.counts.items()):
            print(f"  {k}: {v}")
        print(f"  files that would change: {len(outputs)}")
        for s in plan.left_as_is:
            print(f"  left as is (data, or not a name of that module): {s}")
        return 0

    # 2. move, write the packages' faces, write the rewritten texts
    for p, desc in PACKAGES.items():
        if any(n.split(".")[0] == p for n in plan.moves.values()):
            init = Path(ROOT_PACKAGE, p, "__init__.py")
            init.parent.mkdir(exist_ok=True)
            mods = package_contents(plan)[p]
            body = "\n".join(f"- ``{m}``: {what}" for m, what in mods)
            init.write_text(f'"""{wrap_doc(desc)}\n\n{body}\n"""\n', encoding="utf-8")
            git("add", str(init))
    for old_file, new_file in new_path.items():
        git("mv", str(old_file), str(new_file))
    for src, dst in plan.resources.items():
        git("mv", src, dst)
    for f, text in outputs.items():
        f.write_text(text, encoding="utf-8")
    print(f"relayout: wrote {len(outputs)} files")
    for k, v in sorted(plan.counts.items()):
        print(f"  {k}: {v}")
    for s in plan.left_as_is:
        print(f"  left as is (data, or not a name of that module): {s}")

    # 3. sort and wrap the rewritten imports
    ruff = find_ruff()
    py = [str(f) for f in outputs if f.suffix == ".py"]
    py += [f"{ROOT_PACKAGE}/{p}/__init__.py" for p in PACKAGES if Path(ROOT_PACKAGE, p).is_dir()]
    if ruff is None:
        print("relayout: ruff not found: run `ruff check --select I --fix` and `ruff format`")
    else:
        subprocess.run([ruff, "check", "--quiet", "--select", "I", "--fix", *py], check=False)
        subprocess.run([ruff, "format", "--quiet", *py], check=False)
        print(f"relayout: imports sorted and formatted with {ruff}")
    broken, too_long = 0, list[str]()
    for name in py:
        n_broken, n_long = wrap_long_prose(Path(name), line_length())
        broken, too_long = broken + n_broken, too_long + n_long
    print(f"relayout: {broken} comment/docstring lines broken under the line length")
    for where in too_long:
        print(f"relayout: PROBLEM: a line is still too long: {where}")
    git("add", "-u")

    # 4. check
    problems = check(plan)
    for p in problems:
        print(f"relayout: PROBLEM: {p}")
    print("relayout: done; review `git status`, run `make lint` and the tests, then commit")
    return 1 if problems else 0


def line_length() -> int:
    m = re.search(r"(?m)^line-length\s*=\s*(\d+)", Path("pyproject.toml").read_text())
    return int(m.group(1)) if m else 100


def wrap_long_prose(path: Path, limit: int) -> tuple[int, list[str]]:
    """Break comment and docstring lines the longer names pushed past ``limit`` (ruff
    format wraps code, not prose). Returns (lines broken, lines still too long)."""
    source = path.read_text(encoding="utf-8")
    prose: set[int] = set()  # 1-based numbers of comment-only lines and docstring lines
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip():
            prose.add(tok.start[0])
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                prose.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    out, broken, still = [], 0, []
    for n, line in enumerate(source.split("\n"), start=1):
        while len(line) > limit and n in prose:
            stripped = line.lstrip()
            indent = line[: len(line) - len(stripped)]
            prefix = indent
            if stripped.startswith("#"):
                prefix = indent + re.match(r"#:? ?", stripped).group(0)  # type: ignore[union-attr]
            cut = line.rfind(" ", len(prefix) + 1, limit + 1)
            if cut <= len(prefix):
                break
            out.append(line[:cut])
            line = prefix + line[cut + 1 :]
            broken += 1
        if len(line) > limit and n in prose:
            still.append(f"{path}:{n}")
        out.append(line)
    path.write_text("\n".join(out), encoding="utf-8")
    return broken, still


def wrap_doc(text: str, width: int = 92) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
