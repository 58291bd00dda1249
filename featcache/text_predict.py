"""New sentences through a text store's encoder: for ``predict`` (a head or a fine-tuned network) and for
:class:`featcache.estimators.BackboneFeatures` given strings.

Sentences come as a list of strings (the Python API) or from text files, one sentence per line, or stdin (the
command line: :func:`read_sentences`). They run through :func:`featcache.text_embed.embed_texts`, the loop
extraction uses, so a sentence predicted here gets the vector it would have in a store.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from .embed import Batch
from .errors import InputError, StoreMismatchError
from .provenance import store_source
from .store import FeatureStore
from .text_embed import embed_texts
from .text_sources import TextSource

__all__ = ["embed_sentences", "logits_batches", "read_sentences", "sentence_source", "store_texts"]

STDIN = "-"


def sentence_source(inputs: Sequence[str] | TextSource) -> TextSource:
    """Sentences to predict as an unlabeled source: a :class:`TextSource` as it is (e.g. from
    :func:`read_sentences`), or a list of strings, ids "0".."N-1"."""
    if isinstance(inputs, TextSource):
        texts, ids = inputs.texts, inputs.ids
    else:
        if isinstance(inputs, (str, bytes, os.PathLike)):
            raise InputError("give a list of sentences, not a single string")
        texts = list(inputs)
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"a text head predicts sentences (strings), got {type(bad).__name__} {bad!r}; "
                             "on the command line, give text files (one sentence per line) or - for stdin")
        ids = [str(k) for k in range(len(texts))]
    if not texts:
        raise InputError("no sentences to predict")
    return TextSource(spec="sentences", ids=list(ids), labels=None, task="unlabeled", texts=list(texts))


def _split(text: str) -> list[str]:
    """Lines at ``\\n`` (and ``\\r\\n``) only: ``str.splitlines`` also cuts at form feeds, U+2028 and other
    characters a CSV keeps inside one text, which would predict fragments and number the lines wrongly."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _lines(name: str) -> list[str]:
    if name == STDIN:
        return _split(sys.stdin.read())
    if os.path.isdir(name):
        raise InputError(f"{name} is a folder; a text head predicts sentences: give text files (one sentence per "
                         "line) or - for stdin")
    try:
        with open(name, encoding="utf-8-sig", newline="") as fh:
            return _split(fh.read())
    except FileNotFoundError:
        raise InputError(f"input not found: {name}") from None
    except UnicodeDecodeError:
        raise InputError(f"{name} is not a UTF-8 text file (a text head predicts sentences, one per line)") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None


def read_sentences(paths: Sequence[str]) -> TextSource:
    """Sentences from text files, one per line (``-`` or no path: stdin); blank lines are skipped. Ids are line
    numbers (``FILE:LINE`` when several inputs are given), so each prediction points back at its line."""
    paths = list(paths) or [STDIN]
    ids, texts = [], []
    for name in paths:
        lines = [(k, s) for k, s in enumerate(_lines(str(name)), 1) if s.strip()]
        if not lines:
            raise InputError(f"{'stdin' if name == STDIN else name} holds no sentences (one per line)")
        ids += [f"{name}:{k}" if len(paths) > 1 else str(k) for k, _ in lines]
        texts += [s for _, s in lines]
    return sentence_source(TextSource(spec="sentences", ids=ids, labels=None, task="unlabeled", texts=texts))


def embed_sentences(texts: Sequence[str], backbone, layer: str, *, batch_size: int | str = "auto",
                    device: str = "auto", precision: str = "auto") -> np.ndarray:
    """Features of ``texts`` at ``layer``, in order (float32, one row per text)."""
    src = sentence_source(texts)
    out = np.empty((len(src), 0), dtype=np.float32)
    for b in embed_texts(src, backbone, batch_size=batch_size, device=device, precision=precision, quiet=True):
        x = b.feats[layer]
        if out.shape[1] != x.shape[1]:
            out = np.empty((len(src), x.shape[1]), dtype=np.float32)
        out[b.index] = x
    return out


def store_texts(fs: FeatureStore) -> dict[str, int]:
    """Each text of the store's rows -> its row, when the source the store records still holds exactly the texts
    that were embedded (else empty: nothing is read from a cache that might not match)."""
    try:
        src = store_source(fs)  # refuses texts changed since extraction
    except (InputError, StoreMismatchError):
        return {}
    return {t: k for k, t in enumerate(src.texts)}


def logits_batches(net, encoder, src: TextSource, *, batch_size: int | str, device: str, precision: str,
                   quiet: bool) -> Iterator[Batch]:
    """A fine-tuned text network's logits (as the "pooled" features of each :class:`Batch`), driven by the
    extraction loop: same tokenizer, length-sorted windows, device and precision handling."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def embed(self, input_ids, attention_mask):
            return {"pooled": self.net({"input_ids": input_ids, "attention_mask": attention_mask})}

    runner = copy.copy(encoder)  # the same tokenizer and settings; only the module differs
    runner.model = Logits()
    return embed_texts(src, runner, batch_size=batch_size, device=device, precision=precision, quiet=quiet,
                       desc="predict")
