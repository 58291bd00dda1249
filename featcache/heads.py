"""Classical heads on cached features: a regularisation sweep on the val split, refit, test metrics.

The protocol is the linear probe of CLIP / VTAB: standardise features (fit on train), sweep the
regularisation strength over a log grid, pick the value with the best validation score (ties
go to the stronger regularisation), refit, and report on the test split. The backbone is
never touched: everything here reads the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, paths
from .errors import InputError, StoreMismatchError
from .files import utc_now
from .head_io import HEAD_FORMAT, check_head_output, default_head_path, load_head, save_head
from .metrics import format_metrics, score
from .splits import PARTS
from .store import FeatureStore, opened, recorded_store

__all__ = ["HEADS", "HeadSpec", "HeadResult", "fit_head", "load_head", "evaluate_head", "make_head"]

@dataclass(frozen=True)
class HeadSpec:
    """A head family: its estimator per task, the regularisation parameter and its default grid."""

    name: str
    param: str  # "C" (larger = weaker regularisation) or "alpha" (larger = stronger)
    grid: tuple[float, ...]
    build: Callable[[str, float, str, int], object]  # (task, value, kernel, seed) -> estimator
    path: Callable[[str, str], Callable]  # (task, kernel) -> the in-memory sweep (featcache.paths)
    stream: Callable[[str, str], str | None]  # (task, kernel) -> how it streams ("ridge", a loss) or None

    @property
    def stronger_first(self) -> bool:
        """Whether the grid, in ascending order, starts at the strongest regularisation."""
        return self.param == "C"


def _logreg(task: str, value: float, kernel: str, seed: int):
    if task != "classification":
        raise InputError("logreg is a classifier; for regression targets use --head ridge or --head svm")
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=value, max_iter=500, tol=1e-3, random_state=seed)


def _svm(task: str, value: float, kernel: str, seed: int):
    from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

    if kernel == "linear":
        if task == "classification":
            # the dual coordinate-descent solver: 2-6x faster than the primal on standardised embeddings
            # (measured on 3,790 x 1,280 Fashion-MNIST features, same validation accuracy)
            return LinearSVC(C=value, dual=True, max_iter=2000, tol=1e-3, random_state=seed)
        return LinearSVR(C=value, dual=True, loss="squared_epsilon_insensitive", max_iter=2000, tol=1e-3,
                         random_state=seed)
    if kernel not in ("rbf", "poly", "sigmoid"):
        raise InputError(f"unknown kernel {kernel!r}; choose linear, rbf, poly or sigmoid")
    return SVC(C=value, kernel=kernel, random_state=seed) if task == "classification" else SVR(C=value, kernel=kernel)


def _ridge(task: str, value: float, kernel: str, seed: int):
    from sklearn.linear_model import Ridge, RidgeClassifier

    return RidgeClassifier(alpha=value) if task == "classification" else Ridge(alpha=value)


REFITS = ("train", "train+val")  # what the chosen value is refit on (train only keeps label budgets honest)
HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec("logreg", "C", tuple(np.logspace(-4, 2, 7)), _logreg, lambda task, kernel: paths.logreg_path,
                       lambda task, kernel: "log"),
    # on standardised embeddings large C never wins and costs the most (the solvers slow down as C grows)
    "svm": HeadSpec("svm", "C", tuple(np.logspace(-5, -1, 5)), _svm,
                    lambda task, kernel: paths.svm_path if (task, kernel) == ("classification", "linear")
                    else paths.cold_path,
                    lambda task, kernel: "squared_hinge" if (task, kernel) == ("classification", "linear") else None),
    "ridge": HeadSpec("ridge", "alpha", tuple(np.logspace(-1, 5, 7)), _ridge, lambda task, kernel: paths.ridge_path,
                      lambda task, kernel: "ridge"),
}


def make_head(head: str, task: str, value: float | None = None, kernel: str = "linear", seed: int = 0):
    """The head as a scikit-learn Pipeline (StandardScaler, estimator) with the given strength."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    spec = _spec(head)
    value = float(np.median(spec.grid)) if value is None else value
    return Pipeline([("scale", StandardScaler()), ("head", spec.build(task, value, kernel, seed))])


def _spec(head: str) -> HeadSpec:
    if head not in HEADS:
        raise InputError(f"unknown head {head!r}; choose {', '.join(HEADS)}")
    return HEADS[head]


@dataclass
class HeadResult:
    """A fitted head, where it was saved, how it was chosen and how it scores on test."""

    path: Path | None
    meta: dict
    pipeline: object = field(repr=False, default=None)

    @property
    def metrics(self) -> dict:
        return self.meta["metrics"]

    def __str__(self) -> str:
        m = self.meta
        where = f" -> {self.path}" if self.path else ""
        budget = f", {m['per_class']} per class" if m.get("per_class") else ""
        head = m["head"] + (f" ({m['kernel']} kernel)" if m.get("kernel", "linear") != "linear" else "")
        lines = [f"{head} on {m['layer']} ({m['n_train']} train{budget}, {m['n_val']} val, {m['n_test']} test): "
                 f"{m['param']}={m['value']:.3g} chosen on val (val score {m['val_score']:.4f}), "
                 f"fit in {m['fit_seconds']:.1f} s{where}",
                 f"features {m['memory']}" if m.get("memory") else "",
                 format_metrics(m["metrics"], m.get("label_names"))]
        lines = [ln for ln in lines if ln]
        return "\n".join(lines)


def _choose(spec: HeadSpec, grid: Sequence[float], scores: Sequence[float]) -> int:
    """Best validation score; ties go to the strongest regularisation."""
    order = np.argsort(grid) if spec.stronger_first else np.argsort(grid)[::-1]
    best = max(scores)
    return int(next(i for i in order if scores[i] >= best - 1e-12))


@dataclass
class _Plan:
    """Which rows and layer a head is fitted, chosen and scored on, checked before any feature is read."""

    task: str
    names: list[str] | None
    layer: str
    rows: dict[str, np.ndarray]
    identity: dict

    @classmethod
    def make(cls, fs: FeatureStore, spec: HeadSpec, layer: str | None, split: str | None,
             per_class: int | None) -> _Plan:
        scheme = split or fs.default_split()
        if scheme is None:
            raise InputError(f"{fs.path} has no split; make one with `featcache split {fs.path}`")
        layer = layer or fs.layers[0]
        fs.dim(layer)  # unknown layer -> clear error before any work
        rows = {p: fs.row_indices(f"{scheme}:{p}", per_class if p == "train" else None) for p in PARTS}
        if rows["val"].size == 0:
            raise InputError(f"split {scheme!r} has no val rows to choose {spec.param} on; "
                             f"make a split with `featcache split {fs.path} --val 0.1`")
        if fs.task == "classification" and np.unique(fs.labels[rows["train"]]).size < 2:
            raise InputError(f"a head needs at least two classes; the train rows of split {scheme!r} have one")
        return cls(fs.task, fs.label_names, layer, rows, {**fs.identity(scheme), "backbone": fs.attrs.get("backbone")})

    @property
    def n_rows(self) -> int:
        return int(sum(r.size for r in self.rows.values()))


@dataclass
class _Fit:
    """What a sweep produced: a score per grid value (grid order), the chosen index, the pipeline, the test
    metrics, and how long reading and fitting took."""

    scores: list[float]
    best: int
    pipeline: object
    metrics: dict
    load_seconds: float
    fit_seconds: float
    reads: dict | None = None  # streaming: how the features were read (block size, rows read, largest block)


def _fit_in_memory(fs: FeatureStore, plan: _Plan, spec: HeadSpec, grid: tuple[float, ...], kernel: str,
                   refit: str, seed: int, jobs: int, quiet: bool) -> _Fit:
    """Read the parts' features, sweep the grid along its path (featcache.paths), keep the chosen fit."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    X = {p: fs.features(plan.layer, r) for p, r in plan.rows.items()}
    y = {p: fs.labels[r] for p, r in plan.rows.items()}
    t1 = time.perf_counter()
    scaler = StandardScaler().fit(X["train"])
    Xtr, Xva = scaler.transform(X["train"]), scaler.transform(X["val"])
    path = spec.path(plan.task, kernel)(plan.task, grid, Xtr, y["train"], Xva, y["val"], build=spec.build,
                                        kernel=kernel, seed=seed, jobs=jobs)
    fitted = {f.value: f for f in _progress(path, len(grid), f"{spec.name} {spec.param} path", quiet)}
    scores = [fitted[v].score for v in grid]
    best = _choose(spec, grid, scores)
    if refit == "train":  # the path's fit at the chosen value is the head: no refit
        pipe = Pipeline([("scale", scaler), ("head", fitted[grid[best]].estimator)])
    else:
        pipe = make_head(spec.name, plan.task, grid[best], kernel, seed)
        pipe.fit(np.concatenate([X["train"], X["val"]]), np.concatenate([y["train"], y["val"]]))
    metrics = score(plan.task, y["test"], pipe.predict(X["test"]), plan.names) if y["test"].size else {"n": 0}
    return _Fit(scores, best, pipe, metrics, t1 - t0, time.perf_counter() - t1)


def _fit_streaming(fs: FeatureStore, plan: _Plan, spec: HeadSpec, grid: tuple[float, ...], kernel: str,
                   refit: str, seed: int, quiet: bool) -> _Fit:
    """The same protocol over row blocks (featcache.streaming): the features are never all in memory."""
    from sklearn.pipeline import Pipeline

    from .streaming import StoreBlocks, stream_linear, stream_ridge

    how = spec.stream(plan.task, kernel)
    if how is None:
        raise InputError(f"{spec.name} ({plan.task}, {kernel} kernel) cannot stream; use --head ridge, or "
                         "--no-stream if the features fit in memory")
    if refit != "train":
        raise InputError("--refit train+val is not available when streaming; the chosen value is fit on train")
    t0 = time.perf_counter()
    blocks = StoreBlocks(fs, plan.layer, plan.rows)
    if how == "ridge":
        scaler, path, test = stream_ridge(blocks, plan.task, grid)
    else:
        bar = _progress(None, None, f"{spec.name} streaming epochs", quiet)
        scaler, path, test = stream_linear(blocks, how, grid, seed=seed,
                                           progress=lambda epoch, val: bar.set_postfix(best_val=f"{val:.4f}")
                                           or bar.update(1))
        bar.close()
    scores = [f.score for f in path]
    best = _choose(spec, grid, scores)
    pipe = Pipeline([("scale", scaler), ("head", path[best].estimator)])
    metrics = score(plan.task, test["y"], test[best], plan.names) if test["y"].size else {"n": 0}
    reads = {"block_rows": blocks.block_rows, "max_block_rows": blocks.max_block_rows, "rows_read": blocks.rows_read,
             "store_rows": blocks.n}
    return _Fit(scores, best, pipe, metrics, 0.0, time.perf_counter() - t0, reads)


def _progress(items, total: int | None, desc: str, quiet: bool):
    import sys

    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="fit" if items is not None else "epoch",
                disable=quiet or not sys.stderr.isatty())


def _check_fit_args(spec: HeadSpec, grid: Sequence[float] | None, refit: str, jobs: int) -> tuple[float, ...]:
    if refit not in REFITS:
        raise InputError(f"refit must be one of {', '.join(REFITS)}")
    grid = tuple(dict.fromkeys(float(g) for g in (grid or spec.grid)))  # a value given twice is fitted once
    if not grid or not all(np.isfinite(g) and g > 0 for g in grid):
        raise InputError(f"the {spec.param} grid needs finite positive values, got {list(grid)}")
    if jobs == 0 or not isinstance(jobs, int):
        raise InputError("--jobs is a positive number of parallel fits, or -1 for all cores")
    return grid


def fit_head(
    store: str | os.PathLike | FeatureStore,
    head: str = "logreg",
    *,
    layer: str | None = None,
    split: str | None = None,
    per_class: int | None = None,
    grid: Sequence[float] | None = None,
    kernel: str = "linear",
    refit: str = "train",
    jobs: int = 1,
    seed: int = 0,
    stream: bool | None = None,
    out: str | os.PathLike | None = None,
    save: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
) -> HeadResult:
    """Fit ``head`` on the store's train split (or a per-class budget), choose its strength on val,
    score it on test, and save the pipeline (a plain-data head file) with a JSON sidecar.

    The features are read into memory when they fit (half of the available memory, see
    :func:`featcache.streaming.memory_plan`), else streamed in row blocks; ``stream=True/False`` forces
    either. ``out`` may replace an older head; anything else there is refused unless ``overwrite``.
    """
    from .streaming import memory_plan

    spec = _spec(head)
    target = check_head_output(Path(out), overwrite) if save and out else None  # refuse before the work
    grid = _check_fit_args(spec, grid, refit, jobs)
    with opened(store) as fs:
        plan = _Plan.make(fs, spec, layer, split, per_class)
        spec.build(plan.task, grid[0], kernel, seed)  # wrong head for the task -> clear error now
        streaming, how = memory_plan(plan.n_rows, fs.dim(plan.layer), stream)
        fit = (_fit_streaming(fs, plan, spec, grid, kernel, refit, seed, quiet) if streaming
               else _fit_in_memory(fs, plan, spec, grid, kernel, refit, seed, jobs, quiet))
        store_path = fs.path
    meta = {
        "format": HEAD_FORMAT, "featcache_version": __version__, "sklearn_version": _sklearn_version(),
        "head": head, "kernel": kernel, "task": plan.task, "layer": plan.layer, "per_class": per_class,
        "refit": refit, "seed": seed, "param": spec.param, "grid": list(grid), "val_scores": fit.scores,
        "value": grid[fit.best], "val_score": fit.scores[fit.best], "metrics": fit.metrics,
        "label_names": plan.names, "memory": how, "streamed": streaming, "blocks": fit.reads,
        **{f"n_{p}": int(r.size) for p, r in plan.rows.items()},
        "load_seconds": fit.load_seconds, "fit_seconds": fit.fit_seconds, **plan.identity, "created_at": utc_now(),
    }
    path = None
    if save:
        path = target or check_head_output(default_head_path(store_path, plan.layer, head, per_class), overwrite)
        save_head(path, fit.pipeline, meta)
    return HeadResult(path, meta, fit.pipeline)


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def evaluate_head(path: str | os.PathLike, store: str | os.PathLike | None = None, *, split: str = "test",
                  trusted: bool = False) -> dict:
    """Re-score a saved head on a split of its store (default: the test split it was chosen for).

    Refused when the split scheme was re-drawn since the head was fit: its new test rows may be rows
    the head was trained on, and the score would be silently inflated.
    """
    pipe, meta = load_head(path, store=store, trusted=trusted)  # checks the store's identity
    target = recorded_store(meta, store)
    if not target.exists():
        raise InputError(f"the store this head was fit on ({meta['store']}) is gone; pass STORE")
    with FeatureStore(target) as fs:
        if meta["split"] not in fs.split_names():
            raise InputError(f"{target} has no split {meta['split']!r} any more (the head was fit on it)")
        if "split_sha256" in meta and fs.split_digest(meta["split"]) != meta["split_sha256"]:
            raise StoreMismatchError(f"split {meta['split']!r} of {target} was re-drawn after this head was fit on it: "
                                     "its rows now differ (the test rows may include rows the head was trained "
                                     "on); refit the head")
        rows = fs.row_indices(f"{meta['split']}:{split}")
        if rows.size == 0:
            raise InputError(f"split {meta['split']!r} of {target} has no {split} rows to evaluate on")
        X, y = fs.features(meta["layer"], rows), fs.labels[rows]
        task, names = fs.task, fs.label_names  # the store's own (checked unchanged), not what a sidecar says
    return score(task, y, pipe.predict(X), names)
