from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from streamscore.core.errors import ConfigError
from streamscore.dev import synthetic
from streamscore.models.build import bundle_from_files
from streamscore.models.container import decode_bundle
from streamscore.models.runtime import load_bundle


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    s = synthetic.sample(600, rng)
    x = s.matrix(with_c=False)
    y = (s.y > np.median(s.y)).astype(int)
    est = HistGradientBoostingClassifier(max_iter=20).fit(x, y)
    joblib.dump(est, tmp_path / "est.joblib")
    (tmp_path / "spec.json").write_text(json.dumps(synthetic.spec_ab().to_dict()))
    with (tmp_path / "sample.csv").open("w") as f:
        f.write("a,b,other\n")
        for a, b in x[:200]:
            f.write(f"{a},{b},x\n")
    np.save(tmp_path / "sample.npy", x[:200])
    return {
        "est": tmp_path / "est.joblib",
        "spec": tmp_path / "spec.json",
        "csv": tmp_path / "sample.csv",
        "npy": tmp_path / "sample.npy",
    }


@pytest.mark.parametrize("data", ["csv", "npy"])
def test_bundle_from_files_round_trips(files: dict[str, Path], data: str) -> None:
    b = bundle_from_files(files["est"], files["spec"], files[data], name="churn", version=3)
    loaded = load_bundle(decode_bundle(b.to_bytes()))
    assert loaded.meta.name == "churn" and loaded.meta.version == 3
    assert loaded.meta.feature_spec.names == ("a", "b")
    assert loaded.meta.classes == ("0", "1")
    out = loaded.predict(np.array([[-30.0, 40.0]], dtype=np.float32))
    assert out.probabilities is not None and out.probabilities.shape == (1, 2)


def test_csv_without_a_spec_column_is_a_clear_error(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,zzz\n1,2\n")
    with pytest.raises(ConfigError, match=r"no column\(s\) \['b'\]"):
        bundle_from_files(files["est"], files["spec"], bad, name="m", version=1)


def test_unreadable_estimator_is_a_clear_error(files: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="cannot load the estimator"):
        bundle_from_files(junk, files["spec"], files["csv"], name="m", version=1)


def test_a_csv_sample_holds_categories_and_booleans_as_the_events_do(tmp_path: Path) -> None:
    """A training CSV may hold a category's text and ``true``/``false`` (what an example's
    producer writes) or the model inputs as numbers; empty cells of ``impute`` features
    take their impute value, as in the worker; anything else is named precisely."""
    from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy
    from streamscore.models.build import load_labelled

    spec = FeatureSpec(
        (
            FeatureField("island", FeatureKind.CATEGORICAL, categories=("Biscoe", "Dream")),
            FeatureField(
                "sex",
                FeatureKind.CATEGORICAL,
                categories=("female", "male"),
                missing=MissingPolicy.IMPUTE,
                impute_value=0.0,
            ),
            FeatureField("heavy", FeatureKind.BOOLEAN),
            FeatureField("mass", FeatureKind.NUMERIC),
        )
    )
    path = tmp_path / "sample.csv"
    path.write_text(
        "island,sex,heavy,mass,species\n"
        "Dream,male,true,4700,Gentoo\n"
        "Biscoe,,FALSE,3300,Adelie\n"
        "1.0,0,1,4000.5,Chinstrap\n"
    )
    x, y = load_labelled(path, spec, "species")
    assert x.tolist() == [[1.0, 1.0, 1.0, 4700.0], [0.0, 0.0, 0.0, 3300.0], [1.0, 0.0, 1.0, 4000.5]]
    assert y.tolist() == ["Gentoo", "Adelie", "Chinstrap"]
    path.write_text("island,sex,heavy,mass,species\nTorgersen,male,true,1,Adelie\n")
    with pytest.raises(ConfigError, match=r"row 2: island is 'Torgersen', not a number or one"):
        load_labelled(path, spec, "species")
