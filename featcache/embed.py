"""Embedding batches: the one loop that runs a frozen backbone over a source's rows, in order.

Used by extraction (into a store), prediction (new images) and the scikit-learn transformer.
Decoding and resizing happen in the loader (uint8), normalisation once per batch on the device,
the forward pass under ``inference_mode`` and autocast. An unreadable sample is reported with its
reason in the batch, never raised: a long run is not killed by one bad file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import CorruptInputError
from .sources import Source

__all__ = ["Batch", "embed_batches"]


class _Rows:
    """Map-style dataset over source rows [start, stop): (index, uint8 tensor or None, failure reason)."""

    def __init__(self, source: Source, transform, start: int, stop: int):
        self.source, self.transform, self.start, self.stop = source, transform, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int):
        i = self.start + k
        try:
            return i, self.transform(self.source.read(i)), ""
        except CorruptInputError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decodable but unusable image must not kill a long run
            return i, None, f"{self.source.ids[i]}: {exc.__class__.__name__}: {exc}"


def _collate(batch):
    import torch

    index = [b[0] for b in batch]
    good = [b for b in batch if b[1] is not None]
    x = torch.stack([b[1] for b in good]) if good else None
    return index, [b[0] for b in good], x, [(b[0], b[2]) for b in batch if b[1] is None]


@dataclass
class Batch:
    """One batch of embeddings: source rows seen, the rows that decoded, their features, the failures."""

    index: list[int]
    good: list[int]
    feats: dict[str, np.ndarray]
    failed: list[tuple[int, str]]


def embed_batches(src: Source, backbone, start: int = 0, *, batch_size: int = 64, workers: int | None = None,
                  device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                  quiet: bool = False, desc: str = "extract", info: dict | None = None) -> Iterator[Batch]:
    """Run ``backbone`` over source rows [start, N) in order; ``info`` receives the device and precision used."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .runtime import autocast, default_workers, resolve_device, resolve_precision, wants_channels_last

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    cl = wants_channels_last(backbone.model) if channels_last is None else channels_last
    backbone.to(dev, memory_format=torch.channels_last if cl else None)
    if info is not None:
        info.update(device=str(dev), precision=prec)
    n = len(src)
    if start >= n:
        return
    n_workers = default_workers(dev) if workers is None else workers
    loader = DataLoader(
        _Rows(src, backbone.preprocessing.pil_transform(), start, n), batch_size=batch_size, shuffle=False,
        num_workers=n_workers, collate_fn=_collate, pin_memory=dev.type == "cuda",
        prefetch_factor=4 if n_workers > 0 else None,
    )
    with tqdm(total=n, initial=start, unit="img", desc=desc, disable=quiet or not sys.stderr.isatty(),
              dynamic_ncols=True) as bar, torch.inference_mode():
        for index, good, x, failed in loader:
            feats: dict[str, np.ndarray] = {}
            if x is not None:
                x = x.to(dev, non_blocking=True)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                x = backbone.preprocessing.normalize(x)
                with autocast(dev, prec):
                    out = backbone(x)
                feats = {la: out[la].float().cpu().numpy() for la in backbone.layers}
            bar.update(len(index))
            yield Batch(index, good, feats, failed)
