"""The Kafka edge: clients, topics, limits, dead letters, delivery.

- ``clients``: librdkafka settings per client, reading a topic to its end
- ``admin``: the one topic creator; partition counts, record limits, leaders
- ``output_limits``: how large an output may be
- ``dead_letters``: the one dead-letter builder: headers, cut to fit
- ``delivery``: at-least-once and transactional sinks
- ``putback``: putting a batch back while a service is away
"""
