"""What ``rank`` compares: candidates (backbone x input size x layer), parsed and checked before any extraction.

A candidate is one feature set a user could pick. Candidates that share a backbone, its weights and an input
size share one store (one forward pass gives every layer), so a store is a :class:`StorePlan` holding the
layers of its candidates. Everything that can be known without running a model is checked here, all at once,
so a typo in the fifth backbone is reported with the others before the first one is extracted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .backbones import POOLED, parse_backbone
from .errors import FeatcacheError, InputError

__all__ = ["Candidate", "StorePlan", "parse_candidates", "check_candidates", "store_plans", "RANDOM"]

RANDOM = "random"
MIN_SIZE, MAX_SIZE = 8, 2048  # below 8 px nothing is left after the stem; above 2,048 one image alone takes GiBs


@dataclass(frozen=True)
class Candidate:
    """One backbone (with its weights: None = pretrained, found offline-first; ``random``; a file), input size
    (None = the weights' native size) and layer."""

    backbone: str
    image_size: int | None
    layer: str = POOLED
    weights: str | None = None

    @property
    def store_tag(self) -> str:
        """The store's file name: backbone, size and weights (the layer lives inside the store)."""
        spec = parse_backbone(self.backbone)  # the library too: timm's resnet18 is not torchvision's
        size = f"{self.image_size}px" if self.image_size else "native"
        name = spec.arch if spec.library == "timm" else f"{spec.library}-{spec.arch}"
        return _slug(f"{name}-{size}" + ("" if self.weights is None else f"-{_weights_word(self.weights)}"))

    @property
    def tag(self) -> str:
        """A name for files and tables: ``tf_efficientnet_lite0-128px-pooled`` (and ``-random`` for the floor)."""
        return _slug(f"{self.store_tag}-{self.layer}")

    @property
    def label(self) -> str:
        """Short words for sentences and plots: ``tf_efficientnet_lite0 @128px`` (layer when not pooled)."""
        arch = parse_backbone(self.backbone).arch
        size = f"{self.image_size}px" if self.image_size else "native size"
        extra = "" if self.layer == POOLED else f" [{self.layer}]"
        floor = " (random init)" if self.weights == RANDOM else ""
        return f"{arch} @{size}{extra}{floor}"


def _weights_word(weights: str) -> str:
    if weights == RANDOM:
        return RANDOM
    import hashlib

    return "w" + hashlib.sha256(str(weights).encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _sizes(text: str | Sequence | None) -> list[int | None]:
    """"128,224,native" -> [128, 224, None]; a size that is not a usable number stays as text for the check."""
    if text is None:
        return [None]
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list = []
    for s in items:
        s = str(s).strip()
        out.append(None if s in ("native", "None", "") else int(s) if s.lstrip("-").isdigit() else s)
    return list(dict.fromkeys(out))


def parse_candidates(backbones: str | Sequence[str], image_sizes: str | Sequence | None = None,
                     layers: str | Sequence[str] | None = None, random_baseline: bool = True) -> list[Candidate]:
    """Every backbone x size x layer, then the random-init floor (first backbone, first size and layer).

    A backbone may carry its weights after ``=``: ``timm:resnet18=/models/r18.pth`` or ``NAME=random``."""
    names = backbones.split(",") if isinstance(backbones, str) else list(backbones)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InputError("--backbones names at least one backbone")
    layer_list = [la.strip() for la in (layers.split(",") if isinstance(layers, str) else layers or [POOLED])]
    out = []
    for item in names:
        name, _, weights = item.partition("=")
        for size in _sizes(image_sizes):
            out += [Candidate(name.strip(), size, layer, weights.strip() or None) for layer in layer_list]
    if random_baseline and out[0].weights != RANDOM:
        first = out[0]
        out.append(Candidate(first.backbone, first.image_size, first.layer, RANDOM))
    # one model named two ways (efficientnet_lite0, timm:tf_efficientnet_lite0) is one candidate: the first
    unique: dict[str, Candidate] = {}
    for c in out:
        unique.setdefault(c.tag, c)
    return list(unique.values())


def _problem(c: Candidate, known: dict[str, object]) -> str | None:
    """Why ``c`` cannot be extracted, or None. ``known`` caches the per-backbone verdicts."""
    if not isinstance(c.image_size, (int, type(None))) or (c.image_size is not None
                                                           and not MIN_SIZE <= c.image_size <= MAX_SIZE):
        return f"input size {c.image_size!r} is not usable (a whole number of pixels, {MIN_SIZE} to {MAX_SIZE})"
    key = f"{c.backbone}={c.weights}"
    if key not in known:
        known[key] = _backbone_problem(c.backbone, c.weights)
    if known[key]:
        return known[key]
    if c.layer != POOLED:
        layer_key = f"{c.backbone}#layers"
        if layer_key not in known:
            known[layer_key] = _layer_names(c.backbone)
        if isinstance(known[layer_key], str):
            return known[layer_key]
        if not any(n == c.layer or n.startswith(c.layer + ".") for n in known[layer_key]):
            return f"no layer {c.layer!r} (see `featcache layers {c.backbone}`)"
    return None


def _backbone_problem(name: str, weights: str | None) -> str | None:
    from .weights import resolve_weights

    try:
        spec = parse_backbone(name)
        if not _exists(spec.library, spec.arch):
            return f"{spec.library} has no model named {spec.arch!r} (see `featcache backbones`)"
        resolve_weights(spec.library, spec.arch, weights)
    except FeatcacheError as exc:
        return " ".join(str(exc).split())
    return None


def _exists(library: str, arch: str) -> bool:
    if library == "timm":
        import timm

        return bool(timm.is_model(arch))
    import torchvision

    return arch in torchvision.models.list_models()


def _layer_names(backbone: str) -> list[str] | str:
    """The backbone's layer names, or why they cannot be listed here (some graphs do not trace)."""
    from .backbones import list_layers

    try:
        return [n for n, _ in list_layers(backbone, all_nodes=True)]
    except Exception as exc:  # noqa: BLE001 - a model's own tracing error names nothing featcache can fix
        return f"its layers cannot be listed here ({exc.__class__.__name__}); rank its pooled features instead"



def check_candidates(candidates: Sequence[Candidate]) -> None:
    """Refuse, in one message naming every bad candidate, what cannot be extracted: an unknown backbone, weights
    found nowhere, an unusable input size, an unknown layer. Nothing has been written when this raises."""
    known: dict[str, object] = {}
    bad = [(c, p) for c in candidates if (p := _problem(c, known))]
    if bad:
        words = "; ".join(f"{c.backbone}{'=' + c.weights if c.weights else ''} @{c.image_size or 'native'} "
                          f"[{c.layer}]: {p}" for c, p in bad)
        raise InputError(f"{len(bad)} of {len(candidates)} candidates cannot be ranked, nothing was extracted: {words}")


@dataclass
class StorePlan:
    """One store to extract: the candidates (layers) that read it."""

    tag: str
    backbone: str
    weights: str | None
    image_size: int | None
    candidates: list[Candidate]

    @property
    def layers(self) -> list[str]:
        return [c.layer for c in self.candidates]


def store_plans(candidates: Sequence[Candidate]) -> list[StorePlan]:
    """Candidates grouped by store, in the order given."""
    plans: dict[str, StorePlan] = {}
    for c in candidates:
        plan = plans.setdefault(c.store_tag, StorePlan(c.store_tag, c.backbone, c.weights, c.image_size, []))
        plan.candidates.append(c)
    return list(plans.values())
