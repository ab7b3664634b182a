"""Issue case 10 on the real cluster: a registry URL carrying credentials
(``http://user:password@host/...``) works, and the password shows nowhere a worker writes:
not in its log (httpx logs every request's URL at INFO), not on /metrics."""

from __future__ import annotations

from collections.abc import Callable

from .stack import Stack, WorkerProcess

PASSWORD = "s3cr3t-in-the-url"


def test_a_password_in_the_registry_url_never_reaches_the_log_or_metrics(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    scheme, rest = stack.registry_url.split("://", 1)
    url = f"{scheme}://scorer:{PASSWORD}@{rest}"
    stack.publish("ab", version=1)
    w = make_worker("w1", env={"STREAMSCORE_REGISTRY_URL": url})
    ids = stack.produce_events(500, seed=11)
    preds = stack.read(stack.topics.predictions, until=lambda got: len(got) >= 500)
    # the worker reached the registry through that URL: it fetched the events' writer
    # schema and registered its own outputs, so every event was scored
    assert set(stack.primary_ids(preds)) == set(ids)
    metrics = w.metrics_text()
    assert w.terminate() == 0
    log = w.log_path.read_text(errors="replace")
    # the request log is on (it is where the URL used to leak), and shows the URL bare:
    # the credentials travel as basic auth, not in the URL
    assert f"HTTP Request: GET {stack.registry_url}/schemas/ids/" in log, log[-2000:]
    assert PASSWORD not in log
    assert PASSWORD not in metrics
