"""A consumer written in another language reads ``predictions`` and
``predictions.shadow`` with nothing but the registry: a small Java program
(``java/ReadPredictions.java``), compiled here with ``javac`` against the local cluster's
own Kafka client jars and the one Apache Avro jar the project's install fetches
(``streamscore cluster install``), with no streamscore code."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamscore.core.records import prediction_headers
from streamscore.dev.localcluster import LocalCluster

from .stack import Stack, WorkerProcess, compile_java, three_role_worker


def test_a_java_consumer_reads_one_answer_per_event_and_the_headers(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    local_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    classpath = compile_java(
        local_cluster, "ReadPredictions", tmp_path / "classes", [local_cluster.avro_jar()]
    )
    w = three_role_worker(stack, make_worker, "java", tmp_path)
    n = 2_000
    trace = stack.produce_traced_events(n, n_keys=n)
    t = stack.topics
    stack.read(t.predictions, until=lambda g: len(g) >= n)
    stack.read(t.predictions_shadow, until=lambda g: len(g) >= n)

    java = shutil.which("java")
    assert java is not None
    res = subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "ReadPredictions",
            stack.bootstrap,
            stack.registry_url,
            str(2 * n),
            t.predictions,
            t.predictions_shadow,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got: list[dict[str, Any]] = [
        json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")
    ]
    assert f"read {2 * n} records" in res.stderr
    answers = [r for r in got if r["topic"] == t.predictions]
    shadows = [r for r in got if r["topic"] == t.predictions_shadow]
    # one answer per event id on predictions, the primary's or the canary's; the
    # shadow's on its own topic, one per event too
    assert len(answers) == n and Counter(r["event_id"] for r in answers) == Counter(
        f"ev-{i}" for i in range(n)
    )
    assert len(shadows) == n and {r["event_id"] for r in shadows} == {f"ev-{i}" for i in range(n)}
    assert {(r["role"], r["model_version"]) for r in answers} == {("primary", 1), ("canary", 2)}
    assert {(r["role"], r["model_version"]) for r in shadows} == {("shadow", 3)}
    assert 0.2 < sum(r["role"] == "canary" for r in answers) / n < 0.4
    # the flat answer: a score on every record (a regressor: its value), the detail nested
    assert all(isinstance(r["score"], float) for r in got)
    # the headers, as Java reads them, say what the records say, then the copied trace
    for r in got:
        i = int(r["event_id"].removeprefix("ev-"))
        model = prediction_headers(r["model_name"], r["model_version"], r["role"], r["event_id"])
        want = [*model, trace[i][0]]
        assert r["headers"] == [[k, v.decode()] for k, v in want]
    assert w.terminate() == 0
