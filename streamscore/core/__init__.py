"""The words every other part uses; no Kafka, no I/O.

- ``records``: plain records that cross module boundaries
- ``columns``: records held column-wise (decoded events, records to encode)
- ``errors``: the exception tree (one root, typed subclasses)
- ``config``: frozen settings, secrets hidden
- ``project``: the project file (``streamscore.toml``) parsed into settings
- ``stop``: stop signals of the long-running commands
- ``redact``: credentials in URLs kept out of logs
"""
