"""Each kind of process registers (and so exports) only the series it sets."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from streamscore.metrics.series import Metrics, ProcessKind

PACKAGE = Path(__file__).resolve().parents[2] / "streamscore"
# the modules each process runs that touch metrics (cli.py / cli_feedback.py build them)
USERS: dict[ProcessKind, tuple[str, ...]] = {
    "score": (
        "cli.py",
        "score/worker.py",
        "kafka/delivery.py",
        "score/drift.py",
        "models/updates.py",
        "models/watcher.py",
    ),
    "feedback": (
        "cli_feedback.py",
        "feedback/loop.py",
        "feedback/router.py",
        "feedback/promotion.py",
    ),
}
_USE = re.compile(r"\b(?:metrics|_m|_metrics|m)\.([a-z_]+)\b")


def exported(kind: ProcessKind | None) -> set[str]:
    reg = CollectorRegistry()
    Metrics(reg, kind)
    return {fam.name for fam in reg.collect()}


def family(attr: str) -> str:
    metric = getattr(Metrics(CollectorRegistry(), "score"), attr)
    (desc,) = metric.describe()
    return str(desc.name)


def used(kind: ProcessKind) -> set[str]:
    out: set[str] = set()
    for mod in USERS[kind]:
        for attr in _USE.findall((PACKAGE / mod).read_text()):
            if attr in vars(Metrics(CollectorRegistry())) and attr not in ("registry", "kind"):
                out.add(attr)
    return out


def test_a_feedback_worker_exports_no_model_loaded_gauge() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "feedback")
    m.model_loaded.set(1)  # still a usable object, just not on the registry
    assert reg.get_sample_value("streamscore_model_loaded") is None
    assert "streamscore_model_loaded" not in generate_latest(reg).decode()
    score = CollectorRegistry()
    Metrics(score, "score")
    assert score.get_sample_value("streamscore_model_loaded") == 0


def test_the_kinds_split_every_series_and_share_only_dead_letters_and_invalid_events() -> None:
    score, feedback, every = exported("score"), exported("feedback"), exported(None)
    assert score | feedback == every
    assert score & feedback == {
        "streamscore_dead_letters",
        "streamscore_invalid_events",
        "streamscore_registry_unavailable_batches",
    }
    assert "streamscore_predictions" in score and "streamscore_live_mae" in feedback
    assert len(every) >= 40


def test_each_process_registers_every_series_its_modules_set() -> None:
    for kind in USERS:
        attrs = used(kind)
        assert len(attrs) >= 10, (kind, attrs)
        missing = sorted(a for a in attrs if family(a) not in exported(kind))
        assert missing == [], f"{kind} sets series it does not export: {missing}"
