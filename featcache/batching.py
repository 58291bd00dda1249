"""The forward batch size: as given, or measured on this machine for this setting and remembered.

On a CPU the fastest batch size is small and depends on the model, the input size and the precision
(measured on 2 bf16 cores for EfficientNet-Lite0: 32 at 128 px, 8 at 224 px, 1.1-1.5x faster than 64).
So ``auto`` measures: the first real batches of a run are forwarded at growing sizes (8, 16, 32, ...),
each timed after a warm-up at its shape, and the run goes on at the fastest. Nothing is wasted: the
probe batches are real rows whose features are kept. The choice is cached per machine and setting
(``$FEATCACHE_CACHE_DIR`` or ``~/.cache/featcache``, ``batch-size.json``) for 30 days, so the next runs
start at it.

On CUDA the probe also stops where the next size is predicted not to fit in 80 % of the memory that was
free, or where a size runs out of memory; a batch that runs out of memory is forwarded in halves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["AUTO", "BatchSizer", "CPU_SIZES", "CUDA_SIZES", "cache_path", "forward_bytes", "memory_bound",
           "memory_limit", "parse_batch_size", "setting_key"]

AUTO = "auto"
CPU_SIZES = (8, 16, 32, 64, 128)
CUDA_SIZES = (32, 64, 128, 256, 512, 1024)
TIMED_ROWS = 64  # at least this many rows, and two batches, are timed per size, after one warm-up batch
SLOWER = 0.9  # the probe stops at a size this much slower than the best so far
HEADROOM = 0.8  # CUDA: the next size must be predicted to fit in this share of the free memory
# a run too short to repay a probe uses this. CPU: the smallest size near the top of every curve measured here.
# CUDA: small batches starve the GPU (H100, EfficientNet-Lite0 bf16, bare forward: 32 -> 6,100 images/s,
# 256 -> 54,700 = 94 % of the best at 128 px, 97 % at 224 px); a GPU without room for 256 halves on OOM.
FEW_ROWS_SIZE = {"cpu": 32, "cuda": 256}
CACHE_ENV = "FEATCACHE_CACHE_DIR"
CACHE_DAYS = 30  # a driver, BIOS or library update can change the answer: measure again after this
ACTIVATION_FACTOR = 4  # CPU: peak bytes per image over its largest activation (at 3,000 px: fp32 3.0, bf16 1.6)
MEMORY_SHARE = 0.5  # CPU: a forward batch may use this share of the available memory


def parse_batch_size(value: int | str) -> int | str:
    """``auto``, or a positive integer (as an int, or as decimal digits from the command line)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise InputError(f"--batch-size must be a positive integer or auto, got {value!r}")


def cache_path() -> Path:
    """Where measured batch sizes are remembered."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "featcache")
    return Path(base).expanduser() / "batch-size.json"


def _machine(device: torch.device) -> str:
    """What the fastest batch size depends on, of the machine: the CPU model, its matrix-maths flags and the
    threads torch uses; or the GPU's name and memory."""
    import torch

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"cuda {p.name} {p.total_memory >> 20} MiB"
    from .runtime import cpu_description, cpu_has_native_bf16

    return f"cpu {cpu_description()} bf16={int(cpu_has_native_bf16())} threads={torch.get_num_threads()}"


def setting_key(device: torch.device, *, backbone: str, layers: list[str], input_size: int, precision: str,
                channels_last: bool) -> str:
    """The cache key of a measurement: the machine, torch's version and everything of the run that changes
    the forward pass's speed."""
    import torch

    return json.dumps({"machine": _machine(device), "torch": torch.__version__, "backbone": backbone,
                       "layers": list(layers), "input_size": input_size, "precision": precision,
                       "channels_last": bool(channels_last)}, sort_keys=True)


def memory_limit(device: torch.device) -> int | None:
    """CUDA: the bytes a forward batch may be predicted to use (80 % of what is free now, counting what this
    process holds in its cache); None elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int((free + torch.cuda.memory_reserved(device)) * HEADROOM)


def forward_bytes(backbone, input_size: int) -> int | None:
    """Bytes one image needs in a forward pass at ``input_size`` on CPU: ACTIVATION_FACTOR times the largest
    activation, seen with hooks on a forward of one image (at two smaller sizes above 256 px, extrapolated by
    the measured growth: a 3,000 px image does not need to be run to know it will not fit). None when the
    model cannot run at those sizes."""
    import math

    import torch

    def largest(size: int) -> int:
        biggest = 0

        def hook(module, args, out) -> None:
            nonlocal biggest
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if torch.is_tensor(t):
                    biggest = max(biggest, t.numel() * t.element_size())

        leaves = [m for m in backbone.extractor.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.inference_mode():
                param = next(backbone.model.parameters(), None)
                backbone(torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu"))
        finally:
            for h in handles:
                h.remove()
        return biggest

    try:
        if input_size <= 256:
            return ACTIVATION_FACTOR * largest(input_size)
        small, big = largest(128), largest(256)
    except Exception:  # noqa: BLE001 - a model with a fixed input size: no bound, as before
        return None
    growth = math.log(max(big, 1) / max(small, 1)) / math.log(2.0)  # ~2: activations grow with the pixel count
    return int(ACTIVATION_FACTOR * big * (input_size / 256) ** max(growth, 1.0))


def memory_bound(backbone, input_size: int) -> tuple[int | None, str]:
    """(largest batch that fits in MEMORY_SHARE of the available memory, why); refuses an input size of which one
    image does not fit (it was OOM-killed at 24 GB with --image-size 3000)."""
    from .runtime import MEMORY_ENV, available_memory

    per_image = forward_bytes(backbone, input_size)
    if per_image is None:
        return None, ""
    have = available_memory()
    rows = int(have * MEMORY_SHARE // per_image)
    if rows < 1:
        raise InputError(f"--image-size {input_size}: one image needs about {per_image / 2**30:.1f} GiB for the "
                         f"forward pass and {have / 2**30:.1f} GiB are available ({MEMORY_ENV}); use a smaller "
                         "--image-size")
    return rows, (f"a batch of more than {rows} would need over {MEMORY_SHARE:.0%} of the "
                  f"{have / 2**30:.1f} GiB available (~{per_image / 2**20:,.0f} MiB per image)")


def _load_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache, or a damaged one: probe again


def _cached(key: str, largest: int) -> dict | None:
    """The remembered measurement for ``key``, if it is well formed and recent; anything else is measured again."""
    entry = _load_cache().get(key)
    if not isinstance(entry, dict):
        return None
    size, rates, at = entry.get("size"), entry.get("rates"), entry.get("at")
    if type(size) is not int or not 1 <= size <= largest or not isinstance(rates, dict):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rates.values()):
        return None
    try:
        when = datetime.fromisoformat(str(at))
    except ValueError:
        return None
    if when.tzinfo is None or datetime.now(timezone.utc) - when > timedelta(days=CACHE_DAYS):
        return None
    return entry


def _save_cache(key: str, entry: dict) -> None:
    from .files import atomic_write_json

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache()
        data[key] = entry
        atomic_write_json(path, data)  # concurrent writers: the last one wins, nobody reads half a file
    except OSError:
        pass  # a read-only home: the next run probes again, nothing else changes


@dataclass
class _Size:
    size: int
    warm: bool = False  # the warm-up batch at this shape has run
    batches: int = 0
    rows: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def measured(self) -> bool:
        return self.warm and self.batches >= 2 and self.rows >= TIMED_ROWS


@dataclass
class BatchSizer:
    """Says how many rows the next forward batch gets, and learns from how long each took.

    ``grain`` is the data loader's batch size; forward batches are cut from the loaded rows at exactly
    :meth:`next_size` rows (fewer only at the end of the data), so every probe batch is a clean measurement.
    """

    requested: int | str
    device_type: str
    key: str
    rows_to_do: int
    memory_limit: int | None = None  # CUDA: bytes the probe may predict a batch to use
    max_size: int | None = None  # CPU: the largest batch that fits in memory (see memory_bound)
    max_reason: str = ""
    size: int = 0  # the size a finished decision runs at
    reason: str = ""
    grain: int = 0
    probing: list[_Size] = field(default_factory=list)

    def __post_init__(self) -> None:
        sizes = CUDA_SIZES if self.device_type == "cuda" else CPU_SIZES
        if self.max_size is not None:
            sizes = tuple(s for s in sizes if s <= self.max_size) or (self.max_size,)
        if self.requested != AUTO:
            self._decide(int(self.requested), f"given (--batch-size {self.requested})")
        elif hit := _cached(self.key, max(sizes)):
            self._decide(hit["size"], f"auto: measured fastest on this machine and setting on {hit.get('at')} "
                                      f"({_rates(hit['rates'])}; cached in {cache_path()})")
        elif self.rows_to_do < self.probe_rows(sizes):
            size = min(FEW_ROWS_SIZE.get(self.device_type, 32), max(1, self.rows_to_do))
            self._decide(size, f"auto: {self.rows_to_do:,} rows are too few to repay a measurement; {size} without "
                               "probing")
        else:
            self.probing = [_Size(s) for s in sizes]
            self.grain = sizes[0]

    @staticmethod
    def probe_rows(sizes: tuple[int, ...]) -> int:
        """Rows the longest probe runs (a warm-up and the timed rows of every size). A run with fewer rows does
        not probe; a longer one loses only the time spent at the slower sizes (the probe's rows are real work,
        and it usually stops after the first size that is slower)."""
        return sum(s + max(2 * s, TIMED_ROWS) for s in sizes)

    def _decide(self, size: int, reason: str) -> None:
        if self.max_size is not None and size > self.max_size:
            size, reason = self.max_size, f"{reason}, shrunk to {self.max_size}: {self.max_reason}"
        self.size, self.reason, self.probing = size, reason, []
        self.grain = self.grain or size

    @property
    def decided(self) -> bool:
        return not self.probing

    def next_size(self) -> int:
        """Rows the next forward batch should have."""
        return self.size if self.decided else self._current().size

    def _current(self) -> _Size:
        return next(s for s in self.probing if not s.measured)

    def observe(self, rows: int, seconds: float, peak_bytes: int | None = None) -> None:
        """One forward batch of ``rows`` took ``seconds`` (and at most ``peak_bytes`` of device memory)."""
        if self.decided:
            return
        cur = self._current()
        if rows != cur.size:  # the end of the data: not a clean measurement
            return
        if not cur.warm:
            cur.warm = True
        else:
            cur.batches, cur.rows, cur.seconds = cur.batches + 1, cur.rows + rows, cur.seconds + seconds
        if cur.measured:
            self._after(cur, peak_bytes)

    def out_of_memory(self, rows: int) -> int:
        """A batch of ``rows`` ran out of device memory: the size to run from now on (the fastest measured
        below it, else half of it). A size found this way is not cached: it may have been another process."""
        smaller = [s for s in self.probing if s.measured and s.size < rows]
        size = max(smaller, key=lambda s: s.rate).size if smaller else max(1, rows // 2)
        if self.decided:
            size = min(size, self.size)
        self.size, self.probing = size, []
        self.reason = (f"{self.reason + '; ' if self.reason else 'auto: '}a batch of {rows} ran out of device "
                       f"memory, continued at {size}")
        return size

    def conclude(self) -> None:
        """The data ended while probing: keep the fastest size measured so far (not cached: not all were tried)."""
        if self.decided:
            return
        measured = [s for s in self.probing if s.measured]
        size = max(measured, key=lambda s: s.rate).size if measured else self._current().size
        rates = {str(s.size): round(s.rate, 1) for s in measured}
        self._decide(size, f"auto: the data ended during the probe; fastest measured so far ({_rates(rates)})")

    def _after(self, cur: _Size, peak_bytes: int | None) -> None:
        best = max((s for s in self.probing if s.measured), key=lambda s: s.rate)
        later = [s for s in self.probing if s.size > cur.size]
        if not later:
            self._finish(best.size, "largest size measured")
        elif cur.rate < SLOWER * best.rate:
            self._finish(best.size, f"{cur.size} was {cur.rate / best.rate:.0%} as fast")
        elif peak_bytes is not None and self.memory_limit is not None and \
                peak_bytes * later[0].size / cur.size > self.memory_limit:
            self._finish(best.size, f"{later[0].size} would not fit with {1 - HEADROOM:.0%} of the memory to spare")

    def _finish(self, size: int, why: str) -> None:
        from .files import utc_now

        rates = {str(s.size): round(s.rate, 1) for s in self.probing if s.measured}
        self._decide(size, f"auto: measured fastest of {len(rates)} sizes on this run's first batches "
                           f"({_rates(rates)}; {why})")
        _save_cache(self.key, {"size": size, "rates": rates, "at": utc_now()})

    def describe(self) -> dict:
        """The size and the reason, for the summary line and the store's provenance."""
        if not self.decided:
            return {"batch_size": self._current().size, "batch_size_reason": "auto: probing"}
        return {"batch_size": self.size, "batch_size_reason": self.reason}


def _rates(rates: dict) -> str:
    return ", ".join(f"{k}: {v:,.0f}" for k, v in rates.items()) + " images/s" if rates else "none measured"
