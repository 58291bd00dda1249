"""The machinery of one fine-tuning run: data loaders, optimiser and schedule, an epoch of training,
prediction, and checkpoints that make a resumed run equal an uninterrupted one.

What differs between images and texts (datasets, batching, moving a batch to the device) is an inputs object
chosen once from the store (:func:`inputs_for`): :class:`ImageInputs` here, :class:`featcache.text_training.TextInputs`
for texts; the loop is the same.

:func:`featcache.finetune.finetune` drives it: build, then for each epoch train / evaluate /
checkpoint, then record. Which parameters train is the strategy's business (:mod:`featcache.strategies`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .errors import StoreMismatchError
from .files import atomic_path
from .nets import build_net
from .provenance import store_modality, store_source
from .runtime import autocast, default_workers, resolve_device, resolve_precision, wants_channels_last
from .store import FeatureStore
from .strategies import make_strategy

__all__ = ["ImageInputs", "Trainer", "TrainState", "inputs_for", "save_torch"]


def save_torch(obj, path: Path) -> None:
    """``torch.save`` made atomic: a checkpoint is the old one or the new one, never half of one."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class _Images:
    """Map-style dataset over store rows: (uint8 image tensor, label)."""

    def __init__(self, src, rows: np.ndarray, labels: np.ndarray, transform):
        self.src, self.rows, self.labels, self.transform = src, rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        r = int(self.rows[k])
        return self.transform(self.src.read(r)), int(self.labels[r])


@dataclass
class TrainState:
    """Where a run is: the last finished epoch, the best one so far, the history and the time spent."""

    epoch: int = -1
    best_acc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0

    def record(self, epoch: int, loss: float, val_acc: float, seconds: float, images: int) -> bool:
        """Add a finished epoch; True when it is the best so far (its weights are the ones to keep)."""
        self.history.append({"epoch": epoch, "loss": loss, "val_accuracy": val_acc})
        self.train_seconds += seconds
        self.images_seen += images
        self.epoch = epoch
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.bad_epochs = val_acc, epoch, 0
            return True
        self.bad_epochs += 1
        return False


def _param_groups(net, cfg) -> list[dict]:
    """Head at ``lr``, backbone at ``lr * backbone_lr_mult``; no weight decay on norms and biases."""
    groups = []
    for part, lr in ((net.head, cfg.lr), (net.backbone, cfg.lr * cfg.backbone_lr_mult)):
        decay = [p for n, p in part.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in part.named_parameters() if p.ndim <= 1]
        groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to zero (per optimizer step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ImageInputs:
    """Images read again from the store's source: uint8 tensors (randomly cropped and flipped for training when
    ``cfg.augment``), normalised on the device, channels_last for conv nets."""

    def __init__(self, fs: FeatureStore, cfg, rows: dict[str, np.ndarray], net, prep, dev: torch.device):
        from torchvision.transforms import v2

        src = store_source(fs)
        self.prep, self.dev, self.extra = prep, dev, {}
        self.channels_last = wants_channels_last(net)
        net.to(dev, memory_format=torch.channels_last) if self.channels_last else net.to(dev)
        eval_tf = prep.pil_transform()
        size = prep.input_size
        train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                               v2.RandomHorizontalFlip()]) if cfg.augment else eval_tf
        workers = default_workers(dev) if cfg.workers is None else cfg.workers
        self.loader_kw = {"num_workers": workers, "pin_memory": dev.type == "cuda"}
        self.eval_sets = {p: _Images(src, rows[p], fs.labels, eval_tf) for p in ("val", "test")}
        self.train_set = _Images(src, rows["train"], fs.labels, train_tf)

    def loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **self.loader_kw)

    def to_device(self, x):
        x = x.to(self.dev, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.prep.normalize(x)


def inputs_for(fs: FeatureStore):
    """The inputs class of the store's modality: the one place fine-tuning tells images from texts."""
    if store_modality(fs) == "text":
        from .text_training import TextInputs

        return TextInputs
    return ImageInputs


class Trainer:
    """The network, its strategy, inputs, optimiser and schedule for one run on a store's rows."""

    def __init__(self, fs: FeatureStore, cfg, rows: dict[str, np.ndarray], images_per_epoch: int):
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.cfg, self.rows, self.labels, self.names = cfg, rows, fs.labels, fs.label_names
        self.net, self.prep = build_net(fs, len(fs.label_names), cfg.head_dropout)
        self.strategy = make_strategy(cfg)
        self.extra = self.strategy.setup(self.net, fs)
        self.dev = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.dev)
        self.inputs = inputs_for(fs)(fs, cfg, rows, self.net, self.prep, self.dev)  # also moves the net there
        self.extra.update(self.inputs.extra)
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        self.per_epoch = images_per_epoch
        steps = math.ceil(math.ceil(self.per_epoch / cfg.batch_size) / cfg.accum_steps)
        self.optimizer = torch.optim.AdamW(_param_groups(self.net, cfg))
        self.scheduler = _schedule(self.optimizer, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.best_model = self._weights()

    def _weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def train_epoch(self, epoch: int, quiet: bool) -> tuple[float, float]:
        """One epoch; returns (mean loss, seconds). The sample order is seeded by the epoch, so a resumed
        run draws what the uninterrupted one drew."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.strategy.on_epoch(self.net, epoch)
        self.strategy.train_mode(self.net)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler = torch.utils.data.RandomSampler(self.inputs.train_set, num_samples=self.per_epoch, generator=gen)
        loader = self.inputs.loader(self.inputs.train_set, cfg.batch_size, sampler)
        t0, losses = time.perf_counter(), []
        bar = tqdm(loader, desc=f"{cfg.mode} epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=quiet or not sys.stderr.isatty())
        self.optimizer.zero_grad(set_to_none=True)
        for step, (x, y) in enumerate(bar):
            with autocast(self.dev, self.precision):
                loss = self.criterion(self.net(self.inputs.to_device(x)).float(), y.to(self.dev)) / cfg.accum_steps
            loss.backward()
            if (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            losses.append(loss.item() * cfg.accum_steps)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        return float(np.mean(losses)), time.perf_counter() - t0

    def predict(self, part: str) -> np.ndarray:
        """Predicted classes of the ``part`` ("val" or "test") rows, in row order."""
        loader = self.inputs.loader(self.inputs.eval_sets[part], self.cfg.batch_size * 2)
        self.net.eval()
        preds = []
        with torch.inference_mode(), autocast(self.dev, self.precision):
            for x, _ in loader:
                preds.append(self.net(self.inputs.to_device(x)).argmax(1).cpu().numpy())
        return np.concatenate(preds)

    def accuracy(self, part: str) -> float:
        return float(np.mean(self.predict(part) == self.labels[self.rows[part]]))

    def keep_best(self) -> None:
        self.best_model = self._weights()

    def use_best(self) -> None:
        self.net.load_state_dict(self.best_model)

    def checkpoint(self, path: Path, state: TrainState, identity: dict) -> None:
        save_torch({"config": asdict(self.cfg), "identity": identity, "state": asdict(state),
                    "model": self.net.state_dict(), "best_model": self.best_model,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, path)

    def restore(self, path: Path, identity: dict) -> TrainState:
        """Continue from a checkpoint written by a run with the same config, store and split."""
        ckpt = torch.load(path, map_location=self.dev, weights_only=True)
        same = {k: ckpt.get("identity", {}).get(k) for k in identity} == identity
        if ckpt.get("config") != asdict(self.cfg) or not same:
            raise StoreMismatchError(f"{path} was written by a run with another config, store or split; "
                                     "remove it or drop --resume")
        state = TrainState(**ckpt["state"])
        for e in range(state.epoch + 1):
            self.strategy.on_epoch(self.net, e)  # re-apply gradual unfreezing up to where the run stopped
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        self.best_model = ckpt["best_model"]
        return state
