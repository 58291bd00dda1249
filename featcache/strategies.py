"""Fine-tuning modes as small strategies over one training loop: the registry of modes.

A strategy decides which parameters train (and when, for gradual unfreezing), how the head starts
(LP-FT), what structure a saved model needs before its weights load (LoRA), and what one training
step costs (compare's time estimate). The loop in :mod:`featcache.finetune` is written once; adding a
mode is one class here, registered with :func:`register`; the command line, the config's checks
and compare's cost model all read :data:`MODES`. Nothing here imports torch at import time, so the
command line lists the modes cheaply; the networks are in :mod:`featcache.nets`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from .errors import InputError
from .heads import fit_head

if TYPE_CHECKING:
    from .nets import FinetuneNet
    from .store import FeatureStore

__all__ = ["MODES", "BN_STATS", "Strategy", "register", "make_strategy"]

MODES: dict[str, type[Strategy]] = {}
# what happens to BatchNorm running statistics while training (FinetuneConfig.bn_stats)
BN_STATS = {
    # measured on Fashion-MNIST, 100 labels/class: full fine-tuning 0.849 with the statistics frozen vs 0.754
    # when noisy batches of 32 re-estimate them
    "frozen": "BatchNorm keeps its pretrained running statistics everywhere (small data)",
    "frozen-parts": "only BatchNorm layers in frozen parts keep theirs; trainable ones re-estimate (large data)",
}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy to :data:`MODES` under its ``name`` (each mode says its name, help and step cost)."""
    missing = [a for a in ("name", "help", "step_cost") if a not in vars(cls)]
    if missing or cls.name in MODES:
        raise TypeError(f"strategy {cls.__name__}: {'missing ' + ', '.join(missing) if missing else 'name taken'}")
    MODES[cls.name] = cls
    return cls


class Strategy:
    """Which parameters train. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    help: ClassVar[str]
    # time of one training image step relative to one frozen forward pass (compare's time-budget estimate);
    # linear, last-n, full and lp-ft measured by scripts/bench_compare.py (EfficientNet-Lite0, CPU)
    step_cost: ClassVar[float]

    def __init__(self, cfg):
        self.cfg = cfg  # a FinetuneConfig (read: unfreeze, epochs, lora_rank, bn_stats, split, per_class, seed)

    def setup(self, net: FinetuneNet, fs: FeatureStore) -> dict:
        """Before training: freeze, adapt, initialise the head. Returns what the run's record should say."""
        self.restore(net)
        _trainable([net], True)
        return {}

    def restore(self, net: FinetuneNet) -> None:
        """Give ``net`` the structure a saved model of this mode has, so its weights load (LoRA's adapters)."""

    def on_epoch(self, net: FinetuneNet, epoch: int) -> None:
        """Called before each epoch (gradual unfreezing changes what trains here)."""

    def train_mode(self, net: FinetuneNet) -> None:
        """train() everywhere, then eval() for BatchNorm layers whose statistics must not move: those whose
        parameters are frozen, or every one with ``bn_stats="frozen"`` (see :data:`BN_STATS`). A backbone with
        nothing to train (linear, gradual's first epochs) runs in eval mode: its dropout (BERT's 0.1) would
        otherwise feed the head noisier features than the stored ones its probe and the report compare with."""
        from torch import nn

        net.train()
        if not any(p.requires_grad for p in net.backbone.parameters()):
            net.backbone.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if self.cfg.bn_stats == "frozen" or (params and not any(p.requires_grad for p in params)):
                    m.eval()


def _trainable(modules, flag: bool) -> None:
    from .nets import set_trainable  # torch: imported when a run starts, not when the CLI lists the modes

    set_trainable(modules, flag)


def _head_only(net: FinetuneNet) -> None:
    _trainable([net.backbone], False)
    _trainable([net.head], True)


@register
class Linear(Strategy):
    name = "linear"
    help = "backbone frozen, only the head trains (the linear probe, in the same loop)"
    step_cost = 1.0

    def setup(self, net: FinetuneNet, fs: FeatureStore) -> dict:
        _head_only(net)
        return {}


@register
class LastN(Strategy):
    name = "last-n"
    help = "the last --unfreeze block groups and the head train"
    step_cost = 2.3

    def setup(self, net: FinetuneNet, fs: FeatureStore) -> dict:
        from .nets import block_groups

        groups = block_groups(net.backbone)
        if not 1 <= self.cfg.unfreeze <= len(groups):
            raise InputError(f"--unfreeze must be between 1 and {len(groups)} for this backbone")
        _head_only(net)
        _trainable([m for g in groups[-self.cfg.unfreeze:] for m in g], True)
        return {}


@register
class Full(Strategy):
    name = "full"
    help = "everything trains"
    step_cost = 5.2


@register
class Gradual(Linear):
    """Starts as the linear probe; block groups join top-down as epochs pass."""

    name = "gradual"
    help = "head first, then block groups unfrozen top-down as epochs pass (ULMFiT)"
    step_cost = 3.5  # not measured: between last-n and full

    def on_epoch(self, net: FinetuneNet, epoch: int) -> None:
        from .nets import block_groups

        groups = block_groups(net.backbone)
        step = max(1, math.ceil(len(groups) / max(1, self.cfg.epochs - 1)))
        n = min(len(groups), epoch * step)
        if n:
            _trainable([m for g in groups[-n:] for m in g], True)


@register
class LPFT(Strategy):
    name = "lp-ft"
    help = "linear probe, then fine-tune everything: the head starts as the logistic head fitted on cached features"
    step_cost = 5.0

    def setup(self, net: FinetuneNet, fs: FeatureStore) -> dict:
        _trainable([net], True)
        return init_head_from_logreg(net, fs, self.cfg)


@register
class LoRA(Strategy):
    """Two implementations, one per kind of backbone. Conv nets: hand-written (:class:`featcache.nets.LoRAConv`),
    since peft would bring transformers and accelerate in for a 30-line module, and its conv support does not
    cover depthwise layers anyway (those stay frozen; the pointwise layers hold most of an EfficientNet's
    parameters). Text encoders: peft (:meth:`featcache.text_nets.SentenceEncoder.add_lora`), since a transformer's
    attention and feed-forward layers are plain linear layers, exactly what peft covers, transformers is loaded
    already, and it is the LoRA text users know."""

    name = "lora"
    help = "low-rank adapters (--lora-rank) on the 1x1 convs and linear layers (text: peft); backbone frozen"
    step_cost = 3.0  # not measured

    def setup(self, net: FinetuneNet, fs: FeatureStore) -> dict:
        _trainable([net.backbone], False)
        self.restore(net)
        _trainable([net.head], True)
        return {}

    def restore(self, net: FinetuneNet) -> None:
        from .nets import add_lora

        if not add_lora(net.backbone, self.cfg.lora_rank):
            raise InputError("lora: the backbone has no 1x1 conv or linear layer to adapt")


def init_head_from_logreg(net: FinetuneNet, fs: FeatureStore, cfg) -> dict:
    """LP-FT: fit the logistic head on cached features of the same train rows, copy it into the head.

    The pipeline standardises features; folding the scaler into the weights makes the network's
    logits equal the pipeline's decision function at step 0 (the head reads the ``pooled`` layer, the one the
    network's backbone outputs, normalisation included for a text encoder).
    """
    import numpy as np
    import torch

    layer = "pooled" if "pooled" in fs.layers else None  # what the network's backbone outputs
    res = fit_head(fs, "logreg", layer=layer, split=cfg.split, per_class=cfg.per_class, seed=cfg.seed, save=False,
                   quiet=True)
    scaler, lr = res.pipeline.named_steps["scale"], res.pipeline.named_steps["head"]
    # a feature that barely varies (all-MiniLM-L6-v2 has dimensions of size 1e-33) is standardised by a tiny scale;
    # folded in, its weight is ~1e30 and the first update of the encoder sends the logits to infinity (measured:
    # LP-FT on rotten-tomatoes fell from 0.66 to below chance in one epoch). Such a feature holds rounding noise, so
    # it starts at weight 0 (its contribution at the mean); every other feature is folded exactly.
    dead = scaler.scale_ < 1e-6 * np.median(scaler.scale_)
    W = np.where(dead, 0.0, lr.coef_ / scaler.scale_)
    b = lr.intercept_ - W @ scaler.mean_
    if W.shape[0] == 1:  # binary: softmax over [0, z] equals the sigmoid of z
        W, b = np.vstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
    with torch.no_grad():
        net.head.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        net.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return {"lp_value": res.meta["value"], "lp_val_score": res.meta["val_score"], "lp_zeroed_features": int(dead.sum())}


def make_strategy(cfg) -> Strategy:
    """The strategy for ``cfg.mode``."""
    if cfg.mode not in MODES:
        raise InputError(f"unknown fine-tune mode {cfg.mode!r}; choose {', '.join(MODES)}")
    return MODES[cfg.mode](cfg)
