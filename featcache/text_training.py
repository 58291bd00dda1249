"""Fine-tuning on a text store: its rows' sentences as batches of token ids for the one training loop.

The sentences are read again from the source the store records and tokenised once, with the store's own tokenizer
and maximum length (the encoder is rebuilt by :func:`featcache.provenance.backbone_from_store`); each batch is
padded to its longest sentence. Texts have no augmentation: ``augment`` is an image option, and the record says
it was not applied (``augment_applied: false``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .provenance import store_source
from .store import FeatureStore

__all__ = ["TextInputs"]


class _Tokens:
    """Map-style dataset over store rows: (token ids, label)."""

    def __init__(self, tokens: dict[int, list[int]], rows: np.ndarray, labels: np.ndarray):
        self.tokens, self.rows, self.labels = tokens, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        r = int(self.rows[k])
        return self.tokens[r], int(self.labels[r])


class TextInputs:
    """The text counterpart of :class:`featcache.training.ImageInputs` (same constructor, same methods)."""

    def __init__(self, fs: FeatureStore, cfg, rows: dict[str, np.ndarray], net, prep, dev: torch.device):
        src = store_source(fs)
        used = np.unique(np.concatenate([rows[p] for p in ("train", "val", "test")])).tolist()
        self.tokens = dict(zip(used, prep.tokenize([src.read(r) for r in used]), strict=True))
        self.prep, self.dev = prep, dev
        self.extra = {"modality": "text", "augment_applied": False}
        net.to(dev)
        self.eval_sets = {p: _Tokens(self.tokens, rows[p], fs.labels) for p in ("val", "test")}
        self.train_set = _Tokens(self.tokens, rows["train"], fs.labels)

    def _collate(self, items):
        ids, labels = zip(*items, strict=True)
        return dict(self.prep.pad(list(ids))), torch.as_tensor(labels)

    def loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        # tokenised already: padding a batch is cheap, so no worker processes (and no tokenizer forked into them)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=self._collate,
                          pin_memory=self.dev.type == "cuda")

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dev, non_blocking=True) for k, v in batch.items()}
