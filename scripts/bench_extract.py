"""Extraction benchmark: pipeline vs bare forward vs a naive loop, per precision, in one run.

    python scripts/bench_extract.py [--n 5000] [--image-size 128] [--batch-size 64]

On a Fashion-MNIST subset with the default backbone it measures, all in this process:
  * the full pipeline (read, decode, transform, forward, HDF5 write) in images/s, per precision;
  * the bare forward pass on pre-made tensors of the same shape, precision and memory format;
  * a naive baseline: the same model, fp32, NCHW, torchvision transforms per image, DataLoader defaults;
  * linear-probe accuracy (LogisticRegression on the official train/test split) per precision;
  * the wall time of re-running the CLI on a finished store (a subprocess, as a user sees it).
Prints a table and writes JSON (default data/bench/bench_extract.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import featcache
from featcache.backbones import build_backbone
from featcache.runtime import autocast, cpu_has_native_bf16, resolve_precision, wants_channels_last
from featcache.sources import open_source


def bare_forward(backbone, precision: str, batch: int, size: int, n_images: int) -> float:
    """Images/s of the backbone alone on ready tensors, in the memory format the pipeline uses."""
    cl = wants_channels_last(backbone.model)
    fmt = torch.channels_last if cl else torch.contiguous_format
    backbone.to("cpu", memory_format=fmt if cl else None)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    dev = torch.device("cpu")
    n_batches = max(2, math.ceil(n_images / batch))
    with torch.inference_mode(), autocast(dev, precision):
        backbone(x)  # warm-up (oneDNN primitive creation)
        t = time.perf_counter()
        for _ in range(n_batches):
            backbone(x)
    return n_batches * batch / (time.perf_counter() - t)


def naive_baseline(src, batch: int, size: int) -> float:
    """What a first script does: per-image torchvision transforms, default DataLoader, fp32, NCHW."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from featcache.backbones import load_classifier

    _, model, _ = load_classifier()
    model.reset_classifier(0)
    tf = transforms.Compose([
        transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(src)

        def __getitem__(self, i):
            return tf(src.read(i))

    t = time.perf_counter()
    with torch.no_grad():
        for x in DataLoader(DS(), batch_size=batch):
            model(x)
    return len(src) / (time.perf_counter() - t)


def linear_probe(store: Path) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr, _ = featcache.load(store, split="official:train")
    Xte, yte, _ = featcache.load(store, split="official:test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr)
    return float(clf.score(Xte, yte))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", default="data/bench/bench_extract.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = open_source("builtin:fashion-mnist", limit=args.n)
    auto = resolve_precision("auto", torch.device("cpu"))
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
                    "torch": torch.__version__},
        "config": {"images": len(src), "image_size": args.image_size, "batch_size": args.batch_size,
                   "backbone": "efficientnet_lite0", "auto_precision": auto},
        "precisions": {},
    }
    for prec in args.precisions.split(","):
        store = out.parent / f"fmnist-{args.n}-{args.image_size}px-{prec}.h5"
        res = featcache.extract(src, store, image_size=args.image_size, batch_size=args.batch_size,
                                precision=prec, overwrite=True, quiet=True)
        pipeline = res.images_per_s
        bb = build_backbone(image_size=args.image_size)
        bare = bare_forward(bb, prec, args.batch_size, args.image_size, min(args.n, 1280))
        acc = linear_probe(store)
        result["precisions"][prec] = {"pipeline_images_per_s": pipeline, "bare_forward_images_per_s": bare,
                                      "pipeline_over_bare": pipeline / bare, "linear_probe_accuracy": acc,
                                      "store": str(store), "seconds": res.seconds}
        print(f"{prec}: pipeline {pipeline:.1f} img/s, bare {bare:.1f} img/s, ratio {pipeline / bare:.3f}, "
              f"probe acc {acc:.4f}", flush=True)
    naive = naive_baseline(src, args.batch_size, args.image_size)
    result["naive_fp32_nchw_images_per_s"] = naive
    default = result["precisions"].get(auto, {}).get("pipeline_images_per_s")
    if default:
        result["default_over_naive"] = default / naive

    store = result["precisions"][args.precisions.split(",")[0]]["store"]
    prec0 = args.precisions.split(",")[0]
    cmd = [sys.executable, "-m", "featcache", "extract", "builtin:fashion-mnist", "--limit", str(args.n),
           "--image-size", str(args.image_size), "--precision", prec0, "--store", store, "-q"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    result["rerun_seconds"] = time.perf_counter() - t
    if "fp32" in result["precisions"] and "bf16" in result["precisions"]:
        acc = {p: r["linear_probe_accuracy"] for p, r in result["precisions"].items()}
        result["bf16_minus_fp32_accuracy_points"] = 100 * (acc["bf16"] - acc["fp32"])

    print(f"\nFashion-MNIST {len(src)} images, {args.image_size}px, batch {args.batch_size}, "
          f"{os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}, auto precision: {auto}")
    print(f"{'precision':<10}{'pipeline img/s':>16}{'bare img/s':>12}{'ratio':>8}{'probe acc':>11}")
    for prec, r in result["precisions"].items():
        print(f"{prec:<10}{r['pipeline_images_per_s']:>16.1f}{r['bare_forward_images_per_s']:>12.1f}"
              f"{r['pipeline_over_bare']:>8.3f}{r['linear_probe_accuracy']:>11.4f}")
    print(f"naive fp32 NCHW baseline: {naive:.1f} img/s; default ({auto}) / naive = "
          f"{result.get('default_over_naive', float('nan')):.2f}x")
    if "bf16_minus_fp32_accuracy_points" in result:
        print(f"bf16 - fp32 linear-probe accuracy: {result['bf16_minus_fp32_accuracy_points']:+.2f} points")
    print(f"re-run on the finished store (CLI subprocess): {result['rerun_seconds']:.2f} s")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
