"""The README against the code: every ``streamscore <command> --flag`` it shows is a flag
that command takes, every project-file example parses, and the notebook snippet (Polars,
DuckDB, pandas, time travel) runs as written on a ground-truth table on local disk."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any

from streamscore.cli import build_parser
from streamscore.core.project import parse_project
from streamscore.feedback.groundtruth import GroundTruthStore, read_rows_at

from .test_groundtruth import DAY, row

README = Path(__file__).resolve().parents[2] / "README.md"


def flags_by_command() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            flags: set[str] = set()
            parsers = [sub]
            while parsers:
                p = parsers.pop()
                for a in p._actions:
                    flags.update(a.option_strings)
                    if isinstance(a, argparse._SubParsersAction):
                        parsers.extend(a.choices.values())
            out[name] = flags
    return out


def readme_flags(text: str, commands: set[str]) -> list[tuple[int, str, str]]:
    """(line, command, flag) for each flag written after ``streamscore <command>`` on the
    same line (a code span or a shell line)."""
    found = []
    for m in re.finditer(r"streamscore ([a-z-]+)([^`\n]*)", text):
        if m.group(1) not in commands:
            continue
        line = text.count("\n", 0, m.start()) + 1
        rest = m.group(2).split("#", 1)[0]  # not a shell comment's words
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            found.append((line, m.group(1), flag))
    return found


def test_the_readme_shows_only_flags_the_commands_take() -> None:
    known = flags_by_command()
    shown = readme_flags(README.read_text(encoding="utf-8"), set(known))
    assert len(shown) > 50  # the README shows many: the scan itself works
    unknown = [(line, cmd, flag) for line, cmd, flag in shown if flag not in known[cmd]]
    assert unknown == []


def test_the_scan_finds_a_flag_a_command_does_not_take() -> None:
    known = flags_by_command()
    text = "run `streamscore model publish --demo ab` then\nstreamscore train --since 0 # --x\n"
    shown = readme_flags(text, set(known))
    assert shown == [(1, "model", "--demo"), (2, "train", "--since")]
    assert "--demo" not in known["model"] and "--since" in known["train"]


def test_every_project_file_example_parses() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"```toml\n(.*?)```", text, re.S)
    ]
    assert len(blocks) >= 3
    for line, block in blocks:
        parse_project(block, f"README.md:{line}")  # a ProjectFileError names the line


MARKER = "<!-- notebook snippet:"
#: 2026-10-30T00:00Z: the table's five days straddle the snippet's "2026-11-01"
START = 1_793_318_400_000


def snippet() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    m = re.search(r"```python\n(.*?)```", after, re.S)
    assert m is not None, "no python block after the notebook marker"
    return m.group(1)


def test_the_readme_notebook_snippet_reads_the_table(tmp_path: Path) -> None:
    store = GroundTruthStore(str(tmp_path))
    store.open()
    for k in range(15):  # one version per flush: the snippet reads version 12
        store.append(row(f"e{k:02d}", START + (k % 5) * DAY + k))
        store.flush()
    code = snippet()
    # the snippet's own location and options give way to the test's table
    code, n = re.subn(r"^uri = .*$", f"uri = {str(tmp_path / 'rows')!r}", code, flags=re.M)
    assert n == 1
    code, n = re.subn(r"^opts = .*$", "opts = {}", code, flags=re.M)
    assert n == 1
    scope: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md notebook snippet", "exec"), scope)

    import polars as pl

    assert scope["frame"].shape[0] == 15
    recent = scope["recent"].select(pl.len()).collect().item()
    assert recent == sum(1 for k in range(15) if k % 5 >= 2)  # 2026-11-01 onwards
    version_12 = read_rows_at(str(tmp_path), version=12)
    assert scope["trained_on"].height == len(version_12.rows) == 12
    assert "model_version" in printed.getvalue() and "15" in printed.getvalue()


def test_the_metrics_table_lists_every_series_and_only_those() -> None:
    from prometheus_client import CollectorRegistry

    from streamscore.metrics.series import PREFIX, Metrics

    registry = CollectorRegistry()
    Metrics(registry)  # every series of both kinds of process
    exported = {family.name.removeprefix(f"{PREFIX}_") for family in registry.collect()}
    text = README.read_text(encoding="utf-8")
    table = text[text.index("### Metrics (prefix") : text.index("### Alerts")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {
        n.removesuffix("_total") for row in rows for n in re.findall(r"`([a-z0-9_]+)`", row)
    }
    assert len(exported) > 30
    assert exported - documented == set()  # a series the README does not explain
    assert documented - exported == set()  # a name the README shows that nothing exports
