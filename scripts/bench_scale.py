"""Scale-out benchmark: extraction under torchrun with 1 and 2 processes, and the store's assembly at scale.

    python scripts/bench_scale.py [--n 1000] [--image-size 128] [--rows 100000,1000000] [--device cpu]

In one run:
  * the same Fashion-MNIST images extracted by one process (``python -m featcache extract``) and by
    ``torchrun --standalone --nproc-per-node 2`` (same arguments): wall time of the command, the pipeline
    loop, and the overhead of sharding and assembly (the in-process time that is not the loop: process
    group, meeting points, assembly) as a fraction of the run; the two stores are checked to be equal.
    On 2 cores no speed-up is expected (each rank gets one core). With ``--device cuda`` on a one-GPU
    machine both ranks share ``cuda:0`` (this exercises the CUDA path: group ``cpu:gloo,cuda:nccl``);
    one GPU per rank needs as many GPUs as ranks.
  * the assembly of synthetic journals of 100k and 1M rows x 1,280 float16 (segments of 10,000 rows, as
    a long extraction leaves them): seconds and rows/s of the streamed merge, and its peak RSS.
Prints a table with the machine's CPU flags and writes JSON (default data/bench/bench_scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featcache.runtime import cpu_description, peak_rss_bytes, reset_peak_rss  # noqa: E402


def run_extract(nproc: int, store: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    head = [sys.executable, "-m", "featcache"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "featcache"]
    t = time.perf_counter()
    proc = subprocess.run([*head, "extract", *args, "--store", str(store), "--overwrite"], capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"extract with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    with h5py.File(store, "r") as f:
        total, loop = float(f.attrs["extract_seconds"]), float(f.attrs["extract_loop_seconds"])
        rows = int(f.attrs["n_rows"])
    return {"processes": nproc, "wall_s": wall, "extract_s": total, "loop_s": loop, "rows": rows,
            "images_per_s_loop": rows / loop, "overhead_s": total - loop, "overhead_fraction": (total - loop) / total}


def same_store(a: Path, b: Path) -> float:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert list(fa["ids"][()]) == list(fb["ids"][()]), "ids differ"
        return float(np.abs(fa["features/pooled"][()] - fb["features/pooled"][()]).max())


def assembly(rows: int, dim: int, folder: Path) -> dict:
    """Assemble a synthetic journal of ``rows`` rows (segments of 10,000) the way extract does."""
    from featcache.assembly import assemble_store
    from featcache.journal import Journal
    from featcache.sources import Source

    store = folder / f"synthetic-{rows}.h5"
    rng = np.random.default_rng(0)
    src = Source(spec="synthetic", ids=[f"r{i:08d}" for i in range(rows)], labels=rng.integers(0, 10, rows),
                 task="classification", label_names=[f"c{k}" for k in range(10)],
                 images=np.zeros((rows, 1, 1), np.uint8))
    key = {"dataset_fingerprint": "synthetic", "rows": rows}
    j = Journal(store)
    j.start(key, {})
    block = rng.standard_normal((10_000, dim)).astype(np.float16)
    for a in range(0, rows, 10_000):
        b = min(rows, a + 10_000)
        j.commit(a, b, np.arange(a, b), {"pooled": block[: b - a]}, [], "float16")
    seg_bytes = sum(p.stat().st_size for _, _, p in j.all_segments())
    reset_peak_rss()
    t = time.perf_counter()
    assemble_store(store, j, src, ["pooled"], "float16", {"backbone": "synthetic"}, key)
    seconds = time.perf_counter() - t
    out = {"rows": rows, "dim": dim, "segments_mb": seg_bytes / 1e6, "seconds": seconds, "rows_per_s": rows / seconds,
           "mb_per_s": seg_bytes / 1e6 / seconds, "peak_rss_mb": (peak_rss_bytes() or 0) / 1e6,
           "store_mb": store.stat().st_size / 1e6}
    store.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="Fashion-MNIST images for the torchrun comparison")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda:0 (both ranks on one GPU)")
    ap.add_argument("--rows", default="100000,1000000", help="synthetic journal sizes for the assembly ('' to skip)")
    ap.add_argument("--out", default="data/bench/bench_scale.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=out.parent))
    result: dict = {"machine": cpu_description(), "cores": os.cpu_count(), "device": args.device}
    try:
        common = ["builtin:fashion-mnist", "--limit", str(args.n), "--image-size", str(args.image_size),
                  "--device", args.device, "--batch-size", "32" if args.device == "cpu" else "256", "--quiet"]
        runs = [run_extract(p, work / f"p{p}.h5", common) for p in (1, 2)]
        runs += [run_extract(p, work / f"p{p}-again.h5", common) for p in (1, 2)]  # a second round: drift check
        result["torchrun"] = runs
        result["max_abs_feature_difference"] = same_store(work / "p1.h5", work / "p2.h5")
        result["assembly"] = [assembly(int(r), 1280, work) for r in args.rows.split(",") if r.strip()]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{result['machine']}, {result['cores']} cores, device {args.device}; "
          f"{args.n} Fashion-MNIST images at {args.image_size} px")
    print(f"{'processes':>10}{'wall s':>9}{'in-process s':>14}{'loop s':>9}{'img/s (loop)':>14}{'overhead':>10}")
    for r in runs:
        print(f"{r['processes']:>10}{r['wall_s']:>9.2f}{r['extract_s']:>14.2f}{r['loop_s']:>9.2f}"
              f"{r['images_per_s_loop']:>14.0f}{r['overhead_fraction']:>10.1%}")
    one = float(np.median([r["wall_s"] for r in runs if r["processes"] == 1]))
    two = float(np.median([r["wall_s"] for r in runs if r["processes"] == 2]))
    inner = [float(np.median([r["extract_s"] - r["loop_s"] for r in runs if r["processes"] == p])) for p in (1, 2)]
    result["launch_overhead"] = {"wall_1": one, "wall_2": two, "extra_s": two - one, "fraction_of_2": (two - one) / two,
                                 "not_loop_in_process_1": inner[0], "not_loop_in_process_2": inner[1]}
    print(f"torchrun with 2 processes: {two - one:+.2f} s of wall time against one process ({(two - one) / two:.0%} "
          f"of its run); in-process time outside the loop (build, shard meetings, assembly): {inner[0]:.2f} s with "
          f"one process, {inner[1]:.2f} s with two")
    print(f"stores equal: same ids, features within {result['max_abs_feature_difference']:.1e}")
    if result["assembly"]:
        print(f"\n{'rows':>10}{'segments MB':>13}{'assembly s':>12}{'rows/s':>10}{'MB/s':>8}{'peak RSS MB':>13}")
        for a in result["assembly"]:
            print(f"{a['rows']:>10,}{a['segments_mb']:>13.0f}{a['seconds']:>12.2f}{a['rows_per_s']:>10.0f}"
                  f"{a['mb_per_s']:>8.0f}{a['peak_rss_mb']:>13.0f}")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
