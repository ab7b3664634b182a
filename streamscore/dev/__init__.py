"""Developer tools, never imported by a worker.

- ``localcluster``: downloads, starts and stops Kafka + registry
- ``demo``: `streamscore demo`: the whole loop, with a picture
"""
