"""The scoring path.

- ``batch``: one micro-batch: decode, late policy, validate, predict, encode
- ``codecs``: what the scorer needs of its codecs (batch decoder, batch encoder)
- ``worker``: the score worker's Kafka loop
- ``drift``: feature and score drift (PSI) against the bundle's reference
"""
