"""streamscore: score Kafka event streams with hot-swapped scikit-learn models."""

__version__ = "0.1.0"
