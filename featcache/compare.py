"""Feature extraction vs fine-tuning, measured: a grid of methods x label budgets x seeds.

Every cell reads the same store splits; heads and fine-tunes share the metrics function. Cells run
cheapest first (:mod:`featcache.costs`), each is saved as soon as it finishes (:mod:`featcache.cells`),
so an interrupted compare resumes; the report is :mod:`featcache.report`. Outputs: ``results.json``,
``report.md`` (the table and a recommendation computed from the numbers) and two PNG plots.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cells import CellCache, budget_name
from .costs import TimeEstimate, cell_cost
from .errors import InputError, StoreMismatchError
from .files import atomic_write_json, check_output
from .finetune import FinetuneConfig, finetune
from .heads import HEADS, fit_head
from .options import per_run_fields
from .report import write_report
from .runtime import peak_rss_bytes, reset_peak_rss
from .splits import SplitSpec
from .store import FeatureStore, add_split
from .strategies import MODES

__all__ = ["compare", "parse_budgets", "resolved_options", "default_compare_dir", "DEFAULT_METHODS", "DEFAULT_BUDGETS"]

DEFAULT_METHODS = (*HEADS, "linear", "last-n", "full", "lp-ft")  # every head, and the fine-tunes worth a default run
DEFAULT_BUDGETS = (1, 10, 100, None)


def default_compare_dir(store: Path) -> Path:
    return Path("data") / "compare" / Path(store).stem


def parse_budgets(text: str | Sequence) -> list[int | None]:
    """"1,10,100,all" -> [1, 10, 100, None] (None = every train row)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int | None] = []
    for b in items:
        b = str(b).strip()
        if b in ("all", "None", ""):
            out.append(None)
        elif b.isdigit() and int(b) > 0:
            out.append(int(b))
        else:
            raise InputError(f"budgets are positive integers or 'all', got {b!r}")
    return out


def resolved_options(ft_options: dict) -> dict:
    """Every fine-tune setting a cell runs with, defaults included and checked: a cell computed under other
    defaults (an older featcache, say) does not match and is recomputed rather than reused."""
    try:
        cfg = asdict(FinetuneConfig(**ft_options).validate())
    except TypeError as exc:
        raise InputError(f"unknown fine-tune option: {exc}") from None
    for per_cell in per_run_fields(FinetuneConfig):
        cfg.pop(per_cell)
    return cfg


def _seed_scheme(store: Path, seed: int) -> str:
    """Seed 0 uses the default split; seed k the same train/val/test rows with budgets drawn with seed k."""
    if seed == 0:
        return "default"

    name = f"default-budget{seed}"
    add_split(store, name, SplitSpec(seed=seed), budgets_of="default")
    return name


@dataclass
class _Grid:
    """The store's side of the grid: its identity, sizes and the split scheme (and digest) of each seed."""

    fingerprint: str
    n_train: int
    n_val: int
    n_classes: int
    schemes: dict[int, tuple[str, str]]

    @staticmethod
    def check(store: Path, budgets: Sequence[int | None]) -> None:
        """Refuse what cannot be compared before anything is written (splits included)."""
        with FeatureStore(store) as fs:
            if fs.task != "classification":
                raise InputError("compare needs a classification store")
            for b in budgets:
                if b is not None:
                    fs.row_indices("train", per_class=b)  # a budget larger than the data fails now, not hours later

    @classmethod
    def read(cls, fs: FeatureStore, schemes: dict[int, str]) -> _Grid:
        return cls(fs.fingerprint, fs.row_indices("train").size, fs.row_indices("val").size,
                   len(fs.label_names or []), {s: (name, fs.split_digest(name)) for s, name in schemes.items()})

    def cost(self, method: str, budget: int | None, cfg: FinetuneConfig) -> float:
        n = self.n_train if budget is None else min(self.n_train, budget * self.n_classes)
        return cell_cost(method, n, self.n_val, cfg)


def _is_compare_folder(path: Path) -> bool:
    return not any(path.iterdir()) or (path / "cells").is_dir() or (path / "results.json").is_file()


def _check_grid(methods: Sequence[str], seeds: int) -> None:
    for m in methods:
        if m not in HEADS and m not in MODES:
            raise InputError(f"unknown method {m!r}; heads: {', '.join(HEADS)}; fine-tune modes: {', '.join(MODES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError("--seeds must be at least 1")


BACKENDS = ("local", "dask")


def compare(store: str | os.PathLike, *, methods: Sequence[str] = DEFAULT_METHODS,
            budgets: Sequence[int | None] = DEFAULT_BUDGETS, seeds: int = 1, out: str | os.PathLike | None = None,
            time_budget_minutes: float | None = None, overwrite: bool = False, quiet: bool = False,
            backend: str = "local", scheduler: str | None = None, **ft_options) -> dict:
    """Run (or resume) the grid and write results.json, report.md and the plots into ``out`` (a new or
    empty folder, or an earlier compare's; anything else only with ``overwrite``).

    ``backend="dask"`` sends the cells to the Dask cluster at ``scheduler`` (a local one when None), one
    task per cell (:mod:`featcache.cluster`). ``results["computed"]`` lists the cells this call computed;
    the others were reused or skipped.
    """
    store = Path(store).resolve()  # cells may run on other machines, in other working directories
    methods, budgets = list(dict.fromkeys(methods)), list(dict.fromkeys(budgets))  # a cell named twice runs once
    _check_grid(methods, seeds)
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "local" and scheduler:
        raise InputError("--scheduler is for --backend dask")
    if backend == "dask" and time_budget_minutes is not None:
        raise InputError("--time-budget skips cells as a sequential run goes; it is not available with --backend dask")
    options = resolved_options(ft_options)
    cfg = FinetuneConfig(**options)
    out = (default_compare_dir(store) if out is None else Path(out)).resolve()
    _Grid.check(store, budgets)
    check_output(out, kind="compare folder", is_own=_is_compare_folder, overwrite=overwrite, folder=True)
    schemes = {s: _seed_scheme(store, s) for s in range(seeds)}  # drawn before the store is opened for the grid
    with FeatureStore(store) as fs:
        grid = _Grid.read(fs, schemes)
    cache, estimate, todo = CellCache(out / "cells"), TimeEstimate(), []
    for method, budget, seed in sorted(((m, b, s) for s in range(seeds) for b in budgets for m in methods),
                                       key=lambda c: (grid.cost(c[0], c[1], cfg), c[2])):
        scheme, digest = grid.schemes[seed]
        opts = {} if method in HEADS else options
        cached = cache.valid(method, budget, seed, fingerprint=grid.fingerprint, split_sha256=digest, options=opts)
        if cached is None:
            todo.append({"method": method, "budget": budget, "seed": seed, "store_fingerprint": grid.fingerprint,
                         "split_sha256": digest, "options": opts, "scheme": scheme})
        elif method not in HEADS:
            estimate.observe(cached["train_seconds"], grid.cost(method, budget, cfg))
    args = (store, out, options, ft_options)
    if backend == "dask":
        computed = _grid_on_dask(todo, cache, args, scheduler, quiet)
    else:
        computed = _grid_here(todo, cache, args, grid, cfg, estimate, time_budget_minutes, quiet)
    cells = cache.in_grid(methods, budgets, seeds)
    results = {"store": str(store.resolve()), "store_fingerprint": grid.fingerprint, "methods": list(methods),
               "budgets": [budget_name(b) for b in budgets], "seeds": seeds, "fine_tune_options": ft_options,
               "out": str(out), "computed": computed,
               "reused": sum("skipped" not in c for c in cells) - len(computed), "cells": cells}
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _grid_here(todo: list[dict], cache: CellCache, args: tuple, grid: _Grid, cfg: FinetuneConfig,
               estimate: TimeEstimate, time_budget_minutes: float | None, quiet: bool) -> list[str]:
    """The cells in this process, cheapest first; a fine-tune that the time budget cannot afford is skipped."""
    computed, started = [], time.perf_counter()
    for cell in todo:
        method, budget, seed = cell["method"], cell["budget"], cell["seed"]
        cost = grid.cost(method, budget, cfg)
        minutes = estimate.minutes(cost)
        elapsed = (time.perf_counter() - started) / 60
        if time_budget_minutes is not None and method not in HEADS and elapsed + minutes > time_budget_minutes:
            cell["skipped"] = (f"estimated {minutes:.1f} min would exceed the {time_budget_minutes:g}-minute "
                               f"budget ({elapsed:.1f} min used)")
            _say(quiet, f"skip {method} @ {budget_name(budget)}/class seed {seed}: {cell['skipped']}")
            cache.save(_record(cell))
            continue
        _say(quiet, f"run  {method} @ {budget_name(budget)}/class seed {seed}")
        done = run_cell(cell, *args, quiet=quiet)
        if method not in HEADS:
            estimate.observe(done["train_seconds"], cost)
        cache.save(done)
        computed.append(_name(done))
    return computed


def _grid_on_dask(todo: list[dict], cache: CellCache, args: tuple, scheduler: str | None, quiet: bool) -> list[str]:
    """The cells on a Dask cluster, one task each; each is saved here as soon as its result arrives."""
    from tqdm.auto import tqdm

    from .cluster import dask_client, run_on_dask

    computed = []
    heads = [(c, *args) for c in todo if c["method"] in HEADS]
    tunes = [(c, *args) for c in todo if c["method"] not in HEADS]
    with dask_client(scheduler, quiet) as client, \
            tqdm(total=len(todo), unit="cell", desc="compare", disable=quiet or not sys.stderr.isatty()) as bar:
        for done in run_on_dask(client, heads, tunes, run_cell):
            cache.save(done)
            computed.append(_name(done))
            bar.update(1)
            _say(quiet, f"done {_name(done)}")
    return computed


def _name(cell: dict) -> str:
    return f"{cell['method']}@{budget_name(cell['budget'])}/s{cell['seed']}"


def _record(cell: dict) -> dict:
    """What is saved of a cell: everything but the split scheme's name (the digest identifies the draw)."""
    return {k: v for k, v in cell.items() if k != "scheme"}


def run_cell(cell: dict, store: Path, out: Path, options: dict, ft_options: dict, quiet: bool = True) -> dict:
    """One cell, computed from the store's path: the unit of work of every backend (a Dask task included).
    The store must still be the one the grid was planned on (a re-extracted store would poison the cache)."""
    with FeatureStore(store) as fs:
        if fs.fingerprint != cell["store_fingerprint"] or fs.split_digest(cell["scheme"]) != cell["split_sha256"]:
            raise StoreMismatchError(f"{store} changed while the grid ran (another extraction or split); re-run "
                                     "compare to continue on the new store")
        figures = _run_cell(fs, cell["method"], cell["budget"], cell["seed"], (cell["scheme"], cell["split_sha256"]),
                            out, options, ft_options, quiet)
    return {**_record(cell), **figures}


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def _run_cell(fs: FeatureStore, method: str, budget: int | None, seed: int, split: tuple[str, str], out: Path,
              options: dict, ft_options: dict, quiet: bool) -> dict:
    """One cell's figures: a head on cached features, or a fine-tune (resumable: its checkpoint folder is
    keyed on every resolved option, the store and the split's draw, so nothing else meets this checkpoint)."""
    scheme, digest = split

    if method in HEADS:
        reset_peak_rss()
        t = time.perf_counter()
        res = fit_head(fs, method, split=scheme, per_class=budget, seed=seed, save=False, quiet=True)
        seconds = time.perf_counter() - t
        est = res.pipeline.named_steps["head"]
        trainable = int(getattr(est, "coef_", np.zeros(0)).size + np.size(getattr(est, "intercept_", 0)))
        return {"metrics": res.metrics, "train_seconds": seconds, "peak_rss_bytes": peak_rss_bytes(),
                "trainable_params": trainable, "n_train": res.meta["n_train"], "kind": "head",
                "chosen": {res.meta["param"]: res.meta["value"]}}
    key = {"options": options, "store": fs.fingerprint, "split": digest}
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    cell_dir = out / "runs" / f"{method}_{budget_name(budget)}_s{seed}_{tag}"
    r = finetune(fs, out=cell_dir, mode=method, per_class=budget, seed=seed, split=scheme, resume=True,
                 quiet=quiet, **ft_options).record
    return {"metrics": r["metrics"], "train_seconds": r["train_seconds"], "peak_rss_bytes": r["peak_rss_bytes"],
            "trainable_params": r["trainable_params"], "total_params": r["total_params"], "n_train": r["n_train"],
            "kind": "finetune", "images_per_s": r["images_per_s"], "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"]}
