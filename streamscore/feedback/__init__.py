"""The feedback path: labels joined with predictions, judged, kept.

- ``router``: predictions and labels re-keyed by event id
- ``router_process``: where the router runs (a child process, or a thread)
- ``join``: the label ↔ prediction join (pure)
- ``state``: the join state per partition (RocksDB, changelog records)
- ``labels``: label records in the user's schema
- ``memory``: the worker's allocator settings
- ``groundtruth``: the ground-truth table (Delta Lake, local or S3)
- ``promotion``: live quality and the shadow-promotion policy
- ``loop``: the feedback worker's Kafka loop
"""
