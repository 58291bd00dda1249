"""Where images come from: a class-per-folder tree, a CSV manifest, or a built-in dataset.

A :class:`Source` is an ordered list of samples (ids, labels, optional official split and
group) plus a way to read sample ``i`` as an RGB PIL image. Ids are stable strings (paths
relative to the root for files), the order is deterministic, and the fingerprint changes
whenever an id, a label, a split or a file's bytes on disk (size, mtime) change.
Nothing here imports torch, so checking an up-to-date store stays cheap.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CorruptInputError, InputError

__all__ = [
    "DEFAULT_SOURCE",
    "IMAGE_EXTENSIONS",
    "Source",
    "open_source",
    "image_files",
    "in_memory",
    "FASHION_MNIST_CLASSES",
    "TASKS",
    "LABELED_TASKS",
    "SourceKind",
    "register_kind",
    "parse_labels",
]

DEFAULT_SOURCE = "builtin:fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
BUILTINS = ("fashion-mnist", "digits")
TEXT_BUILTINS = ("rotten-tomatoes",)  # opened by featcache.text_sources
LABELED_TASKS = ("classification", "regression")
TASKS = (*LABELED_TASKS, "unlabeled")


@dataclass(frozen=True)
class SourceKind:
    """Another kind of source than images (:mod:`featcache.text_sources` registers text): which specs it claims and
    how it opens them, given :func:`open_source`'s options."""

    name: str
    claims: Callable[[str, dict], bool]
    open: Callable[[str, dict], Source]


SOURCE_KINDS: list[SourceKind] = []  # filled by register_kind; featcache/__init__ imports the kinds it ships


def register_kind(kind: SourceKind) -> None:
    """Let :func:`open_source` open ``kind``'s specs (images stay the fallback)."""
    if all(k.name != kind.name for k in SOURCE_KINDS):
        SOURCE_KINDS.append(kind)


@dataclass
class Source:
    """An ordered list of samples and how to read each one.

    ``labels`` holds class indices into ``label_names`` (classification), float targets
    (regression), or is None (``task="unlabeled"``: new images to predict). Either ``root`` +
    ``paths`` (files) or ``images`` (an in-memory uint8 array) provides the pixels.
    Sentences are a :class:`featcache.text_sources.TextSource` (``modality`` "text").
    """

    modality = "image"
    unit = "images"  # what a row is, in summaries ("12 images/s")

    spec: str
    ids: list[str]
    labels: np.ndarray | None
    task: str  # one of TASKS
    label_names: list[str] | None = None
    split: list[str] | None = None
    groups: list[str] | None = None
    root: Path | None = None
    paths: list[str] | None = None
    images: np.ndarray | None = field(default=None, repr=False)
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        """A short slug for default output names."""
        if self.spec.startswith("builtin:"):
            return self.spec.split(":", 1)[1]
        return Path(self.spec).stem if Path(self.spec).suffix else Path(self.spec).name

    def read(self, i: int):
        """Sample ``i`` as an RGB PIL image; :class:`CorruptInputError` with the reason if unreadable."""
        img = self.read_native(i)
        return img if img.mode == "RGB" else img.convert("RGB")

    def read_native(self, i: int):
        """Sample ``i`` as a decoded PIL image in its own mode (grey stays grey: a resize of one channel is a
        third of the work, and repeating it to RGB afterwards gives the same pixels)."""
        from PIL import Image, UnidentifiedImageError

        if self.images is not None:
            return _eight_bit(Image.fromarray(self.images[i]))
        assert self.root is not None and self.paths is not None
        path = self.root / self.paths[i]
        try:
            if path.stat().st_size == 0:
                raise CorruptInputError(f"{self.ids[i]}: empty file (0 bytes)")
            with Image.open(path) as img:
                img.load()  # decode now: truncated files fail here, not later in a transform
                return _eight_bit(_upright(img))  # loaded: usable once the file is closed
        except CorruptInputError:
            raise
        except FileNotFoundError as exc:
            raise CorruptInputError(f"{self.ids[i]}: file not found") from exc
        except UnidentifiedImageError as exc:
            raise CorruptInputError(f"{self.ids[i]}: not an image") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptInputError(f"{self.ids[i]}: cannot decode ({exc})") from exc

    def fingerprint(self, content: bool = False) -> str:
        """SHA-256 over ids, labels, splits, groups and the pixels' identity.

        Files are identified by size and modification time (as make and rsync do), so a changed input is
        detected without reading every image; with ``content`` by a SHA-256 of their bytes, for copies and
        filesystems where modification times lie (``--fingerprint content``). Arrays by their bytes.
        """
        mode = "content" if content else "stat"
        if mode not in self._fingerprints:
            h = hashlib.sha256()
            h.update(f"{self.task}\n".encode())
            for name in self.label_names or ():
                h.update(f"class:{name}\n".encode())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels).tobytes())
            for column in (self.ids, self.split or (), self.groups or ()):
                h.update("\0".join(column).encode())
                h.update(b"\1")
            if self.images is not None:
                h.update(np.ascontiguousarray(self.images).tobytes())
            else:
                assert self.root is not None and self.paths is not None
                for rel in self.paths:
                    h.update(f"{rel}\0{_file_identity(self.root / rel, content)}\n".encode())
            self._fingerprints[mode] = h.hexdigest()
        return self._fingerprints[mode]

    def subset(self, index: Sequence[int] | np.ndarray, spec: str | None = None) -> Source:
        """A new source with the samples at ``index`` (kept in the given order)."""
        idx = np.asarray(index, dtype=np.int64)

        def pick(seq):
            return None if seq is None else [seq[i] for i in idx]

        return Source(
            spec=spec or self.spec,
            ids=pick(self.ids),
            labels=None if self.labels is None else self.labels[idx],
            task=self.task,
            label_names=self.label_names,
            split=pick(self.split),
            groups=pick(self.groups),
            root=self.root,
            paths=pick(self.paths),
            images=None if self.images is None else self.images[idx],
        )

    def limit(self, n: int) -> Source:
        """A deterministic, stratified subset of ``n`` samples (by class and official split).

        Each stratum keeps its share (largest-remainder rounding); within a stratum the first
        samples of a fixed permutation are taken, so ``limit(n)`` is the same on every run.
        """
        if n <= 0:
            raise InputError(f"--limit must be positive, got {n}")
        if n >= len(self):
            return self
        if self.task == "classification":
            keys = [f"{s}\0{lab}" for s, lab in zip(self.split or [""] * len(self), self.labels, strict=True)]
        else:
            keys = list(self.split or [""] * len(self))
        strata: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            strata.setdefault(k, []).append(i)
        names = sorted(strata)
        sizes = np.array([len(strata[k]) for k in names], dtype=float)
        quota = sizes * n / sizes.sum()
        take = np.floor(quota).astype(int)
        for j in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
            take[j] += 1
        rng = np.random.default_rng(0)
        chosen: list[int] = []
        for k, t in zip(names, take, strict=True):
            members = np.array(strata[k])
            chosen.extend(members[rng.permutation(len(members))[:t]].tolist())
        chosen.sort()
        return self.subset(chosen, spec=self.spec)


def image_files(inputs: Sequence[str | os.PathLike]) -> Source:
    """Image files and folders (searched recursively) as an unlabeled source; ids are the paths as given."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(str(p))
        else:
            raise InputError(f"input not found: {item}")
    if not paths:
        raise InputError("no images among the inputs")
    _check_utf8("inputs", paths)
    return Source(spec="files", ids=paths, labels=None, task="unlabeled", root=Path("."),
                  paths=[str(Path(p).resolve()) for p in paths])


def in_memory(images: np.ndarray) -> Source:
    """Unlabeled uint8 images (N, H, W[, 3]) already in memory, ids "0".."N-1"."""
    return Source(spec="memory", ids=[str(k) for k in range(len(images))], labels=None, task="unlabeled",
                  images=images)


def open_source(
    spec: str | os.PathLike | None = None,
    *,
    path_col: str = "path",
    label_col: str = "label",
    split_col: str | None = None,
    group_col: str | None = None,
    task: str = "auto",
    limit: int | None = None,
    text_col: str | None = None,
    id_col: str | None = None,
) -> Source:
    """Open ``builtin:NAME``, a folder of class subfolders, or a CSV manifest; a spec another kind of source
    claims (text: a CSV with a ``text`` column and no ``path_col``, or any CSV when ``text_col`` is named, a JSONL
    file, ``builtin:rotten-tomatoes``) opens as that kind."""
    spec = DEFAULT_SOURCE if spec is None else str(spec)
    options = {"path_col": path_col, "label_col": label_col, "split_col": split_col, "group_col": group_col,
               "task": task, "limit": limit, "text_col": text_col, "id_col": id_col}
    for kind in SOURCE_KINDS:
        if kind.claims(spec, options):
            return kind.open(spec, options)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name == "fashion-mnist":
            src = _fashion_mnist()
        elif name == "digits":
            src = _digits()
        else:
            raise InputError(f"unknown built-in dataset {name!r}; choose from "
                             f"{', '.join(BUILTINS + TEXT_BUILTINS)}")
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {spec}")
        if path.is_dir():
            src = _folder(path)
        elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
            src = _manifest(path, path_col, label_col, split_col, group_col, task)
        else:
            raise InputError(f"{spec}: expected a folder of class subfolders, a CSV manifest (a path column of images, "
                             "or a text column) or a JSONL file of texts")
    if limit is not None:
        src = src.limit(limit)
    return src


def _folder(root: Path) -> Source:
    """A class per subfolder. Links are followed, but no folder is read twice (a link back up the tree would
    multiply the images, one into two classes would put them in both); a class folder without images is not
    a class; file names must be valid UTF-8 (they become the store's ids)."""
    root = root.resolve()
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise InputError(f"{root}: no class subfolders (expected ROOT/<class>/<image>)")
    def key(p) -> tuple[int, int]:
        st = os.stat(p)
        return st.st_dev, st.st_ino

    # the root and every class folder count as seen from the start: a link to one of them inside a class
    # would otherwise pull the root's or another class's images into this class
    seen = {key(root), *(key(root / c) for c in folders)}
    walked: set[tuple[int, int]] = set()
    found: dict[str, list[str]] = {}
    for cls in folders:
        top = str(root / cls)
        if key(top) in walked:  # two class folders that are one folder
            continue
        walked.add(key(top))
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            if dirpath != top and key(dirpath) in seen:
                dirnames[:] = []
                continue
            seen.add(key(dirpath))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                    found.setdefault(cls, []).append(Path(dirpath, fn).relative_to(root).as_posix())
    _check_utf8(str(root), [p for paths in found.values() for p in paths])
    classes = [c for c in folders if c in found]
    if not classes:
        raise InputError(f"{root}: no images found in its class subfolders")
    ids = [p for c in classes for p in found[c]]
    labels = np.concatenate([np.full(len(found[c]), k, dtype=np.int64) for k, c in enumerate(classes)])
    return Source(spec=str(root), ids=ids, labels=labels, task="classification", label_names=classes, root=root,
                  paths=list(ids))


def _check_utf8(where: str, names: list[str]) -> None:
    """File names become ids in an HDF5 store and a CSV: refuse undecodable ones, showing the first."""
    bad = [n for n in names if not _is_utf8(n)]
    if bad:
        shown = os.fsencode(bad[0]).decode("utf-8", "backslashreplace")
        raise InputError(f"{where}: {len(bad)} file name(s) are not valid UTF-8 (first: {shown}); rename them "
                         "(e.g. convmv -f latin1 -t utf8 -r --notest FOLDER)")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.walk hands undecodable bytes over as surrogates
        return False


def _manifest(path: Path, path_col: str, label_col: str, split_col: str | None,
              group_col: str | None, task: str) -> Source:
    path = path.resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            dialect = csv.Sniffer().sniff(sample, delimiters=",\t;") if sample else csv.excel
            rows = list(csv.DictReader(fh, dialect=dialect))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from exc
    if not rows:
        raise InputError(f"manifest {path} has no rows")
    columns = {c for c in rows[0] if c is not None}  # None collects the cells of a row longer than the header
    if split_col is None and "split" in columns:
        split_col = "split"
    for col in (path_col, label_col, split_col, group_col):
        if col is not None and col not in columns:
            hint = "; for a CSV of texts, name its text column with --text-col" if col == path_col else ""
            raise InputError(f"manifest {path}: no column {col!r} (columns: {', '.join(sorted(columns))}){hint}")
    base = path.parent
    _check_cells(path, rows, [c for c in (path_col, label_col, split_col, group_col) if c is not None])
    paths = [r[path_col].strip() for r in rows]
    ids = paths
    first: dict[str, int] = {}
    for k, p in enumerate(paths):  # ./imgs/0.png and imgs/0.png are one file
        other = first.setdefault(os.path.normpath(p), k)
        if other != k:
            raise InputError(f"manifest {path}: rows {other + 2} and {k + 2} name the same file ({paths[other]!r}, "
                             f"{p!r})")
    labels, names, task = parse_labels(f"manifest {path}", [r[label_col].strip() for r in rows], task)
    split = [r[split_col].strip().lower() for r in rows] if split_col else None
    if split is not None:
        bad = sorted(set(split) - {"train", "val", "test"})
        if bad:
            raise InputError(f"manifest {path}: split values must be train, val or test (found {bad[:3]})")
    groups = [r[group_col].strip() for r in rows] if group_col else None
    return Source(spec=str(path), ids=ids, labels=labels, task=task, label_names=names,
                  split=split, groups=groups, root=base, paths=paths)


def parse_labels(where: str, raw: list[str], task: str,
                 row_of=lambda k: f"row {k + 2}") -> tuple[np.ndarray, list[str] | None, str]:
    """Label cells as class indices (names in natural order) or regression targets, and the task (``auto``:
    :func:`_infer_task`); ``row_of`` names a row in errors (a spreadsheet's row, a JSONL line)."""
    if task == "auto":
        task = _infer_task(raw)
    if task == "regression":
        try:
            labels = np.asarray([float(v) for v in raw], dtype=np.float64)
        except ValueError as exc:
            raise InputError(f"{where}: regression labels must be numbers ({exc})") from exc
        if not np.isfinite(labels).all():
            k = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise InputError(f"{where}: {row_of(k)}: label {raw[k]!r} is not a finite number")
        return labels, None, task
    if task == "classification":
        names = sorted(set(raw), key=_natural_key)
        lookup = {n: i for i, n in enumerate(names)}
        return np.asarray([lookup[v] for v in raw], dtype=np.int64), names, task
    raise InputError(f"unknown task {task!r}; choose auto, classification or regression")


def _check_cells(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Every row has every column used, and no empty cell in them (an empty label would become a class ''; in
    a column of numbers it would turn a regression into a classification). Rows count as in a spreadsheet."""
    for k, r in enumerate(rows):
        for col in columns:
            value = r.get(col)
            if value is None:
                raise InputError(f"manifest {path}: row {k + 2} has fewer cells than the header (no {col!r})")
            if not value.strip():
                raise InputError(f"manifest {path}: row {k + 2}: empty {col!r}")


def _infer_task(raw: list[str]) -> str:
    """Integers and strings are classes; any non-integer number makes it regression."""
    try:
        values = [float(v) for v in raw]
    except ValueError:
        return "classification"
    return "classification" if all(v.is_integer() for v in values) else "regression"


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): big-endian magic, dimension sizes, raw bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:
        raise InputError(f"{path}: not a uint8 idx file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(dirs: Sequence[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (f"{stem}.gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs = [Path(p) for p in os.environ.get("FEATCACHE_FASHION_MNIST", "").split(os.pathsep) if p]
    dirs += [Path(p) for p in FASHION_MNIST_DIRS]
    dirs.append(Path("data") / "FashionMNIST" / "raw")  # torchvision's layout under data/
    return dirs


def _fashion_mnist() -> Source:
    dirs = fashion_mnist_dirs()
    files = {s: _find_idx(dirs, s) for s in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [s for s, p in files.items() if p is None]
    if missing:
        raise InputError(
            "Fashion-MNIST not found (looked in " + ", ".join(str(d) for d in dirs) + "); "
            "install it with `apt-get install dataset-fashion-mnist` (Debian), or run "
            "torchvision.datasets.FashionMNIST('data', download=True) on a machine with internet"
        )
    tr_x, tr_y = _read_idx(files["train-images-idx3-ubyte"]), _read_idx(files["train-labels-idx1-ubyte"])
    te_x, te_y = _read_idx(files["t10k-images-idx3-ubyte"]), _read_idx(files["t10k-labels-idx1-ubyte"])
    images = np.concatenate([tr_x, te_x])
    labels = np.concatenate([tr_y, te_y]).astype(np.int64)
    ids = [f"train/{i:05d}" for i in range(len(tr_x))] + [f"test/{i:05d}" for i in range(len(te_x))]
    split = ["train"] * len(tr_x) + ["test"] * len(te_x)
    return Source(spec="builtin:fashion-mnist", ids=ids, labels=labels, task="classification",
                  label_names=list(FASHION_MNIST_CLASSES), split=split, images=images)


def _digits() -> Source:
    # scikit-learn's digits live in a small CSV inside the package: read it without importing sklearn
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise InputError("builtin:digits needs scikit-learn installed")
    csv_gz = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv_gz, "rt") as fh:
        data = np.loadtxt(io.StringIO(fh.read()), delimiter=",")
    images = np.clip(data[:, :-1] * (255.0 / 16.0), 0, 255).round().astype(np.uint8).reshape(-1, 8, 8)
    labels = data[:, -1].astype(np.int64)
    ids = [f"digits/{i:04d}" for i in range(len(images))]
    return Source(spec="builtin:digits", ids=ids, labels=labels, task="classification",
                  label_names=[str(d) for d in range(10)], images=images)


def _upright(img):
    """The image as a viewer shows it: rotated or flipped by its EXIF orientation tag (cameras store the sensor's
    orientation and a tag; every viewer applies it, so a model should see the same)."""
    from PIL import ImageOps

    if img.getexif().get(0x0112, 1) in (None, 1):  # 0x0112: Orientation; 1 = as stored
        return img
    return ImageOps.exif_transpose(img)


def _eight_bit(img):
    """Grey or RGB with 8 bits per channel. 16-bit grey (PIL ``I;16*``, or ``I`` holding 16-bit values) is scaled
    to 0-255 (PIL's own conversion would clip it to two values); every other mode is converted to RGB."""
    from PIL import Image

    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def _file_identity(path: Path, content: bool) -> str:
    """Size and modification time, or the SHA-256 of the bytes; ``missing`` for a file that is not there."""
    try:
        if not content:
            st = path.stat()
            return f"{st.st_size}\0{st.st_mtime_ns}"
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return "missing"
