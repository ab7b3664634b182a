"""Bytes on a topic ↔ records: the Confluent wire format with fastavro.

- ``codec``: wire header, schema cache, per-message and column-wise codecs
- ``avro_scan``: bounded scanning of Avro bodies
- ``schemas``: the project's versioned .avsc schemas
- ``event_ids``: the event id of a message, without a full decode
"""
