"""Each example project runs the whole loop from its project file alone, through the CLI as
a user would, on the real local cluster: register its schema, ``init --subject`` and
``check`` (a broken copy fails naming its misfit), publish v1 from the recipe and the
example's training sample, a score worker and a feedback worker started with
``--config`` only (no topic or field in the environment), the example's own producer
for the events and the labels on its own label topic, ground-truth rows with the
example's field names, ``train`` publishing v2 as shadow (v1 was trained on a small
sample, v2 on the ground truth: v2 beats v1 on the recipe's metric), then the
feedback worker's auto-promotion of v2.

The test's copy of the project file differs from the example's only in its topic names
(``[events] topic``, ``[topics]``, ``[labels] topic``: unique per test).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema

from streamscore.core.project import ProjectFile, parse_project
from streamscore.feedback.groundtruth import RowFields, read_rows
from tests.processes import WorkerProcess, launch

from .stack import Stack

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Example:
    name: str
    event_schema: str
    #: rows of the example's replay order that v1 is trained on (too few to be good)
    sample_rows: int
    #: a second replay with fresh event ids (the labels that decide the promotion)
    again: tuple[str, ...]
    #: a broken copy of the project file: (text replaced, by, what ``check`` says of it)
    broken: tuple[str, str, str]


EXAMPLES = {
    "breast_cancer": Example(
        "breast_cancer",
        "biopsy.avsc",
        sample_rows=20,
        again=(),  # biopsy ids are fresh uuids on every run
        broken=(
            'name = "mean_texture"',
            'name = "mean_texture_score"',
            "'mean_texture_score' name: the event has no field 'mean_texture_score' "
            "(did you mean 'mean_texture'?)",
        ),
    ),
    "penguins": Example(
        "penguins",
        "penguin.avsc",
        sample_rows=30,
        again=("--first-tag", "100001"),
        broken=(
            'name = "island"\nkind = "categorical"\ncategories = ["Biscoe", "Dream", "Torgersen"]',
            'name = "island"\nkind = "numeric"',
            "'island' name: 'island' is enum: a numeric feature reads double, float, int, long",
        ),
    ),
}


def project_copy(example: Path, stack: Stack, out: Path) -> Path:
    """The example's project file with its topics renamed to the stack's, nothing else."""
    text = example.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    renames = [
        (f'topic = "{doc["events"]["topic"]}"', f'topic = "{stack.topics.events}"'),
        (f'topic = "{doc["labels"]["topic"]}"', f'topic = "{stack.topics.feedback}"'),
    ]
    for key, topic in doc["topics"].items():
        renames.append((f'{key} = "{topic}"', f'{key} = "{getattr(stack.topics, key)}"'))
    for old, new in renames:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    # the shadow predictions' topic is the stack's too (the example leaves it to its
    # default, <predictions>.shadow, which the stack did not create)
    assert "shadow" not in doc["topics"] and text.count("[topics]\n") == 1
    shadow = f'shadow = "{stack.topics.predictions_shadow}"\n'
    text = text.replace("[topics]\n", "[topics]\n" + shadow)
    out.write_text(text, encoding="utf-8")
    return out


def without_topics(p: ProjectFile) -> ProjectFile:
    assert p.labels is not None
    return dataclasses.replace(
        p,
        path="",
        events_topic=None,
        topics={},
        labels=dataclasses.replace(p.labels, topic="-"),
    )


def user_env(stack: Stack, *, publisher: bool = False) -> dict[str, str]:
    """A user's environment: the cluster's address and the keys, no topic names (they
    come from the project file)."""
    env = stack.env(publisher=publisher)
    return {
        k: v
        for k, v in env.items()
        if not k.startswith(("STREAMSCORE_TOPIC_", "STREAMSCORE_CONFIG"))
    }


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def produce(stack: Stack, example: str, project: Path, *args: str) -> str:
    """The example's own producer: its events, then each label on its label topic."""
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / example / "produce.py"),
            "--config",
            str(project),
            "--bootstrap",
            stack.bootstrap,
            "--registry-url",
            stack.registry_url,
            *args,
        ],
        env=user_env(stack),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for p in started:
        p.close()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_runs_the_whole_loop_from_its_project_file(
    name: str, stack: Stack, processes: list[WorkerProcess]
) -> None:
    ex = EXAMPLES[name]
    home = ROOT / "examples" / name
    project = project_copy(home / "streamscore.toml", stack, stack.tmp / "streamscore.toml")
    original = parse_project((home / "streamscore.toml").read_text(), "x")
    p = parse_project(project.read_text(), "x")
    assert without_topics(p) == without_topics(original)  # only the topic names differ
    assert p.features is not None and p.labels is not None and p.train is not None
    env, publisher = user_env(stack), user_env(stack, publisher=True)
    cfg = ("--config", str(project))

    # a few labelled rows of the example's data: v1's training sample, init's sample
    sample = stack.tmp / "v1.csv"
    produce(
        stack, name, project, "--write-sample", str(sample), "--sample-rows", str(ex.sample_rows)
    )

    # the producers' schema in the registry, then init / check from it
    subject = f"{stack.topics.events}-value"
    schema_text = (home / "schemas" / ex.event_schema).read_text()
    stack.registry.register_schema(subject, Schema(schema_text, "AVRO"))
    starter_path = stack.tmp / "init.toml"
    init = cli(
        env, "init", "--subject", subject, "--sample", str(sample), "--out", str(starter_path)
    )
    assert init.returncode == 0, init.stdout + init.stderr
    started = parse_project(starter_path.read_text(), "init.toml")
    assert started.events_topic == stack.topics.events
    assert started.features is not None
    assert set(p.features.names) <= set(started.features.names)
    for f in p.features.fields:  # the kinds and categories init inferred are the example's
        got = started.features.fields[started.features.names.index(f.name)]
        assert (got.kind, got.categories) == (f.kind, f.categories), f.name
    ok = cli(env, "check", *cfg)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK: {project} fits subject {subject}")
    old, new, misfit = ex.broken
    broken = stack.tmp / "broken.toml"
    assert project.read_text().count(old) == 1
    broken.write_text(project.read_text().replace(old, new))
    bad = cli(env, "check", "--config", str(broken))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{broken}: [[features]] #" in bad.stdout and misfit in bad.stdout, bad.stdout
    assert "1 misfit(s)" in bad.stdout

    # v1 from the recipe, trained on the sample
    v1 = cli(publisher, "model", "publish", *cfg, "--data", str(sample))
    assert v1.returncode == 0, v1.stdout + v1.stderr
    assert f"{p.train.model_name}/primary" in v1.stdout and "v1" in v1.stdout, v1.stdout

    # a score worker and a feedback worker (auto-promotion on), the project file only
    score = launch(
        "score",
        *cfg,
        worker_id="score",
        group_id=stack.group_id,
        env=env,
        log_path=stack.tmp / "score.log",
    )
    processes.append(score)
    gt = stack.tmp / "groundtruth"
    feedback = launch(
        "feedback",
        *cfg,
        "--groundtruth",
        str(gt),
        "--state-dir",
        str(stack.tmp / "state"),
        "--checkpoint-s",
        "0.5",
        "--auto-promote",
        "--promote-min-labels",
        "150",
        worker_id="feedback",
        group_id=f"{stack.group_id}-feedback",
        env=publisher,
        log_path=stack.tmp / "feedback.log",
    )
    processes.append(feedback)
    score.wait_metrics(timeout=120)
    feedback.wait_ready(timeout=120)

    # the stream and its labels, on the example's own topics, by its own producer
    out = produce(stack, name, project, "--rate", "500", "--label-delay-s", "0.5")
    n = int(out.split()[1])
    assert n > 300, out
    fields = RowFields(p.events.id_field, p.events.time_field, p.labels.label_field)
    rows: list[dict[str, object]] = []

    def all_rows() -> bool:
        nonlocal rows
        rows = read_rows(gt, fields=fields)
        return len(rows) >= n

    feedback.wait_until(all_rows, f"{n} ground-truth rows", timeout=120)
    assert len(rows) == n
    names = {fields.id_field, fields.time_field, fields.label_field, *p.features.names}
    assert names <= set(rows[0]), sorted(rows[0])
    assert not {"event_id", "event_time", "label"} & set(rows[0]), sorted(rows[0])
    assert len({r[fields.id_field] for r in rows}) == n
    assert {r["model_version"] for r in rows} == {1}

    # v2 from the ground truth: published as shadow only because it beats v1
    v2 = cli(publisher, "train", *cfg, "--groundtruth", str(gt), "--as", "shadow")
    assert v2.returncode == 0, v2.stdout + v2.stderr
    assert "PUBLISH: " in v2.stdout and f"{p.train.model_name}/shadow v2" in v2.stdout, v2.stdout
    shadow = {"model_name": p.train.model_name, "model_version": "2", "role": "shadow"}
    score.wait_until(lambda: score.sample("streamscore_model_info", shadow) == 1, "v2 as shadow")

    # more of the stream: v1 and v2 both answer it; the labels promote v2
    produce(stack, name, project, "--rate", "500", "--label-delay-s", "0.5", *ex.again)
    feedback.wait_until(
        lambda: (
            feedback.sample("streamscore_promotion_decisions_total", {"outcome": "promoted"}) >= 1
        ),
        "v2 promoted",
        timeout=120,
    )
    primary = {"model_name": p.train.model_name, "model_version": "2", "role": "primary"}
    score.wait_until(lambda: score.sample("streamscore_model_info", primary) == 1, "v2 primary")
    assert feedback.sample("streamscore_promotion_decisions_total", {"outcome": "failed"}) == 0
    assert score.sample("streamscore_dead_letters_total") == 0
    assert score.terminate() == 0
    assert feedback.terminate() == 0
