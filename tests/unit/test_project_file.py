"""The project file's [[features]], [labels] and [train]: typed settings, and one precise
error (file, table, key, what is wrong) for each mistake."""

from __future__ import annotations

import math

import pytest

from streamscore.core.config import (
    LabelSettings,
    LabelTask,
    Metric,
    TimeEncoding,
    TrainRecipe,
    duration_ms,
)
from streamscore.core.errors import ConfigError, ProjectFileError
from streamscore.core.project import parse_project
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy

FULL = """
[[features]]
name = "amount"
min = 0.0
max = 10000

[[features]]
name = "device_os"
path = "device.os"
kind = "categorical"
missing = "impute"
impute = "android"
categories = ["ios", "android"]

[[features]]
name = "is_new_device"
kind = "boolean"
missing = "impute"
impute = false

[labels]
topic = "chargebacks"
id_field = "payment_id"
label_field = "is_fraud"
time_field = "reported_at"
time_encoding = "timestamp-micros"
task = "binary"
positive = true

[train]
model_name = "payments"
estimator = "sklearn.ensemble.HistGradientBoostingClassifier"
params = { max_iter = 200, learning_rate = 0.1 }
window = "30d"
holdout = 0.25
metric = "log_loss"
margin = 0.01
"""


def test_features_labels_and_train_are_read_into_typed_settings() -> None:
    p = parse_project(FULL, "s.toml")
    assert p.features == FeatureSpec(
        (
            FeatureField("amount", minimum=0.0, maximum=10000.0),
            FeatureField(
                "device_os",
                kind=FeatureKind.CATEGORICAL,
                missing=MissingPolicy.IMPUTE,
                impute_value=1.0,  # the index of "android"
                categories=("ios", "android"),
                path="device.os",
            ),
            FeatureField(
                "is_new_device",
                kind=FeatureKind.BOOLEAN,
                missing=MissingPolicy.IMPUTE,
                impute_value=0.0,
            ),
        )
    )
    assert p.features.fields[1].source == "device.os"
    assert p.features.fields[0].source == "amount"
    assert p.labels == LabelSettings(
        topic="chargebacks",
        id_field="payment_id",
        label_field="is_fraud",
        task=LabelTask.BINARY,
        time_field="reported_at",
        time_encoding=TimeEncoding.TIMESTAMP_MICROS,
        positive="true",
    )
    assert p.train == TrainRecipe(
        model_name="payments",
        estimator="sklearn.ensemble.HistGradientBoostingClassifier",
        params={"max_iter": 200, "learning_rate": 0.1},
        window_ms=30 * 86_400_000,
        holdout=0.25,
        metric=Metric.LOG_LOSS,
        margin=0.01,
    )
    assert p.train.metric_for(LabelTask.BINARY) is Metric.LOG_LOSS


def test_defaults_of_a_minimal_file() -> None:
    p = parse_project("[[features]]\nname = 'x'\n[train]\nfit = 'mypkg.train:fit'\n", "s.toml")
    assert p.features == FeatureSpec((FeatureField("x"),))
    assert math.isnan(p.features.fields[0].impute_value)
    assert p.labels is None
    assert p.train == TrainRecipe(fit="mypkg.train:fit")
    assert p.train.holdout == 0.2 and p.train.window_ms is None and p.train.margin == 0.0
    assert p.train.metric_for(LabelTask.REGRESSION) is Metric.RMSE
    assert p.train.metric_for(LabelTask.MULTICLASS) is Metric.MACRO_F1
    assert parse_project("", "s.toml").features is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 90_000),
        ("15m", 900_000),
        ("12h", 43_200_000),
        ("30d", 2_592_000_000),
        ("2w", 1_209_600_000),
        ("1.5h", 5_400_000),
    ],
)
def test_durations_take_their_unit(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["30", "30 days", "d", "-1d", "0s", "1y", ""])
def test_a_bad_duration_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        duration_ms(text)


F = "[[features]]\nname = 'amount'\n"


@pytest.mark.parametrize(
    ("text", "table", "key", "message"),
    [
        (
            "[[features]]\nname = 'amount'\nkidn = 'numeric'\n",
            "features",
            "kidn",
            "[features] kidn: feature #1 ('amount'): unknown key 'kidn' (did you mean "
            "'kind'?); expected one of: name, path, kind, missing, impute, min, max, categories",
        ),
        (
            "[[features]]\nkind = 'numeric'\n",
            "features",
            "name",
            "[features] name: feature #1: every feature needs a name (its column name in the "
            "model)",
        ),
        (
            F + "kind = 'number'\n",
            "features",
            "kind",
            "[features] kind: feature #1 ('amount'): unknown kind 'number' (did you mean "
            "'numeric'?); expected one of: numeric, categorical, boolean",
        ),
        (
            F + "missing = 'drop'\n",
            "features",
            "missing",
            "[features] missing: feature #1 ('amount'): unknown missing policy 'drop'; "
            "expected one of: reject, impute",
        ),
        (
            F + "min = 5\nmax = 1\n",
            "features",
            "min",
            "[features] min: feature #1 ('amount'): min (5) is above max (1)",
        ),
        (
            F + "min = 'low'\n",
            "features",
            "min",
            "[features] min: feature #1 ('amount'): must be a number, not str ('low')",
        ),
        (
            F + "kind = 'categorical'\ncategories = ['a']\nmax = 3\n",
            "features",
            "max",
            "[features] max: feature #1 ('amount'): a range is for numeric features only, "
            "not categorical",
        ),
        (
            F + "kind = 'boolean'\nmin = 0\n",
            "features",
            "min",
            "[features] min: feature #1 ('amount'): a range is for numeric features only, "
            "not boolean",
        ),
        (
            F + "kind = 'categorical'\n",
            "features",
            "categories",
            "[features] categories: feature #1 ('amount'): a categorical feature needs its "
            "categories (the strings or enum symbols it takes, in the order the model "
            "numbers them)",
        ),
        (
            F + "kind = 'categorical'\ncategories = ['FR', 'DE', 'FR']\n",
            "features",
            "categories",
            "[features] categories: feature #1 ('amount'): 'FR' given more than once",
        ),
        (
            F + "kind = 'categorical'\ncategories = []\n",
            "features",
            "categories",
            "[features] categories: feature #1 ('amount'): must not be empty",
        ),
        (
            F + "kind = 'categorical'\ncategories = ['a', 1]\n",
            "features",
            "categories",
            "[features] categories: feature #1 ('amount'): must hold non-empty strings only, not 1",
        ),
        (
            F + "categories = ['a']\n",
            "features",
            "categories",
            "[features] categories: feature #1 ('amount'): categories are for categorical "
            "features only, not numeric",
        ),
        (
            F + "path = 'device..os'\n",
            "features",
            "path",
            "[features] path: feature #1 ('amount'): 'device..os' is not a dotted path of "
            "Avro field names ('device.os')",
        ),
        (
            "[[features]]\nname = 'a-b'\n",
            "features",
            "name",
            "[features] name: feature #1 ('a-b'): 'a-b' is not a field of the event: give "
            "its path ('path = \"a.b\"')",
        ),
        (
            F + "impute = 1.0\n",
            "features",
            "impute",
            "[features] impute: feature #1 ('amount'): is read only with missing = \"impute\"",
        ),
        (
            F + "missing = 'impute'\nimpute = 'zero'\n",
            "features",
            "impute",
            "[features] impute: feature #1 ('amount'): must be a number, not str ('zero')",
        ),
        (
            F + "missing = 'impute'\nmax = 5\nimpute = 7\n",
            "features",
            "impute",
            "[features] impute: feature #1 ('amount'): 7 is outside the feature's range "
            "[None, 5.0]",
        ),
        (
            F + "kind = 'categorical'\ncategories = ['a']\nmissing = 'impute'\nimpute = 'b'\n",
            "features",
            "impute",
            "[features] impute: feature #1 ('amount'): must be one of the categories, not 'b'",
        ),
        (
            F + "kind = 'boolean'\nmissing = 'impute'\nimpute = 'yes'\n",
            "features",
            "impute",
            "[features] impute: feature #1 ('amount'): must be true or false, not 'yes'",
        ),
        (
            F + F,
            "features",
            "name",
            "[features] name: feature #2 ('amount'): the name 'amount' is also feature #1's",
        ),
        (
            "[features]\nname = 'x'\n",
            "features",
            None,
            "[features]: must be an array of tables ([[features]]), not a table",
        ),
        (
            "features = []\n",
            "features",
            None,
            "[features]: needs at least one feature",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\ntask = 'binary'\n",
            "labels",
            "label_field",
            "[labels] label_field: is required in [labels]",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\nlabel_field = 'y'\ntask = 'binery'\n",
            "labels",
            "task",
            "[labels] task: unknown task 'binery' (did you mean 'binary'?); expected one of: "
            "binary, multiclass, regression",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\nlabel_field = 'y'\ntask = 'regression'\n"
            "positive = 'yes'\n",
            "labels",
            "positive",
            "[labels] positive: positive is for binary labels only, not regression",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\nlabel_field = 'y'\ntask = 'binary'\n"
            "labels_field = 'z'\n",
            "labels",
            "labels_field",
            "[labels] labels_field: unknown key 'labels_field' (did you mean 'label_field'?); "
            "expected one of: topic, id_field, label_field, time_field, time_encoding, task, "
            "positive",
        ),
        (
            "[train]\nestimator = 'sklearn'\n",
            "train",
            "estimator",
            "[train] estimator: 'sklearn' is not an import path 'package.module.Class' (e.g. "
            "'sklearn.ensemble.HistGradientBoostingClassifier')",
        ),
        (
            "[train]\nestimator = 'sklearn.linear_model:Ridge'\n",
            "train",
            "estimator",
            "[train] estimator: 'sklearn.linear_model:Ridge' is not an import path "
            "'package.module.Class' (e.g. 'sklearn.ensemble.HistGradientBoostingClassifier')",
        ),
        (
            "[train]\nfit = 'mypkg.train.fit'\n",
            "train",
            "fit",
            "[train] fit: 'mypkg.train.fit' is not a function's import path "
            "'package.module:function'",
        ),
        (
            "[train]\nestimator = 'a.B'\nfit = 'a:f'\n",
            "train",
            "fit",
            "[train] fit: give estimator or fit, not both",
        ),
        (
            "[train]\nmetric = 'rmse'\n",
            "train",
            "estimator",
            "[train] estimator: needs an estimator (an import path, with params) or fit "
            "('package.module:function', your own code)",
        ),
        (
            "[train]\nfit = 'a:f'\nparams = { alpha = 1 }\n",
            "train",
            "params",
            "[train] params: params go with estimator; a fit function sets its own",
        ),
        (
            "[train]\nestimator = 'a.B'\nparams = 3\n",
            "train",
            "params",
            "[train] params: must be a table ({ a = 1 }), not an integer (3)",
        ),
        (
            "[train]\nestimator = 'a.B'\nwindow = '30 days'\n",
            "train",
            "window",
            "[train] window: '30 days' is not a duration: a number and one unit of s "
            "(seconds), m (minutes), h (hours), d (days), w (weeks), e.g. '30d'",
        ),
        (
            "[train]\nestimator = 'a.B'\nholdout = 1.0\n",
            "train",
            "holdout",
            "[train] holdout: must be a fraction in (0, 1) (of the rows held out), not 1",
        ),
        (
            "[train]\nestimator = 'a.B'\nholdout = 0\n",
            "train",
            "holdout",
            "[train] holdout: must be a fraction in (0, 1) (of the rows held out), not 0",
        ),
        (
            "[train]\nestimator = 'a.B'\nmetric = 'auc'\n",
            "train",
            "metric",
            "[train] metric: unknown metric 'auc' (did you mean 'roc_auc'?); expected one of: "
            "accuracy, log_loss, roc_auc, macro_f1, mae, rmse",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\nlabel_field = 'y'\ntask = 'regression'\n"
            "[train]\nestimator = 'a.B'\nmetric = 'roc_auc'\n",
            "train",
            "metric",
            "[train] metric: 'roc_auc' is not a metric of regression labels ([labels] task); "
            "expected one of: rmse, mae",
        ),
        (
            "[labels]\ntopic = 'l'\nid_field = 'i'\nlabel_field = 'y'\ntask = 'multiclass'\n"
            "[train]\nestimator = 'a.B'\nmetric = 'roc_auc'\n",
            "train",
            "metric",
            "[train] metric: 'roc_auc' is not a metric of multiclass labels ([labels] task); "
            "expected one of: macro_f1, accuracy, log_loss",
        ),
        (
            "[train]\nestimator = 'a.B'\nmargin = -0.1\n",
            "train",
            "margin",
            "[train] margin: must be >= 0, not -0.1",
        ),
    ],
)
def test_each_mistake_gets_its_precise_error(
    text: str, table: str, key: str | None, message: str
) -> None:
    with pytest.raises(ProjectFileError) as err:
        parse_project(text, "cfg.toml")
    assert str(err.value) == f"cfg.toml: {message}"
    assert err.value.table == table
    assert err.value.key == key


def test_feature_specs_of_published_bundles_still_read_and_write_the_same() -> None:
    old = {  # a spec as bundles stored it before paths and booleans existed
        "name": "c",
        "kind": "categorical",
        "minimum": None,
        "maximum": None,
        "missing": "impute",
        "impute_value": None,
        "categories": ["x", "y"],
    }
    f = FeatureField.from_dict(old)
    assert f.path is None and f.source == "c"
    assert f.to_dict() == old  # no "path" key: the same dict as before
    nested = FeatureField("os", FeatureKind.BOOLEAN, path="device.is_new")
    assert nested.to_dict()["path"] == "device.is_new"
    assert FeatureField.from_dict(nested.to_dict()) == nested
