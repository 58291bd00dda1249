"""Both precision paths on every CPU: what ``auto`` picks on each kind of machine, and bf16 forced where it
is not native (emulated there: slower, same numbers), so the suite's verdict never depends on the CPU."""

import h5py
import numpy as np
import pytest
import torch
from helpers import cli

import featcache
from featcache.errors import InputError
from featcache.runtime import BF16_OVERRIDE, cpu_flags_have_bf16, cpu_has_native_bf16, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# /proc/cpuinfo flags of the CPU kinds this project runs on (abridged)
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # e.g. AMD EPYC Rome/Milan, Intel Skylake client
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}  # Cooper Lake, AMD Zen 4
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}  # Sapphire Rapids and later


@pytest.mark.parametrize(("flags", "native"), [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True)])
def test_bf16_is_native_only_on_cpus_with_bf16_instructions(flags, native):
    assert cpu_flags_have_bf16(flags) is native


def test_auto_on_cpu_follows_the_hardware_unless_overridden(monkeypatch):
    monkeypatch.delenv(BF16_OVERRIDE, raising=False)
    with open("/proc/cpuinfo") as fh:
        here = next(set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags"))
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_flags_have_bf16(here) else "fp32")
    monkeypatch.setenv(BF16_OVERRIDE, "1")  # read on every call: no stale cache
    assert cpu_has_native_bf16() and resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setenv(BF16_OVERRIDE, "0")
    assert not cpu_has_native_bf16() and resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setenv(BF16_OVERRIDE, "maybe")
    with pytest.raises(InputError, match=BF16_OVERRIDE):
        resolve_precision("auto", CPU)


def test_explicit_precision_is_used_as_given_and_fp16_needs_cuda(monkeypatch):
    monkeypatch.setenv(BF16_OVERRIDE, "0")
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(InputError, match="fp16 autocast needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("int8", CPU)


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("fp32", CUDA) == "fp32"


# bf16 keeps 8 significant bits (unit roundoff u = 2**-8 = 0.4 %). Autocast rounds the input of every conv and
# linear layer; independent rounding errors over the tiny backbone's ~10 such layers grow like sqrt(layers) x u,
# i.e. 1-2 % (measured: 1.2 % mean, 1.7 % max relative L2 error per row, on AVX-512 BF16 and emulated on AVX2
# alike). 5 % (~13 u) leaves room for other kernels; an actual bug (lost normalisation, wrong layer, rows out
# of order) is off by ~100 %. A floor of u / 10 proves that bf16 really ran rather than fp32.
BF16_MAX_REL_ERROR = 0.05
BF16_MIN_REL_ERROR = 2**-8 / 10


def test_bf16_extraction_is_finite_close_to_fp32_and_recorded(tmp_path, image_folder, tiny):
    tiny = {**tiny, "device": "cpu"}  # the CPU's bf16 path (a GPU machine would pick cuda)
    fp32 = featcache.extract(image_folder, tmp_path / "fp32.h5", **tiny)
    bf16 = featcache.extract(image_folder, tmp_path / "bf16.h5", **{**tiny, "precision": "bf16"})
    assert bf16.precision == "bf16" and "cpu bf16" in str(bf16)
    X32, y32, ids32 = featcache.load(fp32.store)
    X16, y16, ids16 = featcache.load(bf16.store)
    assert list(ids16) == list(ids32) and (y16 == y32).all()
    assert np.isfinite(X16).all() and X16.dtype == np.float32
    rel = np.linalg.norm(X16 - X32, axis=1) / np.linalg.norm(X32, axis=1)
    assert rel.max() < BF16_MAX_REL_ERROR, rel.max()
    assert rel.mean() > BF16_MIN_REL_ERROR, "bf16 features equal fp32: autocast did not run"
    with h5py.File(bf16.store) as f:
        assert f.attrs["precision"] == "bf16" and '"precision": "bf16"' in f.attrs["key"]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "expected"), [("1", "bf16"), ("0", "fp32")])
def test_auto_through_the_cli_follows_the_override(tmp_path, image_folder, tiny_cli, override, expected):
    store = tmp_path / "s.h5"
    proc = cli("extract", str(image_folder), "--store", str(store), *tiny_cli, "--device", "cpu",
               env={BF16_OVERRIDE: override})
    assert proc.returncode == 0, proc.stderr
    assert f"on cpu {expected}" in proc.stdout
    info = cli("info", str(store))
    assert f"precision: {expected} on cpu" in info.stdout


def test_fp32_on_cuda_is_true_fp32_not_tf32():
    """PyTorch runs fp32 convolutions as TF32 on CUDA by default; a store that says fp32 must hold fp32 (seen on
    an H100: features 1e-3 apart from the CPU's). The switch is made and undone around the forward pass."""
    import torch

    from featcache.runtime import autocast

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with autocast(torch.device("cuda"), "fp32"):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with autocast(torch.device("cpu"), "fp32"):
            assert torch.backends.cudnn.allow_tf32  # the CPU path leaves the CUDA switches alone
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
