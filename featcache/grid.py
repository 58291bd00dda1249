"""The one grid engine behind ``compare`` and ``rank``: stores x methods x label budgets x seeds.

A *cell* is one method (a head, a fine-tune mode, a score such as LogME, or a baseline such as TF-IDF on a text
store's raw texts) on one store (and layer), at one label budget, on one seed's draw of the split. Every cell of
every store is planned first, ordered cheapest first (:mod:`featcache.costs`), run here or on a Dask cluster, and
saved as soon as it finishes (:mod:`featcache.cells`), so an interrupted grid resumes. ``compare`` is one store with
heads and fine-tunes; ``rank`` is many stores (the candidates) with the logistic-regression probe and LogME.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .baselines import BASELINES, fit_tfidf
from .cells import CellCache, budget_name
from .costs import TimeEstimate, cell_cost, measured_seconds_per_unit
from .errors import StoreMismatchError
from .finetune import FinetuneConfig, finetune
from .heads import HEADS, fit_head
from .runtime import peak_rss_bytes, reset_peak_rss
from .store import FeatureStore

__all__ = ["GridStore", "StoreGrid", "GridRun", "run_grid", "run_cell", "SCORES", "cell_name", "store_key_sha256",
           "trains"]

SCORES = ("logme",)  # methods that score the features without training (no label budget, no seed of their own)


@dataclass
class GridStore:
    """One entry of the store axis: a store, the layer its cells read (None: the first), the split scheme of
    each seed, and its tag (the folder of its cells; "" for compare's single store, whose cells sit in cells/)."""

    path: Path
    schemes: dict[int, str]
    tag: str = ""
    layer: str | None = None


@dataclass
class StoreGrid:
    """A store's side of the grid: its identity, sizes and the split scheme (and digest) of each seed."""

    fingerprint: str
    key_sha256: str
    n_train: int
    n_val: int
    n_classes: int
    schemes: dict[int, tuple[str, str]]

    @classmethod
    def read(cls, fs: FeatureStore, schemes: dict[int, str]) -> StoreGrid:
        key = store_key_sha256(fs)
        base = schemes.get(0) or next(iter(schemes.values()))
        return cls(fs.fingerprint, key, fs.row_indices(f"{base}:train").size, fs.row_indices(f"{base}:val").size,
                   len(fs.label_names or []), {s: (name, fs.split_digest(name)) for s, name in schemes.items()})

    def cost(self, method: str, budget: int | None, cfg: FinetuneConfig) -> float:
        n = self.n_train if budget is None else min(self.n_train, budget * self.n_classes)
        return cell_cost(method, n, self.n_val, cfg)


def store_key_sha256(fs: FeatureStore) -> str:
    """The store's extraction key as a digest: what tells two extractions of the same images apart."""
    return hashlib.sha256(json.dumps(fs.key, sort_keys=True).encode()).hexdigest()


def trains(method: str) -> bool:
    """Whether a method is a fine-tune (it trains the backbone), not a head or a score on cached features, nor a
    baseline on the raw texts."""
    return method not in HEADS and method not in SCORES and method not in BASELINES


@dataclass
class GridRun:
    """What the engine hands back: every cell of the plan (finished, reused or skipped), per store tag, and the
    names of those this call computed."""

    cells: dict[str, list[dict]]
    computed: list[str]
    grids: dict[str, StoreGrid] = field(default_factory=dict)

    @property
    def reused(self) -> int:
        done = sum("skipped" not in c for cells in self.cells.values() for c in cells)
        return done - len(self.computed)


def _cache(out: Path, tag: str) -> CellCache:
    return CellCache(out / "cells" / tag if tag else out / "cells")


def _plan_store(gs: GridStore, grid: StoreGrid, plan: Sequence[tuple[str, int | None, int]], cache: CellCache,
                options: dict, cfg: FinetuneConfig, estimate: TimeEstimate) -> list[dict]:
    """The cells of one store that are not cached yet (a cached fine-tune teaches the time estimate)."""
    todo = []
    for method, budget, seed in plan:
        scheme, digest = grid.schemes[seed]
        opts = options if trains(method) else {}
        key = grid.key_sha256
        cached = cache.valid(method, budget, seed, fingerprint=grid.fingerprint, split_sha256=digest, options=opts,
                             store_key=key, layer=gs.layer)
        if cached is None:
            cell = {"method": method, "budget": budget, "seed": seed, "store_fingerprint": grid.fingerprint,
                    "split_sha256": digest, "options": opts, "scheme": scheme, "store_key": key}
            if gs.tag:
                cell["candidate"] = gs.tag
            if gs.layer is not None:
                cell["layer"] = gs.layer
            todo.append((cell, gs.path))
        elif trains(method):
            estimate.observe(cached["train_seconds"], grid.cost(method, budget, cfg))
    return todo


def run_grid(stores: Sequence[GridStore], plan: Sequence[tuple[str, int | None, int]], out: Path, *,
             options: dict, ft_options: dict, time_budget_minutes: float | None = None, quiet: bool = False,
             backend: str = "local", scheduler: str | None = None) -> GridRun:
    """Run (or resume) ``plan`` ((method, budget, seed) triples) on every store, cheapest cells first."""
    cfg, todo, grids, priors = FinetuneConfig(**options), [], {}, []
    for gs in stores:
        with FeatureStore(gs.path) as fs:
            grids[gs.tag] = StoreGrid.read(fs, gs.schemes)
            priors.append(measured_seconds_per_unit(fs.attrs, fs.n_rows))
    estimate = TimeEstimate(max((p for p in priors if p), default=None))
    for gs in stores:
        todo += _plan_store(gs, grids[gs.tag], plan, _cache(out, gs.tag), options, cfg, estimate)
    todo.sort(key=lambda t: (grids[t[0].get("candidate", "")].cost(t[0]["method"], t[0]["budget"], cfg),
                             t[0]["seed"]))
    args = (out, options, ft_options)
    if backend == "dask":
        computed = _grid_on_dask(todo, args, scheduler, quiet)
    else:
        computed = _grid_here(todo, args, grids, cfg, estimate, time_budget_minutes, quiet)
    keys = {(m, b, s) for m, b, s in plan}
    cells = {gs.tag: _cache(out, gs.tag).planned(keys) for gs in stores}
    return GridRun(cells, computed, grids)


def _grid_here(todo: list[tuple[dict, Path]], args: tuple, grids: dict[str, StoreGrid], cfg: FinetuneConfig,
               estimate: TimeEstimate, time_budget_minutes: float | None, quiet: bool) -> list[str]:
    """The cells in this process, cheapest first; a fine-tune that the time budget cannot afford is skipped."""
    computed, started, out = [], time.perf_counter(), args[0]
    for cell, store in todo:
        method, budget = cell["method"], cell["budget"]
        tuned = trains(method)
        cost = grids[cell.get("candidate", "")].cost(method, budget, cfg)
        minutes = estimate.minutes(cost)
        elapsed = (time.perf_counter() - started) / 60
        if time_budget_minutes is not None and tuned and elapsed + minutes > time_budget_minutes:
            cell["skipped"] = (f"estimated {minutes:.1f} min would exceed the {time_budget_minutes:g}-minute "
                               f"budget ({elapsed:.1f} min used)")
            say(quiet, f"skip {cell_name(cell)}: {cell['skipped']}")
            _cache(out, cell.get("candidate", "")).save(_record(cell))
            continue
        say(quiet, f"run  {cell_name(cell)}")
        done = run_cell(cell, store, *args, quiet=quiet)
        if tuned:
            estimate.observe(done["train_seconds"], cost)
        _cache(out, cell.get("candidate", "")).save(done)
        computed.append(cell_name(done))
    return computed


def _grid_on_dask(todo: list[tuple[dict, Path]], args: tuple, scheduler: str | None, quiet: bool) -> list[str]:
    """The cells on a Dask cluster, one task each; each is saved here as soon as its result arrives."""
    from tqdm.auto import tqdm

    from .cluster import dask_client, run_on_dask

    computed, out = [], args[0]
    heads = [(c, store, *args) for c, store in todo if not trains(c["method"])]
    tunes = [(c, store, *args) for c, store in todo if trains(c["method"])]
    with dask_client(scheduler, quiet) as client, \
            tqdm(total=len(todo), unit="cell", desc="grid", disable=quiet or not sys.stderr.isatty()) as bar:
        for done in run_on_dask(client, heads, tunes, run_cell):
            _cache(out, done.get("candidate", "")).save(done)
            computed.append(cell_name(done))
            bar.update(1)
            say(quiet, f"done {cell_name(done)}")
    return computed


def cell_name(cell: dict) -> str:
    """``logreg@10/s0``, prefixed with the candidate's tag on a many-store grid."""
    name = f"{cell['method']}@{budget_name(cell['budget'])}/s{cell['seed']}"
    return f"{cell['candidate']}:{name}" if cell.get("candidate") else name


def _record(cell: dict) -> dict:
    """What is saved of a cell: everything but the split scheme's name (the digest identifies the draw)."""
    return {k: v for k, v in cell.items() if k != "scheme"}


def say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def run_cell(cell: dict, store: Path, out: Path, options: dict, ft_options: dict, quiet: bool = True) -> dict:
    """One cell, computed from the store's path: the unit of work of every backend (a Dask task included).
    The store must still be the one the grid was planned on (a re-extracted store would poison the cache)."""
    with FeatureStore(store) as fs:
        if fs.fingerprint != cell["store_fingerprint"] or fs.split_digest(cell["scheme"]) != cell["split_sha256"]:
            raise StoreMismatchError(f"{store} changed while the grid ran (another extraction or split); re-run "
                                     "the same command to continue on the new store")
        if cell.get("store_key") and store_key_sha256(fs) != cell["store_key"]:
            raise StoreMismatchError(f"{store} was extracted again while the grid ran; re-run the same command")
        method = cell["method"]
        if method in SCORES:
            figures = _score_cell(fs, cell["scheme"], cell.get("layer"))
        elif method in BASELINES:
            figures = fit_tfidf(fs, split=cell["scheme"], per_class=cell["budget"], seed=cell["seed"])
        elif method in HEADS:
            figures = _head_cell(fs, method, cell["budget"], cell["seed"], cell["scheme"], cell.get("layer"))
        else:
            figures = _finetune_cell(fs, method, cell["budget"], cell["seed"], (cell["scheme"], cell["split_sha256"]),
                                     out, options, ft_options, quiet, cell.get("candidate", ""))
    return {**_record(cell), **figures}


def _score_cell(fs: FeatureStore, scheme: str, layer: str | None) -> dict:
    """LogME on the scheme's train rows (all of them: the score needs no validation rows and no budget)."""
    from .logme import logme

    rows = fs.row_indices(f"{scheme}:train")
    t = time.perf_counter()
    X = fs.features(layer, rows)
    read = time.perf_counter() - t
    fit = logme(X, fs.labels[rows], fs.task, len(fs.label_names or []) or None)
    return {"score": fit.score, "train_seconds": time.perf_counter() - t - read, "read_seconds": read,
            "n_train": int(rows.size), "kind": "score"}


def _head_cell(fs: FeatureStore, method: str, budget: int | None, seed: int, scheme: str, layer: str | None) -> dict:
    """A head on cached features, through fit_head: the same sweep and refit as ``featcache fit-head``."""
    reset_peak_rss()
    t = time.perf_counter()
    res = fit_head(fs, method, layer=layer, split=scheme, per_class=budget, seed=seed, save=False, quiet=True)
    seconds = time.perf_counter() - t
    est = res.pipeline.named_steps["head"]
    trainable = int(getattr(est, "coef_", np.zeros(0)).size + np.size(getattr(est, "intercept_", 0)))
    return {"metrics": res.metrics, "train_seconds": seconds, "peak_rss_bytes": peak_rss_bytes(),
            "trainable_params": trainable, "n_train": res.meta["n_train"], "kind": "head",
            "chosen": {res.meta["param"]: res.meta["value"]}}


def _finetune_cell(fs: FeatureStore, method: str, budget: int | None, seed: int, split: tuple[str, str], out: Path,
                   options: dict, ft_options: dict, quiet: bool, tag: str) -> dict:
    """A fine-tune (resumable: its checkpoint folder is keyed on every resolved option, the store, the split's
    draw and the candidate, so nothing else meets this checkpoint)."""
    scheme, digest = split
    key = {"options": options, "store": fs.fingerprint, "split": digest, **({"candidate": tag} if tag else {})}
    digest8 = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    cell_dir = out / "runs" / f"{tag + '_' if tag else ''}{method}_{budget_name(budget)}_s{seed}_{digest8}"
    r = finetune(fs, out=cell_dir, mode=method, per_class=budget, seed=seed, split=scheme, resume=True,
                 quiet=quiet, **ft_options).record
    return {"metrics": r["metrics"], "train_seconds": r["train_seconds"], "peak_rss_bytes": r["peak_rss_bytes"],
            "trainable_params": r["trainable_params"], "total_params": r["total_params"], "n_train": r["n_train"],
            "kind": "finetune", "images_per_s": r["images_per_s"], "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"], "device": r["device"], "precision": r["precision"]}
