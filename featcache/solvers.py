"""The linear heads' optimisation problems, solved fast enough that a whole regularisation path costs
about one plain fit.

Every linear head (ridge, logistic regression, the squared-hinge SVM) on standardised features sees the
same train matrix, so one decomposition serves all of them and every grid value: :func:`train_gram` is
the eigendecomposition of the centred Gram matrix XᵀX and the rotated features XV (cached per matrix, so
the heads of one process share it). In that basis

- ridge is a diagonal solve per alpha (exact; :func:`featcache.paths.ridge_path`);
- the logistic and squared-hinge losses are solved by :func:`lbfgs` in *preconditioned* coordinates,
  W = V·diag(s)·Z with s = (1 + κ·C·λ)^-1/2 (κ: the loss's largest curvature), which makes the problem
  close to the identity in its stiffest directions: the weak-regularisation end of a path converges in tens
  of iterations instead of hundreds.

Why hand-written: scikit-learn's ``LogisticRegression`` (lbfgs) cannot be preconditioned without changing
its penalty, and stops unconverged at weak C; liblinear has no warm start. Measured on 3,790 x 1,280
Fashion-MNIST features (``scripts/bench_heads.py``): the 5-value SVM path went from 7.2 s (scipy's L-BFGS-B,
whose own bookkeeping was a third of that) to about a second, and the 7-value logistic path reaches the
converged optimum's val scores, which scikit-learn's fits at its default tolerance did not.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["TrainGram", "train_gram", "clear_cache", "lbfgs", "LinearProblem", "LOSSES"]

LOSSES = ("log", "squared_hinge")
# stop when max |gradient| ≤ RTOL · max |Z| in preconditioned coordinates (where the Hessian is near the
# identity, so that is the solution's relative error): scale-free across C; measured on Fashion-MNIST
# features, 1e-3 gives the converged optimum's val scores within 0.2 points, 3e-3 within 0.8
RTOL = 1e-3
MAX_ITER = 1000
_BLOCK_BYTES = 1 << 20  # rows per loss block: X block stays in the L2 cache between X·W and Xᵀ·dL (1.5x)


@dataclass(frozen=True)
class TrainGram:
    """The train matrix's centred Gram eigendecomposition (λ ≥ 0, V) and the rotated features X·V."""

    mean: np.ndarray  # (d,) column means of X
    lam: np.ndarray  # (d,) eigenvalues of (X - mean)ᵀ(X - mean), ascending
    V: np.ndarray  # (d, d) float64 eigenvectors
    XV: np.ndarray  # (n, d) X·V in X's float dtype (the mean is *not* removed: the solvers fit an intercept)

    @property
    def n(self) -> int:
        return self.XV.shape[0]


_CACHE: dict[tuple, TrainGram] = {}


def train_gram(X: np.ndarray) -> TrainGram:
    """The decomposition of ``X``, computed once per matrix content (the last one is kept: the heads of a
    compare cell or a notebook fit on the same standardised train split one after the other)."""
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    key = (X.shape, X.dtype.str, hashlib.blake2b(X.data, digest_size=16).hexdigest())
    if key not in _CACHE:
        if not np.isfinite(X).all():
            raise InputError("the train features contain NaN or infinite values (a damaged store? extract it again)")
        mean = X.mean(axis=0, dtype=np.float64)
        Xc = X - mean.astype(X.dtype)
        lam, V = np.linalg.eigh((Xc.T @ Xc).astype(np.float64))  # the product in X's dtype: BLAS-fast
        _CACHE.clear()
        _CACHE[key] = TrainGram(mean, np.maximum(lam, 0.0), V, X @ V.astype(X.dtype))
    return _CACHE[key]


def clear_cache() -> None:
    """Forget the cached decomposition (benchmarks time each head as a fresh process would)."""
    _CACHE.clear()


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, *, gtol: float,
          max_iter: int = MAX_ITER, memory: int = 30) -> tuple[np.ndarray, int, str]:
    """Minimise ``fun`` (value, gradient) from ``x0`` until max |gradient| ≤ ``gtol`` · max |x|: L-BFGS two-loop
    recursion with an Armijo backtracking line search. A line search that cannot decrease the value any more
    (the float32 loss's resolution) ends the run at the current point. Returns the point, the iterations and
    why it stopped: "converged", "line search" (no further decrease possible), "max_iter" or "non-finite"
    (the value or gradient overflowed).

    scipy's L-BFGS-B spent ~5 ms of bookkeeping per iteration on 12,810 variables (as much as the loss);
    this loop costs ~0.1 ms."""
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for it in range(max_iter):
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return x, it, "non-finite"
        if np.max(np.abs(g)) <= gtol * max(float(np.max(np.abs(x))), 1e-12):
            return x, it, "converged"
        q, alphas = g.copy(), []
        for s, y, rho in reversed(pairs):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * y
        # first step: at most unit length in preconditioned coordinates; then the usual sᵀy/yᵀy scaling
        q *= float(pairs[-1][0] @ pairs[-1][1]) / float(pairs[-1][1] @ pairs[-1][1]) if pairs else \
            min(1.0, 1.0 / float(np.max(np.abs(g))))
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += (a - rho * float(y @ q)) * s
        p = -q
        slope = float(g @ p)
        if slope >= 0:  # not a descent direction (curvature pairs gone stale): restart from the gradient
            pairs.clear()
            p, slope = -g, -float(g @ g)
        t = 1.0
        while True:
            x_new = x + t * p
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-6:
                return x, it, "line search"
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, f, g = x_new, f_new, g_new
    return x, max_iter, "max_iter"


def _log_loss(L: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """Multinomial (Y one-hot, K ≥ 3 columns) or binary (Y ±1, one column) logistic loss and dloss/dL."""
    if Y.shape[1] == 1:
        m = -Y * L
        return float(np.logaddexp(0.0, m).sum(dtype=np.float64)), -Y / (1.0 + np.exp(-m))
    L = L - L.max(axis=1, keepdims=True)
    P = np.exp(L)
    Z = P.sum(axis=1, keepdims=True)
    P /= Z
    return float((np.log(Z[:, 0]) - (L * Y).sum(axis=1)).sum(dtype=np.float64)), P - Y


def _squared_hinge(L: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ max(0, 1 - y·l)² over one-vs-rest columns (Y ±1) and dloss/dL."""
    a = np.maximum(1.0 - Y * L, 0.0)
    return float(np.einsum("ij,ij->", a, a, dtype=np.float64)), -2.0 * Y * a


def _log_curvature(L: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """d²loss/dL² per entry (the diagonal of the per-row Hessian): p(1 - p)."""
    if Y.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-L))
    else:
        p = np.exp(L - L.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    return p * (1.0 - p)


def _hinge_curvature(L: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return 2.0 * (Y * L < 1.0)


@dataclass(frozen=True)
class _Loss:
    value_grad: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]
    curvature: Callable[[np.ndarray, np.ndarray], np.ndarray]
    kappa: float  # the largest curvature: what a start from zero is preconditioned with
    extrapolate: bool  # whether the next C starts from the path's linear extrapolation in log C


# the logistic solution keeps growing (near-separable data) and extrapolates well (2x fewer iterations); the
# squared hinge's saturates and extrapolation overshoots (2x more)
_LOSS = {"log": _Loss(_log_loss, _log_curvature, 0.25, True),
         "squared_hinge": _Loss(_squared_hinge, _hinge_curvature, 2.0, False)}


class LinearProblem:
    """min ½‖W‖² (+ ½‖b‖² when ``penalise_bias``) + C · Σᵢ loss(xᵢW + b, yᵢ) over W (d x K) and b (K),
    on a :class:`TrainGram`'s features. ``Y``: one-hot rows for a multinomial loss, ±1 columns otherwise.

    LogisticRegression's problem is ``loss="log"`` with an unpenalised intercept; LinearSVC's (liblinear,
    intercept_scaling=1) is ``loss="squared_hinge"`` with a penalised bias. Solved for U = (Vᵀw; b) = s ⊙ Z,
    where s = (r + C·h)^-1/2 (r: 1 for a penalised row, h: the loss's curvature along each eigenvector at the
    warm start), so the Hessian in Z is close to the identity: a Jacobi preconditioner in the eigenbasis."""

    def __init__(self, gram: TrainGram, Y: np.ndarray, loss: str, penalise_bias: bool):
        self.gram, self.loss = gram, loss
        self.Y = np.asarray(Y, dtype=gram.XV.dtype)
        self.block = max(64, _BLOCK_BYTES // (gram.XV.itemsize * gram.XV.shape[1]))
        self.r = np.append(np.ones(gram.XV.shape[1]), float(penalise_bias))[:, None]  # penalised rows of U

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        A = self.gram.XV
        for lo in range(0, A.shape[0], self.block):
            yield A[lo:lo + self.block], self.Y[lo:lo + self.block]

    def _scales(self, C: float, U: np.ndarray | None) -> np.ndarray:
        """s (d+1, K) at the starting point U (None: zero, preconditioned with the largest curvature)."""
        K = self.Y.shape[1]
        if U is None:
            h = np.tile(_LOSS[self.loss].kappa * np.append(self.gram.lam, self.gram.n)[:, None], (1, K))
        else:
            curvature, U32, h = _LOSS[self.loss].curvature, U.astype(self.gram.XV.dtype), np.zeros(U.shape)
            for Ab, Yb in self._blocks():
                D = curvature(Ab @ U32[:-1] + U32[-1], Yb)
                h[:-1] += (Ab * Ab).T @ D
                h[-1] += D.sum(axis=0)
        return (self.r + C * h + 1e-12) ** -0.5

    def _objective(self, C: float, s: np.ndarray) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        loss, dt, reg = _LOSS[self.loss].value_grad, self.gram.XV.dtype, self.r * s**2

        def value_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
            Z = z.reshape(s.shape)
            U = (s * Z).astype(dt)
            total, grad = 0.0, np.zeros_like(U)
            for Ab, Yb in self._blocks():
                f, dL = loss(Ab @ U[:-1] + U[-1], Yb)
                total += f
                grad[:-1] += Ab.T @ dL
                grad[-1] += dL.sum(axis=0)
            return C * total + 0.5 * float(np.sum(reg * Z * Z)), (C * s * grad + reg * Z).ravel()

        return value_grad

    def solve(self, C: float, start: tuple[np.ndarray, np.ndarray] | None = None, *, gtol: float = RTOL,
              max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray, int]:
        """(W, b, iterations) at strength ``C``, warm-started from ``start`` = (W, b) when given. A start whose
        loss overflows is dropped for a cold start; a cold start that overflows means the features cannot be
        fitted (InputError); running out of iterations warns, as scikit-learn's solvers do."""
        U0 = None if start is None else np.vstack([self.gram.V.T @ start[0], np.asarray(start[1])[None, :]])
        s = self._scales(C, U0)
        z0 = np.zeros(s.shape) if U0 is None else U0 / s
        z, n_iter, status = lbfgs(self._objective(C, s), z0.ravel(), gtol=gtol, max_iter=max_iter)
        if status == "non-finite":
            if start is not None:
                return self.solve(C, None, gtol=gtol, max_iter=max_iter)
            raise InputError(f"the {self.loss} loss overflows at C={C:g}: the features have values too large to "
                             "fit (standardise them, or check the store for damaged rows)")
        if status == "max_iter":
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(f"{self.loss} solver stopped at {max_iter} iterations at C={C:g} before converging",
                          ConvergenceWarning, stacklevel=2)
        U = s * z.reshape(s.shape)
        return self.gram.V @ U[:-1], U[-1].copy(), n_iter

    def path(self, Cs: Sequence[float]) -> Iterator[tuple[float, np.ndarray, np.ndarray, int]]:
        """(C, W, b, iterations) for each distinct value of ``Cs`` (strongest regularisation first), each solve
        warm-started from the previous solution, or (logistic loss) from the linear extrapolation in log C of the
        last two, never further than one step of the last two's spacing (irregular grids cannot overshoot)."""
        last: list[tuple[float, np.ndarray, np.ndarray]] = []
        for C in dict.fromkeys(float(c) for c in Cs):
            start = None if not last else last[-1][1:]
            if len(last) == 2 and _LOSS[self.loss].extrapolate:
                (c0, W0, b0), (c1, W1, b1) = last
                t = float(np.clip(np.log(C / c1) / np.log(c1 / c0), 0.0, 1.0))
                start = (W1 + t * (W1 - W0), b1 + t * (b1 - b0))
            W, b, n_iter = self.solve(C, start)
            last = [*last[-1:], (C, W, b)]
            yield C, W, b, n_iter
