"""Sub-commands for fine-tuning and the extraction-vs-fine-tuning comparison."""

from __future__ import annotations

import argparse


def _ft_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-3, help="head learning rate (default 1e-3)")
    g.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="pretrained layers learn at lr x this (discriminative LR, default 0.1)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on norms and biases)")
    g.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up, then cosine decay")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--head-dropout", type=float, default=0.0)
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random resized crop and flip (default: on)")
    g.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a better val accuracy")
    g.add_argument("--bn-stats", default="frozen", choices=["frozen", "frozen-parts"],
                   help="BatchNorm running statistics: 'frozen' keeps the pretrained ones everywhere (default; "
                        "small data), 'frozen-parts' lets trainable layers re-estimate theirs (large data)")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--min-steps", type=int, default=50,
                   help="small label budgets: repeat the train set within epochs to reach this many steps")
    g.add_argument("--unfreeze", type=int, default=2, help="last-n: how many block groups train")
    g.add_argument("--lora-rank", type=int, default=8)
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument("--workers", type=int, default=None)


_FT_KEYS = ("epochs", "batch_size", "lr", "backbone_lr_mult", "weight_decay", "warmup_epochs", "label_smoothing",
            "head_dropout", "augment", "patience", "bn_stats", "accum_steps", "min_steps", "unfreeze", "lora_rank",
            "device", "precision", "workers")


def _finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--mode", default="full", choices=["linear", "last-n", "full", "gradual", "lp-ft", "lora"])
    p.add_argument("--per-class", type=int, default=None, metavar="N", help="label budget: N train rows per class")
    p.add_argument("--split", default=None, help="split scheme (default: the store's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: data/finetune/<store>_<mode>_<budget>_s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's last epoch checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds files that are not a featcache fine-tune")
    _ft_options(p)


def _cmd_finetune(a: argparse.Namespace) -> int:
    from .finetune import finetune

    res = finetune(a.store, out=a.out, resume=a.resume, overwrite=a.overwrite, quiet=a.quiet, mode=a.mode,
                   per_class=a.per_class,
                   split=a.split, seed=a.seed, **{k: getattr(a, k) for k in _FT_KEYS})
    if not a.quiet:
        from .metrics import format_metrics

        print(res)
        print(format_metrics(res.metrics, res.record["label_names"]))
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--methods", default="logreg,svm,ridge,linear,last-n,full,lp-ft",
                   help="heads (logreg, svm, ridge) and fine-tune modes (linear, last-n, full, gradual, lp-ft, lora)")
    p.add_argument("--budgets", default="1,10,100,all", help="labels per class, 'all' for the whole train split")
    p.add_argument("--seeds", type=int, default=1, help="label-budget draws per cell (accuracy is mean ± std)")
    p.add_argument("--out", default=None, help="output folder (default: data/compare/<store>)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="skip (with a note) fine-tune cells whose estimated time would exceed this")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it holds files that are not a featcache comparison")
    _ft_options(p)


def _cmd_compare(a: argparse.Namespace) -> int:
    from .compare import compare, format_rows, parse_budgets, summarise

    results = compare(a.store, methods=[m.strip() for m in a.methods.split(",")], budgets=parse_budgets(a.budgets),
                      seeds=a.seeds, out=a.out, time_budget_minutes=a.time_budget, overwrite=a.overwrite,
                      quiet=a.quiet,
                      **{k: getattr(a, k) for k in _FT_KEYS})
    if not a.quiet:
        from pathlib import Path

        out = Path(a.out) if a.out else Path("data") / "compare" / Path(a.store).stem
        print(format_rows(summarise(results)))
        print(f"report: {out / 'report.md'}; plots: {out / 'accuracy_vs_labels.png'}, {out / 'accuracy_vs_time.png'}")
    return 0


COMMANDS = [
    ("finetune", "fine-tune the store's backbone on the store's splits (linear, last-n, full, gradual, lp-ft, lora)",
     "examples:\n  python -m featcache finetune data/stores/main.h5 --mode lp-ft --epochs 3\n"
     "  python -m featcache finetune data/stores/main.h5 --mode last-n --unfreeze 2 --per-class 10\n"
     "  python -m featcache finetune data/stores/main.h5 --mode full --out data/ft/full --resume\n",
     _finetune_args, _cmd_finetune),
    ("compare", "heads vs fine-tuning over label budgets and seeds: results.json, report.md, plots",
     "examples:\n  python -m featcache compare data/stores/main.h5 --budgets 10,100 --epochs 3\n"
     "  python -m featcache compare data/stores/main.h5 --methods logreg,linear,lp-ft --seeds 3 --time-budget 30\n",
     _compare_args, _cmd_compare),
]
