"""Shared fixtures: tiny generated images, a tiny timm backbone with saved weights, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Hubs are unreachable here: make any download attempt fail at once rather than after a long timeout.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FEATCACHE_OFFLINE"] = "1"

TINY = "timm:test_efficientnet"
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square", "stripes")


def make_image(cls: int, seed: int, size: int = 40, mode: str = "RGB") -> Image.Image:
    """A small picture whose class is visible (colour and pattern), with per-image noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = np.zeros((size, size, 3), dtype=float)
    if cls == 0:
        base[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = (220, 40, 40)
    elif cls == 1:
        base[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (40, 200, 40)
    else:
        base[(xx // 4) % 2 == 0] = (40, 40, 220)
    img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img).convert(mode)


def write_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = make_image(c, seed * 1000 + c * 100 + i, mode="L" if i == 1 else "RGB")
            ext = "jpg" if i % 3 == 2 else "png"
            img.save(root / name / f"img{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A saved state dict for the tiny backbone: tests load real files, never random init by accident."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return path


@pytest.fixture
def tiny(tiny_weights):
    """Keyword arguments for a fast extraction with the tiny backbone.

    fp32 is stated, not left to ``auto``: tests compare stored numbers with fp32 references, and ``auto``
    is bf16 on CPUs with native bf16 (tests/test_precision.py covers that path on every CPU).
    """
    return {"backbone": TINY, "weights": str(tiny_weights), "image_size": 32, "batch_size": 8,
            "workers": 0, "precision": "fp32", "quiet": True}


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run ``python -m featcache ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "featcache", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def assert_clean_error(proc, *needles: str) -> None:
    """Bad input: exit code 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


def synthetic_store(path: Path, X: np.ndarray, y: np.ndarray, *, task: str = "classification",
                    label_names: list[str] | None = None, split: list[str] | None = None,
                    groups: list[str] | None = None, layer: str = "pooled") -> Path:
    """A real store with chosen features, written through the same journal + publish path as extract."""
    from featcache.sources import Source
    from featcache.store import Journal, publish

    n = X.shape[0]
    ids = [f"s{i:05d}" for i in range(n)]
    if task == "classification" and label_names is None:
        label_names = [f"c{k}" for k in range(int(y.max()) + 1)]
    src = Source(spec="synthetic", ids=ids, labels=np.asarray(y), task=task, label_names=label_names,
                 split=split, groups=groups, images=_pixels_from(X))
    key = {"dataset_fingerprint": src.fingerprint(), "backbone": "synthetic", "layers": [layer]}
    j = Journal(path)
    j.start(key, {})
    j.commit(0, n, np.arange(n), {layer: X.astype(np.float32)}, [], "float32")
    attrs = {"backbone": "synthetic", "weights_source": "random", "weights_sha256": "random", "layers": [layer],
             "preprocessing": {}, "dataset": "synthetic", "dataset_fingerprint": src.fingerprint(), "task": task}
    publish(path, j, src, [layer], "float32", attrs, key)
    return path


def _pixels_from(X: np.ndarray) -> np.ndarray:
    """Stand-in pixels that change whenever the features change, so the fingerprint does too."""
    raw = np.frombuffer(np.ascontiguousarray(X, dtype=np.float32).tobytes(), dtype=np.uint8)
    return raw.reshape(X.shape[0], -1, 4)


def blobs(n_per_class: int = 40, n_classes: int = 3, dim: int = 16, sep: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centers[y] + rng.normal(0, 1.0, (y.size, dim))
    return X, y
