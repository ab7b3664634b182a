"""A worker started with ``--config``: a project file names an events schema that is not
the demo's (id ``payment_id``, time ``created_at`` in timestamp-micros), and every event is
scored with its own id and time on its prediction; an event with a bad (null) time goes to
the dead-letter topic with its reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from streamscore.core.records import Role
from streamscore.serde.message import AvroSerializer

from ..unit.payments_world import PROJECT_TOML, SCHEMA, payments, payments_bundle
from .stack import Stack, WorkerProcess


def _headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


def test_a_worker_started_with_a_project_file_scores_by_its_id_and_time_fields(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    stack.model_topic().publish(
        payments_bundle().to_bytes(), Role.PRIMARY, key=stack.key, publisher="test"
    )
    project = stack.tmp / "streamscore.toml"
    project.write_text(PROJECT_TOML.format(topic=stack.topics.events))
    reader = stack.tmp / "payments.avsc"
    reader.write_text(json.dumps(SCHEMA))
    w = make_worker("pay", "--config", str(project), "--reader-schema", str(reader))

    ser = AvroSerializer(stack.registry, f"{stack.topics.events}-value", SCHEMA)
    events = list(payments(300, seed=11))
    bad = {**next(payments(1, seed=12)), "created_at": None}
    items = [(e["account"].encode(), ser(e)) for e in events[:150]]
    items.append((b"bad", ser(bad)))
    items += [(e["account"].encode(), ser(e)) for e in events[150:]]
    stack.produce_raw(items)

    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= len(events))
    dlq = stack.read(stack.topics.dlq, until=lambda got: len(got) >= 1)

    dec = stack.decoder("prediction")
    decoded = [dec(m.value()) for m in preds]
    assert len(decoded) == len(events)  # one primary prediction each, the bad one none
    expected = {e["payment_id"]: e["created_at"] // 1000 for e in events}
    assert {p["event_id"]: p["event_time"] for p in decoded} == expected
    assert {p["role"] for p in decoded} == {"primary"}
    assert {tuple(p["detail"]["feature_names"]) for p in decoded} == {("amount", "n_items")}
    # the configured id and time are the prediction's own; they are not repeated as inputs
    assert all(set(p["detail"]["inputs"]) == {"account"} for p in decoded)

    assert len(dlq) == 1
    h = _headers(dlq[0])
    assert h["streamscore.error.class"] == "MissingFieldError"
    assert h["streamscore.error.reason"] == "missing_field"
    assert h["streamscore.error.field"] == "created_at"
    assert h["streamscore.error.message"] == "the event has no time (field 'created_at')"
    assert dlq[0].value() == ser(bad)
    assert w.sample("streamscore_dead_letters_total") == 1
    assert w.terminate() == 0
