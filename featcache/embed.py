"""Embedding batches: the one loop that runs a frozen backbone over a source's rows, in order.

Used by extraction (into a store), prediction (new images) and the scikit-learn transformer.
Decoding, resizing and cropping happen in the loader as uint8 (:mod:`featcache.pixels`: whole batches
at once for arrays in memory), normalisation once per batch on the device, the forward pass under
``inference_mode`` and autocast, with BatchNorm folded into the convolutions (:mod:`featcache.fold`),
at the batch size :mod:`featcache.batching` chooses. An unreadable
sample is reported with its reason in the batch, never raised: a long run is not killed by one bad file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .batching import AUTO, BatchSizer, memory_bound, memory_limit, parse_batch_size, setting_key
from .pixels import RowBatch, read_rows
from .sources import Source

__all__ = ["Batch", "embed_batches"]


class _Rows:
    """Map-style dataset over source rows [start, stop) that reads a whole loader batch in one call."""

    def __init__(self, source: Source, prep, start: int, stop: int):
        self.source, self.prep, self.start, self.stop = source, prep, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitems__(self, ks: list[int]) -> RowBatch:  # torch's DataLoader fetches a batch with one call
        return read_rows(self.source, [self.start + k for k in ks], self.prep)

    def __getitem__(self, k: int) -> RowBatch:
        return self.__getitems__([k])


def _as_is(batch: RowBatch) -> RowBatch:
    return batch


@dataclass
class Batch:
    """One batch of embeddings: source rows seen, the rows that decoded, their features, the failures."""

    index: list[int]
    good: list[int]
    feats: dict[str, np.ndarray]
    failed: list[tuple[int, str]]


def _forward_batches(loader, sizer: BatchSizer) -> Iterator[RowBatch]:
    """The loaded rows cut into forward batches of exactly the size the sizer asks for next (fewer only at the
    end of the data), in order: a cut falls after a decoded row, failures go with the rows around them."""
    held: RowBatch | None = None
    for part in loader:
        held = part if held is None else _join(held, part)
        while len(held.good) >= sizer.next_size():
            first, held = _cut(held, sizer.next_size())
            yield first
    if held is not None and held.index:
        yield held


def _join(a: RowBatch, b: RowBatch) -> RowBatch:
    import torch

    xs = [x for x in (a.x, b.x) if x is not None]
    return RowBatch(a.index + b.index, a.good + b.good, torch.cat(xs) if len(xs) > 1 else (xs[0] if xs else None),
                    a.failed + b.failed)


def _cut(batch: RowBatch, n: int) -> tuple[RowBatch, RowBatch]:
    """The first ``n`` decoded rows (with every row seen up to the last of them), and the rest."""
    last = batch.good[n - 1]
    k = batch.index.index(last) + 1
    rest_x = batch.x[n:] if batch.x is not None and n < len(batch.good) else None
    return (RowBatch(batch.index[:k], batch.good[:n], batch.x[:n], [f for f in batch.failed if f[0] <= last]),
            RowBatch(batch.index[k:], batch.good[n:], rest_x, [f for f in batch.failed if f[0] > last]))


def embed_batches(src: Source, backbone, start: int = 0, *, stop: int | None = None, batch_size: int | str = AUTO,
                  workers: int | None = None, device: str = "auto", precision: str = "auto",
                  channels_last: bool | None = None, quiet: bool = False, desc: str = "extract",
                  info: dict | None = None) -> Iterator[Batch]:
    """Run ``backbone`` over source rows [start, stop) (stop: the end) in order; ``info`` receives the device,
    precision and batch size used (and why that size)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .runtime import autocast, default_workers, resolve_device, resolve_precision, wants_channels_last

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    cl = wants_channels_last(backbone.model) if channels_last is None else channels_last
    backbone, folded = backbone.for_inference()
    backbone.to(dev, memory_format=torch.channels_last if cl else None)
    n = len(src) if stop is None else min(stop, len(src))
    prep = backbone.preprocessing
    key = setting_key(dev, backbone=backbone.spec.name, layers=backbone.layers, input_size=prep.input_size,
                      precision=prec, channels_last=cl)
    bound, why = memory_bound(backbone, prep.input_size) if dev.type == "cpu" else (None, "")
    sizer = BatchSizer(parse_batch_size(batch_size), dev.type, key, max(0, n - start), memory_limit(dev), bound, why)
    n_workers = default_workers(dev) if workers is None else workers
    if info is not None:
        info.update(device=str(dev), precision=prec, workers=n_workers, batchnorm_folded=folded, **sizer.describe())
    if start >= n:
        return
    loader = DataLoader(_Rows(src, prep, start, n), batch_size=sizer.grain, shuffle=False, num_workers=n_workers,
                        collate_fn=_as_is, pin_memory=dev.type == "cuda",
                        prefetch_factor=4 if n_workers > 0 else None)

    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        x = x.to(dev, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, prec):
            out = backbone(prep.normalize(x))
        return {la: out[la].float().cpu().numpy() for la in backbone.layers}  # .cpu() waits for the device

    with tqdm(total=n, initial=start, unit="img", desc=desc, disable=quiet or not sys.stderr.isatty(),
              dynamic_ncols=True) as bar, torch.inference_mode():
        for index, good, x, failed in _forward_batches(loader, sizer):
            feats: dict[str, np.ndarray] = {}
            if x is not None:
                feats = _timed(run, x, sizer, dev)
                if info is not None:
                    info.update(sizer.describe())
            bar.update(len(index))
            yield Batch(index, good, feats, failed)
        sizer.conclude()  # the data may end before a probe does
        if info is not None:
            info.update(sizer.describe())


def _timed(run, x, sizer: BatchSizer, dev) -> dict[str, np.ndarray]:
    """``run(x)``, timed for the sizer while it is still measuring. On CUDA a batch that runs out of memory is
    forwarded in pieces of the size the sizer falls back to, and the run goes on at that size."""
    import torch

    if dev.type == "cuda" and not sizer.decided:
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    try:
        feats = run(x)
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            raise
        feats = None  # handled below, outside the except block: its traceback would keep the batch alive
    if feats is None:
        torch.cuda.empty_cache()
        size = sizer.out_of_memory(len(x))
        pieces = [_timed(run, x[i:i + size], sizer, dev) for i in range(0, len(x), size)]
        return {la: np.concatenate([p[la] for p in pieces]) for la in pieces[0]}
    if not sizer.decided:
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        sizer.observe(len(x), time.perf_counter() - t, peak)
    return feats
