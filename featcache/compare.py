"""Feature extraction vs fine-tuning, measured: a grid of methods x label budgets x seeds.

Every cell reads the same store splits; heads and fine-tunes share the metrics function. Each
finished cell is written to ``cells/`` at once, so an interrupted compare resumes and a re-run
computes only what is missing. Outputs: ``results.json``, ``report.md`` (the table and a
recommendation computed from the numbers) and two PNG plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_path, atomic_write_json, atomic_write_text
from .finetune import FinetuneConfig, finetune, images_per_epoch
from .heads import HEADS
from .store import FeatureStore
from .strategies import MODES

__all__ = ["compare", "parse_budgets", "summarise", "write_report"]

DEFAULT_METHODS = ("logreg", "svm", "ridge", "linear", "last-n", "full", "lp-ft")
# cost of one fine-tune image step relative to a frozen forward pass (the time-budget estimate's units);
# linear/last-n/full/lp-ft measured by scripts/bench_compare.py (EfficientNet-Lite0, CPU), lora/gradual guessed
_COST = {"linear": 1.0, "last-n": 2.3, "full": 5.2, "lp-ft": 5.0, "lora": 3.0, "gradual": 3.5}


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


def _budget_name(b: int | None) -> str:
    return "all" if b is None else str(b)


def _seed_scheme(store: Path, seed: int) -> str:
    """Seed 0 uses the default split; seed k the same train/val/test rows with budgets drawn with seed k."""
    if seed == 0:
        return "default"
    from .splits import SplitSpec
    from .store import add_split

    name = f"default-budget{seed}"
    add_split(store, name, SplitSpec(seed=seed), budgets_of="default")
    return name


def _run_cell(store: Path, method: str, budget: int | None, seed: int, scheme: str, out: Path,
              ft_options: dict, quiet: bool) -> dict:
    from .runtime import peak_rss_bytes, reset_peak_rss

    if method in HEADS:
        from .heads import fit_head

        reset_peak_rss()
        t = time.perf_counter()
        res = fit_head(store, method, split=scheme, per_class=budget, seed=seed, save=False, quiet=True)
        seconds = time.perf_counter() - t
        est = res.pipeline.named_steps["head"]
        trainable = int(getattr(est, "coef_", np.zeros(0)).size + np.size(getattr(est, "intercept_", 0)))
        return {"metrics": res.metrics, "train_seconds": seconds, "peak_rss_bytes": peak_rss_bytes(),
                "trainable_params": trainable, "n_train": res.meta["n_train"], "kind": "head",
                "chosen": {res.meta["param"]: res.meta["value"]}}
    # keyed like the cell: on every setting, defaults included, so other defaults never meet this checkpoint
    tag = hashlib.sha256(json.dumps(_resolved_options(ft_options), sort_keys=True).encode()).hexdigest()[:8]
    cell_dir = out / "runs" / f"{method}_{_budget_name(budget)}_s{seed}_{tag}"  # other options, other checkpoint
    res = finetune(store, out=cell_dir, mode=method, per_class=budget, seed=seed, split=scheme, resume=True,
                   quiet=quiet, **ft_options)
    r = res.record
    return {"metrics": r["metrics"], "train_seconds": r["train_seconds"], "peak_rss_bytes": r["peak_rss_bytes"],
            "trainable_params": r["trainable_params"], "total_params": r["total_params"], "n_train": r["n_train"],
            "kind": "finetune", "images_per_s": r["images_per_s"], "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"]}


def compare(store: str | os.PathLike, *, methods: Sequence[str] = DEFAULT_METHODS,
            budgets: Sequence[int | None] = (1, 10, 100, None), seeds: int = 1, out: str | os.PathLike | None = None,
            time_budget_minutes: float | None = None, overwrite: bool = False, quiet: bool = False,
            **ft_options) -> dict:
    """Run (or resume) the grid and write results.json, report.md and the plots into ``out`` (a new or
    empty folder, or an earlier compare's; anything else only with ``overwrite``)."""
    store = Path(store)
    for m in methods:
        if m not in HEADS and m not in MODES:
            raise InputError(f"unknown method {m!r}; heads: {', '.join(HEADS)}; fine-tune modes: {', '.join(MODES)}")
    if seeds < 1:
        raise InputError("--seeds must be at least 1")
    with FeatureStore(store) as fs:
        if fs.task != "classification":
            raise InputError("compare needs a classification store")
        fingerprint = fs.fingerprint
        n_train_all = fs.rows("train").size
        n_val = fs.rows("val").size
        n_classes = len(fs.label_names or [])
        for b in budgets:
            if b is not None:
                fs.rows("train", per_class=b)  # a budget larger than the data fails now, not hours later
    out = Path(out) if out else Path("data") / "compare" / store.stem
    from .files import check_output

    check_output(out, kind="compare folder", is_own=_is_compare_folder, overwrite=overwrite, folder=True)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    resolved = _resolved_options(ft_options)
    cfg = FinetuneConfig(**resolved)

    # cheapest first, so a time budget skips the expensive cells
    def cost(method: str, budget: int | None) -> float:
        n = n_train_all if budget is None else min(n_train_all, budget * n_classes)
        if method in HEADS:
            return n * 1e-3
        return _COST.get(method, 3.0) * cfg.epochs * images_per_epoch(n, cfg) + cfg.epochs * n_val

    cells = sorted(((m, b, s) for s in range(seeds) for b in budgets for m in methods),
                   key=lambda c: (cost(c[0], c[1]), c[2]))
    started = time.perf_counter()
    rates: list[float] = []  # seconds per cost unit of each finished fine-tune cell

    def observe(cell: dict) -> None:
        rates.append(cell["train_seconds"] / max(cost(cell["method"], cell["budget"]), 1e-9))

    digests: dict[int, tuple[str, str]] = {}  # seed -> (scheme, its digest): cells fitted on another draw are stale

    def scheme_of(seed: int) -> tuple[str, str]:
        if seed not in digests:
            scheme = _seed_scheme(store, seed)
            with FeatureStore(store) as fs:
                digests[seed] = (scheme, fs.split_digest(scheme))
        return digests[seed]

    for method, budget, seed in cells:
        path = out / "cells" / f"{method}_{_budget_name(budget)}_s{seed}.json"
        if path.exists():
            cell = json.loads(path.read_text())
            same_options = method in HEADS or cell.get("options") == resolved
            same_split = cell.get("split_sha256") == scheme_of(seed)[1]
            if cell.get("store_fingerprint") == fingerprint and "skipped" not in cell and same_options and same_split:
                if method not in HEADS:
                    observe(cell)
                continue
        if time_budget_minutes is not None and method not in HEADS:
            elapsed = (time.perf_counter() - started) / 60
            # the slowest rate seen errs on the side of skipping; ~30 forward img/s before any is measured
            est = cost(method, budget) * (max(rates) if rates else 1 / 30.0) / 60
            if elapsed + est > time_budget_minutes:
                cell = {"method": method, "budget": budget, "seed": seed, "store_fingerprint": fingerprint,
                        "skipped": f"estimated {est:.1f} min would exceed the {time_budget_minutes:g}-minute budget "
                                   f"({elapsed:.1f} min used)"}
                _write_cell(path, cell)
                if not quiet:
                    print(f"skip {method} @ {_budget_name(budget)}/class seed {seed}: {cell['skipped']}")
                continue
        scheme, digest = scheme_of(seed)
        if not quiet:
            print(f"run  {method} @ {_budget_name(budget)}/class seed {seed}", flush=True)
        result = _run_cell(store, method, budget, seed, scheme, out, ft_options, quiet)
        if method not in HEADS:
            observe({"method": method, "budget": budget, **result})
        cell = {"method": method, "budget": budget, "seed": seed, "store_fingerprint": fingerprint,
                "split_sha256": digest, "options": {} if method in HEADS else resolved, **result}
        _write_cell(path, cell)
    results = {"store": str(store.resolve()), "store_fingerprint": fingerprint, "methods": list(methods),
               "budgets": [_budget_name(b) for b in budgets], "seeds": seeds, "fine_tune_options": ft_options,
               "cells": [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))
                         if _in_grid(json.loads(p.read_text()), methods, budgets, seeds)]}
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _resolved_options(ft_options: dict) -> dict:
    """Every fine-tune setting a cell ran with, defaults included: a cell computed under other
    defaults (an older featcache, say) does not match and is recomputed rather than reused."""
    try:
        cfg = asdict(FinetuneConfig(**ft_options))
    except TypeError as exc:
        raise InputError(f"unknown fine-tune option: {exc}") from None
    for per_cell in ("mode", "per_class", "split", "seed"):
        cfg.pop(per_cell)
    return cfg


def _is_compare_folder(path: Path) -> bool:
    return not any(path.iterdir()) or (path / "cells").is_dir() or (path / "results.json").is_file()


def _in_grid(cell: dict, methods, budgets, seeds) -> bool:
    return cell["method"] in methods and cell["budget"] in list(budgets) and cell["seed"] < seeds


def _write_cell(path: Path, cell: dict) -> None:
    atomic_write_json(path, cell)


def summarise(results: dict) -> list[dict]:
    """One row per (method, budget): mean and std over seeds of every figure."""
    rows = []
    groups: dict[tuple, list[dict]] = {}
    for c in results["cells"]:
        groups.setdefault((c["method"], _budget_name(c["budget"])), []).append(c)
    for (method, budget), cs in groups.items():
        done = [c for c in cs if "skipped" not in c]
        row = {"method": method, "budget": budget, "seeds_run": len(done),
               "skipped": next((c["skipped"] for c in cs if "skipped" in c), None)}
        if done:
            acc = np.array([c["metrics"]["accuracy"] for c in done])
            row.update(accuracy=float(acc.mean()), accuracy_std=float(acc.std()),
                       macro_f1=float(np.mean([c["metrics"]["macro_f1"] for c in done])),
                       train_seconds=float(np.mean([c["train_seconds"] for c in done])),
                       peak_rss_mib=float(np.max([c["peak_rss_bytes"] for c in done]) / 2**20),
                       trainable_params=int(done[0]["trainable_params"]), n_train=int(done[0]["n_train"]),
                       n_test=int(np.sum(done[0]["metrics"].get("confusion_matrix", 0))))
        rows.append(row)
    order = {m: i for i, m in enumerate(results["methods"])}
    budgets = {b: i for i, b in enumerate(results["budgets"])}
    return sorted(rows, key=lambda r: (budgets.get(r["budget"], 99), order.get(r["method"], 99)))


def _accuracy(r: dict) -> str:
    """Mean ± std over seeds; a single seed has no spread to show, so none is printed."""
    return f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}" if r["seeds_run"] > 1 else f"{r['accuracy']:.4f}"


def format_rows(rows: list[dict]) -> str:
    """The summary as a plain-text table (the CLI and the benchmark print it)."""
    lines = [f"{'method':<8}{'labels/class':>13}{'accuracy':>18}{'macro-F1':>10}{'train s':>9}{'peak MiB':>10}"
             f"{'trainable':>12}"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"{r['method']:<8}{r['budget']:>13}{_accuracy(r):>18}{r['macro_f1']:>10.4f}{r['train_seconds']:>9.1f}"
                         f"{r['peak_rss_mib']:>10.0f}{r['trainable_params']:>12,}")
        else:
            lines.append(f"{r['method']:<8}{r['budget']:>13}  skipped: {r['skipped']}")
    return "\n".join(lines)


def recommend(rows: list[dict], within: float = 0.01) -> list[str]:
    """Per budget: the cheapest method (train time) whose accuracy is within ``within`` of the best."""
    lines = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        done = [r for r in rows if r["budget"] == budget and "accuracy" in r]
        if not done:
            continue
        best = max(done, key=lambda r: r["accuracy"])
        close = [r for r in done if r["accuracy"] >= best["accuracy"] - within]
        cheap = min(close, key=lambda r: r["train_seconds"])
        label = "all labels" if budget == "all" else f"{budget} labels per class"
        if cheap is best:
            lines.append(f"- {label}: **{best['method']}** is both the most accurate ({best['accuracy']:.3f}) and the "
                         f"cheapest within {100 * within:.0f} point ({best['train_seconds']:.1f} s).")
        else:
            ratio = best["train_seconds"] / max(cheap["train_seconds"], 1e-9)
            saving = f"at {ratio:.0f}x less training time." if ratio >= 1.5 else "at about the same training time."
            lines.append(f"- {label}: **{cheap['method']}** ({cheap['accuracy']:.3f}, {cheap['train_seconds']:.1f} s) "
                         f"is within {100 * within:.0f} point of the best, {best['method']} ({best['accuracy']:.3f}, "
                         f"{best['train_seconds']:.1f} s), {saving}")
        if best["seeds_run"] < 2 and best.get("n_test"):
            # one run: the only spread we know is the test set's sampling error of the best accuracy
            half = 1.96 * np.sqrt(best["accuracy"] * (1 - best["accuracy"]) / best["n_test"])
            lines[-1] += (f" One seed on {best['n_test']} test images: ±{100 * half:.1f} points (95%), so gaps "
                          f"smaller than that are not resolved; use --seeds to measure the spread.")
    return lines


def write_report(results: dict, out: Path) -> None:
    """report.md with the measured table and a recommendation from it, and the two plots."""
    rows = summarise(results)
    lines = [f"# featcache compare: {Path(results['store']).name}", "",
             f"Store `{results['store']}` (fingerprint {results['store_fingerprint'][:12]}), "
             f"{results['seeds']} seed(s); accuracy is mean ± std over seeds on the test split (no ± with one seed).",
             "",
             "| method | labels/class | accuracy | macro-F1 | train time (s) | peak memory (MiB) | trainable params |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"| {r['method']} | {r['budget']} | {_accuracy(r)} | "
                         f"{r['macro_f1']:.4f} | {r['train_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['trainable_params']:,} |")
        else:
            lines.append(f"| {r['method']} | {r['budget']} | skipped: {r['skipped']} | | | | |")
    lines += ["", "Train time is the head's sweep and refit (cached features), or the fine-tune's training epochs; "
              "extraction is paid once for every head. Peak memory is the process's peak resident set during the "
              "cell.", "", "## Recommendation (cheapest method within 1 point of the best, per budget)", ""]
    lines += recommend(rows) or ["- no finished cells yet"]
    lines += ["", "![accuracy vs labels per class](accuracy_vs_labels.png)",
              "![accuracy vs training time](accuracy_vs_time.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    _plots(rows, results, out)


def _plots(rows: list[dict], results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "accuracy" in r]
    n_all = max((r["n_train"] for r in done if r["budget"] == "all"), default=None)
    n_classes = None
    for r in done:
        if r["budget"] != "all" and r["n_train"]:
            n_classes = r["n_train"] / int(r["budget"])
    def x_of(r):
        if r["budget"] != "all":
            return int(r["budget"])
        return (n_all / n_classes) if (n_all and n_classes) else math.nan

    def save(fig, ax, xlabel: str, name: str) -> None:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in results["methods"]:
        pts = sorted((x_of(r), r["accuracy"], r["accuracy_std"]) for r in done if r["method"] == method)
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    save(fig, ax, "labelled examples per class ('all' at the train split's mean per class)", "accuracy_vs_labels.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in results["methods"]:
        pts = [(r["train_seconds"], r["accuracy"], r["budget"]) for r in done if r["method"] == method]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method)
            for x, y, b in pts:
                ax.annotate(b, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    save(fig, ax, "training time (s, log scale)", "accuracy_vs_time.png")
