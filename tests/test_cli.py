"""The command line as a user runs it: real subprocesses, real files."""

import hashlib
import re
import shutil
import signal
import subprocess

import h5py
import numpy as np
import pytest
from helpers import TINY, assert_clean_error, cli, paused_cli, write_folder

import featcache


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_lists_subcommands_with_examples():
    out = cli("--help")
    assert out.returncode == 0
    for cmd in ("extract", "info", "backbones", "layers"):
        assert cmd in out.stdout
    ex = cli("extract", "--help")
    assert ex.returncode == 0 and "examples:" in ex.stdout and "builtin:fashion-mnist" in ex.stdout


@pytest.mark.slow
def test_extract_info_and_free_rerun(tmp_path, image_folder, tiny_cli):
    args = ["extract", str(image_folder), "--store", str(tmp_path / "s.h5"), *tiny_cli]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "extracted 24 rows" in first.stdout and "images/s" in first.stdout and "s.h5" in first.stdout
    again = cli(*args)
    assert again.returncode == 0 and "up to date" in again.stdout
    quiet = cli(*args, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    info = cli("info", str(tmp_path / "s.h5"))
    assert info.returncode == 0
    for needle in ("rows: 24", "features/pooled: 24 x", "timm:test_efficientnet", "circle (8)", "sha256"):
        assert needle in info.stdout


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="hdf5-tools (h5ls) not installed; .ci/run installs it")
def test_any_hdf5_client_reads_the_store(tmp_path, image_folder, tiny):
    res = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    out = subprocess.run(["h5ls", "-r", str(res.store)], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("/ids", "/labels", "/label_names", "/features/pooled", "/failures/reasons"):
        assert name in out.stdout


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path, image_folder, tiny_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00garbage\x00")
    base = tiny_cli
    assert_clean_error(cli("extract", str(tmp_path / "missing"), *base), "not found")
    assert_clean_error(cli("extract", str(tmp_path / "empty"), *base), "no class subfolders")
    assert_clean_error(cli("extract", str(tmp_path / "bad.csv"), *base), "manifest")
    assert_clean_error(cli("extract", str(image_folder), "--backbone", "timm:no_such_net", "--weights", "random",
                           cwd=tmp_path), "no model named")
    assert_clean_error(cli("extract", str(image_folder), "--backbone", "torchvision:resnet18",
                           env={"TORCH_HOME": str(tmp_path / "th")}, cwd=tmp_path), "looked in")
    assert_clean_error(cli("extract", str(image_folder), "--layers", "nope", "--store", str(tmp_path / "l.h5"), *base),
                       "no layer 'nope'")
    assert_clean_error(cli("extract", str(image_folder), "--weights", str(tmp_path / "bad.csv"), cwd=tmp_path),
                       "cannot read weights")
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("*.partial"))


@pytest.mark.slow
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, image_folder, tiny_cli):
    store = tmp_path / "s.h5"
    assert cli("extract", str(image_folder), "--store", str(store), *tiny_cli, "-q").returncode == 0
    for args, needle in [(("--jobs", "0"), "--jobs"), (("--grid", "abc"), "--grid"), (("--grid", "nan"), "finite")]:
        assert_clean_error(cli("fit-head", str(store), "--out", str(tmp_path / "h.head"), *args), needle)
    sub = tmp_path / "new" / "t.h5"
    for args, needle in [(("--workers", "-1"), "--workers"), (("--batch-size", "0"), "--batch-size"),
                         (("--precision", "fp16"), "fp16 autocast needs a CUDA device"),
                         (("--device", "cuda"), "CUDA is not available")]:
        assert_clean_error(cli("extract", str(image_folder), "--store", str(sub), *tiny_cli, *args), needle)
    assert not (tmp_path / "new").exists() and not (tmp_path / "h.head").exists()
    (tmp_path / "folder").mkdir()
    assert_clean_error(cli("extract", str(image_folder), "--store", str(tmp_path / "folder"), *tiny_cli, "--overwrite"),
                       "is a folder")
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.slow
def test_store_from_another_dataset_is_refused_and_untouched(tmp_path, image_folder, tiny_cli):
    base = ["--store", str(tmp_path / "s.h5"), *tiny_cli, "-q"]
    assert cli("extract", str(image_folder), *base).returncode == 0
    before = _sha(tmp_path / "s.h5")
    other = write_folder(tmp_path / "other", per_class=3, seed=7)
    assert_clean_error(cli("extract", str(other), *base), "input data differ", "--overwrite")
    assert _sha(tmp_path / "s.h5") == before
    assert cli("extract", str(other), *base, "--overwrite").returncode == 0
    assert featcache.load(tmp_path / "s.h5")[0].shape[0] == 9


@pytest.mark.slow
def test_strict_stops_at_the_first_corrupt_file(tmp_path, image_folder, tiny_cli):
    (image_folder / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n-truncated")
    proc = cli("extract", str(image_folder), "--store", str(tmp_path / "s.h5"), *tiny_cli, "--strict")
    assert_clean_error(proc, "square/broken.png")


def _extract_args(folder, store, weights, *extra) -> list[str]:
    return ["extract", str(folder), "--store", str(store), "--backbone", TINY, "--weights", str(weights),
            "--image-size", "32", "--batch-size", "4", "--workers", "0", "--commit-every", "0", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_the_same_store(tmp_path, tiny_weights, sig):
    folder = write_folder(tmp_path / "many", per_class=10)
    full = tmp_path / "full.h5"
    assert cli(*_extract_args(folder, full, tiny_weights, "--precision", "fp32", "-q")).returncode == 0

    store = tmp_path / "cut.h5"
    # 3 segments of 4 rows durable; a loader worker process running, as on a real machine
    proc = paused_cli(_extract_args(folder, store, tiny_weights, "--precision", "fp32", "--workers", "1"),
                   "segment-committed", 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:  # the batch in flight is finished and committed, then a clean stop
        assert proc.returncode == 130 and "re-run the same command to resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not store.exists()
    partial = cli("info", str(store))
    committed = 16 if sig == signal.SIGINT else 12
    assert partial.returncode == 0 and f"{committed} source rows committed" in partial.stdout

    resumed = cli(*_extract_args(folder, store, tiny_weights, "--precision", "fp32"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at row {committed}" in resumed.stdout
    a, b = featcache.load(full), featcache.load(store)
    assert list(a[2]) == list(b[2]) and len(set(b[2])) == len(b[2]) == 30
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "cut.h5.partial").exists()
    with h5py.File(store) as f:
        assert f.attrs["complete"]


@pytest.mark.slow
def test_a_resumed_run_keeps_the_precision_its_rows_were_computed_in(tmp_path, tiny_weights):
    """`auto` is bf16 on one CPU and fp32 on another: a store started on one is not finished on the other."""
    folder = write_folder(tmp_path / "imgs", per_class=4)
    store = tmp_path / "s.h5"
    proc = paused_cli(_extract_args(folder, store, tiny_weights), "segment-committed", env={"FEATCACHE_CPU_BF16": "1"})
    proc.kill()
    proc.communicate(timeout=60)
    other_cpu = cli(*_extract_args(folder, store, tiny_weights), env={"FEATCACHE_CPU_BF16": "0"})
    assert_clean_error(other_cpu, "computed its rows in bf16", "FEATCACHE_CPU_BF16=1", "--overwrite")
    same = cli(*_extract_args(folder, store, tiny_weights), env={"FEATCACHE_CPU_BF16": "1"})
    assert same.returncode == 0 and "resumed at row 4" in same.stdout and "cpu bf16" in same.stdout, same.stderr
    with h5py.File(store) as f:
        assert f.attrs["precision"] == "bf16"


@pytest.mark.slow
def test_backbones_and_layers_listings(tmp_path):
    out = cli("backbones", env={"TORCH_HOME": str(tmp_path)})
    assert out.returncode == 0
    assert "timm:tf_efficientnet_lite0 (alias efficientnet_lite0)  offline (packaged)" in out.stdout
    assert "torchvision:resnet18" in out.stdout and "not available offline" in out.stdout
    layers = cli("layers", TINY)
    assert layers.returncode == 0
    names = [ln.split("\t")[0] for ln in layers.stdout.splitlines()]
    assert names[0] == "pooled" and "blocks.1" in names
    assert_clean_error(cli("layers", "torchvision:nope"), "no model named")


def test_fit_head_and_evaluate_print_a_summary_and_the_full_matrix_with_verbose(tmp_path):
    from helpers import blobs, synthetic_store

    X, y = blobs(20, sep=1.5)
    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    store = synthetic_store(tmp_path / "s.h5", X, y, label_names=names)
    head = tmp_path / "h.head"
    short = cli("fit-head", str(store), "--out", str(head))
    assert short.returncode == 0, short.stderr
    first = short.stdout.splitlines()[0]
    for needle in ("test accuracy", "macro-F1", "chosen on val", " s", str(head)):
        assert needle in first
    assert not any(name in short.stdout for name in names)  # no matrix by default
    for args in (["fit-head", str(store), "--out", str(head)], ["evaluate", str(head)]):
        quiet, verbose = cli(*args), cli(*args, "--verbose")
        assert verbose.returncode == 0 and len(verbose.stdout.splitlines()) > len(quiet.stdout.splitlines()) + 3
        for i, name in enumerate(names):  # each row of the matrix named in full, then its counts
            assert re.search(rf"^\s+{i} {re.escape(name)}\s+\d+\s+\d+\s+\d+$", verbose.stdout, re.M), verbose.stdout
    evaluated = cli("evaluate", str(head))
    assert "accuracy" in evaluated.stdout and "macro-F1" in evaluated.stdout and "chosen on val" in evaluated.stdout
