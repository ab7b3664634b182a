"""A worker whose output topic does not exist is refused at start: one line naming the
topic and the setting that names it, exit 1, nothing consumed (its group commits no
offset), and the topic is not auto-created by a produce."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from tests.processes import launch

from .stack import DEMO_READER, Stack


def committed(stack: Stack, group: str, topic: str, partitions: int) -> list[int]:
    """The offsets ``group`` committed on ``topic`` (negative: none)."""
    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, **stack.client})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return [tp.offset for tp in tps]
    finally:
        c.close()


def run_until_exit(command: str, *args: str, group: str, env: dict[str, str], log: Path) -> str:
    """Start ``streamscore <command>``, wait for it to end (killed at the end whatever
    happens); its exit code must be 1. Its output."""
    proc = launch(command, *args, worker_id="w1", group_id=group, env=env, log_path=log)
    try:
        code = proc.proc.wait(120)
    finally:
        proc.close()
    text = proc.log()
    assert code == 1, text
    assert "Traceback" not in text, text
    return text


def test_a_score_worker_without_its_predictions_topic_exits_having_consumed_nothing(
    stack: Stack, admin: object, unique_name: Callable[[str], str]
) -> None:
    stack.publish()
    stack.produce_events(50)
    missing = unique_name("missing")
    env = stack.env(STREAMSCORE_TOPIC_PREDICTIONS=missing)
    out = run_until_exit(
        "score", *DEMO_READER, group=stack.group_id, env=env, log=stack.tmp / "score.log"
    )
    assert (
        "streamscore: MissingTopicError: topic this process writes to does not exist on the "
        f"Kafka cluster ({stack.bootstrap}): '{missing}' (predictions "
        "(STREAMSCORE_TOPIC_PREDICTIONS / [topics] predictions)); create it before starting"
    ) in out
    assert committed(stack, stack.group_id, stack.topics.events, 4) == [-1001] * 4
    md = admin.list_topics(missing, timeout=10).topics.get(missing)  # type: ignore[attr-defined]
    assert md is None or md.error is not None  # never created by a produce


def test_a_feedback_worker_without_its_telemetry_and_dlq_topics_exits(
    stack: Stack, unique_name: Callable[[str], str]
) -> None:
    tele, dlq = unique_name("missing-tele"), unique_name("missing-dlq")
    group = f"{stack.group_id}-feedback"
    out = run_until_exit(
        "feedback",
        "--groundtruth",
        str(stack.tmp / "truth"),
        "--state-dir",
        str(stack.tmp / "state"),
        group=group,
        env=stack.env(STREAMSCORE_TOPIC_TELEMETRY=tele, STREAMSCORE_TOPIC_DLQ=dlq),
        log=stack.tmp / "feedback.log",
    )
    assert (
        "streamscore: MissingTopicError: 2 topics this process writes to do not exist on the "
        f"Kafka cluster ({stack.bootstrap}): '{dlq}' (dlq (STREAMSCORE_TOPIC_DLQ / [topics] "
        f"dlq)), '{tele}' (telemetry (STREAMSCORE_TOPIC_TELEMETRY / [topics] telemetry))"
    ) in out
    assert committed(stack, group, stack.topics.predictions, 4) == [-1001] * 4
