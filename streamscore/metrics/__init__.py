"""What the processes export to Prometheus.

- ``series``: every series, on an injected registry, per process kind
"""
