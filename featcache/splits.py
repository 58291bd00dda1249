"""Train / val / test splits and nested label budgets, made once and stored in the store.

Every later stage (heads, fine-tune, compare) reads ``/splits/<scheme>`` from the store, so
all methods are compared on exactly the same rows. A split is deterministic for a given
seed; an official test (or val) split is kept as it is; a group column keeps every group
on one side. Label budgets come from a per-class rank of the train rows in a seeded order:
the n-per-class set is "rank < n", so budgets are nested by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .store import SPLIT_CODES, SPLIT_ENUM, FeatureStore, modify_store

__all__ = ["SplitSpec", "compute_split", "budget_rank", "make_split", "split_counts"]

TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]


@dataclass(frozen=True)
class SplitSpec:
    """How to split: fractions of all rows for val and test (where the dataset has none), seed."""

    val: float = 0.1
    test: float = 0.2
    seed: int = 0
    grouped: bool | None = None  # None: grouped when the store has groups

    def check(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise InputError(f"split fractions must be in [0, 1) and sum below 1 (val={self.val}, test={self.test})")


def _strata(labels: np.ndarray, task: str) -> np.ndarray | None:
    """Classes for classification; quantile bins for regression so both sides see the whole range."""
    if task == "classification":
        return labels
    if labels.size < 10:
        return None
    edges = np.quantile(labels, [0.2, 0.4, 0.6, 0.8])
    return np.searchsorted(edges, labels)


def _carve(pool: np.ndarray, frac_of_pool: float, strata: np.ndarray | None, groups: np.ndarray | None,
           rng: np.random.Generator) -> np.ndarray:
    """Pick about ``frac_of_pool`` of ``pool`` (row indices): stratified, and by whole groups if given."""
    if frac_of_pool <= 0 or pool.size == 0:
        return np.empty(0, dtype=np.int64)
    if groups is not None:
        # whole groups, taken class by class of their majority label so the classes stay balanced
        g = groups[pool]
        uniq, inv = np.unique(g, return_inverse=True)
        sizes = np.bincount(inv)
        if strata is not None:
            major = np.array([np.bincount(strata[pool][inv == k]).argmax() for k in range(len(uniq))])
        else:
            major = np.zeros(len(uniq), dtype=int)
        chosen = []
        for c in np.unique(major):
            members = np.flatnonzero(major == c)
            members = members[rng.permutation(members.size)]
            target, got = frac_of_pool * sizes[members].sum(), 0
            for k in members:
                if got >= target:
                    break
                chosen.append(k)
                got += sizes[k]
        return pool[np.isin(inv, chosen)]
    if strata is None:
        k = int(round(frac_of_pool * pool.size))
        return pool[rng.permutation(pool.size)[:k]]
    picked = []
    s = strata[pool]
    for c in np.unique(s):
        members = pool[s == c]
        k = int(round(frac_of_pool * members.size))
        k = min(max(k, 1), members.size - 1) if members.size >= 2 else 0  # a class of one stays in train
        picked.append(members[rng.permutation(members.size)[:k]])
    return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


def compute_split(labels: np.ndarray, task: str, spec: SplitSpec, official: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """An int8 assignment (train 0 / val 1 / test 2) for every row.

    An official assignment keeps its test and val rows; what is missing is carved from the
    rest: test first (``spec.test`` of all rows), then val (``spec.val`` of all rows).
    """
    spec.check()
    n = labels.shape[0]
    rng = np.random.default_rng(spec.seed)
    strata = _strata(labels, task)
    assign = np.full(n, TRAIN, dtype=np.int8)
    if official is not None:
        assign[official == TEST] = TEST
        assign[official == VAL] = VAL
    if not (assign == TEST).any() and spec.test > 0:
        pool = np.flatnonzero(assign == TRAIN)
        assign[_carve(pool, spec.test, strata, groups, rng)] = TEST
    if not (assign == VAL).any() and spec.val > 0:
        pool = np.flatnonzero(assign == TRAIN)
        frac = spec.val * n / max(pool.size, 1)
        assign[_carve(pool, min(frac, 0.5), strata, groups, rng)] = VAL
    return assign


def budget_rank(labels: np.ndarray, task: str, assign: np.ndarray, seed: int) -> np.ndarray:
    """Per-class rank of each train row in a seeded order (-1 elsewhere); regression ranks all train rows."""
    rng = np.random.default_rng(seed + 1_000_003)
    rank = np.full(labels.shape[0], -1, dtype=np.int32)
    train = np.flatnonzero(assign == TRAIN)
    keys = labels[train] if task == "classification" else np.zeros(train.size, dtype=int)
    for c in np.unique(keys):
        members = train[keys == c]
        rank[members[rng.permutation(members.size)]] = np.arange(members.size, dtype=np.int32)
    return rank


def write_split(f, name: str, assign: np.ndarray, rank: np.ndarray, spec: SplitSpec, grouped: bool) -> None:
    """Write ``/splits/<name>`` into an open, writable store file (replacing it if present)."""
    if f"splits/{name}" in f:
        del f[f"splits/{name}"]
    grp = f.create_group(f"splits/{name}")
    grp.create_dataset("assign", data=assign, dtype=SPLIT_ENUM)
    grp.create_dataset("rank", data=rank)
    grp.attrs.update({"val": spec.val, "test": spec.test, "seed": spec.seed, "grouped": grouped,
                      "description": "train/val/test; rank orders train rows per class for nested budgets"})


def split_for(labels: np.ndarray, task: str, spec: SplitSpec, official: np.ndarray | None,
              groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    grouped = groups is not None if spec.grouped is None else spec.grouped
    if grouped and groups is None:
        raise InputError("a grouped split needs a group column (extract with --group-col)")
    assign = compute_split(labels, task, spec, official, groups if grouped else None)
    return assign, budget_rank(labels, task, assign, spec.seed), grouped


def make_split(store: str | os.PathLike, name: str = "default", spec: SplitSpec | None = None,
               overwrite: bool = False) -> dict[str, int]:
    """Add (or with ``overwrite`` replace) the split ``name`` in a finished store; returns the counts."""
    spec = spec or SplitSpec()
    if name in ("official",):
        raise InputError("the 'official' split comes from the dataset and cannot be replaced")
    with FeatureStore(store) as fs:
        if name in fs.split_names() and not overwrite:
            raise InputError(f"{store} already has a split {name!r}; use --overwrite to replace it")
        official = fs.split_assign("official") if "official" in fs.split_names() else None
        labels, task, groups = fs.labels, fs.task, fs.groups
    assign, rank, grouped = split_for(labels, task, spec, official, groups)
    with modify_store(Path(store)) as f:
        write_split(f, name, assign, rank, spec, grouped)
    return split_counts(assign)


def split_counts(assign: np.ndarray) -> dict[str, int]:
    return {p: int((assign == c).sum()) for p, c in SPLIT_CODES.items() if p != "unassigned"}
