import warnings

import numpy as np
import pytest
from helpers import TINY, blobs, synthetic_store, write_folder
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import check_estimator

import featcache
from featcache.estimators import BackboneFeatures, CachedFeatures
from featcache.store import FeatureStore


@pytest.fixture
def store(tmp_path):
    X, y = blobs(30, n_classes=3, dim=8, sep=1.5)
    return synthetic_store(tmp_path / "s.h5", X, y)


def test_cached_features_in_a_pipeline_with_grid_search(store):
    X, y, ids = featcache.load(store)
    pipe = Pipeline([("features", CachedFeatures(store)), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"clf__C": [0.01, 1.0]}, cv=3).fit(ids, y)
    on_features = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.01, 1.0]}, cv=3).fit(X, y)
    # ids through the cache give exactly what the features themselves give
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], on_features.cv_results_["mean_test_score"])
    assert cross_val_score(pipe, ids, y, cv=3).mean() > 0.8
    np.testing.assert_array_equal(CachedFeatures(store).fit(ids).transform(ids[::-1]), X[::-1])
    assert clone(pipe).get_params()["features__store"] == store


def test_cached_features_pandas_output_and_errors(store):
    import pandas as pd

    _, _, ids = featcache.load(store)
    t = CachedFeatures(store).set_output(transform="pandas").fit(ids)
    df = t.transform(pd.DataFrame({"id": ids[:4]}, index=[10, 11, 12, 13]))
    assert list(df.columns[:2]) == ["pooled_0", "pooled_1"] and list(df.index) == [10, 11, 12, 13]
    with pytest.raises(ValueError, match="not in the store"):
        t.transform(["nope"])
    with pytest.raises(ValueError, match="1-D sequence"):
        t.transform(np.zeros((3, 2)))


# Checks that feed random numeric matrices (or sparse, NaN, complex data) where a sample id is expected:
# they cannot apply to a transformer whose input is ids. Everything else must pass.
ID_INPUT_EXEMPT = {
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self", "check_readonly_memmap_input",
    "check_n_features_in_after_fitting", "check_positive_only_tag_during_fit", "check_estimators_dtypes",
    "check_complex_data", "check_dtype_object", "check_estimators_empty_data_messages", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimator_sparse_tag", "check_estimator_sparse_array",
    "check_estimator_sparse_matrix", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general", "check_transformer_preserve_dtypes",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d", "check_array_api_input", "check_fit_score_takes_y",
    "check_estimators_overwrite_params",
}


class _AsIfNumeric(CachedFeatures):
    """Drop the 'ids, not a 2-D array' tags so that scikit-learn runs every check on it."""

    def __sklearn_tags__(self):
        return super(CachedFeatures, self).__sklearn_tags__()


def test_estimator_checks(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        declared = check_estimator(CachedFeatures(store), on_fail=None, on_skip=None)
        everything = check_estimator(_AsIfNumeric(store), on_fail=None, on_skip=None)
        backbone = check_estimator(BackboneFeatures(TINY, weights="random", image_size=32), on_fail=None,
                                   on_skip=None)
    for r in declared + backbone:
        assert r["status"] == "passed", (r["check_name"], r["exception"])
    passed = {r["check_name"] for r in everything if r["status"] == "passed"}
    failed = {r["check_name"] for r in everything if r["status"] == "failed"}
    assert failed <= ID_INPUT_EXEMPT, failed - ID_INPUT_EXEMPT
    assert {"check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
            "check_estimators_unfitted", "check_transformers_unfitted", "check_estimator_cloneable",
            "check_no_attributes_set_in_init", "check_mixin_order"} <= passed


@pytest.mark.slow
def test_backbone_features_use_the_cache_and_match_extraction(tmp_path, tiny):
    import pandas as pd

    folder = write_folder(tmp_path / "imgs", per_class=4)
    store = tmp_path / "s.h5"
    featcache.extract(folder, store, **tiny)
    new = write_folder(tmp_path / "new", per_class=1, seed=3)
    paths = [str(folder / "circle" / "img000.png"), str(new / "square" / "img000.png")]

    t = BackboneFeatures(store=store).fit()
    out = t.transform(paths)
    with FeatureStore(store) as fs:
        np.testing.assert_array_equal(out[0], fs.features(rows=np.array([0]))[0])  # a cache hit: exact row
    fresh = featcache.extract(new, tmp_path / "n.h5", **tiny)
    with FeatureStore(fresh.store) as fs:
        row = list(fs.ids).index("square/img000.png")
        np.testing.assert_allclose(out[1], fs.features(rows=np.array([row]))[0], rtol=1e-4, atol=1e-5)
    df = BackboneFeatures(store=store).set_output(transform="pandas").fit().transform(pd.Series(paths))
    assert df.shape == (2, t.n_features_out_) and df.columns[0] == "pooled_0"
