"""What the processes export to Prometheus.

- ``series``: every series, on an injected registry, per process kind
- ``forward``: counters counted in a child process, added to its parent's
"""
