"""Feature extraction vs fine-tuning on Fashion-MNIST, measured end to end in one run.

    python scripts/bench_compare.py [--store data/bench/fmnist-5000-128px-fp32.h5] [--budgets 10,100,all]
                                    [--epochs 3] [--seeds 3] [--time-budget 25]

The logistic head on cached features against the `linear`, `last-n`, `full` and `lp-ft`
fine-tunes of the default backbone at 128 px, at each label budget, on the store's splits.
Writes the comparison (results.json, report.md, plots) to data/bench/compare/ and prints the
table plus, for context, how long the extraction that every head reuses took.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import featcache
from featcache.compare import compare, parse_budgets
from featcache.report import format_table, summarise
from featcache.store import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/bench/fmnist-5000-128px-fp32.h5")
    ap.add_argument("--methods", default="logreg,linear,last-n,full,lp-ft")
    ap.add_argument("--budgets", default="10,100,all")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=25.0, help="minutes for the fine-tune cells")
    ap.add_argument("--out", default="data/bench/compare")
    args = ap.parse_args()
    store = Path(args.store)
    if not store.exists():
        featcache.extract("builtin:fashion-mnist", store, limit=5000, image_size=128, precision="fp32", quiet=True)
    results = compare(store, methods=args.methods.split(","), budgets=parse_budgets(args.budgets), seeds=args.seeds,
                      out=args.out, time_budget_minutes=args.time_budget, epochs=args.epochs, unfreeze=2)
    with FeatureStore(store) as fs:
        extract_seconds = fs.attrs.get("extract_seconds")
    rows = summarise(results)
    print("\n" + format_table(rows))
    print(f"extraction of the store (paid once for every head): {extract_seconds} s")
    print((Path(args.out) / "report.md").read_text().split("## Recommendation")[1])
    (Path(args.out) / "bench_summary.json").write_text(json.dumps({"rows": rows, "extract_seconds": extract_seconds},
                                                                  indent=1))


if __name__ == "__main__":
    main()
