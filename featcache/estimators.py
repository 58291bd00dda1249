"""scikit-learn transformers for notebooks: cached features by id, or features of raw images.

Both follow the estimator contract: ``__init__`` stores its arguments, ``fit`` opens the store
or builds the backbone and leaves state in ``*_`` attributes, so ``clone``, ``Pipeline``,
``GridSearchCV`` and ``cross_val_score`` work, and ``set_output(transform="pandas")`` names the
columns ``<layer>_<i>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .backbones import POOLED
from .errors import InputError, UnknownLayerError
from .store import FeatureStore
from .text_encoders import is_text_backbone

__all__ = ["CachedFeatures", "BackboneFeatures"]


def _as_items(X) -> list:
    """Sample ids / image paths from a list, 1-D array, one-column 2-D array, Series or DataFrame."""
    if hasattr(X, "iloc"):  # pandas
        X = X.to_numpy()
    if isinstance(X, (str, bytes, os.PathLike)):
        raise ValueError("expected a sequence of ids or images, got a single string")
    arr = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of ids or one column, got shape {arr.shape}")
    return list(arr)


def _names(layer: str, dim: int) -> np.ndarray:
    return np.asarray([f"{layer}_{i}" for i in range(dim)], dtype=object)


class CachedFeatures(TransformerMixin, BaseEstimator):
    """Map sample ids to their features in a store, so a Pipeline starts from ids.

    >>> import featcache
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import Pipeline
    >>> _, y_train, train_ids = featcache.load(store, split="train")
    >>> _, y_test, test_ids = featcache.load(store, split="test")
    >>> pipe = Pipeline([("features", CachedFeatures(store)), ("clf", LogisticRegression(max_iter=1000))])
    >>> pipe.fit(train_ids, y_train).score(test_ids, y_test) > 0.9
    True
    """

    def __init__(self, store: str | os.PathLike | None = None, layer: str | None = None):
        self.store = store
        self.layer = layer

    def fit(self, X, y=None):
        items = _as_items(X)
        if self.store is None:
            raise InputError("CachedFeatures needs store=PATH")
        with FeatureStore(self.store) as fs:
            self.layer_ = self.layer or fs.layers[0]
            self.n_features_out_ = fs.dim(self.layer_)
            self.index_ = {str(i): k for k, i in enumerate(fs.ids)}
            self.fingerprint_ = fs.fingerprint
        self.n_features_in_ = 1
        self._rows(items)  # unknown ids fail at fit, not later
        return self

    def _rows(self, items) -> np.ndarray:
        try:
            return np.asarray([self.index_[str(i)] for i in items], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"id {exc.args[0]!r} is not in the store {self.store}") from exc

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "index_")
        rows = self._rows(_as_items(X))
        with FeatureStore(self.store) as fs:
            if fs.fingerprint != self.fingerprint_:
                raise ValueError(f"{self.store} changed since fit; fit again")
            return fs.features(self.layer_, rows)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return _names(self.layer_, self.n_features_out_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = True
        return tags


class BackboneFeatures(TransformerMixin, BaseEstimator):
    """Features of raw images (paths, PIL images or uint8 arrays) from a frozen backbone, or of sentences
    (strings) from a text encoder (``backbone="hf:PATH_OR_NAME"``, or a text store).

    With ``store=``, the backbone, weights and preprocessing come from the store's provenance and
    images already in the store (matched by path relative to the store's source folder) are read
    from the cache instead of being recomputed; for a text store, sentences whose exact text is in the
    store are. A text encoder's pooling and maximum length are the store's, or the model folder's own.
    """

    def __init__(self, backbone: str | None = None, weights: str | None = None, layer: str = POOLED,
                 image_size: int | None = None, store: str | os.PathLike | None = None, batch_size: int = 32,
                 device: str = "cpu"):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.image_size = image_size
        self.store = store
        self.batch_size = batch_size
        self.device = device

    def fit(self, X=None, y=None):
        from .backbones import build_backbone
        from .provenance import backbone_from_store, store_modality

        self.text_ = is_text_backbone(self.backbone) if self.store is None else store_modality(self.store) == "text"
        if self.text_:
            return self._fit_texts()
        self.cache_index_ = {}
        self.cache_root_ = None
        if self.store is not None:
            with FeatureStore(self.store) as fs:
                if self.layer not in fs.layers:
                    raise UnknownLayerError(f"{self.store} has no layer {self.layer!r}")
                self.cache_index_ = {str(i): k for k, i in enumerate(fs.ids)}
                dataset = Path(str(fs.attrs.get("dataset", "")))
                self.cache_root_ = dataset if dataset.is_dir() else dataset.parent
            self.backbone_, self.precision_ = backbone_from_store(self.store, [self.layer])
        else:
            self.backbone_ = build_backbone(self.backbone, weights=self.weights, layers=[self.layer],
                                            image_size=self.image_size)
            self.precision_ = "fp32"
        import torch

        with torch.inference_mode():
            size = self.backbone_.preprocessing.input_size
            self.n_features_out_ = int(self.backbone_(torch.zeros(1, 3, size, size))[self.layer].shape[1])
        self.n_features_in_ = 1
        return self

    def _fit_texts(self):
        from .provenance import backbone_from_store
        from .text_encoders import build_text_encoder
        from .text_predict import embed_sentences, store_texts

        if self.weights is not None or self.image_size is not None:
            raise InputError("weights and image_size are image options; a text encoder's folder holds its weights")
        self.cache_index_, self.cache_root_ = {}, None
        if self.store is not None:
            with FeatureStore(self.store) as fs:
                if self.layer not in fs.layers:
                    raise UnknownLayerError(f"{self.store} has no layer {self.layer!r}")
                self.cache_index_ = store_texts(fs)  # text -> row
                self.backbone_, self.precision_ = backbone_from_store(fs, [self.layer])
        else:
            self.backbone_, self.precision_ = build_text_encoder(self.backbone, [self.layer]), "fp32"
        self.n_features_out_ = embed_sentences(["a"], self.backbone_, self.layer, device=self.device,
                                               precision=self.precision_).shape[1]
        self.n_features_in_ = 1
        return self

    def _transform_texts(self, items: list) -> np.ndarray:
        from .text_predict import embed_sentences

        bad = next((t for t in items if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"a text encoder embeds strings, got {type(bad).__name__} {bad!r}")
        out = np.empty((len(items), self.n_features_out_), dtype=np.float32)
        cached = {k: r for k, t in enumerate(items) if (r := self.cache_index_.get(t)) is not None}
        if cached:
            with FeatureStore(self.store) as fs:
                out[list(cached)] = fs.features(self.layer, np.asarray(list(cached.values())))
        todo = [k for k in range(len(items)) if k not in cached]
        if todo:
            out[todo] = embed_sentences([items[k] for k in todo], self.backbone_, self.layer,
                                        batch_size=self.batch_size, device=self.device, precision=self.precision_)
        return out

    def _cache_row(self, item) -> int | None:
        if self.cache_root_ is None or not isinstance(item, (str, os.PathLike)):
            return None
        try:
            rel = Path(item).resolve().relative_to(self.cache_root_.resolve()).as_posix()
        except ValueError:
            rel = str(item)
        return self.cache_index_.get(rel)

    def transform(self, X) -> np.ndarray:
        from PIL import Image

        from .sources import in_memory

        check_is_fitted(self, "backbone_")
        items = _as_items(X)
        if self.text_:
            return self._transform_texts(items)
        out = np.empty((len(items), self.n_features_out_), dtype=np.float32)
        cached = {k: r for k, item in enumerate(items) if (r := self._cache_row(item)) is not None}
        if cached:
            with FeatureStore(self.store) as fs:
                out[list(cached)] = fs.features(self.layer, np.asarray(list(cached.values())))
        todo = [k for k in range(len(items)) if k not in cached]
        if todo:
            imgs = []
            for k in todo:
                item = items[k]
                if isinstance(item, (str, os.PathLike)):
                    with Image.open(item) as im:
                        item = im.convert("RGB")
                elif isinstance(item, np.ndarray):
                    item = Image.fromarray(item.astype(np.uint8))
                imgs.append(np.asarray(item.convert("RGB")))
            shapes = {im.shape for im in imgs}
            arr = np.stack(imgs) if len(shapes) == 1 else None
            if arr is None:  # different sizes: one source per image keeps the loader simple
                out[todo] = np.stack([self._embed(in_memory(im[None]))[0] for im in imgs])
            else:
                out[todo] = self._embed(in_memory(arr))
        return out

    def _embed(self, src) -> np.ndarray:
        from .embed import embed_batches

        parts = [b.feats[self.layer] for b in embed_batches(src, self.backbone_, batch_size=self.batch_size,
                                                              workers=0, device=self.device,
                                                              precision=self.precision_, quiet=True)]
        return np.concatenate(parts)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return _names(self.layer, self.n_features_out_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
