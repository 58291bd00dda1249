"""Extraction under a real ``torchrun --standalone`` (gloo, CPU): shards, assembly, kills, relaunches, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ROOT, cli, write_folder

from featcache.journal import Journal
from featcache.launch import Launch, shard_bounds

pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args: str, env: dict | None = None, timeout: float = 180):
    """``torchrun --standalone --nproc-per-node N -m featcache ARGS``, with this interpreter."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FEATCACHE_FAULT")}
    full.update({"PYTHONPATH": str(ROOT), **(env or {})})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "featcache", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=timeout)


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """27 files (an odd count, so the shards differ in size), one unreadable, inside rank 1's shard."""
    root = write_folder(tmp_path / "imgs", per_class=8)
    (root / "square" / "img900.png").write_bytes(b"not a png")
    from helpers import make_image

    make_image(2, 4242).save(root / "stripes" / "img901.png")
    make_image(2, 4243).save(root / "stripes" / "img902.png")
    return root


def _args(folder: Path, store: Path, tiny_cli: list[str], *extra: str) -> list[str]:
    return ["extract", str(folder), "--store", str(store), *tiny_cli, "--precision", "fp32", "--device", "cpu",
            "--batch-size", "4", *extra]


def _same_store(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert list(fa["ids"][()]) == list(fb["ids"][()])
        np.testing.assert_array_equal(fa["labels"][()], fb["labels"][()])
        np.testing.assert_allclose(fa["features/pooled"][()], fb["features/pooled"][()], rtol=0, atol=1e-5)
        assert list(fa["failures/ids"][()]) == list(fb["failures/ids"][()])
        assert list(fa["failures/reasons"][()]) == list(fb["failures/reasons"][()])
        for split in ("splits/default/assign",):
            np.testing.assert_array_equal(fa[split][()], fb[split][()])
        assert fa.attrs["key"] == fb.attrs["key"]


def test_two_ranks_make_the_single_process_store(tmp_path, odd_folder, tiny_cli):
    single = tmp_path / "single.h5"
    assert cli(*_args(odd_folder, single, tiny_cli)).returncode == 0
    dist = tmp_path / "dist.h5"
    proc = torchrun(2, *_args(odd_folder, dist, tiny_cli))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("extracted 26 rows (1 failed)") == 1, proc.stdout  # one summary, from rank 0
    _same_store(single, dist)
    with h5py.File(dist, "r") as f:
        d = json.loads(f.attrs["distributed"])
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    assert [r["rows"] for r in d["ranks"]] == [[0, 13], [13, 27]]  # contiguous shards, nothing padded
    assert not Journal(dist).dir.exists()
    again = cli(*_args(odd_folder, dist, tiny_cli))  # the same store to a single process: nothing to do
    assert again.returncode == 0 and "up to date" in again.stdout


def test_a_rank_killed_mid_run_resumes_its_own_shard_on_relaunch(tmp_path, odd_folder, tiny_cli):
    single = tmp_path / "single.h5"
    assert cli(*_args(odd_folder, single, tiny_cli)).returncode == 0
    store = tmp_path / "dist.h5"
    fault = {"FEATCACHE_FAULT": "segment-committed:2:kill", "FEATCACHE_FAULT_RANK": "1"}
    killed = torchrun(2, *_args(odd_folder, store, tiny_cli, "--commit-every", "0"), env=fault)
    assert killed.returncode != 0 and not store.exists()
    journal = Journal(store)
    assert journal.reach(13, 27) == 22  # rank 1 committed two batches of 4 good rows (and the bad file) first
    proc = torchrun(2, *_args(odd_folder, store, tiny_cli, "--commit-every", "0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_store(single, store)
    with h5py.File(store, "r") as f:
        ranks = json.loads(f.attrs["distributed"])["ranks"]
    assert ranks[1]["resumed_from"] == 22 and ranks[1]["extracted"] == 5  # its committed rows were kept


def test_a_relaunch_with_another_world_size_gives_the_same_store(tmp_path, odd_folder, tiny_cli):
    single = tmp_path / "single.h5"
    assert cli(*_args(odd_folder, single, tiny_cli)).returncode == 0
    store = tmp_path / "dist.h5"
    fault = {"FEATCACHE_FAULT": "segment-committed:2:kill", "FEATCACHE_FAULT_RANK": "0"}
    assert torchrun(2, *_args(odd_folder, store, tiny_cli, "--commit-every", "0"), env=fault).returncode != 0
    proc = torchrun(3, *_args(odd_folder, store, tiny_cli, "--commit-every", "0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_store(single, store)


def test_a_rank_that_raises_fails_the_launch_within_seconds_and_publishes_nothing(tmp_path, odd_folder, tiny_cli):
    store = tmp_path / "dist.h5"
    t = time.monotonic()
    proc = torchrun(2, *_args(odd_folder, store, tiny_cli),
                    env={"FEATCACHE_FAULT": "segment-write:1:raise", "FEATCACHE_FAULT_RANK": "1"})
    assert proc.returncode != 0
    assert time.monotonic() - t < 60  # not the collective timeout (30 min): torchrun stops the other rank
    assert "fault injected at segment-write" in proc.stderr
    assert not store.exists()


def test_bad_input_under_torchrun_names_the_rank_in_one_line(tmp_path, odd_folder, tiny_cli):
    proc = torchrun(2, *_args(odd_folder, tmp_path / "s.h5", tiny_cli, "--layers", "nope"))
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("featcache extract (rank")]
    assert sorted(ln.split(":")[0] for ln in lines) == ["featcache extract (rank 0/2)", "featcache extract (rank 1/2)"]
    assert all("nope" in ln for ln in lines) and "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "s.h5").exists()


def test_shard_bounds_cover_every_row_once():
    for n in (0, 1, 7, 26, 1001):
        for w in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, w) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_launch_reads_torchrun_environment(monkeypatch):
    from featcache.errors import InputError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Launch.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Launch.from_env() is None  # torchrun --nproc-per-node 1 is a single process
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match="RANK or MASTER_ADDR is not set"):
        Launch.from_env()  # an exported WORLD_SIZE alone is not a launch
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = Launch.from_env()
    assert (launch.rank, launch.world_size, launch.local_rank, launch.is_main) == (3, 4, 1, False)
    assert launch.device("cpu").type == "cpu"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="do not fit WORLD_SIZE=4"):
        Launch.from_env()


def test_journal_chains_skip_segments_that_straddle_new_shards(tmp_path):
    """Segments of a launch with 2 ranks over 40 rows ([0,10), [20,30)), then shards of 3 ranks: each new shard
    uses only segments inside it, so the store's chain from row 0 stays contiguous."""
    j = Journal(tmp_path / "s.h5")
    j.start({"k": 1}, {})

    def seg(a, b):
        j.commit(a, b, np.arange(a, b), {"pooled": np.zeros((b - a, 2), np.float32)}, [], "float32")

    seg(0, 10)
    seg(20, 30)
    assert j.committed_rows() == 20 and j.reach(0) == 10
    assert [j.reach(*shard_bounds(40, r, 3)) for r in range(3)] == [10, 13, 26]  # [20,30) straddles 26
    seg(10, 13)
    seg(13, 26)
    seg(26, 40)
    assert [(a, b) for a, b, _ in j.segments(0, 40)] == [(0, 10), (10, 13), (13, 26), (26, 40)]

    k = Journal(tmp_path / "t.h5")
    k.start({"k": 1}, {})
    for a, b in ((0, 10), (0, 5), (5, 20)):  # the longest first hop is a dead end at 10
        k.commit(a, b, np.arange(a, b), {"pooled": np.zeros((b - a, 2), np.float32)}, [], "float32")
    assert k.reach(0) == 20 and [(a, b) for a, b, _ in k.segments()] == [(0, 5), (5, 20)]
