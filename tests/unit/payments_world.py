"""A world that is not the demo's, for the project file's tests: a ``payments`` event
schema whose id is ``payment_id``, whose time is ``created_at`` (timestamp-micros,
nullable: a null is a bad time) and whose key is ``account``; a regressor on its numeric
fields ``amount`` and ``n_items``. Shared by unit and integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression

from streamscore.core.records import FeatureField, FeatureSpec
from streamscore.models.container import Bundle
from streamscore.models.convert import build_bundle

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Payment",
    "namespace": "test.payments",
    "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "account", "type": "string"},
        {
            "name": "created_at",
            "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
        },
        {"name": "amount", "type": "double"},
        {"name": "n_items", "type": "int"},
    ],
}

SPEC = FeatureSpec((FeatureField("amount"), FeatureField("n_items")))

PROJECT_TOML = """
[events]
topic = "{topic}"
id_field = "payment_id"
time_field = "created_at"
time_encoding = "timestamp-micros"
"""


def payments(
    n: int, seed: int = 0, start_us: int = 1_780_000_000_000_123
) -> Iterator[dict[str, Any]]:
    """``n`` payment events, one microsecond-precise time each (1.5 ms apart)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {
            "payment_id": f"pay-{uuid.uuid4().hex}",
            "account": f"acct-{int(rng.integers(0, 50))}",
            "created_at": start_us + i * 1_500,
            "amount": float(rng.uniform(1, 500)),
            "n_items": int(rng.integers(1, 10)),
        }


def payments_bundle(version: int = 1, name: str = "payments") -> Bundle:
    """A linear regressor on ``SPEC`` (amount, n_items)."""
    rng = np.random.default_rng(version)
    x = np.column_stack([rng.uniform(1, 500, 500), rng.integers(1, 10, 500)]).astype(np.float32)
    y = 0.01 * x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.1, 500)
    return build_bundle(
        LinearRegression().fit(x, y),
        name=name,
        version=version,
        feature_spec=SPEC,
        X_train=x,
        X_reference=x[:64],
        created_at_ms=1,
    )
