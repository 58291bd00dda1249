"""LogME (You et al., ICML 2021): how well frozen features explain the labels, without training anything.

For each target column ``y`` (one per class for classification, one-hot; the standardised target for regression)
the features ``F`` (n x d) define a Bayesian linear model ``y = F w + noise``, ``w ~ N(0, 1/alpha)``,
``noise ~ N(0, 1/beta)``. LogME is the log evidence ``log p(y | F)`` at the alpha and beta that maximise it,
divided by n, averaged over the targets. The fast path decomposes the features once (the eigenvectors of the
smaller Gram matrix give the SVD) and then runs the paper's fixed-point updates of alpha and beta per target in
O(min(n, d)) each, so scoring a candidate costs about one pass over its features.

Regression targets are standardised (the paper uses them as given): the score then does not depend on the
target's unit, so the candidates of one ranking are compared on the same footing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["logme", "LogMEFit", "decompose", "evidence_fixed_point", "direct_evidence", "targets_of"]

MAX_ITER = 100
TOL = 1e-5  # relative change of alpha/beta between updates at which the fixed point counts as reached


@dataclass(frozen=True)
class Decomposition:
    """The features through their SVD ``F = U S V^T``: the non-zero squared singular values, and how to take a
    target's coordinates ``U^T y`` (without forming ``U`` when n >= d: ``U^T y = S^-1 V^T F^T y``)."""

    sigma: np.ndarray  # (k,) non-zero eigenvalues of F^T F, k <= min(n, d)
    vectors: np.ndarray  # (d, k) V when n >= d, else (n, k) U
    features: np.ndarray | None  # F (float64) when n >= d, for F^T y
    n: int
    d: int

    def project(self, y: np.ndarray) -> tuple[np.ndarray, float]:
        """``U^T y`` and the squared norm of the part of ``y`` outside the features' column space."""
        if self.features is None:
            z = self.vectors.T @ y
        else:
            z = (self.vectors.T @ (self.features.T @ y)) / np.sqrt(self.sigma)
        return z, max(float(y @ y - z @ z), 0.0)


def decompose(F: np.ndarray) -> Decomposition:
    """One decomposition of the features: eigen-decompose the smaller Gram matrix (d x d when n >= d), which is
    the SVD of ``F`` at a fraction of its cost (5,000 x 1,280: one 1,280-square ``eigh``, about 0.3 s on 2 cores)."""
    F32 = np.asarray(F, dtype=np.float32)
    n, d = F32.shape
    small = n >= d
    gram = (F32.T @ F32 if small else F32 @ F32.T).astype(np.float64)  # float32 BLAS product, float64 eigensolver
    sigma, vectors = np.linalg.eigh(gram)
    keep = sigma > max(sigma.max(initial=0.0), 0.0) * 1e-10
    return Decomposition(sigma[keep], vectors[:, keep], F32.astype(np.float64) if small else None, n, d)


@dataclass(frozen=True)
class LogMEFit:
    """The score and, per target, the maximising alpha and beta (and the evidence per row)."""

    score: float
    alphas: np.ndarray
    betas: np.ndarray
    evidences: np.ndarray


def evidence_fixed_point(dec: Decomposition, y: np.ndarray) -> tuple[float, float, float]:
    """(evidence / n, alpha, beta) for one target: the paper's Algorithm 2 (MacKay's updates) in the SVD basis."""
    z, outside = dec.project(y)
    sigma, n, d = dec.sigma, dec.n, dec.d
    z2, floor = z * z, 1e-12 * max(float(y @ y), 1e-300)
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITER):
        lam = alpha / beta  # written with the ratio: no overflow when the features explain y almost exactly
        gamma = float(np.sum(sigma / (lam + sigma)))
        m2 = float(np.sum(sigma * z2 / (lam + sigma) ** 2))  # ||m||^2, m the posterior mean of w
        res2 = float(np.sum(lam * lam * z2 / (lam + sigma) ** 2)) + outside  # ||F m - y||^2
        alpha, beta = gamma / max(m2, 1e-300), (n - gamma) / max(res2, floor)
        if abs(alpha / beta - lam) <= TOL * lam:
            break
    return _evidence(sigma, z2, outside, n, d, alpha, beta) / n, alpha, beta


def _evidence(sigma: np.ndarray, z2: np.ndarray, outside: float, n: int, d: int, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta), from the decomposition: eq. (2) of the paper, written in the SVD basis."""
    t = alpha + beta * sigma
    m2 = float(np.sum(beta * beta * sigma * z2 / (t * t)))
    res2 = float(np.sum(alpha * alpha * z2 / (t * t))) + outside
    logdet = float(np.sum(np.log(t))) + (d - sigma.size) * np.log(alpha)  # log|alpha I + beta F^T F|
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)


def direct_evidence(F: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta), evaluated head-on (O(n^3)): the reference the fast path must equal."""
    F = np.asarray(F, dtype=np.float64)
    n = F.shape[0]
    cov = F @ F.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        raise np.linalg.LinAlgError("covariance not positive definite")
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


def targets_of(labels: np.ndarray, task: str, n_classes: int | None = None) -> np.ndarray:
    """(n, t) target columns: one-hot classes, or the standardised regression target."""
    labels = np.asarray(labels)
    if task == "classification":
        k = int(n_classes if n_classes is not None else labels.max() + 1)
        return np.eye(k)[labels.astype(np.int64)]
    y = labels.astype(np.float64)
    return ((y - y.mean()) / (y.std() or 1.0))[:, None]


def logme(features: np.ndarray, labels: np.ndarray, task: str = "classification",
          n_classes: int | None = None) -> LogMEFit:
    """The LogME score of ``features`` for ``labels`` (higher is better; comparable between feature sets on the
    same rows and labels, not across datasets)."""
    F = np.asarray(features)
    if F.ndim != 2 or F.shape[0] != len(labels) or F.shape[0] < 2:
        raise InputError(f"LogME needs an (n, d) feature matrix with n >= 2 matching the labels, got {F.shape} "
                         f"for {len(labels)} labels")
    if not np.isfinite(F).all():
        raise InputError("LogME needs finite features: these contain NaN or infinite values (extract them again)")
    if not np.any(F):
        raise InputError("LogME needs features that vary: these are all zero")
    Y = targets_of(labels, task, n_classes)
    dec = decompose(F)
    fits = [evidence_fixed_point(dec, Y[:, j]) for j in range(Y.shape[1]) if Y[:, j].any()]
    ev, alphas, betas = (np.array(v) for v in zip(*fits, strict=True))
    if not np.isfinite(ev).all():  # an evidence that under/overflowed ranks nothing: say so, never write NaN
        raise InputError("LogME is not finite on these features (values too large or too small to score)")
    return LogMEFit(float(ev.mean()), alphas, betas, ev)
