"""Fuzzing the readers a user's files reach: manifests, head sidecars, stores. Whatever the bytes, the answer
is a result or one line with exit 2 (a FeatcacheError or OSError in the API), never a traceback, never a write."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import blobs, synthetic_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.sources import open_source

# the same examples on every run (CI is not a lottery); FEATCACHE_FUZZ_EXAMPLES=2000 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("FEATCACHE_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

cell = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "nan", "inf", "-1", "1.5", "train", "val", "test",
                                                        "./a.png", "a.png", "a/../a.png", '"', ",", "\n"]))


@FUZZ
@given(header=st.lists(st.sampled_from(["path", "label", "split", "group", "x", ""]), min_size=1, max_size=5),
       rows=st.lists(st.lists(cell, min_size=0, max_size=6), max_size=8),
       delimiter=st.sampled_from([",", ";", "\t"]), task=st.sampled_from(["auto", "classification", "regression"]))
def test_the_manifest_reader_answers_or_refuses_with_an_input_error(header, rows, delimiter, task):
    with tempfile.TemporaryDirectory() as d:
        manifest = Path(d) / "m.csv"
        manifest.write_text("\n".join(delimiter.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
        before = sorted(Path(d).iterdir())
        try:
            src = open_source(manifest, task=task, group_col="group" if "group" in header else None)
        except FeatcacheError:
            pass
        else:
            assert len(src) == len(src.ids) == len(src.labels) and len(set(src.ids)) == len(src.ids)
            if src.task == "regression":
                assert np.isfinite(src.labels).all()
        assert sorted(Path(d).iterdir()) == before


json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from featcache.heads import fit_head

    root = tmp_path_factory.mktemp("fuzz")
    X, y = blobs(30, 3, 6)
    store = synthetic_store(root / "s.h5", X, y)
    fit_head(store, "ridge", out=root / "h.head", quiet=True)
    return root


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(["head", "task", "layer", "split", "store", "store_fingerprint",
                                              "store_key", "head_sha256", "label_names", "value", "grid"]),
                             json_value, max_size=4),
       drop=st.lists(st.sampled_from(["head", "store", "store_key", "split", "layer"]), max_size=2),
       whole=st.one_of(st.none(), json_value))
def test_a_forged_or_damaged_sidecar_is_one_line(fitted, capsys, edits, drop, whole):
    with tempfile.TemporaryDirectory() as d:
        for name in ("h.head", "s.h5"):
            shutil.copy(fitted / name, Path(d) / name)
        meta = json.loads((fitted / "h.json").read_text())
        meta["store"] = str(Path(d) / "s.h5")
        meta.update(edits)
        for k in drop:
            meta.pop(k, None)
        (Path(d) / "h.json").write_text(json.dumps(meta if whole is None else whole))
        code = main(["evaluate", str(Path(d) / "h.head")])
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_a_damaged_store_is_one_line(fitted, capsys, flips, cut):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.h5"
        data = bytearray((fitted / "s.h5").read_bytes())
        for where, value in flips:
            data[int(where * len(data))] = value
        if cut is not None:
            data = data[: int(cut * len(data))]
        path.write_bytes(bytes(data))
        out = str(Path(d) / "x.head")
        for command in (["info", str(path)], ["fit-head", str(path), "--head", "ridge", "--out", out, "-q"]):
            code = main(command)
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, (command, err)
            if code == 2:
                assert len(err.strip().splitlines()) == 1, err
