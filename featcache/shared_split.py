"""One split assignment for many stores of the same data: the rows of a ranking's candidates, matched by id.

Candidates are compared on identical rows: the first store's ``default`` split (its train/val/test assignment,
official test rows and groups respected) is copied, row by row through the sample ids, into every candidate store
as the scheme ``rank``, with the budget order of each further seed as ``rank-budget<k>``. Rows that a store lacks
(an image that failed in one extraction only) are left out of every store, so each split holds the same ids
everywhere. A store that already holds exactly these schemes is not rewritten, so a resumed ranking costs no copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .splits import SPLIT_CODES, SplitDraw, SplitSpec, budget_rank
from .store import FeatureStore, edit_store

__all__ = ["share_split", "SCHEME"]

SCHEME = "rank"


def _scheme(seed: int) -> str:
    return SCHEME if seed == 0 else f"{SCHEME}-budget{seed}"


def _reference(paths: Sequence[Path], seeds: int) -> tuple[np.ndarray, dict[int, SplitDraw], SplitSpec]:
    """The ids and, per seed, the assignment and budget order, drawn on the first store over the common ids."""
    common = None
    for p in paths[1:]:
        with FeatureStore(p) as fs:
            ids = set(fs.ids)
        common = ids if common is None else common & ids
    with FeatureStore(paths[0]) as ref:
        ids, labels, task = ref.ids, ref.labels, ref.task
        base = ref.default_split()
        assign = ref.split_assign(base).copy()
        attrs = ref.split_attrs(base)
    if common is not None:
        assign[~np.isin(ids, list(common))] = SPLIT_CODES["unassigned"]
    if not (assign == SPLIT_CODES["train"]).any():
        raise InputError(f"{paths[0]} has no train rows shared by every candidate store")
    spec = SplitSpec(float(attrs.get("val", SplitSpec.val)), float(attrs.get("test", SplitSpec.test)))
    grouped = bool(attrs.get("grouped"))
    draws = {s: SplitDraw(assign, budget_rank(labels, task, assign, s), grouped) for s in range(seeds)}
    return ids, draws, spec


def _same(fs: FeatureStore, draws: dict[int, SplitDraw]) -> bool:
    names = fs.split_names()
    return all(_scheme(s) in names and np.array_equal(fs.split_assign(_scheme(s)), d.assign)
               and np.array_equal(fs.split_rank(_scheme(s)), d.rank) for s, d in draws.items())


def share_split(paths: Sequence[Path], seeds: int) -> dict[int, str]:
    """Write the shared schemes into every store (where they differ); returns the scheme name of each seed."""
    ids, draws, spec = _reference(paths, seeds)
    position = {sid: i for i, sid in enumerate(ids)}
    for p in paths:
        with FeatureStore(p) as fs:
            index = np.array([position.get(sid, -1) for sid in fs.ids], dtype=np.int64)
            mine = {s: _reindexed(d, index) for s, d in draws.items()}
            if _same(fs, mine):
                continue
        with edit_store(p) as fs:
            for s, d in mine.items():
                fs.write_split(_scheme(s), d, SplitSpec(spec.val, spec.test, s))
    return {s: _scheme(s) for s in range(seeds)}


def _reindexed(draw: SplitDraw, index: np.ndarray) -> SplitDraw:
    """The reference draw in another store's row order (``index[i]``: the reference row of row i, or -1)."""
    found = index >= 0
    assign = np.full(index.size, SPLIT_CODES["unassigned"], dtype=np.int8)
    rank = np.full(index.size, -1, dtype=np.int32)
    assign[found], rank[found] = draw.assign[index[found]], draw.rank[index[found]]
    return SplitDraw(assign, rank, draw.grouped)
