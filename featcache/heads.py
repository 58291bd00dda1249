"""Classical heads on cached features: a regularisation sweep on the val split, refit, test metrics.

The protocol is the linear probe of CLIP / VTAB: standardise features (fit on train), sweep the
regularisation strength over a log grid, pick the value with the best validation score (ties
go to the stronger regularisation), refit, and report on the test split. The backbone is
never touched: everything here reads the store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, OutputExistsError, StoreMismatchError, UntrustedFileError
from .files import utc_now
from .metrics import format_metrics, score, selection_score
from .store import FeatureStore

__all__ = ["HEADS", "HeadSpec", "HeadResult", "fit_head", "load_head", "evaluate_head", "make_head",
           "default_head_path"]

SIDE_FORMAT = "featcache-head"


@dataclass(frozen=True)
class HeadSpec:
    """A head family: its estimator per task, the regularisation parameter and its default grid."""

    name: str
    param: str  # "C" (larger = weaker regularisation) or "alpha" (larger = stronger)
    grid: tuple[float, ...]
    build: Callable[[str, float, str, int], object]  # (task, value, kernel, seed) -> estimator

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


HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec("logreg", "C", tuple(np.logspace(-4, 2, 7)), _logreg),
    # on standardised embeddings large C never wins and costs the most (liblinear slows as C grows)
    "svm": HeadSpec("svm", "C", tuple(np.logspace(-5, -1, 5)), _svm),
    "ridge": HeadSpec("ridge", "alpha", tuple(np.logspace(-1, 5, 7)), _ridge),
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
                 format_metrics(m["metrics"], m.get("label_names"))]
        return "\n".join(lines)


def default_head_path(store: Path, layer: str, head: str, per_class: int | None) -> Path:
    budget = f"_{per_class}pc" if per_class else ""
    return Path("data") / "heads" / f"{Path(store).stem}_{layer}_{head}{budget}{HEAD_SUFFIX}"


def _sweep(spec: HeadSpec, task: str, kernel: str, seed: int, grid: Sequence[float], Xtr, ytr, Xva, yva,
           jobs: int, quiet: bool) -> list[float]:
    """Validation score of each grid value; fits run in parallel threads (BLAS and liblinear release the GIL)."""
    import sys

    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    def one(value: float) -> float:
        est = spec.build(task, value, kernel, seed)
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a weak grid point may stop early; val judges it
            est.fit(Xtr, ytr)
        return selection_score(task, yva, est.predict(Xva))

    results = Parallel(n_jobs=jobs, prefer="threads", return_as="generator")(delayed(one)(v) for v in grid)
    bar = tqdm(results, total=len(grid), desc=f"{spec.name} {spec.param} sweep", unit="fit",
               disable=quiet or not sys.stderr.isatty())
    return [float(s) for s in bar]


def _choose(spec: HeadSpec, grid: Sequence[float], scores: Sequence[float]) -> int:
    """Best validation score; ties go to the strongest regularisation."""
    order = np.argsort(grid) if spec.stronger_first else np.argsort(grid)[::-1]
    best = max(scores)
    return int(next(i for i in order if scores[i] >= best - 1e-12))


def fit_head(
    store: str | os.PathLike,
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
    out: str | os.PathLike | None = None,
    save: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
) -> HeadResult:
    """Fit ``head`` on the store's train split (or a per-class budget), choose its strength on val,
    score it on test, and save the pipeline (a plain-data head file) with a JSON sidecar.

    ``out`` may replace an older head; anything else there is refused unless ``overwrite``.
    """
    spec = _spec(head)
    target = _check_head_output(Path(out), overwrite) if save and out else None  # refuse before the work
    if refit not in ("train", "train+val"):
        raise InputError("refit must be 'train' or 'train+val'")
    grid = tuple(float(g) for g in (grid or spec.grid))
    if not grid or not all(np.isfinite(g) and g > 0 for g in grid):
        raise InputError(f"the {spec.param} grid needs finite positive values, got {list(grid)}")
    if jobs == 0 or not isinstance(jobs, int):
        raise InputError("--jobs is a positive number of parallel fits, or -1 for all cores")
    t0 = time.perf_counter()
    with FeatureStore(store) as fs:
        scheme = split or fs.default_split()
        if scheme is None:
            raise InputError(f"{store} has no split; make one with `featcache split {store}`")
        layer = layer or fs.layers[0]
        fs.dim(layer)  # unknown layer -> clear error before any work
        task, names = fs.task, fs.label_names
        rows = {p: fs.rows(f"{scheme}:{p}", per_class if p == "train" else None) for p in ("train", "val", "test")}
        if rows["val"].size == 0:
            raise InputError(f"split {scheme!r} has no val rows to choose {spec.param} on; "
                             f"make a split with `featcache split {store} --val 0.1`")
        data = {p: (fs.features(layer, r), fs.labels[r]) for p, r in rows.items()}
        identity = {"store": str(Path(store).resolve()), "store_fingerprint": fs.fingerprint, "store_key": fs.key,
                    "backbone": fs.attrs.get("backbone"), "split_sha256": fs.split_digest(scheme)}
    load_seconds = time.perf_counter() - t0
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data["train"], data["val"], data["test"]
    if task == "classification" and np.unique(ytr).size < 2:
        raise InputError(f"a head needs at least two classes; the train rows of split {scheme!r} have one")
    spec.build(task, grid[0], kernel, seed)  # wrong head for the task -> clear error now

    t1 = time.perf_counter()
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(Xtr)
    scores = _sweep(spec, task, kernel, seed, grid, scaler.transform(Xtr), ytr, scaler.transform(Xva), yva,
                    jobs, quiet)
    best = _choose(spec, grid, scores)
    pipe = make_head(head, task, grid[best], kernel, seed)
    if refit == "train+val":
        pipe.fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    else:
        pipe.fit(Xtr, ytr)
    fit_seconds = time.perf_counter() - t1
    metrics = score(task, yte, pipe.predict(Xte), names) if Xte.shape[0] else {"n": 0}

    import sklearn

    meta = {
        "format": SIDE_FORMAT, "featcache_version": __version__, "sklearn_version": sklearn.__version__,
        "head": head, "kernel": kernel, "task": task, "layer": layer, "split": scheme, "per_class": per_class,
        "refit": refit, "seed": seed, "param": spec.param, "grid": list(grid), "val_scores": scores,
        "value": grid[best], "val_score": scores[best], "metrics": metrics, "label_names": names,
        "n_train": int(Xtr.shape[0]), "n_val": int(Xva.shape[0]), "n_test": int(Xte.shape[0]),
        "load_seconds": load_seconds, "fit_seconds": fit_seconds, **identity,
        "created_at": utc_now(),
    }
    path = None
    if save:
        path = target or _check_head_output(default_head_path(Path(store), layer, head, per_class), overwrite)
        _save(path, pipe, meta)
    return HeadResult(path, meta, pipe)


HEAD_SUFFIX = ".head"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _is_head(path: Path) -> bool:
    """Whether ``path`` is a head featcache wrote (its sidecar says so): the only file fit-head replaces."""
    try:
        return json.loads(_sidecar(path).read_text()).get("format") == SIDE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_head_output(path: Path, overwrite: bool) -> Path:
    """A head goes to a ``.head`` path that is free or holds an older head; never over a store or a stray file."""
    from .files import check_output

    if path.suffix != HEAD_SUFFIX:
        raise InputError(f"--out {path}: a head file holds plain data that loads without running code (not a "
                         f"pickle); name it *{HEAD_SUFFIX}")
    check_output(path, kind="featcache head", is_own=_is_head, overwrite=overwrite)
    side = _sidecar(path)
    if side.exists() and not overwrite and not _is_head(path):
        raise OutputExistsError(f"{side} exists and is not a featcache head sidecar; choose another --out, or use "
                                "--overwrite to replace it")
    return path


def _save(path: Path, pipe, meta: dict) -> None:
    """The pipeline as a head file (plain data, see :mod:`featcache.headfile`) and its JSON sidecar, each
    written atomically (the head first, so a sidecar never describes a file that is not there)."""
    from . import headfile
    from .files import atomic_path, atomic_write_json
    from .weights import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        headfile.dump(pipe, tmp)
        digest = sha256_file(tmp)
    atomic_write_json(_sidecar(path), {**meta, "head_format": headfile.FORMAT, "head_sha256": digest})


def read_sidecar(path: str | os.PathLike, *, required: bool = True) -> dict | None:
    """The head's JSON sidecar, checked to be a featcache one; None if absent and not ``required``."""
    side = _sidecar(Path(path))
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError as exc:
        if not required:
            return None
        raise UntrustedFileError(f"{path}: no sidecar {side.name}, so where it came from cannot be checked; "
                                 "pass --trust (and STORE) if you know this file") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{side}: unreadable sidecar ({exc.__class__.__name__})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDE_FORMAT:
        raise InputError(f"{side} is not a featcache head sidecar")
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise InputError(f"{side} is not a complete featcache head sidecar (no {', '.join(missing)})")
    return meta


SIDECAR_KEYS = ("head", "task", "layer", "split", "store", "store_fingerprint", "store_key")
def load_head(path: str | os.PathLike, *, store: str | os.PathLike | None = None,
              trusted: bool = False) -> tuple[object, dict]:
    """Load a saved head (a scikit-learn Pipeline) and its metadata.

    featcache writes head files whose loading cannot run code (:mod:`featcache.headfile`) and loads one
    whose SHA-256 matches the sidecar written beside it. A pickle (``.joblib``, ``.pkl``) runs code when
    loaded, whoever wrote the sidecar next to it, so it is loaded only with ``trusted=True``, as is a
    head without a sidecar (then ``store`` is needed). The store's fingerprint must be unchanged.
    """
    from . import headfile
    from .weights import sha256_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"head not found: {path}")
    meta = read_sidecar(path, required=not trusted)
    if meta is None:
        if store is None:
            raise InputError(f"{path} has no sidecar: pass the STORE it was fit on")
        meta = _meta_from_store(store)
    recorded = meta.get("head_sha256", meta.get("joblib_sha256"))
    if not trusted and "store" in meta and sha256_file(path) != recorded:
        raise UntrustedFileError(f"{path} does not match its sidecar (changed or corrupt); refusing to load it "
                                 "(pass --trust if you know where it came from)")
    if headfile.is_head_file(path):
        pipe = headfile.load(path)
    elif not trusted:
        raise UntrustedFileError(f"{path} is not a featcache head file and may be a pickle, and loading a pickle "
                                 f"runs code, whatever its sidecar says; refit it (featcache writes {HEAD_SUFFIX} "
                                 "files), or pass --trust if you made this file")
    else:
        import joblib

        try:
            pipe = joblib.load(path)
        except Exception as exc:  # any unpickling failure means a corrupt or foreign file
            raise InputError(f"cannot load head {path}: {exc.__class__.__name__}") from exc
    _check_usable(pipe, path)
    check_store(meta, store)
    _check_dim(pipe, meta, store)
    return pipe, meta


def _check_usable(pipe, path: Path) -> None:
    """One prediction on a row of zeros: a malformed file fails here with one line, not later with a traceback."""
    n_in = getattr(pipe, "n_features_in_", None)
    if not hasattr(pipe, "predict") or not isinstance(n_in, (int, np.integer)) or not 0 < n_in < 1 << 24:
        raise InputError(f"{path} holds a {type(pipe).__name__}, not a fitted featcache head")
    try:
        pipe.predict(np.zeros((1, int(n_in)), dtype=np.float32))
    except Exception as exc:  # whatever a corrupt state makes scikit-learn raise
        raise InputError(f"{path} holds a head that cannot predict ({exc.__class__.__name__}: {exc})") from None


def _meta_from_store(store: str | os.PathLike) -> dict:
    """What a sidecar would say, for a trusted head without one: the store's first layer and default split."""
    with FeatureStore(store) as fs:
        scheme = fs.default_split()
        return {"head": "unknown", "task": fs.task, "layer": fs.layers[0], "split": scheme,
                "label_names": fs.label_names, "store": str(Path(store).resolve()),
                "store_fingerprint": fs.fingerprint, "store_key": fs.key}


def _check_dim(pipe, meta: dict, store) -> None:
    n_in = getattr(pipe, "n_features_in_", None)
    target = Path(store) if store is not None else Path(meta["store"])
    if n_in is None or not target.exists():
        return
    with FeatureStore(target) as fs:
        dim = fs.dim(meta["layer"])
    if int(n_in) != dim:
        raise InputError(f"the head expects {n_in} features, but layer {meta['layer']!r} of {target} has {dim}")


def check_store(meta: dict, store: str | os.PathLike | None) -> Path | None:
    """The store a head was fit on, checked to be unchanged; None if it is gone and none was given."""
    target = Path(store) if store is not None else Path(meta["store"])
    if store is None and not target.exists():
        return None
    with FeatureStore(target) as fs:
        if fs.fingerprint != meta["store_fingerprint"] or fs.key != meta["store_key"]:
            raise StoreMismatchError(f"{target} is not the store this head was fit on "
                                     "(its data or extraction settings changed); refit the head")
    return target


def evaluate_head(path: str | os.PathLike, store: str | os.PathLike | None = None, *, split: str = "test",
                  trusted: bool = False) -> dict:
    """Re-score a saved head on a split of its store (default: the test split it was chosen for).

    Refused when the split scheme was re-drawn since the head was fit: its new test rows may be rows
    the head was trained on, and the score would be silently inflated.
    """
    pipe, meta = load_head(path, store=store, trusted=trusted)  # checks the store's identity
    target = Path(store) if store is not None else Path(meta["store"])
    if not target.exists():
        raise InputError(f"the store this head was fit on ({meta['store']}) is gone; pass STORE")
    with FeatureStore(target) as fs:
        if meta["split"] not in fs.split_names():
            raise InputError(f"{target} has no split {meta['split']!r} any more (the head was fit on it)")
        if "split_sha256" in meta and fs.split_digest(meta["split"]) != meta["split_sha256"]:
            raise StoreMismatchError(f"split {meta['split']!r} of {target} was re-drawn after this head was fit on it: "
                                     "its rows now differ (the test rows may include rows the head was trained "
                                     "on); refit the head")
        rows = fs.rows(f"{meta['split']}:{split}")
        X, y = fs.features(meta["layer"], rows), fs.labels[rows]
    return score(meta["task"], y, pipe.predict(X), meta.get("label_names"))
