"""Heads benchmark: how long the three heads with their sweeps take next to the extraction itself.

    python scripts/bench_heads.py [--store data/bench/fmnist-5000-128px-fp32.h5] [--jobs 2]

On a Fashion-MNIST store from the default backbone (the extraction benchmark's; made here if it
is missing, and timed), it measures in one run: loading the features, fitting each head with its
regularisation sweep on val and refit (logreg, svm, ridge), their test accuracy and macro-F1,
and a plain ``LogisticRegression()`` on the same features for reference. Prints a table and
writes JSON (default data/bench/bench_heads.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import featcache
from featcache.heads import fit_head
from featcache.store import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/bench/fmnist-5000-128px-fp32.h5")
    ap.add_argument("--n", type=int, default=5000, help="images to extract if the store is missing")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="data/bench/bench_heads.json")
    args = ap.parse_args()
    store = Path(args.store)
    if not store.exists():
        featcache.extract("builtin:fashion-mnist", store, limit=args.n, image_size=128, precision="fp32", quiet=True)
    with FeatureStore(store) as fs:
        extract_seconds = float(fs.attrs.get("extract_seconds", "nan"))
        rows = {p: fs.row_indices(p).size for p in ("train", "val", "test")}
        dim = fs.dim()

    t = time.perf_counter()
    Xtr, ytr, _ = featcache.load(store, split="train")
    Xte, yte, _ = featcache.load(store, split="test")
    load_seconds = time.perf_counter() - t

    heads = {}
    for head in ("logreg", "svm", "ridge"):
        t = time.perf_counter()
        res = fit_head(store, head, jobs=args.jobs, out=Path(args.out).parent / "heads" / f"{head}.head", quiet=True)
        total = time.perf_counter() - t
        heads[head] = {"seconds": total, "fit_seconds": res.meta["fit_seconds"], "value": res.meta["value"],
                       "param": res.meta["param"], "accuracy": res.metrics["accuracy"],
                       "macro_f1": res.metrics["macro_f1"], "val_scores": res.meta["val_scores"]}
        print(f"{head}: {total:.2f} s, {res.meta['param']}={res.meta['value']:.3g}, "
              f"acc {res.metrics['accuracy']:.4f}", flush=True)

    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    plain = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
    plain_seconds = time.perf_counter() - t
    plain_acc = float(plain.score(Xte, yte))

    heads_total = sum(h["seconds"] for h in heads.values())
    best = max(heads, key=lambda h: heads[h]["accuracy"])
    result = {
        "store": str(store), "rows": rows, "dim": dim, "extract_seconds": extract_seconds,
        "load_seconds": load_seconds, "heads": heads, "heads_total_seconds": heads_total,
        "heads_over_extract": heads_total / extract_seconds,
        "plain_logreg": {"seconds": plain_seconds, "accuracy": plain_acc},
        "best_head": best, "best_minus_plain_points": 100 * (heads[best]["accuracy"] - plain_acc),
    }
    print(f"\nstore {store}: {rows['train']} train / {rows['val']} val / {rows['test']} test rows, {dim}-d; "
          f"extraction took {extract_seconds:.1f} s; loading train+test features {load_seconds:.2f} s")
    print(f"{'head':<22}{'sweep+refit s':>14}{'chosen':>16}{'accuracy':>10}{'macro-F1':>10}")
    for name, h in heads.items():
        print(f"{name:<22}{h['seconds']:>14.2f}{h['param'] + '=' + format(h['value'], '.3g'):>16}"
              f"{h['accuracy']:>10.4f}{h['macro_f1']:>10.4f}")
    print(f"{'plain LogisticRegression':<22}{plain_seconds:>14.2f}{'C=1':>16}{plain_acc:>10.4f}")
    print(f"three heads together: {heads_total:.1f} s = {100 * result['heads_over_extract']:.1f} % of extraction; "
          f"best head ({best}) - plain logreg: {result['best_minus_plain_points']:+.2f} points")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
