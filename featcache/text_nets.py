"""The torch side of a sentence encoder: a Hugging Face model whose hidden states are pooled into sentence vectors.

Kept apart from :mod:`featcache.text_encoders` (names, folders, settings) because it needs torch at import.
The same module serves extraction (:meth:`SentenceEncoder.embed`: every requested layer) and fine-tuning
(``forward``: the pooled last layer, the vector the store's ``pooled`` features hold), so a fine-tuned
network starts from exactly the features its linear probe saw.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SentenceEncoder", "pool"]

POOLED = "pooled"


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...], normalize: bool) -> torch.Tensor:
    """Pool token states (N, T, D) over the real tokens (``mask`` 1) into (N, D * len(modes)), in float32, as
    sentence-transformers' Pooling (and Normalize) modules do."""
    h = hidden.float()
    m = mask.unsqueeze(-1).to(h.dtype)
    count = m.sum(1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(h[:, 0])
        elif mode == "max":
            parts.append(h.masked_fill(m == 0, -1e9).max(1).values)
        elif mode == "mean_sqrt_len":
            parts.append((h * m).sum(1) / count.sqrt())
        else:  # mean
            parts.append((h * m).sum(1) / count)
    x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
    return F.normalize(x, p=2, dim=1) if normalize else x


class SentenceEncoder(nn.Module):
    """A transformer encoder and its pooling: ``embed`` gives every requested layer, ``forward`` the pooled one."""

    def __init__(self, model: nn.Module, modes: tuple[str, ...], normalize: bool, layers: list[str]):
        super().__init__()
        self.model = model
        self.modes, self.normalize, self.layers = tuple(modes), bool(normalize), list(layers)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = any(la != POOLED for la in self.layers)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        states = {la: out.last_hidden_state if la == POOLED else out.hidden_states[int(la.split(".")[1])]
                  for la in self.layers}
        return {la: pool(h, attention_mask, self.modes, self.normalize) for la, h in states.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return pool(out.last_hidden_state, batch["attention_mask"], self.modes, self.normalize)

    def _layer_list(self) -> nn.ModuleList:
        n = int(getattr(self.model.config, "num_hidden_layers", 0))
        for _, m in self.model.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) == n and n > 0:
                return m
        raise ValueError("cannot find the transformer layers of this model")

    def block_groups(self) -> list[list[nn.Module]]:
        """Input to output: the embeddings (every part outside the layer stack), then each transformer layer;
        ``last-n`` and gradual unfreezing train the last of these."""
        layers = self._layer_list()
        inside = {id(m) for m in layers.modules()}
        stem = [m for _, m in self.model.named_children()
                if id(m) not in inside and not any(id(x) == id(layers) for x in m.modules())
                and any(True for _ in m.parameters())]
        return ([stem] if stem else []) + [[layer] for layer in layers]

    def add_lora(self, rank: int) -> int:
        """LoRA adapters (peft) on every linear layer of the transformer stack (attention and feed-forward);
        returns how many layers were adapted."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:
            from .errors import InputError

            raise InputError("lora on a text encoder needs peft: pip install 'featcache[text]'") from exc
        layers = self._layer_list()
        names = sorted({n.rsplit(".", 1)[-1] for n, m in layers.named_modules() if isinstance(m, nn.Linear)})
        count = sum(isinstance(m, nn.Linear) for m in layers.modules())
        cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=names)
        self.model = inject_adapter_in_model(cfg, self.model)
        return count
