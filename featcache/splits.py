"""Train / val / test splits and nested label budgets, made once and stored in the store.

Pure computation: the store writes the schemes (:func:`featcache.store.add_split`). Every later
stage (heads, fine-tune, compare) reads ``/splits/<scheme>`` from the store, so
all methods are compared on exactly the same rows. A split is deterministic for a given
seed; an official test (or val) split is kept as it is; a group column keeps every group
on one side. Label budgets come from a per-class rank of the train rows in a seeded order:
the n-per-class set is "rank < n", so budgets are nested by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["SPLIT_CODES", "PARTS", "SplitSpec", "SplitDraw", "compute_split", "budget_rank", "draw_split",
           "check_split_name", "split_counts"]

SPLIT_CODES = {"unassigned": -1, "train": 0, "val": 1, "test": 2}
PARTS = ("train", "val", "test")
TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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
        if not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise InputError(f"a split seed is an integer in [0, 2**32), got {self.seed!r}")

    def attrs(self, grouped: bool) -> dict:
        """How the scheme was made, as stored beside it."""
        return {"val": self.val, "test": self.test, "seed": int(self.seed), "grouped": grouped,
                "description": "train/val/test; rank orders train rows per class for nested budgets"}


@dataclass(frozen=True)
class SplitDraw:
    """One split scheme: per-row assignment (train 0 / val 1 / test 2), budget rank, grouped or not."""

    assign: np.ndarray
    rank: np.ndarray
    grouped: bool


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


def draw_split(labels: np.ndarray, task: str, spec: SplitSpec, official: np.ndarray | None = None,
               groups: np.ndarray | None = None) -> SplitDraw:
    """The whole scheme for ``spec``: assignment, budget order, and whether it is grouped."""
    grouped = groups is not None if spec.grouped is None else spec.grouped
    if grouped and groups is None:
        raise InputError("a grouped split needs a group column (extract with --group-col)")
    assign = compute_split(labels, task, spec, official, groups if grouped else None)
    return SplitDraw(assign, budget_rank(labels, task, assign, spec.seed), grouped)


def check_split_name(name: str) -> str:
    """Scheme names are HDF5 group names and appear in ``scheme:part``: a short slug, never ``official``."""
    if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
        raise InputError(f"split name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if name == "official":
        raise InputError("the 'official' split comes from the dataset and cannot be replaced")
    return name


def split_counts(assign: np.ndarray) -> dict[str, int]:
    """Rows per part: train, val, test (and unassigned, where a scheme leaves rows out)."""
    counts = {p: int((assign == c).sum()) for p, c in SPLIT_CODES.items() if p != "unassigned"}
    unassigned = int((assign == SPLIT_CODES["unassigned"]).sum())
    return {**counts, "unassigned": unassigned} if unassigned else counts
