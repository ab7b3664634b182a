"""Decoded events → feature matrix, one path for serving and training.

- ``extract``: events → raw columns → imputed matrix
- ``validation``: per-field checks, one typed error per bad row
- ``prepare``: extract, check, impute: the training entry point
- ``event_fields``: the event's own id, time (in epoch ms) and key, by the configured names
"""
