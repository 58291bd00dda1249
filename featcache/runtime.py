"""Device, precision and memory-format decisions, made in one place.

Every stage that runs a backbone (extract, predict, fine-tune) asks this module, so
"auto" means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: a no-op re-run must not pay for it
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


BF16_OVERRIDE = "FEATCACHE_CPU_BF16"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def cpu_flags_have_bf16(flags: set[str] | frozenset[str]) -> bool:
    """Whether a CPU with these ``/proc/cpuinfo`` flags does bf16 matrix maths in hardware."""
    return bool(set(flags) & {"avx512_bf16", "amx_bf16"})


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line of a /proc file, or None (no such file or line: not Linux)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith(name)), None)
    except OSError:
        return None


def _proc_kib(path: str, name: str) -> int | None:
    """A ``name:  N kB`` field of a /proc file in bytes, or None."""
    value = _proc_field(path, name)
    return int(value.split()[0]) * 1024 if value else None


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    return frozenset((_proc_field("/proc/cpuinfo", "flags") or "").split())


MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name and the flags its matrix maths depend on, e.g. ``AMD EPYC [avx2 avx512_bf16 avx512f]``
    (what every speed figure must be quoted with; also part of the batch-size cache's key)."""
    import platform

    model = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()
    return f"{model} [{' '.join(sorted(_cpuinfo_flags() & set(MATRIX_FLAGS)))}]"


def cpu_has_native_bf16() -> bool:
    """True where the CPU does bf16 matrix maths in hardware (AVX-512 BF16 or AMX), or where
    ``FEATCACHE_CPU_BF16=1|0`` says so (read on every call, so a test or a user can force either path).

    Without native bf16, autocast on CPU is emulated and ~10x slower than fp32, so "auto" must not pick it.
    """
    override = os.environ.get(BF16_OVERRIDE)
    if override is not None and override.strip():
        value = override.strip().lower()
        if value not in _TRUE + _FALSE:
            raise InputError(f"{BF16_OVERRIDE}={override!r}: use 1 (treat the CPU as bf16-capable) or 0 (not)")
        return value in _TRUE
    return cpu_flags_have_bf16(_cpuinfo_flags())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; an unavailable explicit device is an input error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision that runs: an explicit choice as given, ``auto`` by hardware.

    ``auto``: CUDA with bf16 support (Ampere and later) -> bf16, older CUDA GPUs -> fp16;
    a CPU with AVX-512 BF16 or AMX -> bf16, any other CPU -> fp32 (see :func:`cpu_has_native_bf16`).
    fp16 autocast exists only on CUDA.
    """
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for bf16/fp16; for fp32, true fp32.

    On CUDA, PyTorch runs fp32 convolutions as TF32 by default (10-bit mantissa: features 1e-3 apart from
    fp32, seen on an H100 against the CPU's). A store whose provenance says fp32 must hold fp32, so TF32 is
    off inside this context; ``auto`` (bf16 on such GPUs) is the fast choice."""
    import torch

    if precision == "fp32":
        return _no_tf32() if device.type == "cuda" else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _no_tf32():
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def wants_channels_last(model: torch.nn.Module) -> bool:
    """channels_last speeds up convolutions (oneDNN on CPU, tensor cores on GPU); it does nothing for ViTs."""
    import torch

    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes for decoding while the model runs.

    On a GPU the cores are free, so use most of them. On a CPU the forward pass already uses
    every core: a worker process only preempts its threads (measured on 2 cores: 0 workers
    0.89 of the bare forward speed, 1 worker 0.86, 2 workers 0.83), so decode inline there
    and add workers only on many-core machines.
    """
    n = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, n - 1))
    return 0 if n <= 4 else min(4, n // 8 + 1)


MEMORY_ENV = "FEATCACHE_MEMORY_LIMIT"  # bytes (or 200M, 4G): what featcache may assume is available


def _parse_bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(float(t))
    except ValueError:
        raise InputError(f"{MEMORY_ENV}={text!r}: give bytes, e.g. 500M or 4G") from None


def available_memory() -> int:
    """Bytes featcache may use (heads in memory or streaming, the batch of a forward pass on CPU):
    ``FEATCACHE_MEMORY_LIMIT`` if set, else the kernel's MemAvailable."""
    if os.environ.get(MEMORY_ENV):
        return _parse_bytes(os.environ[MEMORY_ENV])
    return _proc_kib("/proc/meminfo", "MemAvailable:") or 8 << 30


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux), so each measured run gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since start or the last :func:`reset_peak_rss`."""
    peak = _proc_kib("/proc/self/status", "VmHWM:")
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Streaming a store allocates and frees one block-sized array after another; glibc keeps freed blocks
    below its (self-raising) mmap threshold on the heap, so resident memory crept up with the number of
    blocks read (measured: +25 % peak RSS at 1M rows vs 100k). Trimming after each block keeps it flat."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_cuda_bytes(device: torch.device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


class GracefulInterrupt:
    """Ctrl-C (SIGINT) as a request: long loops check ``requested`` at a safe point (after a commit)
    and stop there. A KeyboardInterrupt raised at an arbitrary point can be swallowed (in a
    ``__del__`` or a library callback) and the run goes on; a flag cannot. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> GracefulInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
