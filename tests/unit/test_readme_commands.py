"""Every ``streamscore <command> --flag`` the README shows is a flag that command takes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from streamscore.cli import build_parser

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
