"""The Kafka edge: clients, limits, delivery.

- ``clients``: librdkafka settings per client, topic helpers
- ``output_limits``: how large an output may be
- ``delivery``: at-least-once and transactional sinks
- ``putback``: putting a batch back while a service is away
"""
