"""How a signed model travels from a file to a worker's store.

- ``bundle``: the signed ONNX bundle: format, checks, runtime
- ``signing``: signing keys and verifiers
- ``envelope``: a model-topic record
- ``store``: a worker's active models per role, swapped atomically
- ``updates``: applying envelopes to the store
- ``watcher``: follows the compacted model topic
- ``publish``: publishes, lists and rolls back models
- ``build``: a bundle from a data scientist's files
"""
