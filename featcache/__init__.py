"""featcache: extract frozen-backbone features once, train classical heads in seconds,
and measure fine-tuning against them on the same splits.

The public API is imported lazily so that ``import featcache`` (and a no-op re-run of
``featcache extract``) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

from . import text_sources  # noqa: E402, F401 - registers text (CSV/JSONL, builtin:rotten-tomatoes) with open_source

_EXPORTS = {
    "extract": "featcache.extractor",
    "ExtractResult": "featcache.extractor",
    "FeatureStore": "featcache.store",
    "load": "featcache.store",
    "open_source": "featcache.sources",
    "Source": "featcache.sources",
    "build_backbone": "featcache.backbones",
    "fit_head": "featcache.heads",
    "load_head": "featcache.heads",
    "evaluate_head": "featcache.heads",
    "add_split": "featcache.store",
    "SplitSpec": "featcache.splits",
    "predict": "featcache.predict",
    "compare": "featcache.compare",
    "CompareResult": "featcache.results",
    "rank": "featcache.rank",
    "RankResult": "featcache.rank_report",
    "finetune": "featcache.finetune",
    "FinetuneResult": "featcache.finetune",
    "CachedFeatures": "featcache.estimators",
    "BackboneFeatures": "featcache.estimators",
    "list_layers": "featcache.backbones",
    "FeatcacheError": "featcache.errors",
    "InputError": "featcache.errors",
}

__all__ = ["__version__", *_EXPORTS]


class _Package(types.ModuleType):
    """Keeps ``featcache.compare`` (and ``finetune``, ``predict``) the function: importing the submodule of the
    same name would otherwise rebind the package's attribute to the module, and ``featcache.compare(...)`` would
    then fail depending on what happened to be imported first. The submodules stay in ``sys.modules``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
