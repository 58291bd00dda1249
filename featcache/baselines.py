"""Baselines that need no backbone at all, run by ``compare`` beside the heads and fine-tunes.

For text, the comparison a sceptical reader makes first is TF-IDF with a logistic regression: on short reviews
it is often as good as a sentence encoder with a linear probe, at a fraction of the cost. ``tfidf`` reads the
store's texts (:func:`featcache.provenance.store_source`), not its features, on exactly the rows a head reads
(the same split scheme, the same nested label-budget draw), chooses C on val as the heads do, and is scored by
the same :func:`featcache.metrics.score`, so its row in the report compares like for like.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import InputError
from .metrics import score, selection_score
from .provenance import store_source
from .runtime import peak_rss_bytes, reset_peak_rss
from .splits import PARTS
from .store import FeatureStore

__all__ = ["BASELINES", "TFIDF_GRID", "tfidf_vectorizer", "fit_tfidf", "check_baseline"]

BASELINES = ("tfidf",)  # methods that read the raw data (texts), neither the cached features nor the backbone
TFIDF_GRID = tuple(float(c) for c in np.logspace(-2, 3, 6))  # C; rows are L2-normalised, so 1-100 usually wins
MIN_DF_FROM = 100  # from this many train texts on, a term must occur in two of them (see tfidf_vectorizer)


def check_baseline(fs: FeatureStore, method: str) -> None:
    """Refuse a baseline the store cannot feed (TF-IDF on an image store), before anything is written."""
    if method == "tfidf" and fs.attrs.get("modality") != "text":
        raise InputError(f"tfidf is a baseline for text stores; {fs.path} holds "
                         f"{fs.attrs.get('modality') or 'image'} features")


def tfidf_vectorizer(n_train: int):
    """Word unigrams and bigrams, sublinear tf. ``min_df=2`` from :data:`MIN_DF_FROM` train texts on: a term seen
    in one text only cannot generalise and makes up most of a bigram vocabulary; below that (a few labels per
    class) it would leave almost nothing to learn from."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if n_train >= MIN_DF_FROM else 1,
                           dtype=np.float32)


def _rows(fs: FeatureStore, scheme: str, per_class: int | None) -> dict[str, np.ndarray]:
    """The rows a head reads for this scheme and budget (the train rows are the budget's nested draw)."""
    rows = {p: fs.row_indices(f"{scheme}:{p}", per_class if p == "train" else None) for p in PARTS}
    if rows["val"].size == 0:
        raise InputError(f"split {scheme!r} has no val rows to choose C on")
    if np.unique(fs.labels[rows["train"]]).size < 2:
        raise InputError(f"tfidf needs at least two classes; the train rows of split {scheme!r} have one")
    return rows


def fit_tfidf(fs: FeatureStore, *, split: str, per_class: int | None = None, seed: int = 0,
              grid: tuple[float, ...] = TFIDF_GRID) -> dict:
    """TF-IDF + logistic regression on the store's texts: C chosen on val (ties go to the stronger
    regularisation), the fit at that C scored on test. Returns a compare cell's figures (``kind: baseline``)."""
    from sklearn.linear_model import LogisticRegression

    check_baseline(fs, "tfidf")
    if fs.task != "classification":
        raise InputError("tfidf is a classifier baseline; the store's task is regression")
    rows = _rows(fs, split, per_class)
    texts = store_source(fs).texts
    text = {p: [texts[i] for i in r] for p, r in rows.items()}
    y = {p: fs.labels[r] for p, r in rows.items()}
    reset_peak_rss()
    t = time.perf_counter()
    vec = tfidf_vectorizer(rows["train"].size)
    try:
        X = {"train": vec.fit_transform(text["train"])}
    except ValueError as exc:  # an empty vocabulary: every train text is punctuation or single letters
        raise InputError(f"tfidf found no words in the train texts of split {split!r} ({exc})") from None
    X.update({p: vec.transform(text[p]) for p in ("val", "test")})
    fits, scores = [], []
    for c in sorted(grid):  # ascending C: strongest regularisation first, so the first best wins a tie
        est = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(X["train"], y["train"])
        fits.append(est)
        scores.append(selection_score("classification", y["val"], est.predict(X["val"])))
    best = next(i for i, s in enumerate(scores) if s >= max(scores) - 1e-12)
    est = fits[best]
    metrics = score("classification", y["test"], est.predict(X["test"]), fs.label_names) if y["test"].size \
        else {"n": 0}
    return {"metrics": metrics, "train_seconds": time.perf_counter() - t, "peak_rss_bytes": peak_rss_bytes(),
            "trainable_params": int(est.coef_.size + est.intercept_.size), "n_train": int(rows["train"].size),
            "kind": "baseline", "chosen": {"C": sorted(grid)[best]}, "val_score": scores[best],
            "vocabulary": len(vec.vocabulary_)}
