"""The words every other part uses; no Kafka, no I/O.

- ``records``: plain records that cross module boundaries
- ``errors``: the exception tree (one root, typed subclasses)
- ``config``: frozen settings, secrets hidden
- ``stop``: stop signals of the long-running commands
- ``redact``: credentials in URLs kept out of logs
"""
