"""The README's notebook snippet (Polars, DuckDB, pandas, time travel) runs as written on a
ground-truth table on local disk, and reads what the table holds."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

from streamscore.feedback.groundtruth import GroundTruthStore, read_rows_at

from .test_groundtruth import DAY, row

README = Path(__file__).resolve().parents[2] / "README.md"
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
