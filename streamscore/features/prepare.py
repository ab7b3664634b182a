"""Events -> model matrix for training: extract, check, impute (the serving steps, in order).

:mod:`streamscore.features.extract` turns events into raw columns and imputes them,
:mod:`streamscore.features.validation` checks those columns; this module composes the two, so
neither needs the other and a model is never trained on rows serving would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.records import FeatureSpec
from .extract import extract, impute
from .validation import validate


def from_rows(
    rows: Sequence[Mapping[str, Any]], spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Training entry point: (matrix of the valid rows, mask of which rows were valid).

    Applies exactly the serving checks (see :mod:`streamscore.features.validation`) so a model is
    never trained on rows it would refuse to score.
    """
    cols = extract(rows, spec)
    result = validate(cols, spec)
    return impute(cols, spec)[result.valid], result.valid
