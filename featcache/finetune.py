"""Fine-tune the store's backbone on the store's own splits: one training loop for every mode.

The backbone, weights and preprocessing are rebuilt from the store's provenance; the images (or
sentences, for a text store) are the store's rows (read again from the source it records); training uses the train split
(or a per-class label budget), selection the val split, and the report the test split, with
the same metrics function as the heads. Each epoch is checkpointed; ``resume=True`` continues.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, StoreMismatchError
from .faults import fault_point
from .files import atomic_write_json, check_output, utc_now
from .metrics import score
from .options import Interval, OneOf, option, validate
from .runtime import PRECISIONS, peak_cuda_bytes, peak_rss_bytes, reset_peak_rss
from .store import FeatureStore, opened, recorded_store
from .strategies import BN_STATS, MODES, make_strategy

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "images_per_epoch", "load_finetuned", "FINETUNE_FORMAT"]

FINETUNE_FORMAT = "featcache-finetune"  # model.json's "format"


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (recorded verbatim with its results).

    Each field declares its default, help and constraint once; ``finetune --help`` and ``compare --help``
    are built from these fields, and :meth:`validate` checks them all.
    """

    mode: str = option("full", "fine-tune mode", OneOf(lambda: MODES), per_run=True)
    epochs: int = option(5, "training epochs", Interval(int, 1))
    batch_size: int = option(32, "images per step", Interval(int, 1))
    lr: float = option(1e-3, "head learning rate", Interval(float, 0, open="low"))
    backbone_lr_mult: float = option(0.1, "pretrained layers learn at lr x this (discriminative LR)",
                                     Interval(float, 0))
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms and biases)", Interval(float, 0))
    warmup_epochs: float = option(0.5, "linear warm-up, then cosine decay", Interval(float, 0))
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", Interval(float, 0, 1, open="high"))
    head_dropout: float = option(0.0, "dropout before the head", Interval(float, 0, 1, open="high"))
    augment: bool = option(True, "random resized crop and horizontal flip (images; texts are not augmented)")
    patience: int = option(3, "early stopping: epochs without a better val accuracy", Interval(int, 1))
    bn_stats: str = option("frozen", "BatchNorm running statistics: " + "; ".join(f"{k}: {v}" for k, v in
                                                                                  BN_STATS.items()),
                           OneOf(lambda: BN_STATS))
    min_steps: int = option(50, "small label budgets: repeat the train set within epochs to reach this many steps",
                            Interval(int, 1))
    accum_steps: int = option(1, "gradient accumulation steps", Interval(int, 1))
    unfreeze: int = option(2, "last-n: how many block groups train", Interval(int, 1))
    lora_rank: int = option(8, "lora: rank of the adapters", Interval(int, 1))
    per_class: int | None = option(None, "label budget: N train rows per class", Interval(int, 1, none=True),
                                   per_run=True)
    split: str | None = option(None, "split scheme (default: the store's default)", per_run=True)
    seed: int = option(0, "seed of the run (and of its label-budget draw)", Interval(int, 0), per_run=True)
    device: str = option("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    precision: str = option("auto", "autocast precision (auto: bf16 where native, else fp32; fp16 on CUDA)",
                            OneOf(lambda: PRECISIONS))
    workers: int | None = option(None, "DataLoader worker processes for images (default: by device; texts are "
                                 "tokenised once and need none)",
                                 Interval(int, 0, none=True))

    def validate(self) -> FinetuneConfig:
        validate(self)
        return self


def images_per_epoch(n_train: int, cfg: FinetuneConfig) -> int:
    """An epoch is at least one pass; tiny budgets are drawn repeatedly so the run has ``min_steps`` steps."""
    return max(n_train, math.ceil(cfg.min_steps / cfg.epochs) * cfg.batch_size * cfg.accum_steps)


@dataclass
class FinetuneResult:
    """A finished fine-tune: its folder and record (``model.json``); ``str()`` is the CLI's summary line."""

    out: Path
    record: dict

    @property
    def metrics(self) -> dict:
        return self.record["metrics"]

    def to_frame(self):
        """The history, one row per epoch (pandas: ``pip install 'featcache[notebook]'``)."""
        from .results import finetune_frame

        return finetune_frame(self.record)

    def plot(self):
        """Training loss and val accuracy per epoch (a matplotlib figure)."""
        from .results import finetune_plot

        return finetune_plot(self.record)

    def _repr_html_(self) -> str:
        from .results import finetune_html

        return finetune_html(self.record, str(self))

    def __str__(self) -> str:
        r = self.record
        m = r["metrics"]
        unit = "texts/s" if r.get("modality") == "text" else "img/s"  # images_per_s holds either (compare reads it)
        return (f"{r['config']['mode']}: test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                f"(best epoch {r['best_epoch'] + 1}/{r['epochs_run']}), {r['train_seconds']:.0f} s, "
                f"{r['images_per_s']:.1f} {unit}, peak {r['peak_rss_bytes'] / 2**20:.0f} MiB, "
                f"{r['trainable_params']:,}/{r['total_params']:,} params trained -> {self.out}")


def _is_finetune_folder(path: Path) -> bool:
    """Empty, or holding a fine-tune record or checkpoint: a folder ``finetune --out`` may write into."""
    if not any(path.iterdir()):
        return True
    if (path / "checkpoint.pt").is_file():
        return True
    try:
        return json.loads((path / "model.json").read_text()).get("format") == FINETUNE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _plan(fs: FeatureStore, cfg: FinetuneConfig) -> tuple[str, dict[str, np.ndarray]]:
    """The split scheme and the train (or budget), val and test rows; refuse what cannot be fine-tuned."""
    if fs.task != "classification":
        raise InputError("fine-tuning supports classification stores (regression: use the ridge or svm heads)")
    scheme = cfg.split or fs.default_split()
    rows = {p: fs.row_indices(f"{scheme}:{p}", cfg.per_class if p == "train" else None)
            for p in ("train", "val", "test")}
    if rows["val"].size == 0 or rows["test"].size == 0:
        raise InputError(f"split {scheme!r} needs val and test rows")
    return scheme, rows


def finetune(store: str | os.PathLike | FeatureStore, config: FinetuneConfig | None = None, *,
             out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = False,
             **overrides) -> FinetuneResult:
    """Train ``config.mode`` on the store's splits; writes ``model.pt``, ``model.json`` and a checkpoint in ``out``
    (a new or empty folder, or an earlier fine-tune's; anything else only with ``overwrite``)."""
    from .training import Trainer, TrainState

    try:
        cfg = FinetuneConfig(**{**asdict(config or FinetuneConfig()), **overrides}).validate()
    except TypeError as exc:
        raise InputError(f"unknown fine-tune option: {exc}") from None
    with opened(store) as fs:
        scheme, rows = _plan(fs, cfg)
        identity = fs.identity(scheme)
        budget = f"{cfg.per_class}pc" if cfg.per_class else "all"
        out = Path(out) if out else Path("data") / "finetune" / f"{fs.path.stem}_{cfg.mode}_{budget}_s{cfg.seed}"
        check_output(out, kind="fine-tune folder", is_own=_is_finetune_folder, overwrite=overwrite, folder=True)
        out.mkdir(parents=True, exist_ok=True)
        reset_peak_rss()
        run = Trainer(fs, cfg, rows, images_per_epoch(rows["train"].size, cfg))
    ckpt = out / "checkpoint.pt"
    state = run.restore(ckpt, identity) if resume and ckpt.exists() else TrainState()
    for epoch in range(state.epoch + 1, cfg.epochs):
        if state.bad_epochs >= cfg.patience:
            break
        loss, seconds = run.train_epoch(epoch, quiet)
        val_acc = run.accuracy("val")
        if state.record(epoch, loss, val_acc, seconds, run.per_epoch):
            run.keep_best()
        if not quiet:
            print(f"{cfg.mode} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}, val accuracy {val_acc:.4f}",
                  file=sys.stderr)
        run.checkpoint(ckpt, state, identity)
        fault_point("epoch-checkpointed")
    return _finish(run, state, identity, out)


def _finish(run, state, identity: dict, out: Path) -> FinetuneResult:
    """Score the best epoch's weights on test, and write ``model.pt`` and ``model.json``."""
    from .nets import count_params
    from .training import save_torch

    run.use_best()
    names = run.names
    metrics = score("classification", run.labels[run.rows["test"]], run.predict("test"), names)
    trainable, total = count_params(run.net)
    record = {
        "format": FINETUNE_FORMAT, "featcache_version": __version__, "config": asdict(run.cfg),
        "metrics": metrics, "best_epoch": state.best_epoch, "best_val_accuracy": state.best_acc,
        "epochs_run": len(state.history), "history": state.history, "train_seconds": state.train_seconds,
        "images_per_s": state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        "peak_rss_bytes": peak_rss_bytes(), "peak_cuda_bytes": peak_cuda_bytes(run.dev),
        "trainable_params": trainable, "total_params": total, "n_train": int(run.rows["train"].size),
        "device": str(run.dev), "precision": run.precision, "label_names": names,
        "dim": int(run.net.head.in_features), **run.extra,
        **identity, "created_at": utc_now(),
    }
    save_torch(run.net.state_dict(), out / "model.pt")
    atomic_write_json(out / "model.json", record)
    return FinetuneResult(out, record)


def load_finetuned(path: str | os.PathLike, store: str | os.PathLike | None = None):
    """A fine-tuned network ready for inference, its record and preprocessing (for ``featcache predict``)."""
    import torch

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        record = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder} holds no fine-tuned model (model.json unreadable: {exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FINETUNE_FORMAT:
        raise InputError(f"{folder / 'model.json'} is not a featcache fine-tune record")
    from .nets import build_net

    target = recorded_store(record, store)
    with FeatureStore(target) as fs:
        if fs.fingerprint != record["store_fingerprint"]:
            raise StoreMismatchError(f"{target} is not the store this model was fine-tuned on")
        try:
            cfg = FinetuneConfig(**record["config"])
        except (TypeError, KeyError) as exc:
            raise InputError(f"{folder / 'model.json'} holds a config this featcache cannot read ({exc})") from None
        net, prep = build_net(fs, len(record["label_names"]), cfg.head_dropout)
    make_strategy(cfg).restore(net)  # e.g. LoRA's adapters, so the saved weights fit
    net.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return net.eval(), record, prep, target
