"""Regularisation paths: a head's whole grid for about the price of one fit, with the same answers as
fitting every value cold.

The linear heads share one decomposition of the standardised train matrix (:func:`featcache.solvers.train_gram`):

- **ridge**: every alpha is a diagonal solve in the eigenbasis of XᵀX: exact (equal to RidgeClassifier /
  Ridge fitted per alpha; tested).
- **logreg** and the **linear svm** (classification): the problems LogisticRegression (multinomial, free
  intercept) and LinearSVC (squared hinge, bias regularised as liblinear does) solve, by preconditioned L-BFGS
  (:class:`featcache.solvers.LinearProblem`), warm-started from the stronger-regularised value. The results are
  plain ``LogisticRegression`` / ``LinearSVC`` objects holding those coefficients.
- anything else (kernel SVMs, linear SVR) is swept cold, in parallel threads.

Every path returns, per grid value, the validation score and the estimator fitted on train, so the chosen
value needs no refit. Inputs are standardised features (the pipeline's scaler is fitted by the caller).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import selection_score
from .solvers import LinearProblem, train_gram

__all__ = ["Fitted", "ridge_path", "ridge_solutions", "ridge_estimator", "logreg_path", "svm_path", "cold_path",
           "linear_svc", "logistic_regression"]


@dataclass
class Fitted:
    """One grid value's outcome: its validation score and the estimator fitted on train."""

    value: float
    score: float
    estimator: object


def _order(grid: Sequence[float], stronger_first_ascending: bool) -> list[int]:
    """Grid indices from the strongest regularisation to the weakest (the direction a warm start helps)."""
    idx = np.argsort(grid)
    return [int(i) for i in (idx if stronger_first_ascending else idx[::-1])]


def ridge_solutions(G: np.ndarray, B: np.ndarray, alphas: Sequence[float]) -> Iterator[np.ndarray]:
    """W(α) = (G + αI)⁻¹ B for each alpha, in the order given (G: the centred Gram matrix XᵀX, B: XᵀY)."""
    from scipy.linalg import cho_factor, cho_solve

    eye = np.eye(G.shape[0])
    for alpha in alphas:
        yield cho_solve(cho_factor(G + alpha * eye, check_finite=False), B, check_finite=False)


def ridge_estimator(task: str, alpha: float, W: np.ndarray, intercept: np.ndarray, lb=None):
    """A fitted RidgeClassifier (with its label binarizer) or Ridge holding ``W`` (d, outputs)."""
    from sklearn.linear_model import Ridge, RidgeClassifier

    if task == "classification":
        est = RidgeClassifier(alpha=alpha)
        est._label_binarizer, est.classes_ = lb, lb.classes_
        est.coef_, est.intercept_ = W.T.copy(), np.asarray(intercept, dtype=np.float64)
        if W.shape[1] == 1:  # two classes: scikit-learn keeps a 1-d coef_ (and a length-1 intercept_)
            est.coef_ = est.coef_[0]
    else:
        est = Ridge(alpha=alpha)
        est.coef_, est.intercept_ = W[:, 0].copy(), float(np.ravel(intercept)[0])
    est.n_features_in_ = W.shape[0]
    return est


def ridge_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, **_) -> Iterator[Fitted]:
    """Exact ridge (RidgeClassifier / Ridge with an intercept) for every alpha from one eigendecomposition:
    W(α) = V·diag(1/(λ + α))·(XV)ᵀ(Y - ȳ)."""
    from sklearn.preprocessing import LabelBinarizer

    gram = train_gram(np.asarray(Xtr))
    lb = None
    if task == "classification":
        lb = LabelBinarizer(pos_label=1, neg_label=-1).fit(ytr)
        Y = lb.transform(ytr).astype(np.float64)
    else:
        Y = np.asarray(ytr, dtype=np.float64).reshape(-1, 1)
    y_mean = Y.mean(axis=0)
    # (XV)ᵀ(Y - ȳ) = Vᵀ(X - μ)ᵀ(Y - ȳ): the centred rows' product, since the centred targets sum to zero
    B = (gram.XV.T @ (Y - y_mean).astype(gram.XV.dtype)).astype(np.float64)
    for i in _order(grid, stronger_first_ascending=False):
        alpha = float(grid[i])
        W = gram.V @ (B / (gram.lam + alpha)[:, None])
        est = ridge_estimator(task, alpha, W, y_mean - gram.mean @ W, lb)
        yield Fitted(alpha, selection_score(task, yva, est.predict(Xva)), est)


def logistic_regression(C: float, W: np.ndarray, b: np.ndarray, classes: np.ndarray, seed: int, n_iter: int = 0):
    """A LogisticRegression holding ``W`` (d x K) and ``b``: one column for two classes (the log-odds of
    classes[1], as scikit-learn keeps it), one per class otherwise (multinomial)."""
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(C=C, max_iter=500, tol=1e-3, random_state=seed)
    est.coef_, est.intercept_ = np.asarray(W, dtype=np.float64).T.copy(), np.asarray(b, dtype=np.float64).copy()
    est.classes_, est.n_features_in_, est.n_iter_ = classes, W.shape[0], np.array([n_iter], dtype=np.int32)
    return est


def _path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, loss: str, seed: int) -> Iterator[Fitted]:
    """One linear problem along the C grid (weakest regularisation last), each value warm-started from the
    previous solution."""
    classes, Y = _targets(np.asarray(ytr), loss)
    problem = LinearProblem(train_gram(np.asarray(Xtr)), Y, loss, penalise_bias=loss == "squared_hinge")
    for C, W, b, n_iter in problem.path([float(grid[i]) for i in _order(grid, stronger_first_ascending=True)]):
        est = (logistic_regression(C, W, b, classes, seed, n_iter) if loss == "log"
               else linear_svc(C, np.vstack([W, b[None, :]]), classes, seed))
        yield Fitted(C, selection_score(task, yva, est.predict(Xva)), est)


def logreg_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, *, seed: int, **_) -> Iterator[Fitted]:
    """LogisticRegression's problem along the C grid (see the module docstring)."""
    yield from _path(task, grid, Xtr, ytr, Xva, yva, "log", seed)


def svm_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, *, seed: int, **_) -> Iterator[Fitted]:
    """LinearSVC's problem along the C grid (classification; see the module docstring)."""
    yield from _path(task, grid, Xtr, ytr, Xva, yva, "squared_hinge", seed)


def _targets(y: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """The classes and the solver's targets: one ±1 column for two classes (+1 = classes[1]); otherwise one-hot
    rows (multinomial logistic) or one ±1 column per class (one-vs-rest, as LinearSVC)."""
    classes = np.unique(y)
    if classes.size == 2:
        return classes, np.where(y == classes[1], 1.0, -1.0)[:, None]
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)
    return classes, onehot if loss == "log" else 2.0 * onehot - 1.0


def linear_svc(C: float, W: np.ndarray, classes: np.ndarray, seed: int):
    """A LinearSVC holding the solution ``W`` ((d+1) x K, bias last)."""
    from sklearn.svm import LinearSVC

    est = LinearSVC(C=C, dual=True, max_iter=2000, tol=1e-3, random_state=seed)  # the head's own settings
    est.coef_, est.intercept_ = W[:-1].T.copy(), W[-1].copy()
    est.classes_, est.n_features_in_, est.n_iter_ = classes, W.shape[0] - 1, 0
    return est


def cold_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, *, build: Callable, kernel: str, seed: int,
              jobs: int = 1, **_) -> Iterator[Fitted]:
    """Every value fitted from scratch, in parallel threads (BLAS and libsvm/liblinear release the GIL)."""
    from joblib import Parallel, delayed

    def one(value: float) -> Fitted:
        est = build(task, value, kernel, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a weak grid point may stop early; the val score judges it
            est.fit(Xtr, ytr)
        return Fitted(value, selection_score(task, yva, est.predict(Xva)), est)

    yield from Parallel(n_jobs=jobs, prefer="threads", return_as="generator")(
        delayed(one)(float(v)) for v in grid)
