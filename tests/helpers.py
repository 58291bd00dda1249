"""Helpers shared by the test modules (fixtures are in conftest.py): generated images and stores,
a CLI runner, and processes paused at fault points."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300, stdin: str | None = None):
    """Run ``python -m featcache ARGS`` in a subprocess, as a user would (``stdin``: text piped in)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "featcache", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, input=stdin)


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
    """A real store with chosen features, written through the same journal and assembly as extract."""
    from featcache.assembly import assemble_store
    from featcache.journal import Journal
    from featcache.sources import Source

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
    assemble_store(path, j, src, [layer], "float32", attrs, key)
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


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m featcache ARGS`` started in the background, pipes for stdout and stderr."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "featcache", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 300) -> str:
    """The next stderr line of ``proc``, which must start with ``prefix`` (else the test fails)."""
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    line = proc.stderr.readline() if ready else ""
    if not line.startswith(prefix):
        proc.kill()
        pytest.fail(f"expected {prefix!r} on stderr, got: {line}{proc.stderr.read()}")
    return line


def paused_cli(args: list[str], point: str, n: int = 1, env: dict | None = None) -> subprocess.Popen:
    """A real CLI run stopped at the n-th arrival at a fault point (featcache.faults): no race with its progress.

    Send SIGUSR1 to let it go on, SIGINT / SIGKILL to interrupt it there."""
    proc = popen_cli(*args, env={**(env or {}), "FEATCACHE_FAULT": f"{point}:{n}:pause"})
    wait_for_line(proc, f"featcache: paused at {point} #{n}")
    return proc


# --- texts: a generated review corpus and a tiny randomly initialised BERT (no download) ---------------------------

POSITIVE = ("great", "superb", "moving", "funny", "brilliant", "warm", "sharp", "lovely")
NEGATIVE = ("dull", "boring", "clumsy", "awful", "flat", "tedious", "messy", "weak")
FILLER = ("the", "film", "movie", "plot", "cast", "story", "was", "is", "and", "a", "very", "quite", "its", "ending")


def review(label: int, seed: int) -> str:
    """A short review whose sentiment words give its label away (with filler of random length)."""
    rng = np.random.default_rng(seed)
    words = list(rng.choice(FILLER, size=int(rng.integers(3, 14))))
    words += list(rng.choice(POSITIVE if label == 1 else NEGATIVE, size=2))
    rng.shuffle(words)
    return " ".join(words)


def write_text_csv(path: Path, n: int = 60, groups: int = 12, seed: int = 0) -> Path:
    """A CSV of ``n`` reviews: text, label (pos/neg) and a movie column (``groups`` movies)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "movie"])
        for i in range(n):
            y = i % 2
            w.writerow([review(y, seed * 10_000 + i), "pos" if y else "neg", f"m{i % groups:02d}"])
    return path


def write_tiny_bert(folder: Path, *, sentence_transformers: bool = False, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a word-level vocabulary of the generated reviews, saved as
    a Hugging Face folder (optionally with sentence-transformers modules: mean pooling + Normalize)."""
    import json

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER,
             *"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)  # transformers 5
    if tok.convert_tokens_to_ids("great") != vocab.index("great"):  # transformers 4 reads the file
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    assert tok("great film")["input_ids"][1:3] == [vocab.index("great"), vocab.index("film")]
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return folder
