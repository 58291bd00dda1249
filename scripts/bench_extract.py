"""Extraction benchmark: where the time goes, the pipeline against its bare forward pass, and a naive loop.

    python scripts/bench_extract.py [--n 5000] [--files 1500] [--precision auto]

Two workloads, as a user meets them:
  * 128 px: a Fashion-MNIST subset held in memory (``builtin:fashion-mnist``, the main job);
  * 224 px: the same kind of images as PNG files in class folders (written once under data/bench/).
For each, in this process:
  * the bare forward pass on ready tensors at every candidate batch size (its best is the ceiling), of the
    model as the pipeline runs it (BatchNorm folded), and of the unfolded model at that size;
  * the pipeline (read, decode, transform, forward, write) with default settings: a first run that probes the
    batch size (empty cache), then rounds of bare forward / pipeline at the cached choice / pipeline at
    --batch-size 64 (the old default), interleaved because this kind of machine drifts in speed; medians;
  * a per-stage breakdown in seconds per 1,000 images: read, decode, transform (resize and crop),
    normalise, forward at the chosen batch size, write (segments and the final store);
  * a naive loop: per-image torchvision transforms on PIL images, DataLoader defaults, fp32, NCHW, batch 64
    (on the first 1,000 images: its speed is per image).
Also the linear-probe accuracy of the 128 px store on the official split. Prints tables with the CPU's
flags and writes JSON (default data/bench/bench_extract.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featcache
from featcache.backbones import build_backbone
from featcache.batching import CACHE_ENV, CPU_SIZES, CUDA_SIZES
from featcache.pixels import read_rows
from featcache.runtime import (
    autocast,
    cpu_description,
    cpu_has_native_bf16,
    default_workers,
    resolve_device,
    resolve_precision,
    wants_channels_last,
)
from featcache.sources import open_source


def bare_forward(backbone, dev: torch.device, precision: str, batch: int, size: int, n_images: int) -> float:
    """Images/s of the backbone alone on ready tensors already on ``dev``, in the memory format the pipeline
    uses (on CUDA: synchronised, so the time is the device's)."""
    cl = wants_channels_last(backbone.model)
    backbone.to(dev, memory_format=torch.channels_last if cl else None)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    n_batches = max(2, -(-n_images // batch))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode(), autocast(dev, precision):
        backbone(x)  # warm-up at this shape (oneDNN primitive creation, cuDNN algorithm choice)
        backbone(x)
        sync()
        t = time.perf_counter()
        for _ in range(n_batches):
            backbone(x)
        sync()
    return n_batches * batch / (time.perf_counter() - t)


def naive_loop(src, size: int, dev: torch.device) -> float:
    """What a first script does: per-image torchvision transforms, default DataLoader, fp32, NCHW, batch 64."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from featcache.backbones import load_classifier

    _, model, _ = load_classifier()
    model.reset_classifier(0)
    model.to(dev)
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
        for x in DataLoader(DS(), batch_size=64):
            model(x.to(dev)).cpu()
    return len(src) / (time.perf_counter() - t)


def loader_only(src, prep, batch: int, workers: int) -> float:
    """Images/s of the pipeline's loader alone (read, decode, resize and crop in ``workers`` processes), with
    nothing downstream: the ceiling of the CPU side, which a GPU can outrun."""
    from torch.utils.data import DataLoader

    from featcache.embed import _as_is, _Rows

    loader = DataLoader(_Rows(src, prep, 0, len(src)), batch_size=batch, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=4 if workers > 0 else None)
    t = time.perf_counter()
    n = sum(len(b.good) for b in loader)
    return n / (time.perf_counter() - t)


def stages(src, prep, batch: int, n: int) -> dict[str, float]:
    """Seconds per 1,000 images of reading, decoding, and resizing/cropping (the loader's work), and of
    normalising (the main process's, before the forward)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    rows = list(range(min(n, len(src))))
    per_k = 1000.0 / len(rows)
    out: dict[str, float] = {}
    if src.images is not None:
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            np.ascontiguousarray(src.images[rows[k:k + batch]])
        out["read"], out["decode"] = (time.perf_counter() - t) * per_k, 0.0
    else:
        paths = [src.root / src.paths[i] for i in rows]
        t = time.perf_counter()
        blobs = [p.read_bytes() for p in paths]
        out["read"] = (time.perf_counter() - t) * per_k
        import io

        t = time.perf_counter()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as img:
                img.load()
                F.pil_to_tensor(img)
        out["decode"] = (time.perf_counter() - t) * per_k
    t = time.perf_counter()
    xs = [read_rows(src, rows[k:k + batch], prep)[2] for k in range(0, len(rows), batch)]
    out["transform"] = max(0.0, (time.perf_counter() - t) * per_k - out["read"] - out["decode"])
    t = time.perf_counter()
    for x in xs:
        prep.normalize(x.contiguous(memory_format=torch.channels_last))
    out["normalise"] = (time.perf_counter() - t) * per_k
    return out


def linear_probe(store: Path) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr, _ = featcache.load(store, split="official:train")
    Xte, yte, _ = featcache.load(store, split="official:test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr)
    return float(clf.score(Xte, yte))


def png_folder(src, root: Path) -> Path:
    """The images of ``src`` as PNG files in class folders (written once)."""
    from PIL import Image

    done = root / ".complete"
    if done.exists() and done.read_text() == src.fingerprint():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i in range(len(src)):
        d = root / src.label_names[int(src.labels[i])].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(src.images[i]).save(d / f"{i:05d}.png")
    done.write_text(src.fingerprint())
    return root


def workload(name: str, src, size: int, precision: str, out: Path, rounds: int, dev: torch.device) -> dict:
    prec = resolve_precision(precision, dev)
    plain = build_backbone(image_size=size)
    bb, folded = plain.for_inference()  # what the pipeline runs
    n_bare = 256 if dev.type == "cpu" else 4096
    bare = {b: bare_forward(bb, dev, prec, b, size, n_bare) for b in (CPU_SIZES if dev.type == "cpu" else CUDA_SIZES)}
    best = max(bare, key=bare.get)
    unfolded = bare_forward(plain, dev, prec, best, size, n_bare)
    # what mixed precision buys: the bare forward at the best size in each precision this device runs
    amp = {p: bare_forward(bb, dev, p, best, size, n_bare)
           for p in (("fp32", "bf16") if dev.type == "cpu" else ("fp32", "bf16", "fp16"))}
    print(f"[{name}] bare forward by precision at b{best}: "
          + ", ".join(f"{p}: {r:.0f}" for p, r in amp.items()) + " images/s", flush=True)
    print(f"[{name}] bare forward ({prec}, {folded} BatchNorm folded): "
          + ", ".join(f"{b}: {r:.0f}" for b, r in bare.items())
          + f" images/s; best {best}; unfolded at {best}: {unfolded:.0f}", flush=True)
    cache = Path(os.environ[CACHE_ENV])
    shutil.rmtree(cache, ignore_errors=True)

    def run(label: str, batch) -> dict:
        store = out.parent / f"{name}-{label}.h5"
        res = featcache.extract(src, store, image_size=size, batch_size=batch, precision=precision, overwrite=True,
                                quiet=True, device=str(dev))
        return {"images_per_s": res.images_per_s, "batch_size": res.batch_size, "reason": res.batch_size_reason,
                "store": str(store), "write_s_per_1000": res.write_seconds * 1000 / max(1, res.extracted)}

    first = run("auto", "auto")  # empty cache: this run probes
    print(f"[{name}] first run (probes): {first['images_per_s']:.0f} images/s, batch {first['batch_size']}: "
          f"{first['reason']}", flush=True)
    chosen = first["batch_size"]
    series: dict[str, list[float]] = {"bare": [], "auto": [], "64": []}
    for r in range(rounds):  # interleaved: this machine's speed drifts by 10-40 % over minutes
        # the ceiling: the bare forward at its best size, or at the probe's choice where that measures faster now
        series["bare"].append(max(bare_forward(bb, dev, prec, b, size, 2 * n_bare) for b in {best, chosen}))
        auto = run("auto", "auto")
        series["auto"].append(auto["images_per_s"])
        series["64"].append(run("64", 64)["images_per_s"])
        print(f"[{name}] round {r + 1}: bare {series['bare'][-1]:.0f}, pipeline auto (b{auto['batch_size']}) "
              f"{series['auto'][-1]:.0f}, batch 64 {series['64'][-1]:.0f} images/s", flush=True)
    ratios = [a / b for a, b in zip(series["auto"], series["bare"], strict=True)]
    st = stages(src, bb.preprocessing, chosen, 1000)
    st["forward"] = 1000.0 / bare.get(chosen, bare_forward(bb, dev, prec, chosen, size, n_bare))
    st["write"] = auto["write_s_per_1000"]
    loader = loader_only(src, bb.preprocessing, chosen, default_workers(dev))
    print(f"[{name}] loader alone ({default_workers(dev)} workers, batch {chosen}): {loader:.0f} images/s", flush=True)
    naive = naive_loop(src.subset(range(min(len(src), 1000 if dev.type == "cpu" else 5000))), size, dev)
    print(f"[{name}] naive loop: {naive:.0f} images/s", flush=True)
    med = {k: float(np.median(v)) for k, v in series.items()}
    return {"images": len(src), "image_size": size, "precision": prec, "batchnorm_folded": folded,
            "bare_forward": bare, "bare_best_batch": best, "bare_unfolded_at_best": unfolded,
            "bare_by_precision_at_best": amp, "device": str(dev), "workers": default_workers(dev),
            "first_run": first, "rounds": series, "median": med, "pipeline_over_bare": ratios,
            "median_pipeline_over_bare": float(np.median(ratios)), "stages_s_per_1000": st,
            "naive_images_per_s": naive, "loader_alone_images_per_s": loader, "default_over_naive": med["auto"] / naive,
            "auto_over_batch_64": med["auto"] / med["64"], "store": auto["store"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="Fashion-MNIST images for the 128 px workload")
    ap.add_argument("--files", type=int, default=1500, help="PNG files for the 224 px workload (0: skip)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bare/pipeline rounds (medians reported)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (the pipeline's own choice)")
    ap.add_argument("--out", default="data/bench/bench_extract.json")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="bench-batch-cache-")  # the probe runs, not a cached answer
    machine = f"{cpu_description()}, native bf16: {cpu_has_native_bf16()}, {torch.get_num_threads()} threads"
    if dev.type == "cuda":
        machine = f"{torch.cuda.get_device_name(dev)} with {os.cpu_count()} CPU cores ({cpu_description()})"
    result: dict = {"machine": machine, "cores": os.cpu_count(), "torch": torch.__version__,
                    "workloads": {}}
    src = open_source("builtin:fashion-mnist", limit=args.n)
    w = result["workloads"]["128px-memory"] = workload("128px-memory", src, 128, args.precision, out, args.rounds,
                                                             dev)
    if args.n <= 10_000:  # the official split's probe on 70,000 rows would be the longest part of the run
        w["linear_probe_accuracy"] = linear_probe(Path(w["store"]))
    if args.files:
        folder = png_folder(open_source("builtin:fashion-mnist", limit=args.files), out.parent / "fmnist-png")
        result["workloads"]["224px-png"] = workload("224px-png", open_source(folder), 224, args.precision, out,
                                                      args.rounds, dev)

    print(f"\n{result['machine']}, {os.cpu_count()} cores, torch {torch.__version__}; medians of "
          f"{args.rounds} interleaved rounds, images/s")
    print(f"{'workload':<14}{'bare best':>12}{'unfolded':>10}{'auto':>12}{'/bare':>7}{'batch 64':>10}"
          f"{'auto/64':>9}{'naive':>8}{'default/naive':>15}{'loader':>9}")
    for name, w in result["workloads"].items():
        m = w["median"]
        print(f"{name:<14}{m['bare']:>8.0f} b{w['bare_best_batch']:<3}{w['bare_unfolded_at_best']:>10.0f}"
              f"{m['auto']:>8.0f} b{w['first_run']['batch_size']:<3}{w['median_pipeline_over_bare']:>7.2f}"
              f"{m['64']:>10.0f}{w['auto_over_batch_64']:>8.2f}x{w['naive_images_per_s']:>8.0f}"
              f"{w['default_over_naive']:>14.2f}x{w['loader_alone_images_per_s']:>9.0f}")
    print("\nseconds per 1,000 images, by stage (pipeline at the chosen batch size)")
    keys = ["read", "decode", "transform", "normalise", "forward", "write"]
    print(f"{'workload':<14}" + "".join(f"{k:>11}" for k in keys) + f"{'sum':>9}{'-> img/s':>10}")
    for name, w in result["workloads"].items():
        st = w["stages_s_per_1000"]
        total = sum(st[k] for k in keys)
        print(f"{name:<14}" + "".join(f"{st[k]:>11.3f}" for k in keys) + f"{total:>9.2f}{1000 / total:>10.0f}")
    if "linear_probe_accuracy" in result["workloads"]["128px-memory"]:
        print(f"\nlinear-probe accuracy (128 px store, official split): "
              f"{result['workloads']['128px-memory']['linear_probe_accuracy']:.4f}")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
