"""Heads on disk: the head file (plain data, :mod:`featcache.pipeline_file`) and its JSON sidecar.

Writing never replaces anything but an older head; reading refuses what could run code (a pickle)
or whose origin cannot be checked unless the user says ``--trust``, and refuses a head whose store
changed since it was fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import pipeline_file
from .errors import InputError, OutputExistsError, StoreMismatchError, UntrustedFileError
from .files import atomic_path, atomic_write_json, check_output
from .store import FeatureStore, recorded_store
from .weights import sha256_file

__all__ = ["HEAD_FORMAT", "HEAD_SUFFIX", "default_head_path", "check_head_output", "save_head", "read_sidecar",
           "load_head"]

HEAD_FORMAT = "featcache-head"  # the sidecar's "format"
HEAD_SUFFIX = ".head"


def default_head_path(store: Path, layer: str, head: str, per_class: int | None) -> Path:
    budget = f"_{per_class}pc" if per_class else ""
    return Path("data") / "heads" / f"{Path(store).stem}_{layer}_{head}{budget}{HEAD_SUFFIX}"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _is_head(path: Path) -> bool:
    """Whether ``path`` is a head featcache wrote (its sidecar says so): the only file fit-head replaces."""
    try:
        return json.loads(_sidecar(path).read_text()).get("format") == HEAD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_head_output(path: Path, overwrite: bool) -> Path:
    """A head goes to a ``.head`` path that is free or holds an older head; never over a store or a stray file."""

    if path.suffix != HEAD_SUFFIX:
        raise InputError(f"--out {path}: a head file holds plain data that loads without running code (not a "
                         f"pickle); name it *{HEAD_SUFFIX}")
    check_output(path, kind="featcache head", is_own=_is_head, overwrite=overwrite)
    side = _sidecar(path)
    if side.exists() and not overwrite and not _is_head(path):
        raise OutputExistsError(f"{side} exists and is not a featcache head sidecar; choose another --out, or use "
                                "--overwrite to replace it")
    return path


def save_head(path: Path, pipe, meta: dict) -> None:
    """The pipeline as a head file (plain data, see :mod:`featcache.pipeline_file`) and its JSON sidecar, each
    written atomically (the head first, so a sidecar never describes a file that is not there)."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pipeline_file.dump(pipe, tmp)
        digest = sha256_file(tmp)
    atomic_write_json(_sidecar(path), {**meta, "head_format": pipeline_file.FORMAT, "head_sha256": digest})


def read_sidecar(path: str | os.PathLike, *, required: bool = True) -> dict | None:
    """The head's JSON sidecar, checked to be a featcache one; None if absent and not ``required``."""
    side = _sidecar(Path(path))
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError as exc:
        if not required:
            return None
        raise UntrustedFileError(f"{path}: no sidecar {side.name}, so where it came from cannot be checked; "
                                 "pass --trust (and STORE) if you know this file") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{side}: unreadable sidecar ({exc.__class__.__name__})") from exc
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise InputError(f"{side} is not a featcache head sidecar")
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise InputError(f"{side} is not a complete featcache head sidecar (no {', '.join(missing)})")
    wrong = [k for k, kind in SIDECAR_TYPES.items() if k in meta and not _is(meta[k], kind)]
    if wrong:
        raise InputError(f"{side} is not a valid featcache head sidecar ({', '.join(wrong)} of the wrong type)")
    return meta


def _is(value, kind) -> bool:
    if kind == "names":
        return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))


SIDECAR_KEYS = ("head", "task", "layer", "split", "store", "store_fingerprint", "store_key")
# what the readers of a sidecar use, with the type they need: a forged file gets one line, not a traceback
SIDECAR_TYPES = {"head": str, "task": str, "layer": str, "split": str, "store": str, "store_fingerprint": str,
                 "store_key": dict, "head_sha256": str, "joblib_sha256": str, "split_sha256": str,
                 "label_names": "names", "metrics": dict, "grid": list, "value": (int, float), "param": str}
def load_head(path: str | os.PathLike, *, store: str | os.PathLike | None = None,
              trusted: bool = False) -> tuple[object, dict]:
    """Load a saved head (a scikit-learn Pipeline) and its metadata.

    featcache writes head files whose loading cannot run code (:mod:`featcache.pipeline_file`) and loads one
    whose SHA-256 matches the sidecar written beside it. A pickle (``.joblib``, ``.pkl``) runs code when
    loaded, whoever wrote the sidecar next to it, so it is loaded only with ``trusted=True``, as is a
    head without a sidecar (then ``store`` is needed). The store's fingerprint must be unchanged.
    """

    path = Path(path)
    if not path.is_file():
        raise InputError(f"head not found: {path}")
    meta = read_sidecar(path, required=not trusted)
    if meta is None:
        if store is None:
            raise InputError(f"{path} has no sidecar: pass the STORE it was fit on")
        meta = _meta_from_store(store)
    recorded = meta.get("head_sha256", meta.get("joblib_sha256"))
    if not trusted and "store" in meta and sha256_file(path) != recorded:
        raise UntrustedFileError(f"{path} does not match its sidecar (changed or corrupt); refusing to load it "
                                 "(pass --trust if you know where it came from)")
    if pipeline_file.is_head_file(path):
        pipe = pipeline_file.load(path)
    elif not trusted:
        raise UntrustedFileError(f"{path} is not a featcache head file and may be a pickle, and loading a pickle "
                                 f"runs code, whatever its sidecar says; refit it (featcache writes {HEAD_SUFFIX} "
                                 "files), or pass --trust if you made this file")
    else:
        import joblib

        try:
            pipe = joblib.load(path)
        except Exception as exc:  # any unpickling failure means a corrupt or foreign file
            raise InputError(f"cannot load head {path}: {exc.__class__.__name__}") from exc
    _check_usable(pipe, path)
    _check_store(pipe, meta, store)
    return pipe, meta


def _check_usable(pipe, path: Path) -> None:
    """One prediction on a row of zeros: a malformed file fails here with one line, not later with a traceback."""
    n_in = getattr(pipe, "n_features_in_", None)
    if not hasattr(pipe, "predict") or not isinstance(n_in, (int, np.integer)) or not 0 < n_in < 1 << 24:
        raise InputError(f"{path} holds a {type(pipe).__name__}, not a fitted featcache head")
    try:
        pipe.predict(np.zeros((1, int(n_in)), dtype=np.float32))
    except Exception as exc:  # whatever a corrupt state makes scikit-learn raise
        raise InputError(f"{path} holds a head that cannot predict ({exc.__class__.__name__}: {exc})") from None


def _meta_from_store(store: str | os.PathLike) -> dict:
    """What a sidecar would say, for a trusted head without one: the store's first layer and default split."""
    with FeatureStore(store) as fs:
        return {"head": "unknown", "task": fs.task, "layer": fs.layers[0], "label_names": fs.label_names,
                **fs.identity()}


def _check_store(pipe, meta: dict, store: str | os.PathLike | None) -> None:
    """The store the head was fit on (or the one given) must be unchanged and have the head's input size;
    a head whose store is gone still loads (it can predict from images)."""
    target = recorded_store(meta, store)
    if store is None and not target.exists():
        return
    with FeatureStore(target) as fs:
        if fs.fingerprint != meta["store_fingerprint"] or fs.key != meta["store_key"]:
            raise StoreMismatchError(f"{target} is not the store this head was fit on "
                                     "(its data or extraction settings changed); refit the head")
        dim = fs.dim(meta["layer"])
    n_in = getattr(pipe, "n_features_in_", None)
    if n_in is not None and int(n_in) != dim:
        raise InputError(f"the head expects {n_in} features, but layer {meta['layer']!r} of {target} has {dim}")
