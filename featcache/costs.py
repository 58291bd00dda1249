"""The cost model behind compare's ordering and its ``--time-budget``: what a cell costs, in units of one
frozen forward pass of one image, and how many seconds a unit took in the cells measured so far.

A fine-tune mode's cost per training image is its strategy's ``step_cost`` (:mod:`featcache.strategies`);
a head on cached features costs next to nothing by comparison.
"""

from __future__ import annotations

from .finetune import FinetuneConfig, images_per_epoch
from .strategies import MODES

__all__ = ["cell_cost", "TimeEstimate", "HEAD_COST_PER_ROW", "DEFAULT_SECONDS_PER_UNIT", "measured_seconds_per_unit"]

HEAD_COST_PER_ROW = 1e-3  # a head's sweep on cached features, per train row (orders heads before fine-tunes)
DEFAULT_SECONDS_PER_UNIT = 1 / 30.0  # about 30 forward images/s on a small CPU, before anything is measured


def cell_cost(method: str, n_train: int, n_val: int, cfg: FinetuneConfig) -> float:
    """A cell's cost: training images times the mode's step cost, plus a forward pass over val per epoch; a head
    or a score (LogME) on cached features costs next to nothing by comparison."""
    if method not in MODES:
        return n_train * HEAD_COST_PER_ROW
    return MODES[method].step_cost * cfg.epochs * images_per_epoch(n_train, cfg) + cfg.epochs * n_val


class TimeEstimate:
    """Seconds per cost unit, from the fine-tune cells finished so far (the slowest, erring on skipping); before
    any, ``prior`` (a store's own measured forward rate where it is a good guide) or the default."""

    def __init__(self, prior: float | None = None) -> None:
        self.rates: list[float] = []
        self.prior = prior or DEFAULT_SECONDS_PER_UNIT

    def observe(self, seconds: float, cost: float) -> None:
        self.rates.append(seconds / max(cost, 1e-9))

    def minutes(self, cost: float) -> float:
        return cost * (max(self.rates) if self.rates else self.prior) / 60


def measured_seconds_per_unit(attrs: dict, n_rows: int) -> float | None:
    """A text store's own encoding time per row, as the cost unit's price before any fine-tune is timed. Measured
    (rotten-tomatoes, all-MiniLM-L6-v2, 2 cores): an lp-ft cell took 1.0-1.2x its cost at the store's encoding rate,
    where the image default (30 units/s) priced it 9x too high. Image stores keep the default: their extraction
    runs folded, channels-last and at the measured best batch, which training does not."""
    seconds = attrs.get("extract_loop_seconds")
    if attrs.get("modality") != "text" or not seconds or n_rows <= 0:
        return None
    return float(seconds) / n_rows
