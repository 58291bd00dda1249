"""compare's grid on a real dask.distributed LocalCluster (2 worker processes) gives the sequential run's cells."""

from __future__ import annotations

import json

import pytest
from helpers import assert_clean_error, cli, write_folder

import featcache
from featcache.compare import compare

pytest.importorskip("dask.distributed", reason="the dask extra is not installed (scripts/env.sh installs it)")
pytestmark = pytest.mark.slow

OPTS = {"epochs": 1, "batch_size": 8, "workers": 0, "augment": False, "precision": "fp32"}
FIGURES = ("metrics", "n_train", "chosen", "trainable_params", "kind", "split_sha256", "options", "store_fingerprint")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("cluster")
    return featcache.extract(write_folder(root / "imgs", per_class=10), root / "s.h5", **tiny).store


def _cells(results: dict) -> dict:
    return {(c["method"], c["budget"], c["seed"]): {k: c.get(k) for k in FIGURES} for c in results["cells"]}


def test_compare_on_a_local_cluster_gives_the_sequential_cells_and_resumes(store, tmp_path):
    from dask.distributed import LocalCluster

    grid = {"methods": ["logreg", "ridge", "linear"], "budgets": [3, None], "seeds": 2}
    here = compare(store, out=tmp_path / "here", quiet=True, **grid, **OPTS)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        there = compare(store, out=tmp_path / "dask", quiet=True, backend="dask", scheduler=cluster.scheduler_address,
                        **grid, **OPTS)
        assert len(there["computed"]) == 12
        assert _cells(there) == _cells(here)
        assert json.loads((tmp_path / "dask" / "results.json").read_text())["cells"] == there["cells"]
        (tmp_path / "dask" / "cells" / "linear_3_s1.json").unlink()  # a lost cell: only it is recomputed
        again = compare(store, out=tmp_path / "dask", quiet=True, backend="dask",
                        scheduler=cluster.scheduler_address, **grid, **OPTS)
    assert again["computed"] == ["linear@3/s1"] and again["reused"] == 11
    assert (tmp_path / "dask" / "report.md").read_text().count("| linear |") == \
        (tmp_path / "here" / "report.md").read_text().count("| linear |")


def test_dask_backend_bad_options_are_one_line(store, tmp_path):
    proc = cli("compare", str(store), "--backend", "dask", "--time-budget", "5", "--out", str(tmp_path / "c"))
    assert_clean_error(proc, "--time-budget", "dask")
    proc = cli("compare", str(store), "--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp_path / "c"))
    assert_clean_error(proc, "--scheduler is for --backend dask")
    proc = cli("compare", str(store), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--methods", "ridge",
               "--budgets", "3", "--out", str(tmp_path / "d"), timeout=120)
    assert_clean_error(proc, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
