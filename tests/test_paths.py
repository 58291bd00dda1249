"""Heads priced like one fit (regularisation paths) and heads on stores larger than memory (streaming):
the same choices and scores as fitting every grid value cold, in memory."""

import json
import warnings

import numpy as np
import pytest
from helpers import assert_clean_error, blobs, cli, synthetic_store
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import featcache
from featcache import paths, solvers
from featcache.errors import InputError
from featcache.heads import HEADS, fit_head, load_head
from featcache.store import FeatureStore
from featcache.streaming import MEMORY_ENV, StoreBlocks, memory_plan


def _hard_blobs(n_per_class=80, n_classes=3, dim=20, seed=0):
    """Overlapping classes, so the regularisation strength matters."""
    return blobs(n_per_class, n_classes=n_classes, dim=dim, sep=0.45, seed=seed)


def _few_informative(seed: int = 3, n_per_class: int = 1400, n_classes: int = 3, dim: int = 60, informative: int = 6):
    """Classes that differ in a few of many dimensions: every head's grid matters (over- and under-fitting)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    centers = np.zeros((n_classes, dim))
    centers[:, :informative] = rng.normal(0, 0.9, (n_classes, informative))
    return centers[y] + rng.normal(size=(y.size, dim)), y


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y = _few_informative()
    return synthetic_store(tmp_path_factory.mktemp("paths") / "s.h5", X, y)


def _converged(spec):
    def build(task, value, kernel, seed):
        est = spec.build(task, value, kernel, seed)
        if isinstance(est, (LogisticRegression, LinearSVC)):
            est.set_params(tol=1e-8, max_iter=100_000)
        return est

    return build


@pytest.mark.parametrize("head", list(HEADS))
def test_the_path_chooses_what_a_converged_cold_sweep_chooses(store, head):
    spec = HEADS[head]
    res = fit_head(store, head, save=False, quiet=True, stream=False)
    Xtr, ytr, _ = featcache.load(store, split="train")
    Xva, yva, _ = featcache.load(store, split="val")
    scaler = StandardScaler().fit(Xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cold = {f.value: f.score for f in paths.cold_path("classification", spec.grid, scaler.transform(Xtr), ytr,
                                                          scaler.transform(Xva), yva, build=_converged(spec),
                                                          kernel="linear", seed=0)}
    cold_scores = [cold[v] for v in spec.grid]
    assert res.meta["n_val"] >= 400  # so half a point is a couple of rows, not one
    assert np.max(np.abs(np.subtract(res.meta["val_scores"], cold_scores))) <= 0.005  # within half a point
    best = max(cold_scores)
    order = sorted(spec.grid) if spec.stronger_first else sorted(spec.grid, reverse=True)
    assert res.meta["value"] == next(v for v in order if cold[v] >= best - 1e-12)  # same choice, ties as before
    assert len(set(cold_scores)) > 1  # the grid matters on this data


@pytest.mark.parametrize(("task", "n_classes"), [("classification", 2), ("classification", 4), ("regression", 0)])
def test_ridge_path_equals_per_alpha_fits(task, n_classes):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 12)) + 3.0  # not centred: the intercept must come out right
    y = rng.integers(0, n_classes, 150) if task == "classification" else X @ rng.normal(size=12) + rng.normal(size=150)
    grid = (0.1, 10.0, 1000.0)
    for f in paths.ridge_path(task, grid, X, y, X[:40], y[:40]):
        ref = (RidgeClassifier if task == "classification" else Ridge)(alpha=f.value, solver="cholesky").fit(X, y)
        # the Gram product runs in float32 (as scikit-learn's own on float32 features): ~1e-6 relative
        np.testing.assert_allclose(f.estimator.coef_, ref.coef_, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(f.estimator.intercept_, ref.intercept_, rtol=1e-4, atol=1e-6)
        if task == "classification":
            np.testing.assert_array_equal(f.estimator.predict(X), ref.predict(X))
        else:
            np.testing.assert_allclose(f.estimator.predict(X), ref.predict(X), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_svm_path_solves_linearsvcs_problem(n_classes):
    X, y = _hard_blobs(60, n_classes=n_classes, dim=10, seed=2)
    X = StandardScaler().fit_transform(X)
    for f in paths.svm_path("classification", (1e-3, 1e-2, 1e-1), X, y, X, y, seed=0):
        ref = LinearSVC(C=f.value, dual=True, tol=1e-8, max_iter=200_000).fit(X, y)
        assert f.estimator.coef_.shape == ref.coef_.shape
        np.testing.assert_allclose(f.estimator.coef_, ref.coef_, rtol=2e-2, atol=2e-3)
        np.testing.assert_allclose(f.estimator.intercept_, ref.intercept_, rtol=2e-2, atol=2e-3)
        assert np.mean(f.estimator.predict(X) == ref.predict(X)) >= 0.99


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logreg_path_solves_logisticregressions_problem(n_classes):
    X, y = _hard_blobs(60, n_classes=n_classes, dim=10, seed=4)
    X = StandardScaler().fit_transform(X)
    for f in paths.logreg_path("classification", (1e-2, 1e-1, 1.0, 10.0), X, y, X, y, seed=0):
        ref = LogisticRegression(C=f.value, tol=1e-10, max_iter=100_000).fit(X, y)
        assert f.estimator.coef_.shape == ref.coef_.shape
        # solved to 1e-3 relative (solvers.RTOL), not to the last digit; the multinomial intercept is free up
        # to a constant shift, so probabilities are compared
        np.testing.assert_allclose(f.estimator.predict_proba(X), ref.predict_proba(X), atol=5e-3)
        np.testing.assert_allclose(f.estimator.coef_, ref.coef_, atol=5e-2 * np.abs(ref.coef_).max())
        assert np.mean(f.estimator.predict(X) == ref.predict(X)) >= 0.99


def test_irregular_and_repeated_grids_still_reach_the_optimum():
    X, y = _hard_blobs(60, n_classes=3, dim=10, seed=4)
    X = StandardScaler().fit_transform(X)
    # nearly equal values then a jump: an unbounded extrapolation in log C would overshoot by 10^7
    fits = {f.value: f for f in paths.logreg_path("classification", (1.0, 1.0000001, 100.0, 1.0), X, y, X, y, seed=0)}
    assert sorted(fits) == [1.0, 1.0000001, 100.0]  # the repeated value is fitted once
    for C, f in fits.items():
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(X, y)
        np.testing.assert_allclose(f.estimator.predict_proba(X), ref.predict_proba(X), atol=1e-2)


def test_non_finite_features_are_refused_in_one_line():
    X, y = _hard_blobs(20, n_classes=2, dim=4)
    X[3, 1] = np.nan
    solvers.clear_cache()
    for path in (paths.logreg_path, paths.svm_path, paths.ridge_path):
        with pytest.raises(InputError, match="NaN or infinite"):
            list(path("classification", (1.0,), X, y, X, y, seed=0))


def test_lbfgs_reaches_a_quadratics_minimum():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(40, 40))
    H, b = M @ M.T + np.eye(40), rng.normal(size=40)
    x, n_iter, status = solvers.lbfgs(lambda x: (0.5 * x @ H @ x - b @ x, H @ x - b), np.zeros(40), gtol=1e-10)
    np.testing.assert_allclose(x, np.linalg.solve(H, b), rtol=1e-6, atol=1e-8)
    assert 0 < n_iter < 1000 and status in ("converged", "line search")


def test_heads_on_the_same_train_matrix_share_one_decomposition():
    X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    solvers.clear_cache()
    first = solvers.train_gram(X)
    assert solvers.train_gram(X.copy()) is first  # same content, another array: not computed again
    other = solvers.train_gram(X + 1)
    assert other is not first and np.allclose(other.lam, first.lam, rtol=1e-4)  # a shift leaves the Gram alone
    np.testing.assert_allclose(first.V @ np.diag(first.lam) @ first.V.T, np.cov(X.T, bias=True) * len(X),
                               rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory):
    X, y = blobs(1000, n_classes=4, dim=32, sep=0.5, seed=5)  # 800 test rows: a point is 8 of them
    return synthetic_store(tmp_path_factory.mktemp("blobs") / "s.h5", X, y)


@pytest.mark.parametrize("head", list(HEADS))
def test_streaming_heads_score_like_the_in_memory_ones(blob_store, head, tmp_path):
    store = blob_store
    memory = fit_head(store, head, save=False, quiet=True, stream=False)
    streamed = fit_head(store, head, out=tmp_path / f"{head}.head", quiet=True, stream=True)
    assert streamed.meta["streamed"] and not memory.meta["streamed"]
    assert abs(streamed.metrics["accuracy"] - memory.metrics["accuracy"]) <= 0.01  # within one point
    if head == "ridge":  # exact in one pass
        np.testing.assert_allclose(streamed.meta["val_scores"], memory.meta["val_scores"])
        np.testing.assert_allclose(streamed.pipeline[-1].coef_, memory.pipeline[-1].coef_, rtol=1e-4, atol=1e-6)
    pipe, _ = load_head(tmp_path / f"{head}.head")  # the streamed head is an ordinary saved head
    X, _, _ = featcache.load(store, split="test")
    np.testing.assert_array_equal(pipe.predict(X), streamed.pipeline.predict(X))


def test_a_store_larger_than_the_memory_limit_streams_in_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 1500)
    X = rng.normal(size=(1500, 512)) + 0.6 * np.eye(3, 512)[y] * 8
    store = synthetic_store(tmp_path / "big.h5", X, y)
    with FeatureStore(store) as fs:
        chunk = fs.layout()[2][0]
    assert chunk < 1500  # several HDF5 chunks
    monkeypatch.setenv(MEMORY_ENV, "2M")  # 1,500 x 512 float32 x 3 would need ~9 MB
    assert memory_plan(1500, 512, None)[0]
    out = cli("fit-head", str(store), "--head", "ridge", "--out", str(tmp_path / "r.head"), env={MEMORY_ENV: "2M"})
    assert out.returncode == 0, out.stderr
    assert "features streaming" in out.stdout
    side = json.loads((tmp_path / "r.json").read_text())
    assert side["streamed"] and side["blocks"]["max_block_rows"] < 1500
    assert side["blocks"]["max_block_rows"] % chunk == 0 or side["blocks"]["max_block_rows"] < chunk * 2
    forced = cli("fit-head", str(store), "--head", "ridge", "--no-stream", "-q", "--out", str(tmp_path / "m.head"),
                 env={MEMORY_ENV: "2M"})
    assert forced.returncode == 0 and not json.loads((tmp_path / "m.json").read_text())["streamed"]


def test_blocks_follow_the_chunks_and_read_each_row_once_per_pass(tmp_path):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(1500, 512)).astype(np.float32), rng.integers(0, 2, 1500)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    with FeatureStore(store) as fs:
        chunk = fs.layout()[2][0]
        rows = {"train": np.arange(0, 1500, 2), "val": np.arange(1, 1500, 2), "test": np.arange(1, 200, 2)}
        blocks = StoreBlocks(fs, "pooled", rows, block_rows=chunk + 1)
        assert blocks.block_rows == chunk  # rounded down to whole chunks
        seen = np.concatenate([part["train"][0] for part in blocks.blocks(["train"])])
        np.testing.assert_array_equal(seen, X[rows["train"]])  # every train row once, in order
        assert blocks.rows_read == 1500 and blocks.max_block_rows == chunk
        before = blocks.rows_read
        list(blocks.blocks(["test"]))  # the test rows sit in the first block only: nothing else is read
        assert blocks.rows_read - before == chunk


def test_streaming_refuses_what_it_cannot_do(store, monkeypatch):
    with pytest.raises(InputError, match="cannot stream"):
        fit_head(store, "svm", kernel="rbf", stream=True, save=False, quiet=True)
    with pytest.raises(InputError, match="train\\+val"):
        fit_head(store, "logreg", refit="train+val", stream=True, save=False, quiet=True)
    assert_clean_error(cli("fit-head", str(store), "--stream", "--no-stream"), "not allowed")
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(InputError, match=MEMORY_ENV):
        memory_plan(10, 10, None)


def test_streaming_ridge_regression_is_exact(tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(600, 24)) + 2.0
    y = X @ rng.normal(size=24) + rng.normal(0, 0.5, 600)
    store = synthetic_store(tmp_path / "reg.h5", X, y, task="regression")
    memory = fit_head(store, "ridge", save=False, quiet=True, stream=False)
    streamed = fit_head(store, "ridge", save=False, quiet=True, stream=True)
    np.testing.assert_allclose(streamed.meta["val_scores"], memory.meta["val_scores"], rtol=1e-6)
    assert streamed.meta["value"] == memory.meta["value"]
    assert streamed.metrics["r2"] == pytest.approx(memory.metrics["r2"], rel=1e-5)
