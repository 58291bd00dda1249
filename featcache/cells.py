"""The compare grid's cache: one JSON file per finished (or skipped) cell, written atomically as soon
as the cell is done, so an interrupted compare resumes and a re-run computes only what is missing.

A cached cell is reused only if it was computed on the same store (fingerprint), the same draw of the
split (its digest) and, for a fine-tune, the same fully resolved options; anything else is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from .faults import fault_point
from .files import atomic_write_json

__all__ = ["CellCache", "budget_name"]


def budget_name(budget: int | None) -> str:
    """``None`` (every train row) is "all"."""
    return "all" if budget is None else str(budget)


class CellCache:
    """``DIR/cells/<method>_<budget>_s<seed>.json``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, method: str, budget: int | None, seed: int) -> Path:
        return self.folder / f"{method}_{budget_name(budget)}_s{seed}.json"

    def valid(self, method: str, budget: int | None, seed: int, *, fingerprint: str, split_sha256: str,
              options: dict, store_key: str | None = None, layer: str | None = None) -> dict | None:
        """The cached cell if it was computed (not skipped) on this store, split draw and options, on this
        extraction (``store_key``: the same images extracted with another backbone, size or weights share the
        dataset fingerprint) and from this ``layer``. A cell from before featcache recorded the key has none and
        is still reused."""
        path = self.path(method, budget, seed)
        try:
            cell = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        same = (isinstance(cell, dict) and cell.get("store_fingerprint") == fingerprint
                and cell.get("split_sha256") == split_sha256 and cell.get("options") == options
                and (store_key is None or cell.get("store_key", store_key) == store_key)
                and cell.get("layer") == layer)
        return cell if same and "skipped" not in cell else None

    def save(self, cell: dict) -> None:
        atomic_write_json(self.path(cell["method"], cell["budget"], cell["seed"]), cell)
        fault_point("cell-saved")

    def planned(self, keys: set[tuple[str, int | None, int]]) -> list[dict]:
        """Every cached cell whose (method, budget, seed) is planned (earlier, wider grids may have left others)."""
        out = []
        for p in sorted(self.folder.glob("*.json")):
            try:
                cell = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(cell, dict) and (cell.get("method"), cell.get("budget"), cell.get("seed", 0)) in keys:
                out.append(cell)
        return out
