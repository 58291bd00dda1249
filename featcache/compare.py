"""Feature extraction vs fine-tuning, measured: a grid of methods x label budgets x seeds on one store.

Every cell reads the same store splits; heads and fine-tunes share the metrics function, and so does the TF-IDF
baseline of a text store (:mod:`featcache.baselines`), on the same rows. The grid itself is
:mod:`featcache.grid` (the engine ``rank`` runs too, over many stores): cells run cheapest first, each is
saved as soon as it finishes, so an interrupted compare resumes; the report is :mod:`featcache.report`.
Outputs: ``results.json``, ``report.md`` and ``report.html`` (the table and a recommendation computed from the
numbers) and PNG plots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .baselines import BASELINES, check_baseline
from .cells import budget_name
from .errors import InputError
from .files import atomic_write_json, check_output
from .finetune import FinetuneConfig
from .grid import GridStore, StoreGrid, run_grid
from .heads import HEADS
from .options import per_run_fields
from .results import CompareResult, write_reports
from .run_record import compare_command, describe_run
from .splits import SplitSpec
from .store import FeatureStore, add_split
from .strategies import MODES

__all__ = ["compare", "parse_budgets", "resolved_options", "default_compare_dir", "default_methods", "DEFAULT_METHODS",
           "DEFAULT_TEXT_METHODS", "DEFAULT_BUDGETS"]

DEFAULT_METHODS = (*HEADS, "linear", "last-n", "full", "lp-ft")  # every head, and the fine-tunes worth a default run
DEFAULT_TEXT_METHODS = (*HEADS, *BASELINES, "linear", "last-n", "full", "lp-ft")  # + what a sceptic compares against
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


def _seed_scheme(store: Path, seed: int, base: str = "default") -> str:
    """Seed 0 uses the base split; seed k the same train/val/test rows with budgets drawn with seed k."""
    if seed == 0:
        return base

    name = f"{base}-budget{seed}"
    add_split(store, name, SplitSpec(seed=seed), budgets_of=base)
    return name


def default_methods(fs: FeatureStore) -> tuple[str, ...]:
    """What ``compare`` runs when no methods are named: a text store adds the TF-IDF baseline."""
    return DEFAULT_TEXT_METHODS if fs.attrs.get("modality") == "text" else DEFAULT_METHODS


def _check_store(store: Path, methods: Sequence[str], budgets: Sequence[int | None], split: str) -> None:
    """Refuse what cannot be compared before anything is written (splits included)."""
    with FeatureStore(store) as fs:
        if fs.task != "classification":
            raise InputError("compare needs a classification store")
        for m in methods:
            if m in BASELINES:
                check_baseline(fs, m)
        for b in budgets:
            if b is not None:
                fs.row_indices(f"{split}:train", per_class=b)  # a budget larger than the data fails now, not later


def _is_compare_folder(path: Path) -> bool:
    return not any(path.iterdir()) or (path / "cells").is_dir() or (path / "results.json").is_file()


def _check_grid(methods: Sequence[str], seeds: int) -> None:
    for m in methods:
        if m not in HEADS and m not in MODES and m not in BASELINES:
            raise InputError(f"unknown method {m!r}; heads: {', '.join(HEADS)}; fine-tune modes: {', '.join(MODES)}; "
                             f"baselines (text stores): {', '.join(BASELINES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError("--seeds must be at least 1")


BACKENDS = ("local", "dask")


def compare(store: str | os.PathLike, *, methods: Sequence[str] | str | None = None,
            budgets: Sequence[int | None] | str = DEFAULT_BUDGETS, seeds: int = 1, out: str | os.PathLike | None = None,
            time_budget_minutes: float | None = None, overwrite: bool = False, quiet: bool = False,
            backend: str = "local", scheduler: str | None = None, split: str = "default",
            layer: str | None = None, **ft_options) -> CompareResult:
    """Run (or resume) the grid and write results.json, report.md, report.html and the plots into ``out`` (a new
    or empty folder, or an earlier compare's; anything else only with ``overwrite``). ``methods`` and ``budgets``
    also take the command line's comma-separated text ("logreg,lp-ft", "10,100,all"); ``methods=None`` is
    :func:`default_methods` (a text store adds the ``tfidf`` baseline). ``split`` is the scheme
    every cell reads and ``layer`` the stored layer the heads read (``rank --finetune-top`` passes the split
    its candidates share and the candidate's layer).

    ``backend="dask"`` sends the cells to the Dask cluster at ``scheduler`` (a local one when None), one
    task per cell (:mod:`featcache.cluster`). ``results["computed"]`` lists the cells this call computed;
    the others were reused or skipped.
    """
    store = Path(store).resolve()  # cells may run on other machines, in other working directories
    if methods is None:
        with FeatureStore(store) as fs:
            methods = default_methods(fs)
    methods = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else methods  # as on the CLI
    methods, budgets = list(dict.fromkeys(methods)), list(dict.fromkeys(parse_budgets(budgets)))  # each cell once
    _check_grid(methods, seeds)
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "local" and scheduler:
        raise InputError("--scheduler is for --backend dask")
    if backend == "dask" and time_budget_minutes is not None:
        raise InputError("--time-budget skips cells as a sequential run goes; it is not available with --backend dask")
    options = resolved_options(ft_options)
    out = (default_compare_dir(store) if out is None else Path(out)).resolve()
    _check_store(store, methods, budgets, split)
    check_output(out, kind="compare folder", is_own=_is_compare_folder, overwrite=overwrite, folder=True)
    schemes = {s: _seed_scheme(store, s, split) for s in range(seeds)}  # drawn before the store is opened for the grid
    with FeatureStore(store) as fs:
        grid = StoreGrid.read(fs, schemes)
        run = describe_run(fs, grid.schemes, options, compare_command(
            store, out, methods, budgets, seeds, time_budget_minutes, backend, scheduler, ft_options))
    plan = [(m, b, s) for s in range(seeds) for b in budgets for m in methods]
    done = run_grid([GridStore(store, schemes, layer=layer)], plan, out, options=options, ft_options=ft_options,
                    time_budget_minutes=time_budget_minutes, quiet=quiet, backend=backend, scheduler=scheduler)
    results = {"store": str(store.resolve()), "store_fingerprint": grid.fingerprint, "methods": list(methods),
               "budgets": [budget_name(b) for b in budgets], "seeds": seeds, "fine_tune_options": ft_options,
               "out": str(out), "computed": done.computed, "reused": done.reused, "run": run, "cells": done.cells[""]}
    atomic_write_json(out / "results.json", results)
    write_reports(results, out)
    return CompareResult(results)
