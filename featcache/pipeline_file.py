"""A fitted head on disk as plain data, so that loading one can never run code.

A pickle (joblib) runs whatever code its bytes name when it is loaded, and a sidecar beside it proves
only that nobody changed it since it was written, not who wrote it. A head file is instead a zip of
``head.json`` (the object tree: class names, parameters, fitted scalars) and ``.npy`` arrays read with
``allow_pickle=False``. Loading instantiates only the scikit-learn classes featcache's heads are made
of (:data:`CLASSES`) and fills them with that data, as unpickling would, but with nothing executable
in between. skops offers the same guarantee, but importing it imports every scikit-learn estimator
and torch (about 4 s per command here); heads need a dozen classes, so featcache keeps its own list.

The result of :func:`load` is an ordinary scikit-learn ``Pipeline``.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError, UntrustedFileError

__all__ = ["CLASSES", "dump", "load", "is_head_file"]

FORMAT = "featcache-pipeline-file"
VERSION = 1
# public import path -> the class's own module path (what type() reports), for every class a head may contain
CLASSES = {
    "sklearn.pipeline.Pipeline": "sklearn.pipeline",
    "sklearn.preprocessing.StandardScaler": "sklearn.preprocessing._data",
    "sklearn.preprocessing.LabelBinarizer": "sklearn.preprocessing._label",
    "sklearn.linear_model.LogisticRegression": "sklearn.linear_model._logistic",
    "sklearn.linear_model.RidgeClassifier": "sklearn.linear_model._ridge",
    "sklearn.linear_model.Ridge": "sklearn.linear_model._ridge",
    "sklearn.linear_model.SGDClassifier": "sklearn.linear_model._stochastic_gradient",
    "sklearn.linear_model.SGDRegressor": "sklearn.linear_model._stochastic_gradient",
    "sklearn.svm.LinearSVC": "sklearn.svm._classes",
    "sklearn.svm.LinearSVR": "sklearn.svm._classes",
    "sklearn.svm.SVC": "sklearn.svm._classes",
    "sklearn.svm.SVR": "sklearn.svm._classes",
}
# fitted state that prediction does not use and that is not plain data (SGD's compiled loss object)
_DROP = {"_loss_function_", "loss_function_"}
_ARRAY_KINDS = "biufcUS"  # numeric, bool and fixed-width strings: never objects
MAX_MEMBER_BYTES = 1 << 31  # a head is coefficients: 2 GiB is far beyond any real one


def _public_name(obj) -> str:
    cls = type(obj)
    for public, module in CLASSES.items():
        if public.rsplit(".", 1)[1] == cls.__qualname__ and cls.__module__ == module:
            return public
    raise TypeError(f"a {cls.__module__}.{cls.__qualname__} cannot be saved as a featcache head")


def _encode(x, arrays: dict[str, np.ndarray]):
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
        return int(x) if isinstance(x, int) else {"scalar": x.dtype.str, "value": int(x)}
    if isinstance(x, (float, np.floating)):
        value = float(x)
        encoded = value if math.isfinite(value) else {"float": repr(value)}
        return encoded if isinstance(x, float) else {"scalar": x.dtype.str, "value": encoded}
    if isinstance(x, np.bool_):
        return {"scalar": "|b1", "value": bool(x)}
    if isinstance(x, np.ndarray):
        strings = x.dtype == object and all(isinstance(v, str) for v in x.ravel())
        arr = x.astype(str) if strings else x
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"an array of {x.dtype} cannot be saved as a featcache head")
        name = f"a{len(arrays)}"
        arrays[name] = arr
        return {"array": name, "object": bool(strings)}
    if isinstance(x, (list, tuple)):
        return {"list" if isinstance(x, list) else "tuple": [_encode(v, arrays) for v in x]}
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("only dicts with string keys can be saved in a featcache head")
        return {"dict": {k: _encode(v, arrays) for k, v in x.items()}}
    state = x.__getstate__() if hasattr(x, "__getstate__") else vars(x)
    state = {k: v for k, v in state.items() if k not in _DROP}
    return {"object": _public_name(x), "state": _encode(state, arrays)}


def dump(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` (a fitted Pipeline of :data:`CLASSES`) to ``path`` (the caller makes it atomic)."""
    import sklearn

    arrays: dict[str, np.ndarray] = {}
    tree = _encode(obj, arrays)
    meta = {"format": FORMAT, "version": VERSION, "sklearn_version": sklearn.__version__, "tree": tree}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("head.json", json.dumps(meta))
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            z.writestr(f"arrays/{name}.npy", buf.getvalue())


def is_head_file(path: str | os.PathLike) -> bool:
    """A zip holding ``head.json``: what featcache writes (a pickle is not a zip)."""
    try:
        with zipfile.ZipFile(path) as z:
            return "head.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


class _Reader:
    def __init__(self, z: zipfile.ZipFile, path: Path):
        self.z, self.path = z, path

    def bad(self, why: str) -> InputError:
        return InputError(f"{self.path} is not a valid featcache head file ({why})")

    def array(self, name) -> np.ndarray:
        member = f"arrays/{name}.npy"
        try:
            info = self.z.getinfo(member)
        except (KeyError, TypeError):
            raise self.bad(f"missing {member}") from None
        if info.file_size > MAX_MEMBER_BYTES:
            raise self.bad(f"{member} is {info.file_size:,} bytes")
        try:
            arr = np.load(io.BytesIO(self.z.read(member)), allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise self.bad(f"{member}: {exc}") from None
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise self.bad(f"{member} holds {arr.dtype}")
        return arr

    def decode(self, node, depth: int = 0):
        if depth > 50:
            raise self.bad("nested too deeply")
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if isinstance(node, list) or not isinstance(node, dict) or len(node) not in (1, 2):
            raise self.bad("unexpected structure")
        if "array" in node:
            arr = self.array(node["array"])
            return arr.astype(object) if node.get("object") else arr
        if "scalar" in node:
            try:
                dtype = np.dtype(node["scalar"])
            except (TypeError, ValueError):
                raise self.bad("unknown scalar type") from None
            value = node.get("value")
            if dtype.kind not in "biuf" or not isinstance(value, (bool, int, float, dict)):
                raise self.bad("unexpected scalar")
            return dtype.type(self.decode(value, depth + 1))
        if "float" in node:
            if node["float"] not in ("nan", "inf", "-inf"):
                raise self.bad("unexpected float")
            return float(node["float"])
        if "list" in node or "tuple" in node:
            items = node.get("list", node.get("tuple"))
            if not isinstance(items, list):
                raise self.bad("unexpected list")
            out = [self.decode(v, depth + 1) for v in items]
            return out if "list" in node else tuple(out)
        if "dict" in node:
            if not isinstance(node["dict"], dict):
                raise self.bad("unexpected dict")
            return {str(k): self.decode(v, depth + 1) for k, v in node["dict"].items()}
        if "object" in node:
            return self.instantiate(node.get("object"), node.get("state"), depth)
        raise self.bad("unexpected node")

    def instantiate(self, name, state, depth: int):
        if name not in CLASSES:
            raise UntrustedFileError(f"{self.path} names {str(name)[:80]!r}, which is not a class featcache heads "
                                     "are made of; refusing to create it")
        module, _, cls_name = name.rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        values = self.decode(state, depth + 1)
        if not isinstance(values, dict):
            raise self.bad(f"the state of {name} is not a mapping")
        obj = cls.__new__(cls)
        obj.__setstate__(values) if hasattr(obj, "__setstate__") else obj.__dict__.update(values)
        return obj


def load(path: str | os.PathLike):
    """The object written by :func:`dump`; :class:`InputError` for anything malformed or foreign."""
    import warnings

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            try:
                meta = json.loads(z.read("head.json"))
            except KeyError:
                raise InputError(f"{path} is not a featcache head file (no head.json)") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: unreadable head.json ({exc.__class__.__name__})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise InputError(f"{path} is not a featcache head file")
            if meta.get("version") != VERSION:
                raise InputError(f"{path} is a featcache head file of version {meta.get('version')}; this featcache "
                                 f"reads version {VERSION}")
            with warnings.catch_warnings():  # scikit-learn's version warning: the sidecar records both versions
                warnings.simplefilter("ignore")
                return _Reader(z, path).decode(meta.get("tree"))
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path} is not a featcache head file ({exc})") from None
