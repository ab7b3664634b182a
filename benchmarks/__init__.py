"""Benchmarks (not part of the installed package): ``make bench`` is ``python -m
benchmarks.run``; also ``benchmarks.hotpath``, ``benchmarks.feedback``, ``benchmarks.model_format``.

``run`` runs the parts of ``make bench`` in order (its ``Bench``: topics, the model,
worker processes, the drain and latency runs); the rest is one concern a module:
``workload`` (the events and the models), ``traffic`` (putting them on a topic),
``measure`` (``/proc``, topic and ``/metrics`` readers, rates, percentiles), ``naive``
(the baseline), ``results`` (the profile and the records of a run) and ``report``
(summary and tables).
"""
