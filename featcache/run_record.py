"""What a comparison ran, recorded with its results: the store's provenance, the split draws, the machine, the
versions and the command that reproduces it. Written at compare time, because ``featcache report`` rebuilds the
page from ``results.json`` alone (the store may have moved or gone by then)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from . import __version__
from .cells import budget_name
from .files import utc_now
from .finetune import FinetuneConfig
from .options import _flag
from .runtime import cpu_description
from .store import FeatureStore

__all__ = ["describe_run", "compare_command"]

_STORE_FACTS = ("dataset", "modality", "backbone", "weights_source", "weights_sha256", "preprocessing", "image_size",
                "text", "layers", "dtype", "precision", "device", "extract_seconds", "featcache_version", "created_at")


def describe_run(fs: FeatureStore, schemes: dict[int, tuple[str, str]], options: dict, command: str) -> dict:
    """The ``run`` entry of results.json: everything the report's "what was run" section shows (``options``: the
    fine-tune settings every fine-tune cell ran with, defaults resolved)."""
    attrs = fs.attrs
    splits = {}
    for seed, (scheme, digest) in schemes.items():
        sizes = {part: int(fs.row_indices(f"{scheme}:{part}").size) for part in ("train", "val", "test")}
        splits[str(seed)] = {"scheme": scheme, "sha256": digest, **sizes}
    return {"featcache_version": __version__, "created_at": utc_now(), "command": command,
            "store": {**{k: attrs[k] for k in _STORE_FACTS if k in attrs}, "n_rows": fs.n_rows},
            "label_names": fs.label_names, "splits": splits,
            "fine_tune_options": options,
            "machine": machine()}


def machine() -> dict:
    """The CPU (model and matrix flags), cores, GPU where torch already found one, and the library versions."""
    out = {"cpu": cpu_description(), "cores": os.cpu_count(), "platform": platform.platform(),
           "python": sys.version.split()[0]}
    torch = sys.modules.get("torch")  # only if a fine-tune loaded it: describing the machine must not import it
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    for lib in ("torch", "timm", "scikit-learn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[lib] = metadata.version(lib)
    return out


def _ft_flags(ft_options: dict) -> list[str]:
    """The fine-tune flags that differ from this featcache's defaults (the defaults are in the version recorded)."""
    flags = []
    for f in dataclasses.fields(FinetuneConfig):
        if f.metadata.get("per_run") or f.name not in ft_options or ft_options[f.name] == f.default:
            continue
        value = ft_options[f.name]
        if isinstance(f.default, bool):
            flags.append(_flag(f) if value else "--no-" + f.name.replace("_", "-"))
        else:
            flags += [_flag(f), str(value)]
    return flags


def compare_command(store: Path, out: Path, methods: Sequence[str], budgets: Sequence[int | None], seeds: int,
                    time_budget_minutes: float | None, backend: str, scheduler: str | None, ft_options: dict) -> str:
    """``python -m featcache compare ...`` with every choice that made these results (paths made absolute)."""
    args = ["python", "-m", "featcache", "compare", str(store), "--methods", ",".join(methods),
            "--budgets", ",".join(budget_name(b) for b in budgets), "--seeds", str(seeds), "--out", str(out)]
    if time_budget_minutes is not None:
        args += ["--time-budget", f"{time_budget_minutes:g}"]
    if backend != "local":
        args += ["--backend", backend] + (["--scheduler", scheduler] if scheduler else [])
    return shlex.join(args + _ft_flags(ft_options))
