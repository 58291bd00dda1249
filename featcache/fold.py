"""Fold a frozen network's BatchNorm into the convolution before it: the same function, one pass less per layer.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` is ``conv'(x)`` with scaled weights
and a bias. On a CPU each BatchNorm is a separate pass over memory; folding the 49 of EfficientNet-Lite0 made
its forward pass 1.2-1.75x faster in bf16 and fp32 (2 cores, AVX-512 BF16; ``scripts/bench_extract.py``),
with outputs equal to 3e-6 of their scale in fp32.

A pair is folded only when it is one in the data's path, not just in the module list: one forward pass with
hooks checks that each module runs once and that the BatchNorm's input *is* the convolution's output, and
every feature of every requested layer of the folded copy is compared with the original on the same input.
Anything else (a BatchNorm subclass we do not know, one in training mode, a model without such pairs,
outputs that differ) runs unfolded. The original backbone is never changed: a folded copy is made, so
fine-tuning and anything else holding the model keep their BatchNorm.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["fold_batchnorm", "TOLERANCE", "FLOOR"]

TOLERANCE = 1e-3  # largest difference allowed per feature, relative to the feature's scale (fp32)
FLOOR = 0.01  # a feature's scale is at least this share of its layer's largest value


def _replacement(bn) -> torch.nn.Module | None:
    """What is left of a BatchNorm module once its affine map is in the convolution (None: not foldable)."""
    import torch

    if type(bn) is torch.nn.BatchNorm2d:
        return torch.nn.Identity()
    try:  # timm's BatchNorm + dropout + activation in one module
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(bn) is BatchNormAct2d:
        return torch.nn.Sequential(bn.drop, bn.act)
    return None


def _candidates(model) -> list[tuple[str, str, str]]:
    """(parent, conv, bn) module names where a foldable BatchNorm is registered right after a Conv2d."""
    import torch

    out = []
    for parent_name, parent in model.named_modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and _replacement(bn)
                    is not None and bn.track_running_stats and bn.running_var is not None
                    and bn.num_features == conv.out_channels):
                out.append((parent_name, a, b))
    return out


def _in_data_path(model, pairs, x) -> list[tuple[str, str, str]]:
    """The pairs whose convolution and BatchNorm each run once per forward pass, the BatchNorm reading exactly the
    tensor the convolution wrote. (A second reader of the convolution's output is not visible to hooks: the
    comparison of outputs in :func:`fold_batchnorm` catches it.)"""
    import torch

    wrote: dict = {}
    read: dict = {}
    calls: dict = {}
    handles = []

    # tensors are kept (not their ids, which a freed tensor passes on); a hook returning something would
    # replace the module's input or output, so these return None
    def after_conv(key):
        def hook(module, args, output) -> None:
            wrote.setdefault(key, output)
            calls[key, "conv"] = calls.get((key, "conv"), 0) + 1
        return hook

    def before_bn(key):
        def hook(module, args) -> None:
            read.setdefault(key, args[0])
            calls[key, "bn"] = calls.get((key, "bn"), 0) + 1
        return hook

    for parent_name, a, b in pairs:
        parent = model.get_submodule(parent_name)
        handles.append(parent._modules[a].register_forward_hook(after_conv((parent_name, a, b))))
        handles.append(parent._modules[b].register_forward_pre_hook(before_bn((parent_name, a, b))))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [p for p in pairs if p in wrote and wrote[p] is read.get(p) and calls.get((p, "conv")) == 1
            and calls.get((p, "bn")) == 1]


def _fold_pair(conv, bn) -> None:
    import torch

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
            bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)


def fold_batchnorm(backbone, probe: torch.Tensor):
    """A copy of ``backbone`` with its conv -> BatchNorm pairs folded, and how many; or ``(backbone, 0)`` where
    nothing can be folded safely. ``probe`` is a small fp32 input batch for the checks."""
    import torch

    model = backbone.model
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    if any(isinstance(m, norms) and m.training for m in model.modules()):  # the probe would update its statistics
        return backbone, 0
    pairs = _candidates(model)
    if not pairs:
        return backbone, 0
    pairs = _in_data_path(model, pairs, probe)
    if not pairs:
        return backbone, 0
    folded = copy.deepcopy(model)
    for parent_name, a, b in pairs:
        parent = folded.get_submodule(parent_name)
        _fold_pair(parent._modules[a], parent._modules[b])
        parent._modules[b] = _replacement(parent._modules[b])
    candidate = backbone.with_model(folded)
    with torch.inference_mode():
        ref, new = backbone(probe), candidate(probe)
    for layer, r in ref.items():
        if r.shape != new[layer].shape or not _close(r, new[layer]):
            return backbone, 0
    return candidate, len(pairs)


def _close(ref: torch.Tensor, new: torch.Tensor) -> bool:
    """Every feature (column) within TOLERANCE of its own scale, a scale of at least 1 % of the layer's largest
    value: fp32 rounding passes (~3e-6 of the largest value), a feature that changed does not, however small."""
    ref, new = ref.flatten(1).double(), new.flatten(1).double()
    scale = ref.abs().amax(dim=0).clamp_min(FLOOR * float(ref.abs().max()) or 1.0)
    return bool(((ref - new).abs().amax(dim=0) <= TOLERANCE * scale).all())
