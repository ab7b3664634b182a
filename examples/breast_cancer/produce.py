"""Replay scikit-learn's bundled breast-cancer data (569 biopsies) as biopsy events, and
each diagnosis a little later on the label topic (see ../replay.py).

    python examples/breast_cancer/produce.py --config examples/breast_cancer/streamscore.toml
"""

from __future__ import annotations

import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from replay import Row, Target, arguments, replay, write_sample  # noqa: E402

FEATURES = (
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
)
CLINICS = ("north", "south", "east", "west")
SEED = 569


def data() -> tuple[list[dict[str, float]], list[str]]:
    """The data set's measurements (the ten means, by this project's field names) and
    each biopsy's outcome (``malignant`` / ``benign``), in replay order (shuffled with
    a fixed seed)."""
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in ds.feature_names]
    cols = [names.index(f) for f in FEATURES]
    rows = [{f: float(r[c]) for f, c in zip(FEATURES, cols, strict=True)} for r in ds.data]
    outcomes = [str(ds.target_names[t]) for t in ds.target]
    order = list(range(len(rows)))
    random.Random(SEED).shuffle(order)  # the replay order: the same on every run
    return [rows[i] for i in order], [outcomes[i] for i in order]


def sample() -> Iterator[dict[str, Any]]:
    """The rows in replay order as training rows: measurements and ``pathology``."""
    measures, outcomes = data()
    for m, outcome in zip(measures, outcomes, strict=True):
        yield {**m, "pathology": outcome}


def rows(repeat: int = 1) -> Iterator[Row]:
    measures, outcomes = data()
    for _ in range(repeat):
        for i, (m, outcome) in enumerate(zip(measures, outcomes, strict=True)):
            biopsy = uuid.uuid4().hex
            clinic = CLINICS[i % len(CLINICS)]

            def event(
                now_ms: int, m: dict[str, float] = m, b: str = biopsy, c: str = clinic
            ) -> dict[str, Any]:
                return {"biopsy_id": b, "sampled_at": now_ms * 1000, "clinic": c, **m}

            def label(now_ms: int, b: str = biopsy, o: str = outcome) -> dict[str, Any]:
                return {"biopsy_ref": b, "pathology": o, "diagnosed_at": now_ms}

            yield clinic, event, label


def main() -> None:
    args = arguments(__doc__ or "").parse_args()
    if args.write_sample:
        n = write_sample(args.write_sample, args.config, sample(), args.sample_rows)
        print(f"wrote {n} biopsies (features and pathology) to {args.write_sample}")
        return
    target = Target.from_project(args.config, args.bootstrap, args.registry_url)
    n = replay(
        target,
        rows(args.repeat),
        event_schema=HERE / "schemas" / "biopsy.avsc",
        label_schema=HERE / "schemas" / "diagnosis.avsc",
        rate=args.rate,
        label_delay_s=args.label_delay_s,
    )
    print(
        f"produced {n[0]} biopsies to {target.events_topic}, {n[1]} diagnoses to "
        f"{target.labels_topic}"
    )


if __name__ == "__main__":
    main()
