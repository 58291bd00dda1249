"""Predict new images (or sentences, for a text store) with a saved head: the store's backbone and
preprocessing, rebuilt exactly.

The store records the backbone, the SHA-256 of its weights and the preprocessing; prediction
rebuilds them from there and refuses if the weights found now are not the same file, so a
head never scores features computed differently from the ones it was trained on.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from .backbones import POOLED, Backbone, parse_backbone
from .batching import parse_batch_size
from .embed import embed_batches
from .errors import InputError
from .files import atomic_write_text, check_output
from .head_io import read_sidecar
from .heads import load_head
from .options import Interval, check
from .provenance import backbone_from_store, store_modality
from .sources import image_files
from .store import FeatureStore, recorded_store

__all__ = ["predict", "head_modality", "rows_to_csv", "check_predictions_output"]


def predict(head: str | os.PathLike, inputs, *, store: str | os.PathLike | None = None,
            batch_size: int | str = "auto", device: str = "auto", workers: int = 0, trusted: bool = False,
            quiet: bool = False) -> list[dict]:
    """One dict per input: ``id``, ``prediction`` (class name or value), ``p_<class>`` where the head
    has probabilities, and ``error`` for inputs that could not be read.

    ``inputs`` are image files and folders, or for a head on a text store sentences: a list of strings (ids
    "0".."N-1") or :func:`featcache.text_predict.read_sentences` of text files (ids: line numbers)."""

    parse_batch_size(batch_size)
    check("--workers", workers, Interval(int, 0))
    if _is_finetuned(head):
        return _predict_finetuned(head, inputs, store=store, batch_size=batch_size, device=device, workers=workers,
                                  quiet=quiet)
    pipe, meta = load_head(head, store=store, trusted=trusted)
    store_path = recorded_store(meta, store)
    if not store_path.exists():
        raise InputError(f"the store this head was fit on ({meta['store']}) is gone; pass --store")
    with FeatureStore(store_path) as fs:
        src, batches = _features(fs, meta["layer"], inputs, batch_size=batch_size, workers=workers, device=device,
                                 quiet=quiet)
    rows: dict[int, dict] = {}
    feats, good = [], []
    for b in batches:
        for i, reason in b.failed:
            rows[i] = {"id": src.ids[i], "prediction": "", "error": reason}
        if b.good:
            feats.append(b.feats[meta["layer"]])
            good += b.good
    if good:
        X = np.concatenate(feats)
        pred = pipe.predict(X)
        names = meta.get("label_names")
        proba = pipe.predict_proba(X) if hasattr(pipe, "predict_proba") and meta["task"] == "classification" else None
        for k, i in enumerate(good):
            row = {"id": src.ids[i], "prediction": names[int(pred[k])] if names else float(pred[k]), "error": ""}
            if proba is not None:
                row.update({f"p_{names[int(c)]}": float(proba[k, j]) for j, c in enumerate(pipe.classes_)})
            rows[i] = row
    return [rows[i] for i in range(len(src))]


def _features(fs: FeatureStore, layer: str, inputs, *, batch_size, workers: int, device: str, quiet: bool):
    """The inputs as a source, and their features batch by batch from the store's own backbone."""
    if store_modality(fs) == "text":
        from .text_embed import embed_texts
        from .text_predict import sentence_source

        src = sentence_source(inputs)
        encoder, precision = backbone_from_store(fs, [layer])
        return src, embed_texts(src, encoder, batch_size=batch_size, device=device, precision=precision,
                                quiet=quiet, desc="predict")
    src = image_files(inputs)
    backbone, precision = backbone_from_store(fs, [layer])
    return src, embed_batches(src, backbone, batch_size=batch_size, workers=workers, device=device,
                              precision=precision, quiet=quiet, desc="predict")


def head_modality(head: str | os.PathLike, store: str | os.PathLike | None = None) -> str:
    """``"text"`` or ``"image"``: what a head or fine-tuned model predicts (its store's modality), so the command
    line knows whether its inputs are image files or text files of sentences."""
    p = Path(head)
    if _is_finetuned(p):
        try:
            record = json.loads(((p if p.is_dir() else p.parent) / "model.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{head} holds no fine-tuned model (model.json unreadable: {exc})") from None
    else:
        record = read_sidecar(head, required=False) or {}
    if not isinstance(record, dict) or (store is None and "store" not in record):
        return "image"  # loading it will say what is wrong
    target = recorded_store(record, store)
    if not target.exists():
        raise InputError(f"the store this model was trained on ({target}) is gone; pass --store")
    return store_modality(target)


def _is_predictions_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith("id,prediction")
    except OSError:
        return False


def check_predictions_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``out`` is free or an older predictions CSV (checked before the work, and again when writing)."""

    return check_output(out, kind="predictions CSV", is_own=_is_predictions_csv, overwrite=overwrite)


def rows_to_csv(rows: list[dict], out: str | os.PathLike | None = None, *, overwrite: bool = False) -> str:
    """Write the predictions as CSV to ``out`` (atomically; only over an older predictions CSV unless
    ``overwrite``), and return the CSV text."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    if out is not None:

        out = check_predictions_output(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, buf.getvalue())
    return buf.getvalue()


def _is_finetuned(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_dir():
        return (p / "model.json").is_file()
    return p.name == "model.pt" and (p.parent / "model.json").is_file()


def _predict_finetuned(path, inputs, *, store, batch_size: int | str, device: str, workers: int,
                       quiet: bool) -> list[dict]:
    """A fine-tuned network runs end to end on the inputs; the same loop as extraction feeds it."""
    import torch

    from .finetune import load_finetuned

    net, record, prep, target = load_finetuned(path, store)
    if store_modality(target) == "text":
        from .text_predict import logits_batches, sentence_source

        src = sentence_source(inputs)
        batches = logits_batches(net, prep, src, batch_size=batch_size, device=device,
                                 precision=record["precision"], quiet=quiet)
    else:
        with FeatureStore(target) as fs:
            spec = parse_backbone(fs.attrs["backbone"])
        # wrapped as a one-"layer" backbone whose output is the logits, so embed_batches can drive it
        runner = Backbone(spec, net, net, [POOLED], None, prep)
        src = image_files(inputs)
        batches = embed_batches(src, runner, batch_size=batch_size, device=device, workers=workers,
                                precision=record["precision"], quiet=quiet, desc="predict")
    names = record["label_names"]
    rows: dict[int, dict] = {}
    for b in batches:
        for i, reason in b.failed:
            rows[i] = {"id": src.ids[i], "prediction": "", "error": reason}
        if b.good:
            proba = torch.softmax(torch.as_tensor(b.feats[POOLED]).float(), dim=1).numpy()
            for k, i in enumerate(b.good):
                rows[i] = {"id": src.ids[i], "prediction": names[int(proba[k].argmax())], "error": "",
                           **{f"p_{n}": float(proba[k, j]) for j, n in enumerate(names)}}
    return [rows[i] for i in range(len(src))]
