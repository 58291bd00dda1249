"""The batched pixel path gives the per-image PIL reference's pixels, bit for bit."""

import numpy as np
import pytest
import torch
from helpers import make_image
from PIL import Image

from featcache.backbones import Preprocessing
from featcache.pixels import read_rows
from featcache.sources import in_memory, open_source

BICUBIC = Preprocessing(32, 36, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
BILINEAR = Preprocessing(24, 28, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def reference(src, rows, prep) -> torch.Tensor:
    """What a first script does: PIL RGB image, then the transform, one image at a time."""
    t = prep.pil_transform()
    return torch.stack([t(src.read(i)) for i in rows])


@pytest.mark.parametrize("prep", [BICUBIC, BILINEAR])
def test_files_of_mixed_modes_and_sizes_match_the_reference(tmp_path, prep):
    """Grey, RGB, palette and RGBA files, PNG and JPEG, two sizes and a non-square one, in one batch."""
    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    specs = [("L", 40, "png"), ("RGB", 40, "png"), ("P", 40, "png"), ("RGBA", 40, "png"), ("RGB", 40, "jpg"),
             ("L", 40, "jpg"), ("RGB", 57, "png"), ("L", 57, "png")]
    for k, (mode, size, ext) in enumerate(specs):
        img = make_image(k % 3, k, size=size)
        img = img.resize((size, size * 3 // 4)) if k == 6 else img  # not square
        img.convert(mode).save(root / f"{k}.{ext}")
    src = open_source(tmp_path / "imgs")
    rows = list(range(len(src)))
    index, good, x, failed = read_rows(src, rows, prep)
    assert index == rows and good == rows and not failed
    assert x.dtype == torch.uint8 and x.shape == (len(rows), 3, prep.input_size, prep.input_size)
    assert torch.equal(x, reference(src, rows, prep))


@pytest.mark.parametrize("shape", [(12, 28, 28), (12, 20, 30, 3)])
def test_arrays_in_memory_are_resized_as_one_batch_with_the_same_pixels(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    src = in_memory(images)
    rows = [3, 0, 7, 11]
    _, good, x, failed = read_rows(src, rows, BICUBIC)
    assert good == rows and not failed and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, reference(src, rows, BICUBIC))


def test_unreadable_files_are_reported_in_place_and_the_rest_decoded(tmp_path):
    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    make_image(0, 0).save(root / "0.png")
    (root / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n-truncated")
    (root / "2.jpg").write_bytes(b"")
    make_image(1, 1).save(root / "3.png")
    src = open_source(tmp_path / "imgs")
    index, good, x, failed = read_rows(src, [0, 1, 2, 3], BICUBIC)
    assert index == [0, 1, 2, 3] and good == [0, 3] and x.shape[0] == 2
    assert [i for i, _ in failed] == [1, 2] and "empty file" in failed[1][1] and "a/1.png" in failed[0][1]
    assert torch.equal(x, reference(src, [0, 3], BICUBIC))


def test_other_array_types_go_through_pil_as_before():
    """float or RGBA arrays are not sliced as uint8 batches; PIL converts them as the reference does."""
    rgba = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 4), dtype=np.uint8)
    src = in_memory(rgba)
    _, good, x, _ = read_rows(src, [0, 1, 2], BICUBIC)
    assert good == [0, 1, 2] and torch.equal(x, reference(src, [0, 1, 2], BICUBIC))
    assert Image.fromarray(rgba[0]).mode == "RGBA"


def test_normalize_is_the_textbook_formula_and_leaves_its_input_alone():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = BILINEAR.normalize(x)
    mean = torch.tensor(BILINEAR.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(BILINEAR.std).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(out, (x.float() - mean) / std, rtol=1e-6, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.uint8
    f = x.float()
    BILINEAR.normalize(f)
    assert torch.equal(f, x.float())  # a float input is copied, not changed in place


def test_an_image_that_cannot_be_resized_is_reported_alone(tmp_path, monkeypatch):
    """The batched resize of a size group fails: each image of the group is retried on its own, and only the
    one that fails is reported (the others keep their pixels)."""
    import featcache.pixels as pixels

    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    for k in range(4):
        make_image(k % 3, k, size=40 if k != 2 else 41).save(root / f"{k}.png")
    make_image(0, 9, size=40).save(root / "4.png")
    src = open_source(tmp_path / "imgs")
    real = pixels.resize_crop

    def fails_on_image_3(x, prep):
        if x.shape[0] > 1 or torch.equal(x[0], reference_pixels):
            raise RuntimeError("cannot allocate memory")
        return real(x, prep)

    from torchvision.transforms.v2 import functional as F

    reference_pixels = F.pil_to_tensor(src.read_native(3))
    monkeypatch.setattr(pixels, "resize_crop", fails_on_image_3)
    index, good, x, failed = read_rows(src, [0, 1, 2, 3, 4], BICUBIC)
    monkeypatch.setattr(pixels, "resize_crop", real)
    assert good == [0, 1, 2, 4] and [i for i, _ in failed] == [3] and "RuntimeError: cannot allocate" in failed[0][1]
    assert torch.equal(x, reference(src, [0, 1, 2, 4], BICUBIC))
