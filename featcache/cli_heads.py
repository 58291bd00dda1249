"""Sub-commands that work on a finished store: split, fit-head, evaluate, predict."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .heads import HEADS, REFITS
from .splits import PARTS, SplitSpec
from .streaming import MEMORY_ENV


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--name", default="default",
                   help="split scheme name: 1-64 letters, digits, '.', '_', '-' (default: default)")
    p.add_argument("--val", type=float, default=SplitSpec.val, help="val fraction of all rows (default: %(default)s)")
    p.add_argument("--test", type=float, default=SplitSpec.test,
                   help="test fraction of all rows, where the dataset has no official test split "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=SplitSpec.seed)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grouped", dest="grouped", action="store_true", default=None,
                   help="keep each group (the store's group column) on one side (default when groups exist)")
    g.add_argument("--no-grouped", dest="grouped", action="store_false")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split of that name")


def _cmd_split(a: argparse.Namespace) -> int:
    from .store import add_split

    counts = add_split(a.store, a.name, SplitSpec(a.val, a.test, a.seed, a.grouped), overwrite=a.overwrite)
    if not a.quiet:
        print(f"split {a.name!r} written to {a.store}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0


def _floats(text: str, option: str) -> list[float]:
    from .errors import InputError

    try:
        return [float(g) for g in text.split(",")]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--head", default="logreg", choices=list(HEADS), help="default: logreg")
    p.add_argument("--layer", default=None, help="stored layer (default: the first)")
    p.add_argument("--split", default=None, help="split scheme (default: 'default', else 'official')")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="train on the first N train rows of each class (nested label budgets)")
    p.add_argument("--grid", default=None, help="comma-separated C (logreg, svm) or alpha (ridge) values")
    p.add_argument("--kernel", default="linear", help="svm kernel: linear (default), rbf, poly, sigmoid")
    p.add_argument("--refit", default=REFITS[0], choices=list(REFITS),
                   help="refit the chosen value on train only (default, keeps label budgets honest) or train+val")
    p.add_argument("--jobs", type=int, default=1, help="parallel fits in the sweep (joblib; -1 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stream", dest="stream", action="store_true", default=None,
                   help="read the features in row blocks, never all at once (default: when they would take more "
                        f"than half the available memory; {MEMORY_ENV} sets that limit)")
    g.add_argument("--no-stream", dest="stream", action="store_false", help="read the features into memory")
    p.add_argument("--out", default=None, help="head file, *.head (default: data/heads/<store>_<layer>_<head>.head)")
    p.add_argument("--overwrite", action="store_true", help="write --out even over a file that is not a featcache head")
    _verbose_arg(p)


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every metric and the confusion matrix (with full class names), not just the summary")


def _headline(metrics: dict) -> str:
    """The one or two numbers a reader looks for first: accuracy and macro-F1, or R² and MAE for regression."""
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    if "r2" not in metrics:  # a split without test rows: nothing was measured
        return f"no rows to measure ({metrics.get('n', 0)} test rows)"
    return f"R² {metrics['r2']:.4f}, MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}"


def _chosen(meta: dict) -> str:
    return f"{meta['param']}={meta['value']:.3g} chosen on val" + (
        f" (val score {meta['val_score']:.4f})" if "val_score" in meta else "")


def _details(metrics: dict, label_names: list[str] | None, verbose: bool) -> str:
    from .metrics import format_metrics

    if verbose:
        return format_metrics(metrics, label_names, max_classes=None)
    return "  (--verbose: every metric and the confusion matrix)" if "confusion_matrix" in metrics else ""


def _print_fit(res, seconds: float, verbose: bool) -> None:
    """The default is one summary line: what was fit on what, the test headline, the chosen value and the time."""
    m = res.meta
    head = m["head"] + (f" ({m['kernel']} kernel)" if m.get("kernel", "linear") != "linear" else "")
    budget = f", {m['per_class']} per class" if m.get("per_class") else ""
    where = f" -> {res.path}" if res.path else ""
    memory = f", features {m['memory']}" if m.get("memory") else ""
    print(f"{head} on {m['layer']} ({m['n_train']} train{budget}, {m['n_val']} val, {m['n_test']} test): "
          f"test {_headline(res.metrics)}; {_chosen(m)}; {seconds:.1f} s{memory}{where}")
    details = _details(res.metrics, m.get("label_names"), verbose)
    if details:
        print(details)


def _cmd_fit(a: argparse.Namespace) -> int:
    from .heads import fit_head

    grid = _floats(a.grid, "--grid") if a.grid else None
    started = time.perf_counter()
    res = fit_head(a.store, a.head, layer=a.layer, split=a.split, per_class=a.per_class, grid=grid,
                   kernel=a.kernel, refit=a.refit, jobs=a.jobs, seed=a.seed, stream=a.stream, out=a.out,
                   overwrite=a.overwrite, quiet=a.quiet)
    if not a.quiet:
        _print_fit(res, time.perf_counter() - started, a.verbose)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("head")
    p.add_argument("store", nargs="?", default=None, help="the store (default: the one the head was fit on)")
    p.add_argument("--split", default="test", choices=list(PARTS))
    p.add_argument("--trust", action="store_true",
                   help="load a head whose origin cannot be checked: a pickle (.joblib: loading runs its code), "
                        "one without a sidecar, or one that does not match its sidecar")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _verbose_arg(p)


def _cmd_eval(a: argparse.Namespace) -> int:
    from .head_io import read_sidecar
    from .heads import evaluate_head

    started = time.perf_counter()
    metrics = evaluate_head(a.head, a.store, split=a.split, trusted=a.trust)
    seconds = time.perf_counter() - started
    if a.json:
        print(json.dumps(metrics))
    elif not a.quiet:
        meta = read_sidecar(a.head, required=False) or {}
        chosen = f"; {meta['head']}, {_chosen(meta)}" if {"head", "param", "value"} <= meta.keys() else ""
        print(f"{a.head} on the {a.split} split ({metrics['n']} rows): {_headline(metrics)}{chosen}; "
              f"loaded and scored in {seconds:.1f} s")
        details = _details(metrics, meta.get("label_names"), a.verbose)
        if details:
            print(details)
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("head", help="a head (.head) or a fine-tuned model folder (featcache finetune --out)")
    p.add_argument("inputs", nargs="*",
                   help="image files or folders; for a text store's head, text files of sentences, one per line "
                        "(- or none: stdin)")
    p.add_argument("--store", default=None, help="the store (default: the one the head was fit on)")
    p.add_argument("--out", default=None, help="write the predictions to this CSV (default: print them)")
    p.add_argument("--overwrite", action="store_true",
                   help="write --out even over a file that is not a predictions CSV")
    p.add_argument("--batch-size", default="auto", help="rows per forward pass, or auto (default; as in extract)")
    p.add_argument("--device", default="auto")
    p.add_argument("--trust", action="store_true",
                   help="load a head whose origin cannot be checked (a pickle: loading runs its code)")


def _cmd_predict(a: argparse.Namespace) -> int:
    from .predict import check_predictions_output, head_modality, predict, rows_to_csv
    from .text_predict import read_sentences

    if a.out is not None:
        check_predictions_output(a.out, a.overwrite)  # before the work, not after it

    inputs = a.inputs
    if head_modality(a.head, a.store) == "text":
        inputs = read_sentences(a.inputs)  # ids: line numbers
    rows = predict(a.head, inputs, store=a.store, batch_size=a.batch_size, device=a.device, trusted=a.trust,
                   quiet=a.quiet)
    text = rows_to_csv(rows, a.out, overwrite=a.overwrite)
    if a.out is None:
        sys.stdout.write(text)
    elif not a.quiet:
        failed = sum(1 for r in rows if r["error"])
        print(f"{len(rows)} predictions ({failed} unreadable) -> {a.out}")
    return 0


COMMANDS = [
    ("split", "add a seeded, stratified (optionally grouped) train/val/test split to a store",
     "examples:\n  python -m featcache split data/stores/main.h5 --name s1 --seed 1\n"
     "  python -m featcache split data/stores/xray.h5 --grouped --val 0.15 --test 0.15\n", _split_args, _cmd_split),
    ("fit-head", f"train a classical head ({', '.join(HEADS)}) on cached features, strength chosen on val",
     "examples:\n  python -m featcache fit-head data/stores/main.h5\n"
     "  python -m featcache fit-head data/stores/main.h5 --head svm --per-class 10 --jobs 2\n"
     "  python -m featcache fit-head data/stores/main.h5 --head ridge --layer blocks.4 --out data/heads/r.head\n"
     "  python -m featcache fit-head data/stores/main.h5 --head logreg --verbose   # and the confusion matrix\n",
     _fit_args, _cmd_fit),
    ("evaluate", "re-score a saved head on its store's test (or another) split",
     "examples:\n  python -m featcache evaluate data/heads/main_pooled_logreg.head\n"
     "  python -m featcache evaluate data/heads/main_pooled_logreg.head --verbose\n", _eval_args, _cmd_eval),
    ("predict", "predict new images (or sentences) with a saved head (same backbone and preprocessing as the store)",
     "examples:\n  python -m featcache predict data/heads/main_pooled_logreg.head new_photos/ --out preds.csv\n"
     "  python -m featcache predict data/heads/reviews_pooled_logreg.head new_reviews.txt   # one per line\n"
     "  python -m featcache predict data/finetune/reviews_lora_all_s0 -   # sentences from stdin\n",
     _predict_args, _cmd_predict),
]
