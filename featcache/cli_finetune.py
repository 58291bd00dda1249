"""Sub-commands for fine-tuning and the extraction-vs-fine-tuning comparison.

The fine-tuning flags are built from :class:`featcache.finetune.FinetuneConfig` (defaults, choices,
help), so the command line never repeats a default or a list of modes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .strategies import MODES


def _ft_options(p: argparse.ArgumentParser) -> None:
    from .finetune import FinetuneConfig
    from .options import add_arguments

    p.set_defaults(ft_keys=add_arguments(p.add_argument_group("fine-tuning"), FinetuneConfig))


def _ft(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) for k in a.ft_keys}


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from .finetune import FinetuneConfig
    from .options import add_arguments

    p.add_argument("store")
    run = p.add_argument_group("this run")
    p.set_defaults(run_keys=add_arguments(run, FinetuneConfig, per_run=True))
    run.add_argument("--out", default=None,
                     help="output folder (default: data/finetune/<store>_<mode>_<budget>_s<seed>)")
    run.add_argument("--resume", action="store_true", help="continue from the folder's last epoch checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="write into --out even if it holds files that are not a featcache fine-tune")
    _ft_options(p)
    p.epilog = (p.epilog or "") + "\nmodes:\n" + "\n".join(f"  {n:<8} {s.help}" for n, s in MODES.items()) + "\n"


def _cmd_finetune(a: argparse.Namespace) -> int:
    from .finetune import finetune

    res = finetune(a.store, out=a.out, resume=a.resume, overwrite=a.overwrite, quiet=a.quiet,
                   **{k: getattr(a, k) for k in a.run_keys}, **_ft(a))
    if not a.quiet:
        from .metrics import format_metrics

        print(res)
        print(format_metrics(res.metrics, res.record["label_names"]))
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    from .cells import budget_name
    from .compare import DEFAULT_BUDGETS, DEFAULT_METHODS
    from .heads import HEADS

    p.add_argument("store")
    p.add_argument("--methods", default=None,
                   help=f"heads ({', '.join(HEADS)}), fine-tune modes ({', '.join(MODES)}) and, for text stores, "
                        f"the tfidf baseline; default: {','.join(DEFAULT_METHODS)} (text stores add tfidf)")
    p.add_argument("--budgets", default=",".join(budget_name(b) for b in DEFAULT_BUDGETS),
                   help="labels per class, 'all' for the whole train split (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="label-budget draws per cell (accuracy is mean ± std)")
    p.add_argument("--out", default=None, help="output folder (default: data/compare/<store>)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="skip (with a note) fine-tune cells whose estimated time would exceed this")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds files that are not a featcache comparison")
    p.add_argument("--backend", choices=("local", "dask"), default="local",
                   help="local: the cells one after another in this process (default); dask: one task per cell on "
                        "a Dask cluster (pip install 'featcache[dask]')")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --backend dask: the scheduler, e.g. tcp://head:8786 (default: a local cluster)")
    _ft_options(p)


def _cmd_compare(a: argparse.Namespace) -> int:
    from .compare import compare, parse_budgets
    from .report import format_table, summarise

    methods = None if a.methods is None else [m.strip() for m in a.methods.split(",")]
    results = compare(a.store, methods=methods, budgets=parse_budgets(a.budgets),
                      seeds=a.seeds, out=a.out, time_budget_minutes=a.time_budget, overwrite=a.overwrite,
                      quiet=a.quiet, backend=a.backend, scheduler=a.scheduler, **_ft(a))
    if not a.quiet:
        out = Path(results["out"])
        print(format_table(summarise(results)))
        print(f"{len(results['computed'])} cells computed, {results['reused']} reused from {out / 'cells'}")
        print(results.recommendation)
        print(f"report: {out / 'report.html'} (and {out / 'report.md'} with its PNG plots)")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a compare output folder (holding results.json)")


def _cmd_report(a: argparse.Namespace) -> int:
    from .results import rebuild_reports

    path = rebuild_reports(a.folder)
    print(path)  # the one output, even with --quiet: a script opens it
    return 0


COMMANDS = [
    ("finetune", f"fine-tune the store's backbone on the store's splits ({', '.join(MODES)})",
     "examples:\n  python -m featcache finetune data/stores/main.h5 --mode lp-ft --epochs 3\n"
     "  python -m featcache finetune data/stores/main.h5 --mode last-n --unfreeze 2 --per-class 10\n"
     "  python -m featcache finetune data/stores/main.h5 --mode full --out data/ft/full --resume\n",
     _finetune_args, _cmd_finetune),
    ("compare", "heads vs fine-tuning over label budgets and seeds: results.json, report.html, report.md, plots",
     "examples:\n  python -m featcache compare data/stores/main.h5 --budgets 10,100 --epochs 3\n"
     "  python -m featcache compare data/stores/main.h5 --methods logreg,linear,lp-ft --seeds 3 --time-budget 30\n"
     "  python -m featcache compare data/stores/main.h5 --backend dask --scheduler tcp://head:8786\n",
     _compare_args, _cmd_compare),
    ("report", "rebuild a comparison's report.html and report.md from its results.json (nothing is recomputed)",
     "examples:\n  python -m featcache report data/compare/main\n", _report_args, _cmd_report),
]
