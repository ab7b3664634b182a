"""How a signed model travels from a file to a worker's store.

Read in this order (each module imports only the ones above it):

- ``meta``: what a bundle says about its model (name, version, task, feature spec,
  reference histograms)
- ``signing``: signing keys and verifiers (the one place for signature schemes)
- ``container``: the bundle's bytes (framed header + ONNX) and its signature
- ``safety``: the ONNX safety scan (allowed operator domains, no external data)
- ``runtime``: a verified bundle behind an onnxruntime session (``verify_and_load``,
  ``LoadedModel``, ``ScoreBatch``)
- ``convert``: a fitted scikit-learn (or XGBoost/LightGBM scikit-learn API) estimator or
  Pipeline to an ONNX bundle (skl2onnx, onnxmltools), after the reference-batch check
- ``onnx_import``: a ready ONNX file (e.g. ``torch.onnx.export``) with its feature spec
- ``mlflow_import``: an MLflow model (sklearn or onnx flavour; extra ``[mlflow]``)
- ``build``: a bundle from a data scientist's files (estimator, recipe + labelled data,
  ONNX file, MLflow URI; spec, data sample)
- ``compat``: can a model's feature spec be fed from the event schema
- ``envelope``: a model-topic record and its signature
- ``topic_state``: what the model topic says is active, one fold used by every reader
- ``store``: a worker's active models per role, swapped atomically
- ``updates``: applying envelopes to the store
- ``watcher``: follows the compacted model topic (Kafka)
- ``publish``: publishes, lists, rolls back and retires models (Kafka)
"""
