"""Crash safety of extraction, measured: SIGKILL at seeded moments, resume, compare with an uninterrupted run.

    python scripts/fault_extract.py [--trials 20] [--seed 0] [--out data/bench/fault_extract.json]

A small generated image folder (some files unreadable) goes through ``featcache extract`` with the tiny
test backbone, committing a segment per batch. Each trial kills one run with SIGKILL, then re-runs the
same command until it finishes, and compares the store with the uninterrupted one: ids in order, labels,
features, failures, splits, and that h5py and ``h5ls`` read it. The moments are chosen by construction,
from a seeded generator, to cover every phase: during a segment write (``segment-write``), between
segments (``segment-committed``), during the final assembly (``assembly``), between the rename of the
store and the removal of the journal (``published``), and at a seeded random time after the start.
Prints ``survived N/N`` and writes JSON; exit 1 if any trial did not survive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("segment-write", "segment-committed", "assembly", "published", "timer")
N_IMAGES, BATCH = 45, 8  # 6 segments, the last one short


def make_inputs(work: Path) -> tuple[Path, Path]:
    """An image folder (two files unreadable) and saved weights for the tiny backbone."""
    import timm
    import torch
    from PIL import Image

    folder = work / "images"
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        d = folder / ("abc"[i % 3])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n-truncated")
    (folder / "b" / "empty.jpg").write_bytes(b"")
    torch.manual_seed(0)
    weights = work / "tiny.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    return folder, weights


def command(folder: Path, weights: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "featcache", "extract", str(folder), "--store", str(store),
            "--backbone", "timm:test_efficientnet", "--weights", str(weights), "--image-size", "32",
            "--precision", "fp32", "--batch-size", str(BATCH), "--workers", "0", "--commit-every", "0", "-q"]


def env(fault: str | None = None) -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "FEATCACHE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    e.pop("FEATCACHE_FAULT", None)
    if fault:
        e["FEATCACHE_FAULT"] = fault
    return e


def killed_run(cmd: list[str], phase: str, rng: np.random.Generator, run_seconds: float) -> str:
    """One run killed in ``phase``; returns what was done (for the record)."""
    if phase == "timer":
        delay = float(rng.uniform(0.2, run_seconds))
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            return f"timer {delay:.2f} s (finished first)"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return f"timer {delay:.2f} s"
    n = int(rng.integers(1, -(-N_IMAGES // BATCH) + 1)) if phase.startswith("segment") else 1
    fault = f"{phase}:{n}:kill"
    proc = subprocess.run(cmd, env=env(fault), capture_output=True, text=True)
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"{fault}: expected a SIGKILL, got exit {proc.returncode}: {proc.stderr[-400:]}")
    return fault


def compare(store: Path, ref: Path) -> list[str]:
    """What differs between two stores (empty: the same)."""
    import h5py

    problems = []
    with h5py.File(store, "r") as a, h5py.File(ref, "r") as b:
        names: list[str] = []
        b.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:  # ids, labels, label names, failures, every split's datasets, features
            if name not in a:
                problems.append(f"{name} missing")
            elif name.startswith("features/"):
                if not np.allclose(a[name][()], b[name][()], rtol=1e-5, atol=1e-6):
                    problems.append(f"{name} differ")
            elif not np.array_equal(a[name][()], b[name][()]):
                problems.append(f"{name} differ")
        if not a.attrs.get("complete"):
            problems.append("not marked complete")
    if shutil.which("h5ls"):
        ls = subprocess.run(["h5ls", "-r", str(store)], capture_output=True, text=True)
        if ls.returncode != 0:
            problems.append(f"h5ls failed: {ls.stderr.strip()[:200]}")
    if Path(f"{store}.partial").exists():
        problems.append("journal left behind")
    return problems


def run_trials(trials: int, seed: int, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    folder, weights = make_inputs(work)
    ref = work / "reference.h5"
    t = time.perf_counter()
    subprocess.run(command(folder, weights, ref), env=env(), check=True)
    run_seconds = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    results = []
    for k in range(trials):
        phase = PHASES[k % len(PHASES)]  # every phase covered, in turn; the moment within it is seeded
        store = work / f"trial{k:02d}.h5"
        cmd = command(folder, weights, store)
        what = killed_run(cmd, phase, rng, run_seconds)
        reruns = 0
        while True:  # re-run the same command until it finishes, as a user would
            reruns += 1
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
            if proc.returncode == 0 or reruns >= 3:
                break
        problems = compare(store, ref) if proc.returncode == 0 else [f"re-run exit {proc.returncode}: "
                                                                     f"{proc.stderr.strip()[-300:]}"]
        results.append({"trial": k, "phase": phase, "fault": what, "reruns": reruns, "problems": problems,
                        "survived": not problems})
        print(f"trial {k + 1:>2}/{trials}: {what:<28} re-runs {reruns}: "
              f"{'same store' if not problems else '; '.join(problems)}", flush=True)
    survived = sum(r["survived"] for r in results)
    return {"trials": trials, "survived": survived, "seed": seed, "uninterrupted_seconds": run_seconds,
            "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="data/bench/fault_extract")
    ap.add_argument("--out", default="data/bench/fault_extract.json")
    args = ap.parse_args()
    from featcache.runtime import cpu_description

    result = run_trials(args.trials, args.seed, Path(args.work))
    result["cpu"] = cpu_description()
    print(f"survived {result['survived']}/{result['trials']} ({result['cpu']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["survived"] == result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
