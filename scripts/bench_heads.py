"""Heads benchmark: what the sweeps cost next to one plain fit and next to the extraction, and how the
streaming heads scale in memory and time.

    python scripts/bench_heads.py [--store data/stores/main.h5] [--scale 100000,1000000] [--skip-scale]

1. On the main job's store (Fashion-MNIST, EfficientNet-Lite0, 128 px; extracted here if missing), in one
   run: each head's sweep as featcache runs it (regularisation paths, :mod:`featcache.paths`), the same
   grid fitted cold value by value (the exhaustive reference: same choice? largest val-score gap?), and one
   plain scikit-learn fit at its default C/alpha on the same standardised data; the three heads together
   as a fraction of the store's extraction time.
2. On synthetic float16 stores of ``--scale`` rows x 1,280 (generated once under data/bench/, separable
   classes), each head streamed (``stream=True``) in its own process: wall time and peak RSS.

Prints tables with the CPU's flags and writes JSON (default data/bench/bench_heads.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import featcache
from featcache import paths, solvers
from featcache.heads import HEADS, fit_head
from featcache.runtime import cpu_description
from featcache.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    return f"{cpu_description()}; {os.cpu_count()} cores"


def _default_fit(head: str, X, y):
    """One plain scikit-learn fit at the estimator's default strength, as a user without a sweep would."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.svm import LinearSVC

    est = {"logreg": LogisticRegression(), "svm": LinearSVC(), "ridge": RidgeClassifier()}[head]
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return time.perf_counter() - t


def _converged(build):
    """The head's estimator with tolerances tight enough that every grid value reaches its optimum: the
    reference the path must agree with. Fitted on float64 features: on float32 ones scikit-learn's lbfgs
    stalls short of the optimum at weak C (0.6 points off at C=100 on this store at tol=1e-6)."""

    def tight(task, value, kernel, seed):
        est = build(task, value, kernel, seed)
        if hasattr(est, "max_iter") and hasattr(est, "tol") and type(est).__name__ != "RidgeClassifier":
            est.set_params(max_iter=20000, tol=1e-8 if type(est).__name__ == "LogisticRegression" else 1e-5)
        return est

    return tight


def _reference(head: str, spec, Xs, ytr, Xvs, yva, res) -> dict:
    """The converged cold sweep (same choice? largest val gap?) and one default fit, for ``res``'s head."""
    t = time.perf_counter()
    cold = sorted(paths.cold_path("classification", spec.grid, Xs.astype(np.float64), ytr, Xvs.astype(np.float64),
                                  yva, build=_converged(spec.build), kernel="linear", seed=0, jobs=1),
                  key=lambda f: f.value)
    cold_seconds = time.perf_counter() - t
    cold_scores = [f.score for f in cold]
    order = np.argsort(spec.grid) if spec.stronger_first else np.argsort(spec.grid)[::-1]
    cold_best = next(cold[i].value for i in order if cold_scores[i] >= max(cold_scores) - 1e-12)
    default_seconds = _default_fit(head, Xs, ytr)
    return {"cold_seconds": cold_seconds, "cold_scores": cold_scores, "cold_value": cold_best,
            "same_choice": bool(np.isclose(cold_best, res.meta["value"])),
            "max_val_gap_points": 100 * float(np.max(np.abs(np.subtract(res.meta["val_scores"], cold_scores)))),
            "default_fit_seconds": default_seconds, "path_over_default_fit": res.meta["fit_seconds"] / default_seconds}


def in_memory(store: Path, reference: bool = True) -> dict:
    from sklearn.preprocessing import StandardScaler

    with FeatureStore(store) as fs:
        extract_seconds = float(fs.attrs.get("extract_seconds", "nan"))
        precision = fs.attrs.get("precision")
    Xtr, ytr, _ = featcache.load(store, split="train")
    Xva, yva, _ = featcache.load(store, split="val")
    scaler = StandardScaler().fit(Xtr)
    Xs, Xvs = scaler.transform(Xtr), scaler.transform(Xva)
    out = {}
    for head, spec in HEADS.items():
        solvers.clear_cache()  # each head pays for the decomposition, as a separate `fit-head` process does
        t = time.perf_counter()
        res = fit_head(store, head, save=False, quiet=True, stream=False)
        seconds = time.perf_counter() - t
        h = out[head] = {"seconds": seconds, "fit_seconds": res.meta["fit_seconds"], "param": res.meta["param"],
                         "value": res.meta["value"], "val_scores": res.meta["val_scores"],
                         "accuracy": res.metrics["accuracy"]}
        line = (f"{head:<7} fit_head {seconds:5.2f} s, of which the path {h['fit_seconds']:5.2f} s; "
                f"{h['param']}={h['value']:.3g}, test acc {h['accuracy']:.4f}")
        if reference:
            h.update(_reference(head, spec, Xs, ytr, Xvs, yva, res))
            choice = "same choice" if h["same_choice"] else f"cold chose {h['cold_value']:.3g}"
            line += (f"; = {h['path_over_default_fit']:.2f}x one default fit ({h['default_fit_seconds']:.2f} s); "
                     f"converged cold sweep {h['cold_seconds']:6.1f} s, {choice}, "
                     f"max val gap {h['max_val_gap_points']:.2f} pts")
        print(line, flush=True)
    total = sum(h["seconds"] for h in out.values())
    print(f"three heads {total:.1f} s = {100 * total / extract_seconds:.0f} % of this store's extraction "
          f"({extract_seconds:.1f} s, {precision} on this CPU), each paying for its own decomposition")
    solvers.clear_cache()
    t = time.perf_counter()
    for head in HEADS:  # one process, as compare's head cells and a notebook run them: one decomposition
        fit_head(store, head, save=False, quiet=True, stream=False)
    shared = time.perf_counter() - t
    print(f"three heads in one process (decomposition shared) {shared:.1f} s = "
          f"{100 * shared / extract_seconds:.0f} % of the extraction")
    return {"store": str(store), "extract_seconds": extract_seconds, "precision": precision, "heads": out,
            "heads_seconds": total, "heads_over_extract": total / extract_seconds,
            "heads_one_process_seconds": shared, "heads_one_process_over_extract": shared / extract_seconds}


def synthetic_store(path: Path, n: int, dim: int = 1280, classes: int = 10, seed: int = 0) -> Path:
    """A float16 store of ``n`` rows of separable class blobs, written through the journal and assembly."""
    if path.exists():
        return path
    from featcache.assembly import assemble_store
    from featcache.journal import Journal
    from featcache.sources import Source

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.normal(0, 0.08, (classes, dim)).astype(np.float32)  # overlapping: accuracy below 1.0
    # one stand-in "pixel" per row (its label): the fingerprint covers ids and labels without 1M images
    src = Source(spec=f"synthetic:{n}", ids=[f"r{i:08d}" for i in range(n)], labels=labels, task="classification",
                 label_names=[f"c{k}" for k in range(classes)], images=labels.astype(np.uint8).reshape(n, 1, 1))
    key = {"dataset_fingerprint": src.fingerprint(), "backbone": "synthetic", "layers": ["pooled"]}
    journal = Journal(path)
    journal.start(key, {})
    step = 65536
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        X = centers[labels[lo:hi]] + rng.standard_normal((hi - lo, dim), dtype=np.float32)
        journal.commit(lo, hi, np.arange(lo, hi), {"pooled": X}, [], "float16")
    attrs = {"backbone": "synthetic", "weights_source": "random", "weights_sha256": "random", "layers": ["pooled"],
             "preprocessing": {}, "dataset": src.spec, "dataset_fingerprint": src.fingerprint(),
             "task": "classification", "dtype": "float16"}
    assemble_store(path, journal, src, ["pooled"], "float16", attrs, key)
    return path


# peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives execve on Linux, so a child would report the
# benchmark's own peak at fork time
CHILD = """
import json, sys, time
from featcache.heads import fit_head
from featcache.runtime import peak_rss_bytes
t = time.perf_counter()
res = fit_head(sys.argv[1], sys.argv[2], stream=True, save=False, quiet=True)
print(json.dumps({"seconds": time.perf_counter() - t, "accuracy": res.metrics["accuracy"],
                  "value": res.meta["value"], "blocks": res.meta.get("blocks"), "peak_rss_bytes": peak_rss_bytes()}))
"""


def scale(sizes: list[int], folder: Path) -> dict:
    out = {}
    for n in sizes:
        t = time.perf_counter()
        store = synthetic_store(folder / f"synthetic-{n}-overlap.h5", n)
        print(f"{n:,} rows: store {store.stat().st_size / 2**30:.2f} GiB (made in {time.perf_counter() - t:.0f} s)")
        for head in HEADS:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run([sys.executable, "-c", CHILD, str(store), head], capture_output=True, text=True,
                                  env=env, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out.setdefault(str(n), {})[head] = r
            print(f"  {head:<7} streamed: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_bytes'] / 2**20:7.0f} MiB, "
                  f"test acc {r['accuracy']:.4f}", flush=True)
    if len(sizes) >= 2:
        small, large = str(sizes[0]), str(sizes[-1])
        for head in HEADS:
            ratio = out[large][head]["peak_rss_bytes"] / out[small][head]["peak_rss_bytes"]
            out.setdefault("rss_ratio", {})[head] = ratio
            print(f"  {head:<7} peak RSS at {int(large):,} rows / at {int(small):,} rows: {ratio:.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/stores/main.h5")
    ap.add_argument("--scale", default="100000,1000000", help="synthetic store sizes for the streaming heads")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--only-scale", action="store_true", help="the streaming part alone (its own JSON)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the converged cold sweeps and default fits (minutes): heads vs extraction only")
    ap.add_argument("--extract", action="store_true", help="extract the store again first (its time is the yardstick)")
    ap.add_argument("--out", default="data/bench/bench_heads.json")
    args = ap.parse_args()
    store = Path(args.store)
    # the main job's extraction, timed in this run (the store's extract_seconds is the yardstick)
    if not args.only_scale and (args.extract or not store.exists()):
        featcache.extract("builtin:fashion-mnist", store, limit=5000, image_size=128, quiet=True, overwrite=True)
    print(f"CPU: {cpu_flags()}")
    # instruction-set caps in force (an AVX2-only CPU emulated on a newer one), recorded beside the CPU's flags
    caps = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                       "OPENBLAS_CORETYPE", "FEATCACHE_CPU_BF16") if k in os.environ}
    result = {"cpu": cpu_flags(), "isa_caps": caps}
    if not args.only_scale:
        result["in_memory"] = in_memory(store, not args.no_reference)
    if not args.skip_scale:
        result["streaming"] = scale([int(s) for s in args.scale.split(",")], Path(args.out).parent)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
