"""Heads on stores larger than memory: features read in row blocks, never all at once.

- :func:`memory_plan` decides (or is told) whether a head's features fit in memory.
- :class:`StoreBlocks` reads a layer in blocks aligned to the HDF5 chunks, in row order (each chunk is
  read once per pass, whatever the split), and hands each block's rows to the parts that want them.
- **ridge** is exact in one pass over train: XᵀX, XᵀY and the column sums give the standardised Gram
  matrix, and one eigendecomposition every alpha (as in memory, :mod:`featcache.paths`); a second pass
  scores val and test for every alpha at once.
- **logreg** and the **linear svm** train :class:`StreamingLinear`, an incremental learner whose
  ``partial_fit`` takes one block: every grid value at once (one matrix product per mini-batch for all of
  them), Adam steps with a cosine decay, weights averaged from the second epoch on, a few epochs with early
  stopping on val. scikit-learn's ``SGDClassifier.partial_fit`` was measured first: about 22,000
  row-updates per second per grid value on 1,280-d features here, so 7 grid values over 1M rows would take
  ~5 min per epoch; the vectorised learner does an epoch of all 7 in seconds.

The result is the same artefact as in memory: a scikit-learn ``Pipeline`` (a ``StandardScaler`` fitted
incrementally, then ``RidgeClassifier`` / ``Ridge`` / ``LogisticRegression`` / ``LinearSVC`` holding the
learned coefficients).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .paths import Fitted, linear_svc, logistic_regression, ridge_estimator, ridge_solutions
from .runtime import MEMORY_ENV, available_memory, trim_memory
from .store import FeatureStore

__all__ = ["MEMORY_ENV", "memory_plan", "StoreBlocks", "StreamingLinear", "stream_ridge", "stream_linear",
           "available_memory"]

BLOCK_BYTES = 32 << 20  # features read per block (float32): large enough for fast GEMMs, small beside any RAM
# raw features + standardised copy + the rotated copy X·V the solvers iterate on (featcache.solvers) + the centred
# copy its Gram product makes, per byte of float32 features
IN_MEMORY_FACTOR = 4


def memory_plan(n_rows: int, dim: int, stream: bool | None) -> tuple[bool, str]:
    """(stream?, why): features of ``n_rows`` x ``dim`` stream when they would take more than half of the
    memory available, or when asked (``stream=True``); ``stream=False`` forces memory."""
    need = n_rows * dim * 4 * IN_MEMORY_FACTOR
    have = available_memory()
    size = f"~{need / 2**30:.2f} GiB in memory, {have / 2**30:.2f} GiB available"
    if stream is not None:
        return stream, f"{'streaming' if stream else 'in memory'} as asked ({size})"
    if need > have / 2:
        return True, f"streaming: the features would take {size}"
    return False, f"in memory ({size})"


@dataclass
class StoreBlocks:
    """Row blocks of one layer, aligned to its HDF5 chunks; ``parts`` maps a name to sorted row indices.

    ``max_block_rows`` and ``rows_read`` record what was read, so tests can check that no pass ever holds
    more than one block and that a pass reads each row once.
    """

    fs: FeatureStore
    layer: str
    parts: dict[str, np.ndarray]
    block_rows: int = 0
    rows_read: int = 0
    max_block_rows: int = 0
    _labels: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        (n, d), _, chunks = self.fs.layout(self.layer)
        chunk = chunks[0] if chunks else 1024
        budget = min(BLOCK_BYTES, available_memory() // 8)  # a block is a small part of what may be used
        wanted = self.block_rows or max(1, budget // (d * 4))
        self.block_rows = max(chunk, (wanted // chunk) * chunk)  # whole chunks: none is split between blocks
        self.n, self.dim = n, d
        self._labels = self.fs.labels
        self._member = np.full(n, -1, dtype=np.int8)
        for k, rows in enumerate(self.parts.values()):
            self._member[rows] = k

    def blocks(self, wanted: Sequence[str], order: np.ndarray | None = None) -> Iterator[dict[str, tuple]]:
        """For each block (in ``order``, a permutation of block numbers, or row order): the wanted parts'
        features (float32) and labels. Blocks without a wanted row are not read."""
        names = list(self.parts)
        codes = [names.index(w) for w in wanted]
        starts = np.arange(0, self.n, self.block_rows)
        for b in (range(len(starts)) if order is None else order):
            lo, hi = int(starts[b]), int(min(starts[b] + self.block_rows, self.n))
            member = self._member[lo:hi]
            if not np.isin(member, codes).any():
                continue
            X = self.fs.features(self.layer, np.arange(lo, hi))
            self.rows_read += hi - lo
            self.max_block_rows = max(self.max_block_rows, hi - lo)
            yield {names[c]: (X[member == c], self._labels[lo:hi][member == c]) for c in codes
                   if (member == c).any()}
            del X
            trim_memory()

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.block_rows)


def _scaler(blocks: StoreBlocks):
    """A StandardScaler fitted on the train rows in one pass (partial_fit: the same statistics as fit)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for part in blocks.blocks(["train"]):
        scaler.partial_fit(part["train"][0])
    return scaler


def stream_ridge(blocks: StoreBlocks, task: str, grid: Sequence[float]) -> tuple[object, list[Fitted], dict]:
    """Exact ridge for every alpha from one pass over train (the Gram matrix of the standardised rows, then one
    Cholesky solve per alpha, as in memory); a second pass scores val and test.

    Returns the fitted scaler, the path (one :class:`Fitted` per alpha, in grid order) and the test
    predictions of every alpha (``{alpha index: predictions}``, with the test labels under ``"y"``)."""
    from sklearn.preprocessing import LabelBinarizer, StandardScaler

    lb = None
    if task == "classification":
        lb = LabelBinarizer(pos_label=1, neg_label=-1).fit(np.unique(blocks._labels[blocks.parts["train"]]))
    # sums of the rows shifted by the first block's mean (no cancellation in XᵀX - n·μμᵀ); each block's
    # product in float32 (the BLAS-fast one), accumulated in float64
    n, s, G, XtY, ysum, shift = 0, 0.0, 0.0, 0.0, 0.0, None
    for part in blocks.blocks(["train"]):
        X, y = part["train"]
        shift = X.mean(axis=0) if shift is None else shift
        Xc = X - shift
        Y = lb.transform(y).astype(np.float32) if lb is not None else y.reshape(-1, 1).astype(np.float32)
        n, s, ysum = n + len(X), s + Xc.sum(0, dtype=np.float64), ysum + Y.sum(0, dtype=np.float64)
        G = G + (Xc.T @ Xc).astype(np.float64)
        XtY = XtY + (Xc.T @ Y).astype(np.float64)
    mu, y_mean = s / n, ysum / n  # mean of the shifted rows
    mean = shift.astype(np.float64) + mu
    var = np.maximum(np.diag(G) / n - mu**2, 0.0)
    scale = np.where(var > 0, np.sqrt(var), 1.0)  # StandardScaler's rule for constant columns
    Gs = (G - n * np.outer(mu, mu)) / np.outer(scale, scale)  # Gram of the standardised, centred features
    Bs = (XtY - np.outer(mu, ysum)) / scale[:, None]  # standardised Xᵀ(Y - ȳ)
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_, scaler.n_features_in_ = n, len(mean)
    models = [ridge_estimator(task, float(a), W, y_mean, lb)
              for a, W in zip(grid, ridge_solutions(Gs, Bs, [float(a) for a in grid]), strict=True)]
    val, test = _score_pass(blocks, scaler, models, task)
    return scaler, [Fitted(float(a), val[i], m) for i, (a, m) in enumerate(zip(grid, models, strict=True))], test


def _score_pass(blocks: StoreBlocks, scaler, models: list, task: str) -> tuple[list[float], dict]:
    """One pass over val and test: every model's val score (accumulated, nothing kept per row) and its test
    predictions (compact: int32 classes or float32 targets), with the test labels under ``"y"``."""
    n_val, y_sum, y_sq, hits_or_sse = 0, 0.0, 0.0, np.zeros(len(models))
    test: dict = {"y": [], **{i: [] for i in range(len(models))}}
    compact = np.int32 if task == "classification" else np.float32
    for part in blocks.blocks(["val", "test"]):
        if "val" in part:
            X, y = part["val"]
            Xs = scaler.transform(X)
            n_val, y_sum, y_sq = n_val + len(y), y_sum + float(np.sum(y)), y_sq + float(np.sum(np.square(y)))
            for i, m in enumerate(models):
                pred = m.predict(Xs)
                hits_or_sse[i] += np.sum(pred == y) if task == "classification" else np.sum((pred - y) ** 2)
        if "test" in part:
            X, y = part["test"]
            Xs = scaler.transform(X)
            test["y"].append(y.astype(compact))
            for i, m in enumerate(models):
                test[i].append(m.predict(Xs).astype(compact))
    if task == "classification":
        val = list(hits_or_sse / max(n_val, 1))
    else:  # R², as selection_score: 1 - SSE / SST
        sst = max(y_sq - y_sum**2 / max(n_val, 1), 1e-300)
        val = list(1.0 - hits_or_sse / sst)
    return val, {k: np.concatenate(v) if v else np.empty(0, dtype=compact) for k, v in test.items()}


class StreamingLinear:
    """Linear models for every value of a C grid at once, trained block by block (``partial_fit``).

    ``loss="log"``: the multinomial logistic regression scikit-learn's LogisticRegression solves
    (½‖W‖² + C Σ cross-entropy, intercept not penalised); ``loss="squared_hinge"``: LinearSVC's
    one-vs-rest problem (bias penalised like liblinear). Per row the penalty is ‖W‖² / (2 C n).
    The grid's weights sit side by side in one (d, G·K) matrix, so a mini-batch is one matrix product for
    all of them. Adam with a cosine-decayed step; weights are averaged from the second epoch on (Polyak),
    and the averaged weights are what is scored and kept.
    """

    BATCH = 128

    def __init__(self, loss: str, grid: Sequence[float], classes: np.ndarray, n_train: int, dim: int, *,
                 steps: int, lr: float = 1e-2, batch: int = BATCH, seed: int = 0):
        self.loss, self.grid, self.classes = loss, np.asarray(grid, dtype=np.float64), np.asarray(classes)
        self.batch, self.lr, self.total_steps = batch, lr, max(1, steps)
        self.rng = np.random.default_rng(seed)
        self.G = len(self.grid)
        self.K = len(self.classes) if len(self.classes) > 2 or loss == "log" else 1
        # per column of the (d, G*K) matrix: the penalty of its grid value
        self.penalty = np.repeat((1.0 / (self.grid * n_train)).astype(np.float32), self.K)
        self.W = np.zeros((dim, self.G * self.K), np.float32)
        self.b = np.zeros(self.G * self.K, np.float32)
        self._m = [np.zeros_like(self.W), np.zeros_like(self.b)]
        self._v = [np.zeros_like(self.W), np.zeros_like(self.b)]
        self.W_avg, self.b_avg, self.n_avg, self.t = self.W.copy(), self.b.copy(), 0, 0

    def _targets(self, y: np.ndarray) -> np.ndarray:
        if self.K == 1:  # binary squared hinge: one column, +1 for classes[1], as LinearSVC
            return np.where(y == self.classes[1], 1.0, 0.0).astype(np.float32)[:, None]
        return (y[:, None] == self.classes[None, :]).astype(np.float32)

    def _gradients(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        Z = (X @ self.W + self.b).reshape(n, self.G, self.K)
        if self.loss == "log":
            Z -= Z.max(axis=2, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(axis=2, keepdims=True)
            R = ((P - Y[:, None, :]) / n).reshape(n, -1)
            gb = R.sum(axis=0)
        else:
            S = 2.0 * Y[:, None, :] - 1.0
            R = (-2.0 * S * np.maximum(1.0 - S * Z, 0.0) / n).reshape(n, -1)
            gb = R.sum(axis=0) + self.penalty * self.b
        return X.T @ R + self.penalty * self.W, gb

    def partial_fit(self, X: np.ndarray, y: np.ndarray, epoch: int) -> None:
        """One block of standardised rows, in a random order, in mini-batches."""
        X, Y = X.astype(np.float32, copy=False), self._targets(y)
        order = self.rng.permutation(len(X))
        for lo in range(0, len(X), self.batch):
            idx = order[lo:lo + self.batch]
            grads = self._gradients(X[idx], Y[idx])
            self.t += 1
            step = self.lr * (0.01 + 0.5 * (1 + np.cos(np.pi * min(1.0, self.t / self.total_steps))))
            for p, g, m, v in zip((self.W, self.b), grads, self._m, self._v, strict=True):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                p -= step * (m / (1 - 0.9**self.t)) / (np.sqrt(v / (1 - 0.999**self.t)) + 1e-8)
            if epoch >= 1:
                self.n_avg += 1
                self.W_avg += (self.W - self.W_avg) / self.n_avg
                self.b_avg += (self.b - self.b_avg) / self.n_avg

    def weights(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid value ``g``'s weights (d, K) and bias (K,): averaged once averaging has started."""
        W, b = (self.W_avg, self.b_avg) if self.n_avg else (self.W, self.b)
        cols = slice(g * self.K, (g + 1) * self.K)
        return W[:, cols].copy(), b[cols].copy()

    def decide(self, Z: np.ndarray) -> np.ndarray:
        """Classes from scores (n, K)."""
        if Z.shape[1] == 1:
            return np.where(Z[:, 0] > 0, self.classes[1], self.classes[0])
        return self.classes[Z.argmax(axis=1)]

    def predict_all(self, X: np.ndarray) -> np.ndarray:
        """(G, n) predictions of every grid value's current (averaged) weights."""
        W, b = (self.W_avg, self.b_avg) if self.n_avg else (self.W, self.b)
        Z = (X.astype(np.float32, copy=False) @ W + b).reshape(len(X), self.G, self.K)
        return np.stack([self.decide(Z[:, g]) for g in range(self.G)])

    def estimator(self, g: int, W: np.ndarray, b: np.ndarray, seed: int):
        """Grid value ``g`` as the scikit-learn estimator the in-memory head would be."""
        C = float(self.grid[g])
        if self.loss == "log":
            if len(self.classes) == 2:  # scikit-learn keeps one column for two classes: the difference
                W, b = (W[:, 1] - W[:, 0])[:, None], b[1:] - b[:1]
            return logistic_regression(C, W, b, self.classes, seed)
        return linear_svc(C, np.vstack([W, b[None, :]]).astype(np.float64), self.classes, seed)


MIN_STEPS = 2000  # small stores get more epochs: measured, fewer optimiser steps left accuracy on the table


def stream_linear(blocks: StoreBlocks, loss: str, grid: Sequence[float], *, seed: int = 0,
                  max_epochs: int | None = None, patience: int = 3, progress=None) -> tuple[object, list[Fitted], dict]:
    """Scaler pass, then epochs of :class:`StreamingLinear` over the train blocks with every grid value's
    val accuracy checked after each epoch; each value keeps its best epoch. A last pass scores test.

    Epochs: enough for :data:`MIN_STEPS` mini-batches (5 to 30), stopping early once no grid value's val
    accuracy has improved for ``patience`` epochs."""
    scaler = _scaler(blocks)
    train = blocks.parts["train"]
    classes = np.unique(blocks._labels[train])
    if classes.size < 2:
        raise InputError("a head needs at least two classes in the train rows")
    per_epoch = -(-train.size // StreamingLinear.BATCH)
    max_epochs = max_epochs or int(np.clip(-(-MIN_STEPS // per_epoch), 5, 30))
    learner = StreamingLinear(loss, grid, classes, train.size, blocks.dim, seed=seed, steps=max_epochs * per_epoch)
    best = [(-1.0, None, None)] * len(grid)
    stale = 0
    for epoch in range(max_epochs):
        for part in blocks.blocks(["train"], order=learner.rng.permutation(blocks.n_blocks)):
            X, y = part["train"]
            learner.partial_fit(scaler.transform(X), y, epoch)
        scores = _val_scores(blocks, scaler, learner)
        improved = False
        for g, sc in enumerate(scores):
            if sc > best[g][0]:
                best[g], improved = (sc, *learner.weights(g)), True
        if progress is not None:
            progress(epoch, max(scores))
        stale = 0 if improved else stale + 1
        if stale >= patience:
            break
    models = [learner.estimator(g, Wg, bg, seed) for g, (_, Wg, bg) in enumerate(best)]
    _, test = _score_pass(blocks, scaler, models, "classification")
    return scaler, [Fitted(float(v), float(best[g][0]), models[g]) for g, v in enumerate(grid)], test


def _val_scores(blocks: StoreBlocks, scaler, learner: StreamingLinear) -> list[float]:
    hits, total = np.zeros(learner.G), 0
    for part in blocks.blocks(["val"]):
        X, y = part["val"]
        total += len(y)
        hits += (learner.predict_all(scaler.transform(X)) == y[None, :]).sum(axis=1)
    return list(hits / max(total, 1))
