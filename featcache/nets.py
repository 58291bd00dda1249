"""The networks fine-tuning trains: backbone + head, its block groups, and LoRA adapters.

A backbone that knows its own structure (the text encoder, :class:`featcache.text_nets.SentenceEncoder`) says
it through ``block_groups()`` and ``add_lora()``; conv nets are read here.

Kept apart from the strategies (which only decide what trains) because it needs torch at import,
and the command line must list the modes without importing torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbones import POOLED
from .provenance import backbone_from_store, store_modality
from .store import FeatureStore

__all__ = ["FinetuneNet", "LoRAConv", "block_groups", "count_params", "set_trainable", "add_lora", "build_net"]


class FinetuneNet(nn.Module):
    """Backbone (classifier removed, pooled embedding out) + dropout + a linear head."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def block_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone as ordered groups, input to output: stem, each block/stage, with what follows
    the last block (e.g. timm's conv_head/bn2) folded into the last group."""
    if hasattr(model, "block_groups"):  # the text encoder: embeddings, then each transformer layer
        return model.block_groups()
    order = list(model.children())
    container = None
    for attr in ("blocks", "stages", "layers", "features"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            blocks, container = list(seq), seq
            break
    else:
        if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # ResNet family
            blocks = [getattr(model, f"layer{i}") for i in range(1, 5)]
        else:
            blocks = [m for m in order if any(True for _ in m.parameters())]
    members = [container] if container is not None else blocks
    first = min(order.index(m) for m in members)
    last = max(order.index(m) for m in members)
    stem = [m for m in order[:first] if any(True for _ in m.parameters())]
    tail = [m for m in order[last + 1:] if any(True for _ in m.parameters())]
    groups = ([stem] if stem else []) + [[b] for b in blocks]
    groups[-1] = groups[-1] + tail
    return groups


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def set_trainable(modules, flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


class LoRAConv(nn.Module):
    """A frozen 1x1 conv / linear layer plus a trainable low-rank update (B @ A), B initialised to zero."""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        is_conv = isinstance(base, nn.Conv2d)
        fin = base.in_channels if is_conv else base.in_features
        fout = base.out_channels if is_conv else base.out_features
        self.scale = (alpha or rank) / rank
        self.down = nn.Conv2d(fin, rank, 1, bias=False) if is_conv else nn.Linear(fin, rank, bias=False)
        self.up = nn.Conv2d(rank, fout, 1, bias=False) if is_conv else nn.Linear(rank, fout, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        if is_conv and base.stride != (1, 1):
            self.down.stride = base.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def add_lora(backbone: nn.Module, rank: int) -> int:
    """Wrap every pointwise (1x1) conv and linear layer of ``backbone`` in a LoRA adapter; returns how many.
    A backbone with its own ``add_lora`` (the text encoder: peft on its transformer layers) uses that."""
    if hasattr(backbone, "add_lora"):
        return backbone.add_lora(rank)
    targets = [(name, m) for name, m in backbone.named_modules()
               if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1) or isinstance(m, nn.Linear)]
    for name, m in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, leaf, LoRAConv(m, rank))
    return len(targets)


def build_net(fs: FeatureStore, num_classes: int, dropout: float):
    """FinetuneNet on the store's backbone (same weights file, checked by hash) and its preprocessing (for a
    text store: the sentence encoder, whose tokenizer stands in for the preprocessing)."""
    bb, _ = backbone_from_store(fs, [POOLED])
    if store_modality(fs) == "text":
        return FinetuneNet(bb.model, fs.dim(POOLED) if POOLED in fs.layers else _text_dim(bb), num_classes,
                           dropout), bb
    dim = fs.dim(POOLED) if POOLED in fs.layers else None
    if dim is None:
        with torch.inference_mode():
            s = bb.preprocessing.input_size
            dim = int(bb.model(torch.zeros(1, 3, s, s)).shape[1])
    return FinetuneNet(bb.model, dim, num_classes, dropout), bb.preprocessing


def _text_dim(bb) -> int:
    """The pooled width of a sentence encoder, from one short sentence (a store without ``pooled``)."""
    with torch.inference_mode():
        return int(bb.model(bb.pad(bb.tokenize(["a"]))).shape[1])
