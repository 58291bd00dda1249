"""Embedding sentences: the text counterpart of :mod:`featcache.embed`, yielding the same :class:`Batch` objects.

Rows are taken in windows of ``WINDOW_BATCHES`` forward batches, in order; inside a window the texts are
tokenised together, sorted by length and batched, so a batch pads to its own longest text rather than to the
longest of a random draw; the window's rows are handed back in source order. A journal therefore commits
whole windows, exactly as it commits image batches, and a resumed run continues at the next window.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

from .batching import AUTO, parse_batch_size
from .embed import Batch
from .sources import Source

__all__ = ["embed_texts", "padding_figures", "text_batch_size", "window_batches", "TEXT_BATCH", "WINDOW_BATCHES"]

# forward batch of ``auto``: texts are length-sorted, so a batch's cost follows its tokens, not its row count; measured
# (scripts/bench_text.py; all-MiniLM-L6-v2, bf16, 2 cores, AMD EPYC avx512_bf16) 16: 343, 32: 283, 64: 323, 128: 280
# texts/s, flat within the noise up to 64; a GPU wants more rows per launch (not measured: no GPU here)
TEXT_BATCH = {"cpu": 64, "cuda": 256}
WINDOW_BATCHES = 16  # texts sorted together: padding falls with the window, a resume repeats at most one window


def embed_texts(src: Source, backbone, start: int = 0, *, stop: int | None = None, batch_size: int | str = AUTO,
                device: str = "auto", precision: str = "auto", quiet: bool = False, desc: str = "extract",
                info: dict | None = None, workers: int | None = None, channels_last: bool | None = None
                ) -> Iterator[Batch]:
    """Run the sentence encoder over source rows [start, stop) in order; ``info`` receives the device,
    precision and batch size (the padding figures are :func:`padding_figures`'). ``workers`` and
    ``channels_last`` are image settings, unused here."""
    import torch
    from tqdm.auto import tqdm

    from .runtime import autocast, resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    bs, reason = text_batch_size(batch_size, dev.type)
    module = backbone.model.to(dev).eval()
    n = len(src) if stop is None else min(stop, len(src))
    if info is not None:
        info.update(device=str(dev), precision=prec, workers=0, batchnorm_folded=0, batch_size=bs,
                    batch_size_reason=reason)
    window = bs * WINDOW_BATCHES
    with tqdm(total=n, initial=start, unit="text", desc=desc, disable=quiet or not sys.stderr.isatty(),
              dynamic_ncols=True) as bar, torch.inference_mode():
        for w0 in range(start, n, window):
            index = list(range(w0, min(n, w0 + window)))
            ids = backbone.tokenize([src.read(i) for i in index])
            feats: dict[str, np.ndarray] = {}
            for part in window_batches([len(t) for t in ids], bs):
                batch = backbone.pad([ids[k] for k in part])
                with autocast(dev, prec):
                    out = module.embed(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
                for la, x in out.items():
                    if la not in feats:
                        feats[la] = np.empty((len(index), x.shape[1]), dtype=np.float32)
                    feats[la][part] = x.float().cpu().numpy()
            bar.update(len(index))
            yield Batch(index, list(index), feats, [])


def window_batches(lengths: list[int], batch_size: int) -> Iterator[np.ndarray]:
    """One window's texts as batches of positions, longest first (a batch too big for memory fails early): the
    plan :func:`embed_texts` runs and :func:`padding_figures` counts."""
    order = np.argsort([-n for n in lengths], kind="stable")
    for b0 in range(0, len(order), batch_size):
        yield order[b0:b0 + batch_size]


def text_batch_size(batch_size: int | str, device_type: str) -> tuple[int, str]:
    """The forward batch and why: as given, or the text default for the device."""
    size = parse_batch_size(batch_size)
    if size == AUTO:
        return TEXT_BATCH.get(device_type, 64), f"text default for {device_type}"
    return int(size), "given"


def padding_figures(lengths: list[int], batch_size: int, max_length: int) -> dict:
    """How :func:`embed_texts` batches these token counts in one uninterrupted run: the share of computed tokens
    that are padding, and how many texts were cut at ``max_length`` (recorded in the store, whatever the
    interruptions of the run that made it)."""
    real = padded = 0
    window = batch_size * WINDOW_BATCHES
    for w0 in range(0, len(lengths), window):
        kept = [min(n, max_length) for n in lengths[w0:w0 + window]]
        for part in window_batches(kept, batch_size):
            batch = [kept[k] for k in part]
            real, padded = real + sum(batch), padded + max(batch) * len(batch)
    return {"padding_share": round(1 - real / padded, 4) if padded else 0.0,
            "truncated": sum(n > max_length for n in lengths)}
