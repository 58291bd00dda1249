"""Regression tests for the data-loss and code-execution defects found by hostile use (issue 14, top five)."""

import json
import pickle
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    TINY,
    assert_clean_error,
    blobs,
    cli,
    paused_cli,
    popen_cli,
    synthetic_store,
    wait_for_line,
    write_folder,
)

import featcache
from featcache.errors import StoreMismatchError, UntrustedFileError
from featcache.heads import evaluate_head, fit_head, load_head
from featcache.splits import SplitSpec
from featcache.store import FeatureStore, add_split


@pytest.fixture
def store(tmp_path):
    X, y = blobs(40, n_classes=3, dim=12, sep=0.8)
    return synthetic_store(tmp_path / "s.h5", X, y, split=["test" if i % 4 == 0 else "train" for i in range(len(y))])


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


# 1. split names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a/b", "official", "..", "-x", "a:b", "x" * 65, "s p"])
def test_bad_split_names_are_refused_and_change_nothing(store, name):
    before = _bytes(store)
    assert_clean_error(cli("split", str(store), f"--name={name}"), "split")
    assert _bytes(store) == before
    info = cli("info", str(store))
    assert info.returncode == 0 and "split official" in info.stdout and "split default" in info.stdout


def test_split_seed_must_be_a_valid_seed(store):
    assert_clean_error(cli("split", str(store), "--name", "s1", "--seed", "-1"), "seed")


# 2. no command writes over what is not its own output -------------------------------------------------------------

@pytest.mark.slow
def test_fit_head_never_writes_over_a_store_or_a_stray_file(store, tmp_path):
    before = _bytes(store)
    assert_clean_error(cli("fit-head", str(store), "--out", str(store)), ".head")
    assert_clean_error(cli("fit-head", str(store), "--out", str(store), "--overwrite"), ".head")
    stray = tmp_path / "notes.head"
    stray.write_text("my notes")
    assert_clean_error(cli("fit-head", str(store), "--out", str(stray)), "not a featcache head", "--overwrite")
    (tmp_path / "h.json").write_text('{"mine": true}')  # the sidecar's name is taken by a user file
    assert_clean_error(cli("fit-head", str(store), "--out", str(tmp_path / "h.head")), "h.json")
    assert _bytes(store) == before and stray.read_text() == "my notes"
    assert json.loads((tmp_path / "h.json").read_text()) == {"mine": True}
    # an older head at the same path is replaced (re-running fit-head is normal); --overwrite takes a stray file
    assert cli("fit-head", str(store), "--out", str(tmp_path / "ok.head"), "-q").returncode == 0
    assert cli("fit-head", str(store), "--out", str(tmp_path / "ok.head"), "-q", "--head", "ridge").returncode == 0
    assert json.loads((tmp_path / "ok.json").read_text())["head"] == "ridge"
    assert cli("fit-head", str(store), "--out", str(stray), "--overwrite", "-q").returncode == 0


@pytest.mark.slow
def test_predict_finetune_and_compare_refuse_foreign_outputs(store, tmp_path):
    fit_head(store, "ridge", out=tmp_path / "h.head", quiet=True)
    before = _bytes(store)
    img = write_folder(tmp_path / "imgs", per_class=1) / "circle" / "img000.png"
    assert_clean_error(cli("predict", str(tmp_path / "h.head"), str(img), "--out", str(store)),
                       "not a predictions CSV")
    assert _bytes(store) == before
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    assert_clean_error(cli("finetune", str(store), "--out", str(folder)), "not a fine-tune folder")
    assert_clean_error(cli("compare", str(store), "--out", str(folder), "--methods", "ridge", "--budgets", "5"),
                       "not a compare folder")
    assert (folder / "model.json").read_text() == "{}" and sorted(p.name for p in folder.iterdir()) == ["model.json"]
    assert_clean_error(cli("finetune", str(store), "--out", str(store)), "is a file")


def test_extract_to_a_folder_is_refused_before_any_work(tmp_path, image_folder, tiny_cli):
    (tmp_path / "out").mkdir()
    proc = cli("extract", str(image_folder), "--store", str(tmp_path / "out"), *tiny_cli, "--overwrite")
    assert_clean_error(proc, "is a folder")
    assert list((tmp_path / "out").iterdir()) == []


# 3. loading a head never runs code without --trust -----------------------------------------------------------------

class _Payload:
    """Unpickling this creates a marker file: the stand-in for arbitrary code in a forged head."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _forge(tmp_path: Path, genuine: Path, payload_marker: Path) -> Path:
    """A pickle with a sidecar that carries the pickle's own SHA-256, as an attacker can write it."""
    from featcache.weights import sha256_file

    forged = tmp_path / "forged.joblib"
    forged.write_bytes(pickle.dumps(_Payload(payload_marker)))
    side = json.loads(genuine.with_suffix(".json").read_text())
    side.update(head_sha256=sha256_file(forged), joblib_sha256=sha256_file(forged))
    forged.with_suffix(".json").write_text(json.dumps(side))
    return forged


def test_a_forged_pickle_with_a_matching_sidecar_does_not_run(store, tmp_path):
    fit_head(store, "logreg", out=tmp_path / "h.head", quiet=True)
    marker = tmp_path / "pwned"
    forged = _forge(tmp_path, tmp_path / "h.head", marker)
    for cmd in (["evaluate", str(forged)], ["predict", str(forged), str(tmp_path / "x.png")]):
        assert_clean_error(cli(*cmd), "pickle", "runs code", "--trust")
    with pytest.raises(UntrustedFileError):
        load_head(forged)
    assert not marker.exists()
    # --trust means what the README says: the user vouches for the file, and it is loaded
    assert_clean_error(cli("evaluate", str(forged), "--trust"), "not a fitted featcache head")
    assert marker.exists()


def test_head_files_load_without_trust_and_foreign_classes_are_refused(store, tmp_path):
    import zipfile

    from featcache.weights import sha256_file

    res = fit_head(store, "svm", out=tmp_path / "h.head", quiet=True)
    pipe, _ = load_head(tmp_path / "h.head")
    assert type(pipe).__name__ == "Pipeline"
    X, _, _ = featcache.load(store, split="test")
    np.testing.assert_array_equal(pipe.predict(X), res.pipeline.predict(X))

    # the same file naming a class that is no part of a head (here one that would run a function)
    forged = tmp_path / "other.head"
    with zipfile.ZipFile(tmp_path / "h.head") as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "head.json":
                data = data.replace(b"sklearn.svm.LinearSVC", b"sklearn.preprocessing.FunctionTransformer")
            dst.writestr(item, data)
    side = json.loads((tmp_path / "h.json").read_text())
    side["head_sha256"] = sha256_file(forged)
    (tmp_path / "other.json").write_text(json.dumps(side))
    assert_clean_error(cli("evaluate", str(forged)), "FunctionTransformer", "not a class featcache heads are made of")


def test_a_head_without_sidecar_loads_only_with_trust_and_its_store(store, tmp_path):
    res = fit_head(store, "logreg", out=tmp_path / "h.head", quiet=True)
    bare = tmp_path / "bare.head"
    shutil.copyfile(tmp_path / "h.head", bare)
    assert_clean_error(cli("evaluate", str(bare), str(store)), "no sidecar", "--trust")
    assert_clean_error(cli("evaluate", str(bare), "--trust"), "STORE")
    out = cli("evaluate", str(bare), str(store), "--trust", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] == res.metrics["accuracy"]


# 4. one writer per store: checks under the lock ------------------------------------------------------------------

def _extract(folder, store, weights, size: str) -> list[str]:
    return ["extract", str(folder), "--store", str(store), "--backbone", TINY, "--weights", str(weights),
            "--image-size", size, "--workers", "0", "--precision", "fp32", "-q"]


@pytest.mark.slow
def test_a_later_extraction_with_other_settings_cannot_replace_a_store_finished_meanwhile(tmp_path, image_folder,
                                                                                          tiny_weights):
    store = tmp_path / "s.h5"
    late = paused_cli(_extract(image_folder, store, tiny_weights, "40"), "before-lock")  # checked: nothing there
    assert cli(*_extract(image_folder, store, tiny_weights, "32")).returncode == 0  # another run finishes first
    key = h5py.File(store).attrs["key"]
    late.send_signal(signal.SIGUSR1)
    _, err = late.communicate(timeout=120)
    assert late.returncode == 2 and "already exists" in err and "image_size" in err, err
    with h5py.File(store) as f:
        assert f.attrs["key"] == key and f.attrs["image_size"] == 32


@pytest.mark.slow
def test_concurrent_splits_both_land(store):
    first = paused_cli(["split", str(store), "--name", "s1"], "store-edit")  # under the lock, not yet swapped in
    second = popen_cli("split", str(store), "--name", "s2", "--seed", "2")
    wait_for_line(second, "featcache: another process is writing")  # it waits for the lock, not for luck
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0, second.stderr.read()
    with FeatureStore(store) as fs:
        assert {"s1", "s2", "default", "official"} <= set(fs.split_names())


# 5. work fitted on one draw of a split is never scored on another --------------------------------------------------

def test_evaluate_refuses_a_head_whose_split_was_redrawn(store, tmp_path):
    add_split(store, "s1", SplitSpec(seed=1))
    fit_head(store, "logreg", split="s1", out=tmp_path / "h.head", quiet=True)
    assert evaluate_head(tmp_path / "h.head")["n"] > 0
    assert cli("split", str(store), "--name", "s1", "--seed", "2", "--overwrite", "-q").returncode == 0
    with pytest.raises(StoreMismatchError, match="re-drawn"):
        evaluate_head(tmp_path / "h.head")
    assert_clean_error(cli("evaluate", str(tmp_path / "h.head")), "re-drawn", "refit")


def test_compare_recomputes_cells_fitted_on_an_older_draw(tmp_path):
    from featcache.compare import compare

    X, y = blobs(30, sep=0.6)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    first = compare(store, methods=["ridge"], budgets=[5], seeds=2, out=tmp_path / "c", quiet=True)
    add_split(store, "default", SplitSpec(seed=9), overwrite=True)
    again = compare(store, methods=["ridge"], budgets=[5], seeds=2, out=tmp_path / "c", quiet=True)
    with FeatureStore(store) as fs:
        digests = {fs.split_digest("default"), fs.split_digest("default-budget1")}
    assert {c["split_sha256"] for c in again["cells"]} == digests
    assert not {c["split_sha256"] for c in first["cells"]} & digests


def test_a_disk_too_full_for_the_final_store_is_a_clean_error_and_the_rows_are_kept(tmp_path, image_folder, tiny,
                                                                                   monkeypatch):
    """HDF5 running out of space while writing crashed Python at exit (a segfault after a traceback per object):
    the space is checked before the store is written, the journal is kept, and a re-run with space finishes."""
    from collections import namedtuple

    from featcache.errors import NoSpaceError
    from featcache.journal import Journal

    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(NoSpaceError, match="not enough free space .* the extracted rows are kept"):
        featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert not (tmp_path / "s.h5").exists() and Journal(tmp_path / "s.h5").committed_rows() == 24
    monkeypatch.setattr(shutil, "disk_usage", real)
    res = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert res.resumed_from == 24 and res.rows == 24
    straight = featcache.load(featcache.extract(image_folder, tmp_path / "t.h5", **tiny).store)
    again = featcache.load(res.store)
    assert list(again[2]) == list(straight[2])
    np.testing.assert_allclose(again[0], straight[0], rtol=1e-5, atol=1e-6)


def test_a_journal_left_by_a_kill_after_the_store_was_published_is_removed_by_the_rerun(tmp_path, image_folder,
                                                                                        tiny):
    from featcache import faults
    from featcache.journal import Journal

    with faults.inject("published", 1, "interrupt"), pytest.raises(KeyboardInterrupt):
        featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert (tmp_path / "s.h5").exists() and Journal(tmp_path / "s.h5").exists()  # the moment a kill can hit
    before = (tmp_path / "s.h5").read_bytes()
    again = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert again.up_to_date and not (tmp_path / "s.h5.partial").exists()
    assert (tmp_path / "s.h5").read_bytes() == before


@pytest.mark.slow
def test_fault_script_survives_kills_in_every_phase(tmp_path):
    """scripts/fault_extract.py with 5 trials: one SIGKILL in each phase (segment write, between segments,
    assembly, after the rename, a seeded timer), each resumed to the uninterrupted store."""
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "fault.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_extract.py"), "--trials", "5", "--work",
                           str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["survived"] == 5 and {r["phase"] for r in result["results"]} == {
        "segment-write", "segment-committed", "assembly", "published", "timer"}
    assert "survived 5/5" in proc.stdout


def test_fingerprint_content_sees_bytes_not_times(tmp_path, image_folder, tiny):
    """stat (the default) trusts size + mtime: a copy with new times is 'changed', a rewrite that keeps both is
    missed. content hashes the bytes: neither mistake."""
    import os

    store = tmp_path / "s.h5"
    featcache.extract(image_folder, store, fingerprint="content", **tiny)
    copy = tmp_path / "copy"
    shutil.copytree(image_folder, copy, copy_function=shutil.copy)  # new modification times
    assert featcache.extract(copy, store, fingerprint="content", **tiny).up_to_date
    with pytest.raises(StoreMismatchError, match="fingerprint"):  # the mode is part of the identity
        featcache.extract(copy, store, **tiny)

    stat_store = tmp_path / "stat.h5"
    featcache.extract(copy, stat_store, **tiny)
    target = copy / "circle" / "img000.png"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # same size...
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the same time
    assert featcache.extract(copy, stat_store, **tiny).up_to_date  # the lie stat believes
    with pytest.raises(StoreMismatchError, match="input data differ"):
        featcache.extract(copy, store, fingerprint="content", **tiny)
    with FeatureStore(store) as fs:
        assert fs.attrs["fingerprint"] == "content"
