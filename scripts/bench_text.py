"""Text benchmark on Rotten Tomatoes: what the sentence encoder costs, and what its features are worth against
TF-IDF and against fine-tuning, measured in one run.

    python scripts/bench_text.py                # all 12,808 snippets, budgets 100,1000 (about 25 minutes, 2 cores)
    python scripts/bench_text.py --quick        # 2,000 snippets, budgets 100,300, a short fine-tune: proves it works

1. Encoding speed (MiniLM, all-MiniLM-L6-v2) on a subset, one encoder in memory: length-sorted batches vs the
   source order (what sorting saves in padding), bf16 vs fp32 autocast when ``auto`` picks bf16, and the rate at
   a few batch sizes; then the extraction of the whole store as ``featcache extract`` runs it.
2. The split made explicit: ``bymovie``, 10 % val and 20 % test, grouped by movie (no movie in two parts).
3. ``compare`` itself (so the table is the report's table) of logreg on MiniLM features, the TF-IDF baseline and
   ``lp-ft`` at each budget; lp-ft's epochs are picked from one measured epoch so the run fits ``--minutes``.
4. logreg and TF-IDF on every train label, beside the reference figures (MiniLM + logreg 0.761, TF-IDF bigrams +
   logreg 0.772, 20 % by-movie test split; encoding 12.8k snippets in 91 s on 2 cores).

Prints the CPU's flags and versions, ratios measured in this run, and writes JSON (default
data/bench/bench_text.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

import featcache
from featcache.baselines import fit_tfidf
from featcache.compare import compare
from featcache.heads import fit_head
from featcache.provenance import store_source
from featcache.report import format_table, summarise
from featcache.splits import SplitSpec
from featcache.store import FeatureStore, add_split

ROOT = Path(__file__).resolve().parents[1]
SPLIT = "bymovie"
REFERENCE = {"logreg_all": 0.761, "tfidf_all": 0.772, "encode_seconds_12808": 91.0}


def cpu_flags() -> dict:
    """The CPU model, the matrix flags that decide bf16 speed, cores and versions: what a rate depends on."""
    flags, model = set(), "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for lib in ("torch", "transformers", "scikit-learn", "numpy"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"cpu": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16")},
            "python": platform.python_version(), "featcache": featcache.__version__, **versions}


def _encode_rate(bb, texts: list[str], batch: int, precision: str, sort: bool) -> tuple[float, float]:
    """Texts per second (and padding share) of one pass over ``texts``, batched as extract batches them (sorted
    by token length) or in the given order."""
    import torch

    from featcache.runtime import autocast

    dev = torch.device("cpu")
    ids = bb.tokenize(texts)
    order = np.argsort([-len(t) for t in ids], kind="stable") if sort else np.arange(len(ids))
    tokens = padded = 0
    t = time.perf_counter()
    with torch.inference_mode():
        for b0 in range(0, len(order), batch):
            part = bb.pad([ids[k] for k in order[b0:b0 + batch]])
            tokens, padded = tokens + int(part["attention_mask"].sum()), padded + int(part["attention_mask"].numel())
            with autocast(dev, precision):
                bb.model.embed(part["input_ids"], part["attention_mask"])
    return len(texts) / (time.perf_counter() - t), 1 - tokens / max(padded, 1)


def encoding(texts: list[str], batches: list[int]) -> dict:
    """Sorted vs unsorted, bf16 vs fp32 (when auto is bf16), and the rate per batch size, on the same texts."""
    import torch

    from featcache.runtime import resolve_precision
    from featcache.text_encoders import build_text_encoder

    bb = build_text_encoder()
    bb.model.to("cpu").eval()
    auto = resolve_precision("auto", torch.device("cpu"))
    _encode_rate(bb, texts[:64], 64, auto, True)  # warm-up: first-call allocations and kernel choice
    out = {"subset": len(texts), "auto_precision": auto, "runs": []}
    plan = [(64, auto, True), (64, auto, False)] + ([(64, "fp32", True)] if auto != "fp32" else [])
    plan += [(b, auto, True) for b in batches if b != 64]
    for batch, prec, sort in plan:
        rate, pad = _encode_rate(bb, texts, batch, prec, sort)
        out["runs"].append({"batch": batch, "precision": prec, "sorted": sort, "texts_per_s": rate, "padding": pad})
        print(f"  batch {batch:>4} {prec:>5} {'sorted' if sort else 'source order':>13}: {rate:7.1f} texts/s, "
              f"{100 * pad:4.1f} % padding", flush=True)
    runs = {(r["batch"], r["precision"], r["sorted"]): r["texts_per_s"] for r in out["runs"]}
    out["sorted_speedup"] = runs[(64, auto, True)] / runs[(64, auto, False)]
    if auto != "fp32":
        out["bf16_vs_fp32"] = runs[(64, auto, True)] / runs[(64, "fp32", True)]
    return out


def explicit_split(store: Path) -> dict:
    """``bymovie``: 10 % val, 20 % test of the rows, whole movies only; checked, not assumed."""
    with FeatureStore(store) as fs:
        have = SPLIT in fs.split_names()
    if not have:
        add_split(store, SPLIT, SplitSpec(val=0.1, test=0.2, seed=0, grouped=True))
    with FeatureStore(store) as fs:
        groups = np.asarray(store_source(fs).groups)
        parts = {p: fs.row_indices(f"{SPLIT}:{p}") for p in ("train", "val", "test")}
        attrs = fs.split_attrs(SPLIT)
    movies = {p: set(groups[r]) for p, r in parts.items()}
    shared = (movies["train"] & movies["test"]) | (movies["train"] & movies["val"]) | (movies["val"] & movies["test"])
    if shared or not attrs.get("grouped"):
        raise SystemExit(f"split {SPLIT} is not grouped by movie ({len(shared)} movies in two parts)")
    return {"attrs": attrs, **{p: int(r.size) for p, r in parts.items()}, "movies": {p: len(m) for p, m in
                                                                                     movies.items()}}


def pick_epochs(store: Path, budgets: list[int], minutes: float, max_epochs: int, out: Path) -> dict:
    """One lp-ft pass over the smallest budget's train rows, timed; then the most epochs (up to ``max_epochs``)
    for which every budget's lp-ft, as the grid runs it (the fine-tune defaults, ``min_steps`` included), fits
    ``minutes``: training at the probe's rate, a val pass per epoch and a test pass at the extraction's rate, and
    the probe's fixed cost (loading, the linear probe) once per budget."""
    from featcache.finetune import FinetuneConfig, images_per_epoch

    probe = out / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    t = time.perf_counter()
    try:
        rec = featcache.finetune(store, out=probe, mode="lp-ft", per_class=budgets[0], split=SPLIT, quiet=True,
                                 overwrite=True, epochs=1, min_steps=1).record
    except Exception as exc:  # the text fine-tune may be missing in this checkout: the bench still runs the rest
        print(f"  lp-ft probe failed ({exc.__class__.__name__}: {exc}); lp-ft left out", flush=True)
        return {"error": f"{exc.__class__.__name__}: {exc}", "epochs": 0}
    seconds = time.perf_counter() - t
    with FeatureStore(store) as fs:
        n_train = [fs.row_indices(f"{SPLIT}:train", per_class=b).size for b in budgets]
        n_val, n_test = fs.row_indices(f"{SPLIT}:val").size, fs.row_indices(f"{SPLIT}:test").size
        eval_rate = fs.n_rows / float(fs.attrs["extract_seconds"])
    train_rate = rec["images_per_s"]
    fixed = max(0.0, seconds - rec["train_seconds"] - (n_val + n_test) / eval_rate)

    def cost(epochs: int) -> float:
        cfg = FinetuneConfig(epochs=epochs)
        return sum(epochs * (images_per_epoch(n, cfg) / train_rate + n_val / eval_rate)
                   + (n + n_test) / eval_rate + fixed for n in n_train)

    epochs = max([e for e in range(1, max_epochs + 1) if cost(e) <= minutes * 60] or [1])
    print(f"  one lp-ft epoch over {rec['n_train']} snippets: {seconds:.1f} s in all, training at {train_rate:.1f} "
          f"texts/s -> {epochs} epoch(s), estimated {cost(epochs) / 60:.1f} min for budgets {budgets} "
          f"(--minutes {minutes:g})", flush=True)
    return {"probe_seconds": seconds, "train_texts_per_s": train_rate, "epochs": epochs,
            "estimated_minutes": cost(epochs) / 60,
            "probe_record": {k: rec.get(k) for k in ("train_seconds", "images_per_s", "metrics", "n_train")}}


def all_labels(store: Path) -> dict:
    """logreg on MiniLM features and TF-IDF, each on every train label of the split: the reference's setting."""
    with FeatureStore(store) as fs:
        head = fit_head(fs, "logreg", split=SPLIT, save=False, quiet=True, jobs=2)
        base = fit_tfidf(fs, split=SPLIT)
    return {"logreg": head.metrics["accuracy"], "tfidf": base["metrics"]["accuracy"], "n_train": base["n_train"],
            "tfidf_seconds": base["train_seconds"], "tfidf_C": base["chosen"]["C"], "logreg_C": head.meta["value"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 snippets, budgets 100,300, a 256-text subset")
    ap.add_argument("--limit", type=int, default=None, help="snippets (default: all 12,808; --quick: 2,000)")
    ap.add_argument("--budgets", default=None, help="labels per class (default 100,1000; --quick 100,300)")
    ap.add_argument("--subset", type=int, default=None, help="texts for the encoding rates (default 512)")
    ap.add_argument("--batches", default="16,32,128", help="batch sizes timed beside 64")
    ap.add_argument("--minutes", type=float, default=None, help="for the lp-ft cells (default 15; --quick 1.5)")
    ap.add_argument("--max-epochs", type=int, default=5, help="lp-ft epochs at most (5: the fine-tune default)")
    ap.add_argument("--out", default=None, help="bench folder (default data/bench/text[-quick])")
    ap.add_argument("--json", default=None, help="default <out>/bench_text.json")
    args = ap.parse_args()
    limit = args.limit or (2000 if args.quick else None)
    budgets = [int(b) for b in (args.budgets or ("100,300" if args.quick else "100,1000")).split(",")]
    minutes = args.minutes if args.minutes is not None else (1.5 if args.quick else 15.0)
    out = Path(args.out or ("data/bench/text-quick" if args.quick else "data/bench/text"))
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"rt-{limit or 'all'}-minilm.h5"
    started = time.perf_counter()
    report: dict = {"machine": cpu_flags(), "limit": limit, "budgets": budgets, "reference": REFERENCE}
    print(json.dumps(report["machine"]), flush=True)

    texts = store_source_texts(limit)
    print(f"1. encoding rates on {args.subset or (256 if args.quick else 512)} snippets (one encoder, CPU)", flush=True)
    report["encoding"] = encoding(texts[: args.subset or (256 if args.quick else 512)],
                                  [int(b) for b in args.batches.split(",") if b])
    if not store.exists():
        featcache.extract("builtin:rotten-tomatoes", store, limit=limit, quiet=True)
    with FeatureStore(store) as fs:
        n, seconds, prec = fs.n_rows, float(fs.attrs["extract_seconds"]), fs.attrs.get("precision")
    report["extract"] = {"rows": n, "seconds": seconds, "texts_per_s": n / seconds, "precision": prec}
    ref_rate = 12808 / REFERENCE["encode_seconds_12808"]
    print(f"   extract {n:,} snippets: {seconds:.1f} s, {n / seconds:.0f} texts/s ({prec}); reference "
          f"{ref_rate:.0f} texts/s (12,808 in 91 s on 2 cores): {n / seconds / ref_rate:.2f}x", flush=True)

    report["split"] = explicit_split(store)
    print(f"2. split {SPLIT}: {report['split']}", flush=True)

    print(f"3. compare: logreg, tfidf, lp-ft at {budgets} per class", flush=True)
    report["epochs"] = pick_epochs(store, budgets, minutes, args.max_epochs, out)
    methods = "logreg,tfidf" + (",lp-ft" if report["epochs"]["epochs"] else "")
    res = compare(store, methods=methods, budgets=budgets, out=out / "compare", split=SPLIT, quiet=True,
                  epochs=max(1, report["epochs"]["epochs"]))
    rows = summarise(res)
    report["compare"] = {"rows": rows, "recommendation": res.recommendation, "report": str(res.report)}
    print(format_table(rows))
    print(res.recommendation)

    report["all_labels"] = all_labels(store)
    a = report["all_labels"]
    print(f"4. every train label ({a['n_train']:,} snippets, 20 % by-movie test split):\n"
          f"   MiniLM + logreg {a['logreg']:.3f} (reference {REFERENCE['logreg_all']:.3f}); TF-IDF bigrams + logreg "
          f"{a['tfidf']:.3f} (reference {REFERENCE['tfidf_all']:.3f}); TF-IDF - logreg here "
          f"{100 * (a['tfidf'] - a['logreg']):+.1f} points, in the reference "
          f"{100 * (REFERENCE['tfidf_all'] - REFERENCE['logreg_all']):+.1f}")
    enc = report["encoding"]
    print(f"ratios (this run): length-sorted / source-order batches {enc['sorted_speedup']:.2f}x"
          + (f"; {enc['auto_precision']} / fp32 {enc['bf16_vs_fp32']:.2f}x" if "bf16_vs_fp32" in enc else ""))
    report["seconds"] = time.perf_counter() - started
    print(f"bench took {report['seconds'] / 60:.1f} min")
    path = Path(args.json or out / "bench_text.json")
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"-> {path}")


def store_source_texts(limit: int | None) -> list[str]:
    """The snippets the store will hold, in its order (for the encoding rates, before the store exists)."""
    from featcache.sources import open_source

    return list(open_source("builtin:rotten-tomatoes", limit=limit).texts)


if __name__ == "__main__":
    sys.exit(main())
