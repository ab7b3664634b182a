"""The custom collectors: a histogram fed arrays exports what prometheus_client's own
Histogram exports for the same observations; scrape-time gauges export their source."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamscore.metrics.collectors import BulkHistogram, GaugeSpec, ScrapedGauges

_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$")


def _values() -> np.ndarray:
    return np.concatenate(
        [
            np.random.default_rng(0).exponential(0.5, 300),
            [0.0, -1.0, 0.01, 0.1, 10.0, 10.5, float("inf"), float("nan"), 1e-9],
        ]
    )


def _exposition(reg: CollectorRegistry) -> list[str]:
    """The text exposition, ``_created`` timestamps blanked (the only values that differ)."""
    return [_CREATED.sub(r"\1 T", line) for line in generate_latest(reg).decode().splitlines()]


@pytest.mark.parametrize("bounds", [(0.001, 0.01, 0.1, 1.0, 10.0), (-10.0, -1.0, 0.0, 1.0, 10.0)])
def test_a_bulk_histogram_exports_what_observe_one_by_one_exports(
    bounds: tuple[float, ...],
) -> None:
    """Same names, labels, bucket counts, count and sum (with a NaN, an inf, values on the
    bounds); no ``_sum`` when a bound is negative, as prometheus_client does."""
    values = _values()
    ref, bulk = CollectorRegistry(), CollectorRegistry()
    h = Histogram("h", "h doc", ["role"], buckets=bounds, registry=ref)
    u = Histogram("u", "u doc", buckets=bounds, registry=ref)
    Histogram("idle", "labelled, never observed", ["role"], buckets=bounds, registry=ref)
    # series that exist but were never observed: zeros (no array made for them)
    Histogram("zero", "unlabelled, never observed", buckets=bounds, registry=ref)
    ref_named = Histogram("named", "a set, never observed", ["role"], buckets=bounds, registry=ref)
    ref_named.labels("shadow")
    for v in values.tolist():
        h.labels("primary").observe(v)
        u.observe(v)
    bh = BulkHistogram("h", "h doc", ["role"], buckets=bounds, registry=bulk)
    bu = BulkHistogram("u", "u doc", buckets=bounds, registry=bulk)
    BulkHistogram("idle", "labelled, never observed", ["role"], buckets=bounds, registry=bulk)
    BulkHistogram("zero", "unlabelled, never observed", buckets=bounds, registry=bulk)
    named = BulkHistogram("named", "a set, never observed", ["role"], buckets=bounds, registry=bulk)
    named.labels("shadow")
    for chunk in np.array_split(values, 7):  # several calls add up
        bh.labels("primary").observe_many(chunk)
        bu.observe_many(chunk)
    want, got = _exposition(ref), _exposition(bulk)
    nan_sum = [line for line in want if line.startswith("h_sum") or line.startswith("u_sum")]
    assert all(line.endswith(" NaN") for line in nan_sum)  # a NaN was observed
    assert (bounds[0] < 0) == (not nan_sum)
    assert got == want
    assert any(line.startswith('h_bucket{le="+Inf",role="primary"} 308.0') for line in got)
    assert ref.get_sample_value("u_count") == bulk.get_sample_value("u_count") == 308.0


def test_a_bulk_histogram_sums_like_observe() -> None:
    values = np.random.default_rng(1).normal(size=64)
    ref, bulk = CollectorRegistry(), CollectorRegistry()
    one = Histogram("x", "x", registry=ref)
    for v in values.tolist():
        one.observe(v)
    BulkHistogram("x", "x", buckets=Histogram.DEFAULT_BUCKETS, registry=bulk).observe_many(values)
    assert bulk.get_sample_value("x_sum") == pytest.approx(ref.get_sample_value("x_sum"), 1e-12)
    # an unlabelled histogram exports its zero series before any observation
    empty = CollectorRegistry()
    BulkHistogram("z", "z", buckets=(1.0,), registry=empty)
    assert empty.get_sample_value("z_count") == 0.0
    assert empty.get_sample_value("z_bucket", {"le": "+Inf"}) == 0.0


def test_a_bulk_histogram_refuses_wrong_labels_and_a_duplicate_name() -> None:
    reg = CollectorRegistry()
    h = BulkHistogram("h", "h", ["role"], buckets=(1.0,), registry=reg)
    with pytest.raises(ValueError, match="expected labels"):
        h.labels()
    with pytest.raises(ValueError, match=r"use \.labels"):
        h.observe_many([1.0])
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("h", "again", registry=reg)


def test_observations_from_another_thread_are_all_counted_while_scraping() -> None:
    reg = CollectorRegistry()
    h = BulkHistogram("h", "h", buckets=(0.5,), registry=reg)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(reg)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for _ in range(2000):
            h.observe_many(np.array([0.1, 0.9]))
    finally:
        stop.set()
        t.join()
    assert reg.get_sample_value("h_bucket", {"le": "0.5"}) == 2000
    assert reg.get_sample_value("h_count") == 4000


def test_scraped_gauges_export_their_source_at_each_scrape() -> None:
    reg = CollectorRegistry()
    g = ScrapedGauges(
        GaugeSpec("a", "a doc", ("x",)), GaugeSpec("b", "b doc", ("y", "z")), registry=reg
    )
    text = generate_latest(reg).decode()
    assert "# TYPE a gauge" in text and "# TYPE b gauge" in text  # unbound: no sample
    assert reg.get_sample_value("a", {"x": "1"}) is None
    state = {"n": 1.0}
    g.bind(lambda: ([(("1",), state["n"])], [(("p", "q"), 2.5)]))
    assert reg.get_sample_value("a", {"x": "1"}) == 1.0
    state["n"] = 4.0  # read at scrape time, not copied at bind time
    assert reg.get_sample_value("a", {"x": "1"}) == 4.0
    assert reg.get_sample_value("b", {"y": "p", "z": "q"}) == 2.5
    g.bind(lambda: ())  # nothing to report (e.g. no drift monitor yet)
    assert reg.get_sample_value("a", {"x": "1"}) is None
    g.bind(lambda: ([],))  # the wrong number of families is a programming error
    with pytest.raises(ValueError, match="1 row lists for 2 gauge families"):
        generate_latest(reg)
