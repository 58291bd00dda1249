import h5py
import numpy as np
import pytest
from helpers import assert_clean_error, blobs, cli, synthetic_store

from featcache.errors import InputError
from featcache.splits import SPLIT_CODES, SplitSpec, budget_rank, compute_split
from featcache.store import FeatureStore, add_split

TRAIN, VAL, TEST = 0, 1, 2


def test_split_is_deterministic_and_stratified():
    y = np.repeat(np.arange(4), [50, 30, 100, 20])
    a = compute_split(y, "classification", SplitSpec(val=0.1, test=0.2, seed=3))
    assert (a == compute_split(y, "classification", SplitSpec(val=0.1, test=0.2, seed=3))).all()
    assert (a != compute_split(y, "classification", SplitSpec(val=0.1, test=0.2, seed=4))).any()
    for c, size in enumerate([50, 30, 100, 20]):
        assert abs((a[y == c] == TEST).sum() - 0.2 * size) <= 1
        assert abs((a[y == c] == VAL).sum() - 0.1 * size) <= 1.5
    assert abs((a == TEST).mean() - 0.2) < 0.01


def test_official_test_split_is_kept():
    y = np.tile(np.arange(5), 40)
    official = np.where(np.arange(200) >= 150, TEST, TRAIN).astype(np.int8)
    a = compute_split(y, "classification", SplitSpec(val=0.1, test=0.3), official)
    assert (a[150:] == TEST).all() and (a[:150] != TEST).all()
    assert abs((a == VAL).sum() - 20) <= 2


def test_grouped_split_keeps_groups_on_one_side():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 5).astype(str)
    y = rng.integers(0, 3, groups.size)
    a = compute_split(y, "classification", SplitSpec(val=0.15, test=0.2, seed=1), groups=groups)
    for g in np.unique(groups):
        assert np.unique(a[groups == g]).size == 1
    assert 0.12 < (a == TEST).mean() < 0.3 and (a == VAL).any()


def test_budgets_are_nested_and_drawn_from_train():
    y = np.repeat(np.arange(3), 40)
    a = compute_split(y, "classification", SplitSpec())
    rank = budget_rank(y, "classification", a, seed=0)
    assert (rank[a != TRAIN] == -1).all()
    small = set(np.flatnonzero((rank >= 0) & (rank < 5)))
    big = set(np.flatnonzero((rank >= 0) & (rank < 10)))
    assert small < big
    assert all(np.sum((rank >= 0) & (rank < 5) & (y == c)) == 5 for c in range(3))


def test_store_split_rows_budgets_and_errors(tmp_path):
    X, y = blobs(40)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    with FeatureStore(store) as fs:
        assert fs.split_names() == ["default"]
        tr5, tr10 = set(fs.row_indices("train", per_class=5)), set(fs.row_indices("train", per_class=10))
        assert len(tr5) == 15 and tr5 < tr10 and tr10 <= set(fs.row_indices("train"))
        parts = [set(fs.row_indices(p)) for p in ("train", "val", "test")]
        assert sum(map(len, parts)) == 120 and not (parts[0] & parts[2])
        with pytest.raises(InputError, match="more than the train split has"):
            fs.row_indices("train", per_class=1000)
        with pytest.raises(InputError, match="train split only"):
            fs.row_indices("test", per_class=2)


def test_add_split_adds_a_scheme_and_keeps_the_rest(tmp_path):
    X, y = blobs(30)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    with FeatureStore(store) as fs:
        before = fs.split_assign("default").copy()
    counts = add_split(store, "s7", SplitSpec(val=0.2, test=0.2, seed=7))
    assert counts["val"] == 18 and counts["test"] == 18
    with FeatureStore(store) as fs:
        assert fs.split_names() == ["default", "s7"]
        assert (fs.split_assign("default") == before).all()
        assert (fs.split_assign("s7") != before).any()
        np.testing.assert_array_equal(fs.features(), X.astype(np.float32))
    with h5py.File(store) as f:  # any HDF5 client sees an enum
        assert h5py.check_enum_dtype(f["splits/s7/assign"].dtype) == SPLIT_CODES
    with pytest.raises(InputError, match="already has a split"):
        add_split(store, "s7")


def test_grouped_store_split_from_group_column(tmp_path):
    X, y = blobs(40)
    groups = [f"g{i // 4}" for i in range(len(y))]
    store = synthetic_store(tmp_path / "s.h5", X, y, groups=groups)
    with FeatureStore(store) as fs:
        assert fs.split_attrs()["grouped"]
        a, g = fs.split_assign(), fs.groups
        for grp in set(g):
            assert np.unique(a[g == grp]).size == 1


def test_split_cli(tmp_path):
    X, y = blobs(20)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    ok = cli("split", str(store), "--name", "b", "--seed", "2")
    assert ok.returncode == 0 and "split 'b' written" in ok.stdout
    assert_clean_error(cli("split", str(store), "--name", "b"), "already has a split")
    assert_clean_error(cli("split", str(store), "--val", "0.7", "--test", "0.5", "--name", "c"), "fractions")
    assert_clean_error(cli("split", str(store), "--grouped", "--name", "d"), "group column")
