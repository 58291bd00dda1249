"""What a store knows about how it was made, turned back into working objects.

A store records its backbone, the SHA-256 of the weights file, the preprocessing and the source it
was read from. Prediction, fine-tuning and the scikit-learn transformer rebuild the same backbone and
re-read the same images from here, and refuse when what is found now is not what the store was made
with, so nothing is ever scored on features or images that differ from the stored ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError, StoreMismatchError
from .sources import Source, open_source
from .store import FeatureStore, opened

__all__ = ["backbone_from_store", "store_modality", "store_source"]


def store_modality(store: str | os.PathLike | FeatureStore) -> str:
    """``"text"`` or ``"image"`` (stores written before text existed record nothing: images)."""
    with opened(store) as fs:
        return str(fs.attrs.get("modality") or "image")


def backbone_from_store(store: str | os.PathLike | FeatureStore, layers: list[str] | None = None):
    """The backbone a store was made with (same weights file, same preprocessing) and its precision; for a text
    store the sentence encoder (a :class:`featcache.text_encoders.TextBackbone`), with the same tokenizer,
    pooling and maximum length."""
    from .backbones import Preprocessing, build_backbone

    with opened(store) as fs:
        a, path = fs.attrs, fs.path
        layers = layers or fs.layers
    if a.get("modality") == "text":
        return _text_backbone(a, path, layers), str(a.get("precision", "auto"))
    source = str(a["weights_source"])
    if source == "random":
        raise InputError(f"{path} was made with random weights, which cannot be rebuilt; "
                         "extract with pretrained weights to use its backbone again")
    weights = source.split(": ", 1)[1] if source.startswith("file: ") else None
    prep = Preprocessing.from_dict(a["preprocessing"])
    bb = build_backbone(a["backbone"], weights=weights, layers=layers, image_size=prep.input_size)
    if bb.weights.sha256 != a["weights_sha256"]:
        raise StoreMismatchError(f"the weights found now for {a['backbone']} ({bb.weights.describe()}) are not the "
                                 f"ones {path} was extracted with")
    bb.preprocessing = prep
    return bb, str(a.get("precision", "auto"))


def _text_backbone(a: dict, path, layers: list[str]):
    from .text_encoders import TextSettings, build_text_encoder

    source = str(a.get("weights_source", ""))
    name = str(a["backbone"])
    if source.startswith("folder: "):  # the absolute folder: a store made with hf:RELATIVE works from anywhere
        folder = Path(source.split(": ", 1)[1])
        if not folder.is_dir():
            raise InputError(f"{folder}, the model folder {path} was extracted with, is gone")
        name = f"hf:{folder}"
    want = TextSettings.from_dict(a["text"])
    bb = build_text_encoder(name, layers, pooling=want.pooling, normalize=want.normalize, max_length=want.max_length)
    if bb.weights.sha256 != a["weights_sha256"]:
        raise StoreMismatchError(f"the weights found now for {a['backbone']} ({bb.weights.describe()}) are not the "
                                 f"ones {path} was extracted with")
    if bb.settings != want:
        raise StoreMismatchError(f"the tokenizer or pooling of {a['backbone']} changed since {path} was extracted")
    return bb


def store_source(store: str | os.PathLike | FeatureStore) -> Source:
    """The source a store was extracted from, restricted to the store's rows, in the store's order."""
    with opened(store) as fs:
        spec, ids, path = str(fs.attrs["dataset"]), list(fs.ids), fs.path
        options = fs.attrs.get("source_options") or {}  # how a text file's columns were read
        fingerprint = str(fs.attrs.get("dataset_fingerprint"))
        what = "texts" if fs.attrs.get("modality") == "text" else "images"
    try:
        src = open_source(spec, **options)
    except InputError as exc:
        raise InputError(f"the {what} of {path} are not available ({exc})") from exc
    index = {s: i for i, s in enumerate(src.ids)}
    missing = [s for s in ids if s not in index]
    if missing:
        raise StoreMismatchError(f"{len(missing)} ids of {path} are no longer in {spec} (e.g. {missing[0]!r})")
    rows = src.subset([index[s] for s in ids])
    # texts are refused unless they are the texts, labels and groups that were embedded: a fine-tune or a TF-IDF
    # baseline must not pair edited (or shifted) texts with the stored labels (image files are checked by their
    # size and time when they are read; texts have only this)
    if what == "texts" and rows.fingerprint() != fingerprint:
        raise StoreMismatchError(f"the texts of {path} changed in {src.spec} since it was extracted (a text, label, "
                                 "group or row moved); extract again (--overwrite) to use them")
    return rows
