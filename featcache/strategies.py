"""Fine-tuning modes as small strategies over one training loop.

A strategy decides which parameters train (and when, for gradual unfreezing) and how the head
starts (LP-FT). The loop in :mod:`featcache.finetune` is written once; modes never copy it.
BatchNorm layers whose parameters are frozen keep their running statistics frozen too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InputError

__all__ = ["MODES", "FinetuneNet", "Strategy", "make_strategy", "block_groups", "count_params"]

MODES = ("linear", "last-n", "full", "gradual", "lp-ft", "lora")


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


def _set_trainable(modules, flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


class Strategy:
    """Which parameters train. Subclasses override :meth:`setup` and, if needed, :meth:`on_epoch`."""

    name = "full"

    def __init__(self, unfreeze: int = 2, epochs: int = 1, lora_rank: int = 8):
        self.unfreeze, self.epochs, self.lora_rank = unfreeze, epochs, lora_rank

    def setup(self, net: FinetuneNet) -> None:
        _set_trainable([net], True)

    def on_epoch(self, net: FinetuneNet, epoch: int) -> None:
        """Called before each epoch (gradual unfreezing changes what trains here)."""

    @staticmethod
    def train_mode(net: FinetuneNet, bn_stats: str = "frozen") -> None:
        """train() everywhere, then eval() for BatchNorm layers whose statistics must not move:
        those whose parameters are frozen, or every one with ``bn_stats="frozen"`` (small batches
        of a small dataset give noisy statistics that can undo the pretrained ones)."""
        net.train()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if bn_stats == "frozen" or (params and not any(p.requires_grad for p in params)):
                    m.eval()


class Full(Strategy):
    name = "full"


class Linear(Strategy):
    """Backbone frozen; only the head trains (the linear-probe baseline, in the same loop)."""

    name = "linear"

    def setup(self, net: FinetuneNet) -> None:
        _set_trainable([net.backbone], False)
        _set_trainable([net.head], True)


class LastN(Strategy):
    """The last N block groups and the head train; everything before stays frozen."""

    name = "last-n"

    def setup(self, net: FinetuneNet) -> None:
        groups = block_groups(net.backbone)
        if not 1 <= self.unfreeze <= len(groups):
            raise InputError(f"--unfreeze must be between 1 and {len(groups)} for this backbone")
        _set_trainable([net.backbone], False)
        _set_trainable([m for g in groups[-self.unfreeze:] for m in g], True)
        _set_trainable([net.head], True)


class Gradual(Strategy):
    """Head first, then block groups unfrozen top-down as epochs pass (ULMFiT-style)."""

    name = "gradual"

    def setup(self, net: FinetuneNet) -> None:
        _set_trainable([net.backbone], False)
        _set_trainable([net.head], True)

    def on_epoch(self, net: FinetuneNet, epoch: int) -> None:
        groups = block_groups(net.backbone)
        step = max(1, math.ceil(len(groups) / max(1, self.epochs - 1)))
        n = min(len(groups), epoch * step)
        if n:
            _set_trainable([m for g in groups[-n:] for m in g], True)


class LPFT(Full):
    """Linear probe, then fine-tune everything: the head starts as the fitted logistic head."""

    name = "lp-ft"


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


class LoRA(Strategy):
    """Low-rank adapters on the backbone's pointwise (1x1) convs and linear layers; backbone frozen.

    Hand-written rather than with peft: peft would bring transformers and accelerate in as
    dependencies for what is a 30-line module here. Depthwise convs are left frozen; the pointwise
    layers hold most of an EfficientNet's or MobileNet's parameters.
    """

    name = "lora"

    def setup(self, net: FinetuneNet) -> None:
        _set_trainable([net.backbone], False)
        targets = [(name, m) for name, m in net.backbone.named_modules()
                   if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)
                   or isinstance(m, nn.Linear)]
        if not targets:
            raise InputError("lora: the backbone has no 1x1 conv or linear layer to adapt")
        for name, m in targets:
            parent_name, _, leaf = name.rpartition(".")
            parent = net.backbone.get_submodule(parent_name) if parent_name else net.backbone
            setattr(parent, leaf, LoRAConv(m, self.lora_rank))
        _set_trainable([net.head], True)


_STRATEGIES = {s.name: s for s in (Linear, LastN, Full, Gradual, LPFT, LoRA)}


def make_strategy(mode: str, *, unfreeze: int = 2, epochs: int = 1, lora_rank: int = 8) -> Strategy:
    if mode not in _STRATEGIES:
        raise InputError(f"unknown fine-tune mode {mode!r}; choose {', '.join(MODES)}")
    return _STRATEGIES[mode](unfreeze=unfreeze, epochs=epochs, lora_rank=lora_rank)
