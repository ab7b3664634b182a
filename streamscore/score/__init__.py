"""The scoring path.

- ``batch``: one micro-batch: decode, late policy, validate, predict, encode
- ``worker``: the score worker's Kafka loop
- ``drift``: feature and score drift (PSI) against the bundle's reference
"""
