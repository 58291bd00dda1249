import gzip
import struct

import numpy as np
import pytest

from featcache.errors import CorruptInputError, InputError
from featcache.sources import open_source


def test_folder_ids_are_relative_paths_in_sorted_order(image_folder):
    src = open_source(image_folder)
    assert src.label_names == ["circle", "square", "stripes"]
    assert src.ids[0] == "circle/img000.png"
    assert src.ids == sorted(src.ids)
    assert len(src) == 24 and np.bincount(src.labels).tolist() == [8, 8, 8]
    img = src.read(1)  # saved as grayscale: converted to 3 channels
    assert img.mode == "RGB"


def test_fingerprint_detects_a_changed_file(image_folder):
    before = open_source(image_folder).fingerprint()
    assert open_source(image_folder).fingerprint() == before
    target = image_folder / "square" / "img000.png"
    target.write_bytes(target.read_bytes() + b"\0")
    assert open_source(image_folder).fingerprint() != before


def test_manifest_classes_regression_and_split(tmp_path, image_folder):
    rows = ["path,label,split,patient"]
    for i, p in enumerate(sorted(image_folder.rglob("*.png"))):
        rows.append(f"{p.relative_to(tmp_path).as_posix()},{'cat' if i % 2 else 'dog'},"
                    f"{'test' if i % 4 == 0 else 'train'},p{i % 3}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    src = open_source(tmp_path / "m.csv", group_col="patient")
    assert src.task == "classification" and src.label_names == ["cat", "dog"]
    assert set(src.split) == {"train", "test"} and src.groups[:3] == ["p0", "p1", "p2"]
    assert src.read(0).size == (40, 40)

    reg = ["file,target"] + [f"{p.relative_to(tmp_path).as_posix()},{i * 0.5}"
                             for i, p in enumerate(sorted(image_folder.rglob("*.png")))]
    (tmp_path / "r.csv").write_text("\n".join(reg) + "\n")
    src = open_source(tmp_path / "r.csv", path_col="file", label_col="target")
    assert src.task == "regression" and src.labels.dtype == np.float64 and src.labels[3] == 1.5


@pytest.mark.parametrize("content, needle", [
    ("", "no rows"),
    ("a,b\n1,2\n", "no column 'path'"),
    ("path,label,split\nx.png,1,holdout\n", "split values"),
    ("path,label\n./imgs/0.png,cat\nimgs/0.png,dog\n", "rows 2 and 3 name the same file"),
    ("path,label\na.png,cat\nb.png,\n", "row 3: empty 'label'"),
    ("path,label\n" + "".join(f"{i}.png,{i * 0.5}\n" for i in range(12)) + "x.png,\n", "row 14: empty 'label'"),
    ("path,label\na.png,1.5\nb.png,nan\n", "row 3: label 'nan' is not a finite number"),
    ("path,label\na.png,1.5\nb.png,inf\n", "row 3: label 'inf' is not a finite number"),
    ("path,label\n" + "".join(f"img_{i:06d}.png,cat\n" for i in range(400)) + "short.png\n",
     "row 402 has fewer cells than the header"),
])
def test_bad_manifests(tmp_path, content, needle):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(InputError, match=needle):
        open_source(tmp_path / "m.csv")


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class subfolders"):
        open_source(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown built-in"):
        open_source("builtin:cifar")


def test_corrupt_files_raise_with_reason(image_folder):
    (image_folder / "circle" / "zero.png").write_bytes(b"")
    (image_folder / "circle" / "text.jpg").write_text("hello, not an image")
    good = (image_folder / "square" / "img000.png").read_bytes()
    (image_folder / "square" / "cut.png").write_bytes(good[: len(good) // 2])
    src = open_source(image_folder)
    reasons = {}
    for i, id_ in enumerate(src.ids):
        try:
            src.read(i)
        except CorruptInputError as exc:
            reasons[id_] = str(exc)
    assert set(reasons) == {"circle/zero.png", "circle/text.jpg", "square/cut.png"}
    assert "empty" in reasons["circle/zero.png"] and "not an image" in reasons["circle/text.jpg"]


def test_limit_is_stratified_and_deterministic():
    src = open_source("builtin:digits")
    a, b = src.limit(200), open_source("builtin:digits", limit=200)
    assert a.ids == b.ids and len(a) == 200
    counts = np.bincount(a.labels, minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21
    assert a.read(0).size == (8, 8) and a.read(0).mode == "RGB"


def _write_idx(path, arr):
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_keeps_official_split(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (40, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    monkeypatch.setenv("FEATCACHE_FASHION_MNIST", str(tmp_path))
    src = open_source("builtin:fashion-mnist")
    assert len(src) == 60 and src.split.count("test") == 20 and src.ids[40] == "test/00000"
    assert src.label_names[0] == "T-shirt/top"
    sub = src.limit(30)
    assert sub.split.count("test") == 10  # the split's share is kept


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("featcache.sources.FASHION_MNIST_DIRS", ())
    monkeypatch.setenv("FEATCACHE_FASHION_MNIST", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        open_source("builtin:fashion-mnist")


def test_a_folder_is_read_once_whatever_links_lead_back_to_it(tmp_path, image_folder):
    """A link back up the tree multiplied the images (5 stored 41 times); one into another class put them in two."""
    (image_folder / "circle" / "loop").symlink_to("..")
    (image_folder / "square" / "alias").symlink_to(image_folder / "stripes")
    src = open_source(image_folder)
    assert len(src) == 24 and len(set(src.ids)) == 24 and np.bincount(src.labels).tolist() == [8, 8, 8]


def test_a_class_folder_without_images_is_not_a_class(image_folder):
    (image_folder / "empty").mkdir()
    (image_folder / "empty" / "notes.txt").write_text("no images here")
    assert open_source(image_folder).label_names == ["circle", "square", "stripes"]


def test_file_names_that_are_not_utf8_are_refused_with_their_name(tmp_path, image_folder):
    import os

    bad = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes, as a copy from an old machine leaves them
    (image_folder / "circle" / "img000.png").rename(image_folder / "circle" / bad)
    with pytest.raises(InputError, match=r"1 file name\(s\) are not valid UTF-8 \(first: circle/caf\\xe9.png\)"):
        open_source(image_folder)


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(ramp).save(tmp_path / "imgs" / "a" / "g16.png")
    img = open_source(tmp_path / "imgs").read(0)
    got = np.asarray(img)[..., 0].astype(int)
    assert img.mode == "RGB" and np.abs(got - np.rint(ramp / 257)).max() == 0 and len(np.unique(got)) == 256


def test_exif_orientation_is_applied_as_viewers_do(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :5] = 255  # a white band on the left of a landscape image
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "imgs" / "a" / "rot.jpg", exif=exif, quality=95)
    shown = np.asarray(open_source(tmp_path / "imgs").read(0))
    assert shown.shape == (30, 10, 3)  # portrait, as a viewer shows it
    assert shown[:5].mean() > 200 and shown[-5:].mean() < 50  # the band is now at the top


def test_images_to_predict_with_names_that_are_not_utf8_are_refused(tmp_path, image_folder):
    import os

    from featcache.sources import image_files

    (image_folder / "circle" / "img000.png").rename(image_folder / "circle" / os.fsdecode(b"caf\xe9.png"))
    with pytest.raises(InputError, match=r"inputs: 1 file name\(s\) are not valid UTF-8"):
        image_files([image_folder])
