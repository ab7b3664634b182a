"""The feedback path: labels joined with predictions, judged, kept.

- ``router``: predictions and labels re-keyed by event id
- ``join``: the label ↔ prediction join (pure)
- ``state``: the join state per partition (RocksDB, changelog records)
- ``groundtruth``: the ground-truth store (Avro files)
- ``promotion``: live quality and the shadow-promotion policy
- ``loop``: the feedback worker's Kafka loop
"""
