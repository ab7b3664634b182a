"""Replay the palmerpenguins package's bundled data (344 penguins) as measurement
events, and each species identification a little later on the label topic (see
../replay.py). The two penguins without any measurement are left out.

``heavy`` is derived here, not in the data: a body mass of 4.5 kg or more.

    python examples/penguins/produce.py --config examples/penguins/streamscore.toml
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from replay import Row, Target, arguments, replay, write_sample  # noqa: E402

HEAVY_G = 4500
SEED = 344


def _number(text: str) -> float | None:
    return None if text in ("", "NA") else float(text)


def data() -> list[dict[str, Any]]:
    """Every measured penguin: its species and its measurements, by this project's field
    names (None where the data has NA), in replay order (the file lists the penguins
    species by species; they are shuffled with a fixed seed)."""
    path = resources.files("palmerpenguins") / "data" / "penguins.csv"
    out = []
    with path.open("r", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            flipper, mass = _number(r["flipper_length_mm"]), _number(r["body_mass_g"])
            if flipper is None or mass is None:
                continue
            out.append(
                {
                    "species": r["species"],
                    "island": r["island"],
                    "sex": None if r["sex"] in ("", "NA") else r["sex"],
                    "bill_length_mm": _number(r["bill_length_mm"]),
                    "bill_depth_mm": _number(r["bill_depth_mm"]),
                    "flipper_length_mm": int(flipper),
                    "body_mass_g": int(mass),
                    "heavy": mass >= HEAVY_G,
                }
            )
    random.Random(SEED).shuffle(out)  # the replay order: the same on every run
    return out


def rows(repeat: int = 1, first_tag: int = 1) -> Iterator[Row]:
    tag = first_tag
    for _ in range(repeat):
        for p in data():
            measures = {k: v for k, v in p.items() if k != "species"}

            def event(now_ms: int, m: dict[str, Any] = measures, t: int = tag) -> dict[str, Any]:
                when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat()
                return {"penguin_tag": t, "measured_on": when, **m}

            def label(now_ms: int, t: int = tag, s: str = p["species"]) -> dict[str, Any]:
                return {"tagged_penguin": t, "species": s, "called_at_ms": now_ms}

            yield str(tag), event, label
            tag += 1


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("--first-tag", type=int, default=1, help="band number of the first penguin")
    args = p.parse_args()
    if args.write_sample:
        n = write_sample(args.write_sample, args.config, data(), args.sample_rows)
        print(f"wrote {n} penguins (features and species) to {args.write_sample}")
        return
    target = Target.from_project(args.config, args.bootstrap, args.registry_url)
    n = replay(
        target,
        rows(args.repeat, args.first_tag),
        event_schema=HERE / "schemas" / "penguin.avsc",
        label_schema=HERE / "schemas" / "species.avsc",
        rate=args.rate,
        label_delay_s=args.label_delay_s,
    )
    print(
        f"produced {n[0]} penguins to {target.events_topic}, {n[1]} species calls to "
        f"{target.labels_topic}"
    )


if __name__ == "__main__":
    main()
