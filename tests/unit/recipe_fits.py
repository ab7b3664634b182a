"""User ``fit`` functions for the recipe tests (imported by path, as a user's would be:
``tests.unit.recipe_fits:NAME``)."""

from __future__ import annotations

from typing import Any

import xgboost
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder

NOT_A_FUNCTION = 42


def by_position(frame: Any) -> Any:
    """The documented way: ColumnTransformer columns by position from the frame's attrs."""
    info = frame.attrs["streamscore"]
    cats = [list(range(len(info["categories"][frame.columns[i]]))) for i in info["categorical"]]
    rest = info["numeric"] + info["boolean"]
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(categories=cats), info["categorical"]),
            ("num", SimpleImputer(strategy="median"), rest),
        ]
    )
    model = Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=2000))])
    x = frame[info["features"]].to_numpy()
    return model.fit(x, frame[info["label"]])


def on_the_frame(frame: Any) -> Any:
    """Fitted on the DataFrame itself (feature names): it still serves the matrix."""
    info = frame.attrs["streamscore"]
    return LogisticRegression(max_iter=500).fit(frame[info["features"]], frame[info["label"]])


def by_name(frame: Any) -> Any:
    """Columns by name: works on a DataFrame only, so it cannot serve the matrix."""
    info = frame.attrs["streamscore"]
    names = [info["features"][i] for i in info["categorical"]]
    model = Pipeline(
        [
            ("encode", ColumnTransformer([("cat", OneHotEncoder(), names)])),
            ("model", LogisticRegression()),
        ]
    )
    return model.fit(frame[info["features"]], frame[info["label"]])


def xgboost_codes(frame: Any) -> Any:
    """XGBoost wants label codes: the model's classes are 0..k-1 in sorted label order."""
    info = frame.attrs["streamscore"]
    codes = LabelEncoder().fit_transform(frame[info["label"]])
    return xgboost.XGBClassifier(n_estimators=10).fit(frame[info["features"]].to_numpy(), codes)


def unfitted(frame: Any) -> Any:
    return LogisticRegression()


def returns_none(frame: Any) -> Any:
    return None


def regressor(frame: Any) -> Any:
    info = frame.attrs["streamscore"]
    return LinearRegression().fit(frame[info["features"]].to_numpy(), frame[info["label"]])
