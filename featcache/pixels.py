"""Samples to model-ready uint8 tensors, a batch at a time, computing exactly what the per-image reference does.

The reference is :meth:`Preprocessing.pil_transform` on :meth:`Source.read`: decode, convert to RGB,
resize the uint8 tensor (torchvision, antialiased, rounded back to uint8), centre crop. Here the same
operations run with less work, and give the same pixels bit for bit (``tests/test_pixels.py``):

- images of the same size in a batch are resized in one call (an array in memory is always one call);
- grey images are resized as one channel and only then repeated to three (channels are resized
  independently, so the numbers are the same, for a third of the work);
- normalisation happens later, once per batch, in place (:meth:`Preprocessing.normalize`).

Files are decoded by PIL (libjpeg-turbo, libpng, and every other format Pillow reads). ``torchvision.io``
decoded JPEG 1.4-1.5x and PNG 1.2x faster here with identical pixels, but it is deprecated since
torchvision 0.29, and libjpeg/libpng print warnings for damaged files straight to the process's stderr,
which would break the one-line error a user gets; decoding is a few percent of a 224 px forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .errors import CorruptInputError
from .sources import Source

if TYPE_CHECKING:
    import torch

    from .backbones import Preprocessing

__all__ = ["RowBatch", "read_rows", "resize_crop", "describe"]

class RowBatch(NamedTuple):
    """Rows read for one batch: every source row seen, the rows that decoded, their pixels, the failures.

    ``x`` is uint8 (len(good), 3, S, S), channels-last: converting the layout in uint8 here is cheaper than in
    float before the forward (measured: normalising a channels-last uint8 batch costs 0.14 ms per 224 px image,
    an NCHW one 0.22)."""

    index: list[int]
    good: list[int]
    x: torch.Tensor | None
    failed: list[tuple[int, str]]


def describe(source: Source) -> dict:
    """What the pipeline runs for ``source``, recorded in the store's provenance."""
    if _array_batch(source):
        decoder = "uint8 array in memory, sliced a batch at a time"
    elif source.images is not None:
        decoder = "PIL Image.fromarray"
    else:
        decoder = f"PIL {_pil_version()} (libjpeg-turbo, libpng, ...)"
    return {"decoder": decoder,
            "resize": "torchvision.transforms.v2.functional.resize of uint8 (antialias, rounded to uint8), "
                      "same-size images as one batch, grey as one channel; center_crop; normalise per batch"}


def _pil_version() -> str:
    import PIL

    return PIL.__version__


def resize_crop(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 (..., C, H, W) -> uint8 (..., C, S, S): shorter side to ``resize_size``, then the centre crop."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    x = F.resize(x, [prep.resize_size], interpolation=InterpolationMode(prep.interpolation), antialias=True)
    return F.center_crop(x, [prep.input_size])


def _array_batch(source: Source) -> bool:
    """An in-memory uint8 array of grey (N, H, W) or RGB (N, H, W, 3) images: sliced a batch at a time."""
    im = source.images
    return im is not None and im.dtype == np.uint8 and (im.ndim == 3 or (im.ndim == 4 and im.shape[3] == 3))


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey (..., 1, H, W) repeated to three channels (a view); RGB as it is."""
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]) if x.shape[-3] == 1 else x


def _reason(source: Source, i: int, exc: Exception) -> str:
    return str(exc) if isinstance(exc, CorruptInputError) else f"{source.ids[i]}: {exc.__class__.__name__}: {exc}"


def read_rows(source: Source, rows: list[int], prep: Preprocessing) -> RowBatch:
    """Rows of ``source`` decoded, resized and cropped; an unreadable one is reported, never raised."""
    import torch

    rows = list(rows)
    if _array_batch(source):
        try:
            a = torch.from_numpy(source.images[rows])
            x = _rgb(resize_crop(a.unsqueeze(1) if a.ndim == 3 else a.permute(0, 3, 1, 2), prep))
            return RowBatch(rows, rows, x.contiguous(memory_format=torch.channels_last), [])
        except Exception:  # noqa: S110 - e.g. out of memory: the rows one by one say which fail and why
            pass
    pixels, failed = _decode(source, rows)
    blocks = _resize(source, pixels, prep, failed)
    order = {i: k for k, i in enumerate(rows)}
    good = sorted((i for members, _ in blocks for i in members), key=order.__getitem__)
    if not good:
        return RowBatch(rows, [], None, sorted(failed))
    out = torch.empty((len(good), 3, prep.input_size, prep.input_size), dtype=torch.uint8,
                      memory_format=torch.channels_last)
    if len(blocks) == 1 and blocks[0][0] == good:  # the usual case, one size for all: one copy (2x faster)
        out.copy_(blocks[0][1])
    else:
        at = {i: k for k, i in enumerate(good)}
        for members, x in blocks:
            for i, row in zip(members, x, strict=True):
                out[at[i]].copy_(row)
    return RowBatch(rows, good, out, sorted(failed))


def _decode(source: Source, rows: list[int]) -> tuple[dict[int, torch.Tensor], list[tuple[int, str]]]:
    """Each row's image as uint8 (1 or 3, H, W) as stored (grey stays one channel), or why it failed."""
    from torchvision.transforms.v2 import functional as F

    pixels, failed = {}, []
    for i in rows:
        try:
            pixels[i] = F.pil_to_tensor(source.read_native(i))
        except Exception as exc:  # a decodable but unusable image must not kill a long run
            failed.append((i, _reason(source, i, exc)))
    return pixels, failed


def _resize(source: Source, pixels: dict[int, torch.Tensor], prep: Preprocessing,
            failed: list[tuple[int, str]]) -> list[tuple[list[int], torch.Tensor]]:
    """(rows, their resized and cropped (n, 3, S, S) pixels) blocks: images of one size and channel count in
    one call; if that call fails, one by one, so only an image that cannot be resized is reported (appended
    to ``failed``)."""
    import torch

    groups: dict[tuple, list[int]] = {}
    for i, p in pixels.items():
        groups.setdefault(tuple(p.shape), []).append(i)
    blocks: list[tuple[list[int], torch.Tensor]] = []
    for members in groups.values():
        try:
            blocks.append((members, _rgb(resize_crop(torch.stack([pixels[i] for i in members]), prep))))
            continue
        except Exception:  # noqa: S112 - retried one by one below
            pass
        for i in members:
            try:
                blocks.append(([i], _rgb(resize_crop(pixels[i][None], prep))))
            except Exception as exc:
                failed.append((i, _reason(source, i, exc)))
    return blocks
