"""The cost model behind compare's ordering and its ``--time-budget``: what a cell costs, in units of one
frozen forward pass of one image, and how many seconds a unit took in the cells measured so far.

A fine-tune mode's cost per training image is its strategy's ``step_cost`` (:mod:`featcache.strategies`);
a head on cached features costs next to nothing by comparison.
"""

from __future__ import annotations

from .finetune import FinetuneConfig, images_per_epoch
from .strategies import MODES

__all__ = ["cell_cost", "TimeEstimate", "HEAD_COST_PER_ROW", "DEFAULT_SECONDS_PER_UNIT"]

HEAD_COST_PER_ROW = 1e-3  # a head's sweep on cached features, per train row (orders heads before fine-tunes)
DEFAULT_SECONDS_PER_UNIT = 1 / 30.0  # about 30 forward images/s on a small CPU, before anything is measured


def cell_cost(method: str, n_train: int, n_val: int, cfg: FinetuneConfig) -> float:
    """A cell's cost: training images times the mode's step cost, plus a forward pass over val per epoch; a head
    or a score (LogME) on cached features costs next to nothing by comparison."""
    if method not in MODES:
        return n_train * HEAD_COST_PER_ROW
    return MODES[method].step_cost * cfg.epochs * images_per_epoch(n_train, cfg) + cfg.epochs * n_val


class TimeEstimate:
    """Seconds per cost unit, from the fine-tune cells finished so far (the slowest, erring on skipping)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def observe(self, seconds: float, cost: float) -> None:
        self.rates.append(seconds / max(cost, 1e-9))

    def minutes(self, cost: float) -> float:
        return cost * (max(self.rates) if self.rates else DEFAULT_SECONDS_PER_UNIT) / 60
