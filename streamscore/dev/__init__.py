"""Developer tools, never imported by a worker.

- ``localcluster``: one local Kafka + registry's lifecycle: install, start, wait, stop, reset
- ``cluster_install``: downloads the servers with Maven, verifies them against a manifest
- ``cluster_config``: the servers' configuration, rendered
- ``cluster_processes``: finds, starts and stops our server processes, never a foreign one
- ``cluster_cli``: `streamscore cluster` and its status lines
- ``demo``: `streamscore demo`: the whole loop, with a picture (the orchestration)
- ``supervise``: the demo's child processes, their CPU priorities, group settling
- ``traffic``: the demo's events and labels
- ``observe``: predictions, dead letters and /metrics as the demo sees them
- ``report``: the demo's summary, printout and plot
- ``synthetic``: the demo's synthetic world (its events, labels and models)
"""
