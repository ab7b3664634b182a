"""Bytes on a topic ↔ records: the Confluent wire format with fastavro.

- ``wire``: the wire header, writer schemas by id (cached), the registry client and its
  errors (registry away: retry; unknown id: bad input)
- ``message``: the per-message codecs (``AvroDeserializer``, ``AvroSerializer``), which
  also decode and encode whole batches (the scorer's batch-codec interface)
- ``columnar_decode``: a batch decoded column-wise with NumPy, fastavro's schema
  resolution mirrored for flat records
- ``columnar_encode``: records given column-wise encoded without building dicts
- ``avro_scan``: bounded scanning of Avro bodies
- ``schemas``: the project's versioned .avsc schemas
- ``event_ids``: the event id of a message, without a full decode

The column types these read and write (``EventColumns``, ``RecordColumns``) are
:mod:`streamscore.core.columns`, shared with ``features`` and ``score``.
"""
