"""Regularisation paths: a head's whole grid for about the price of one fit, with the same answers as
fitting every value cold.

- **ridge**: XᵀX and XᵀY once, then one Cholesky solve of (XᵀX + αI) per alpha: exact, and for a grid of
  up to ~25 values cheaper than an eigendecomposition (d³/3 per alpha against ~9d³ once).
- **logreg**: scikit-learn's own ``LogisticRegression`` (lbfgs; array-API capable, so torch/CUDA tensors
  work where scikit-learn dispatches them), warm-started from the previous, stronger-regularised value.
- **linear svm** (classification): the squared-hinge L2 problem ``LinearSVC`` solves (bias regularised as
  liblinear does), solved in the primal with L-BFGS, warm-started along the path and preconditioned by the
  same eigendecomposition (``(I + 2C·XᵀX)^-1/2`` in the eigenbasis, which cuts the iterations ~2.5x at the
  weak-regularisation end). liblinear has no warm start; its dual solver refit at every C was the slowest
  head (measured in ``scripts/bench_heads.py``). The result is a plain ``LinearSVC`` with those coefficients.
- anything else (kernel SVMs, linear SVR) is swept cold, in parallel threads.

Every path returns, per grid value, the validation score and the estimator fitted on train, so the chosen
value needs no refit. Inputs are standardised features (the pipeline's scaler is fitted by the caller).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import selection_score

__all__ = ["Fitted", "ridge_path", "ridge_solutions", "ridge_estimator", "logreg_path", "svm_path", "cold_path",
           "eigh_gram", "SquaredHinge", "linear_svc"]


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


def eigh_gram(X: np.ndarray, bias: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigendecomposition of the Gram matrix of ``X`` (centred, or with a column of ones when ``bias``):
    eigenvalues, eigenvectors and the column means that were removed (zeros with ``bias``)."""
    X = np.asarray(X, dtype=np.float64)
    if bias:
        X, mean = np.hstack([X, np.ones((X.shape[0], 1))]), np.zeros(X.shape[1])
    else:
        mean = X.mean(axis=0)
        X = X - mean
    lam, V = np.linalg.eigh(X.T @ X)
    return np.maximum(lam, 0.0), V, mean


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
    """Exact ridge (RidgeClassifier / Ridge with an intercept) for every alpha from one Gram matrix."""
    from sklearn.preprocessing import LabelBinarizer

    X = np.asarray(Xtr)
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = (X - mean).astype(np.float32)  # the Gram product in float32 (BLAS-fast; as scikit-learn's own on float32)
    lb = None
    if task == "classification":
        lb = LabelBinarizer(pos_label=1, neg_label=-1).fit(ytr)
        Y = lb.transform(ytr).astype(np.float64)
    else:
        Y = np.asarray(ytr, dtype=np.float64).reshape(-1, 1)
    y_mean = Y.mean(axis=0)
    order = _order(grid, stronger_first_ascending=False)
    alphas = [float(grid[i]) for i in order]
    G, B = (Xc.T @ Xc).astype(np.float64), (Xc.T @ (Y - y_mean).astype(np.float32)).astype(np.float64)
    for alpha, W in zip(alphas, ridge_solutions(G, B, alphas), strict=True):
        est = ridge_estimator(task, alpha, W, y_mean - mean @ W, lb)
        yield Fitted(alpha, selection_score(task, yva, est.predict(Xva)), est)


def logreg_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, *, build: Callable, seed: int,
                **_) -> Iterator[Fitted]:
    """scikit-learn's LogisticRegression along the C grid, each fit starting from the previous solution."""
    est = build(task, float(min(grid)), "linear", seed)
    est.set_params(warm_start=True)
    for i in _order(grid, stronger_first_ascending=True):
        est.set_params(C=float(grid[i]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a weak grid point may stop at max_iter; the val score judges it
            est.fit(Xtr, ytr)
        done = copy.deepcopy(est)
        done.set_params(warm_start=False)
        yield Fitted(float(grid[i]), selection_score(task, yva, done.predict(Xva)), done)


class SquaredHinge:
    """min ½‖W‖² + C Σ max(0, 1 - Y ⊙ (X̃W))² over W ((d+1) x K, bias as the last row, regularised like
    liblinear), one-vs-rest columns solved jointly with L-BFGS in preconditioned coordinates
    W = V diag(s) Z, s = (1 + 2C λ)^-1/2, where λ, V are the eigenpairs of X̃ᵀX̃ (computed once per X)."""

    def __init__(self, X: np.ndarray):
        self.lam, self.V, _ = eigh_gram(X, bias=True)
        Xb = np.hstack([np.asarray(X, dtype=np.float64), np.ones((X.shape[0], 1))])
        self.XV = (Xb @ self.V).astype(np.float32)  # X̃ V, once: each C only rescales its columns

    def fit(self, Y: np.ndarray, C: float, W0: np.ndarray | None = None, *, gtol: float = 1e-4,
            max_iter: int = 2000) -> np.ndarray:
        from scipy.optimize import minimize

        s = (1.0 + 2.0 * C * self.lam) ** -0.5
        s32 = s.astype(np.float32)
        A = self.XV * s32
        Yf = Y.astype(np.float32)
        shape = (A.shape[1], Y.shape[1])

        def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
            Z = z.reshape(shape)
            active = np.maximum(1.0 - Yf * (A @ Z.astype(np.float32)), 0.0)
            Wr = s[:, None] * Z  # Vᵀ W
            f = 0.5 * float(np.sum(Wr * Wr)) + C * float(np.dot(active.ravel(), active.ravel()))
            grad = s[:, None] * Wr - 2.0 * C * (A.T @ (Yf * active))
            return f, grad.ravel()

        z0 = np.zeros(shape) if W0 is None else (self.V.T @ W0) / s[:, None]
        res = minimize(objective, z0.ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-12})
        return self.V @ (s[:, None] * res.x.reshape(shape))


def _svm_targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LinearSVC's one-vs-rest targets: one column per class, or one column (+1 = classes[1]) for two."""
    classes = np.unique(y)
    if classes.size == 2:
        return classes, np.where(y == classes[1], 1.0, -1.0)[:, None]
    return classes, np.where(y[:, None] == classes[None, :], 1.0, -1.0)


def linear_svc(C: float, W: np.ndarray, classes: np.ndarray, seed: int):
    """A LinearSVC holding the solution ``W`` ((d+1) x K, bias last)."""
    from sklearn.svm import LinearSVC

    est = LinearSVC(C=C, dual=True, random_state=seed)
    est.coef_, est.intercept_ = W[:-1].T.copy(), W[-1].copy()
    est.classes_, est.n_features_in_, est.n_iter_ = classes, W.shape[0] - 1, 0
    return est


def svm_path(task: str, grid: Sequence[float], Xtr, ytr, Xva, yva, *, seed: int, **_) -> Iterator[Fitted]:
    """The linear SVM's C grid, warm-started and preconditioned (classification; see the module docstring)."""
    problem = SquaredHinge(Xtr)
    classes, Y = _svm_targets(np.asarray(ytr))
    W = None
    for i in _order(grid, stronger_first_ascending=True):
        C = float(grid[i])
        W = problem.fit(Y, C, W)
        est = linear_svc(C, W, classes, seed)
        yield Fitted(C, selection_score(task, yva, est.predict(Xva)), est)


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
