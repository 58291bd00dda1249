import json

import numpy as np
import pytest
from helpers import assert_clean_error, blobs, cli, synthetic_store, write_folder

import featcache
from featcache.errors import InputError, StoreMismatchError
from featcache.heads import HEADS, evaluate_head, fit_head, load_head, make_head
from featcache.metrics import selection_score
from featcache.store import FeatureStore


@pytest.fixture
def clf_store(tmp_path):
    X, y = blobs(60, n_classes=3, dim=24, sep=0.6)
    return synthetic_store(tmp_path / "clf.h5", X, y)


@pytest.fixture
def reg_store(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 12))
    y = X @ rng.normal(size=12) + rng.normal(0, 0.3, 200)
    return synthetic_store(tmp_path / "reg.h5", X, y, task="regression")


@pytest.mark.parametrize("head", ["logreg", "svm", "ridge"])
def test_classification_heads(clf_store, tmp_path, head):
    res = fit_head(clf_store, head, out=tmp_path / f"{head}.head", quiet=True)
    m = res.metrics
    assert 0.6 < m["accuracy"] <= 1 and 0 < m["macro_f1"] <= 1 and "balanced_accuracy" in m
    assert np.asarray(m["confusion_matrix"]).sum() == res.meta["n_test"]
    assert res.meta["param"] == HEADS[head].param and res.meta["value"] in res.meta["grid"]


@pytest.mark.parametrize("head", ["ridge", "svm"])
def test_regression_heads(reg_store, tmp_path, head):
    res = fit_head(reg_store, head, out=tmp_path / f"{head}.head", quiet=True)
    assert res.metrics["r2"] > 0.9 and res.metrics["mae"] < 1
    with pytest.raises(InputError, match="logreg is a classifier"):
        fit_head(reg_store, "logreg", quiet=True, save=False)


def test_the_sweep_chooses_by_validation_score(clf_store):
    res = fit_head(clf_store, "logreg", save=False, quiet=True)
    grid, scores = res.meta["grid"], res.meta["val_scores"]
    # recompute every grid point independently: the recorded scores are real val scores ...
    Xtr, ytr, _ = featcache.load(clf_store, split="train")
    Xva, yva, _ = featcache.load(clf_store, split="val")
    again = [selection_score("classification", yva, make_head("logreg", "classification", c).fit(Xtr, ytr)
                             .predict(Xva)) for c in grid]
    np.testing.assert_allclose(scores, again)
    # ... and the chosen value is the best one (ties: the strongest regularisation, the smallest C)
    best = max(scores)
    assert res.meta["value"] == min(c for c, s in zip(grid, scores, strict=True) if s == best)
    assert len(set(scores)) > 1  # the grid really matters on this data


def test_jobs_do_not_change_the_result(clf_store):
    a = fit_head(clf_store, "svm", save=False, quiet=True)
    b = fit_head(clf_store, "svm", save=False, quiet=True, jobs=2)
    assert a.meta["val_scores"] == b.meta["val_scores"] and a.meta["value"] == b.meta["value"]


def test_per_class_budget(clf_store):
    res = fit_head(clf_store, "ridge", per_class=5, save=False, quiet=True)
    assert res.meta["n_train"] == 15 and res.meta["per_class"] == 5


def test_persistence_round_trip_and_evaluate(clf_store, tmp_path):
    res = fit_head(clf_store, "logreg", out=tmp_path / "h.head", quiet=True)
    side = json.loads((tmp_path / "h.json").read_text())
    for k in ("store", "store_fingerprint", "layer", "head", "value", "metrics", "sklearn_version",
              "featcache_version", "head_sha256", "split_sha256"):
        assert k in side
    pipe, meta = load_head(tmp_path / "h.head")
    X, _, _ = featcache.load(clf_store, split="test")
    np.testing.assert_array_equal(pipe.predict(X), res.pipeline.predict(X))
    assert evaluate_head(tmp_path / "h.head") == res.metrics
    out = cli("evaluate", str(tmp_path / "h.head"), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["accuracy"] == res.metrics["accuracy"]


def test_head_refuses_a_changed_store_and_a_corrupt_file(clf_store, tmp_path):
    fit_head(clf_store, "ridge", out=tmp_path / "h.head", quiet=True)
    head = tmp_path / "h.head"
    X, y = blobs(60, n_classes=3, dim=24, sep=0.6, seed=9)
    synthetic_store(tmp_path / "other.h5", X, y)
    with pytest.raises(StoreMismatchError, match="not the store this head was fit on"):
        load_head(head, store=tmp_path / "other.h5")
    assert_clean_error(cli("evaluate", str(head), str(tmp_path / "other.h5")), "not the store")

    good = head.read_bytes()
    head.write_bytes(good[: len(good) // 2])
    assert_clean_error(cli("evaluate", str(head)), "does not match its sidecar")
    assert_clean_error(cli("evaluate", str(head), "--trust"), "cannot load head")  # a torn zip is no head file
    assert head.read_bytes() == good[: len(good) // 2]  # nothing overwritten


def test_fit_head_bad_input(tmp_path, clf_store):
    X, _ = blobs(20)
    one = synthetic_store(tmp_path / "one.h5", X, np.zeros(len(X), dtype=int), label_names=["only"])
    assert_clean_error(cli("fit-head", str(one)), "at least two classes")
    assert_clean_error(cli("fit-head", str(clf_store), "--layer", "blocks.9"), "no layer 'blocks.9'")
    assert_clean_error(cli("fit-head", str(clf_store), "--per-class", "500"), "more than the train split has")
    assert_clean_error(cli("fit-head", str(tmp_path / "nope.h5")), "store not found")
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert_clean_error(cli("fit-head", str(tmp_path / "junk.h5")), "not a readable HDF5 file")
    assert not list((tmp_path).glob("*.head"))


def test_fit_head_cli_prints_a_summary_and_the_matrix_on_request(tmp_path):
    X, y = blobs(60, n_classes=3, dim=24, sep=0.6)
    names = ["T-shirt/top", "Ankle boot", "a class with a long name"]
    store = synthetic_store(tmp_path / "clf.h5", X, y, label_names=names)
    out = cli("fit-head", str(store), "--head", "svm", "--out", str(tmp_path / "svm.head"), "--jobs", "2")
    assert out.returncode == 0, out.stderr
    summary = out.stdout.strip().splitlines()
    assert len(summary) <= 2 and "accuracy" in summary[0] and "chosen on val" in summary[0]
    assert not any(name in out.stdout for name in names)  # the matrix only with --verbose
    assert json.loads((tmp_path / "svm.json").read_text())["head"] == "svm"
    verbose = cli("evaluate", str(tmp_path / "svm.head"), "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "confusion matrix" in verbose.stdout and all(name in verbose.stdout for name in names)  # never cut


def test_a_split_without_test_rows_is_said_not_crashed_on(tmp_path):
    X, y = blobs(30, n_classes=2, dim=8)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    assert cli("split", str(store), "--name", "notest", "--val", "0.2", "--test", "0").returncode == 0
    out = cli("fit-head", str(store), "--split", "notest", "--head", "ridge", "--out", str(tmp_path / "r.head"))
    assert out.returncode == 0, out.stderr
    assert "no rows to measure" in out.stdout
    assert_clean_error(cli("evaluate", str(tmp_path / "r.head")), "no test rows")


@pytest.mark.slow
def test_predict_new_images_matches_the_store(tmp_path, tiny):
    folder = write_folder(tmp_path / "imgs", per_class=10)
    store = tmp_path / "s.h5"
    featcache.extract(folder, store, **tiny)
    res = fit_head(store, "logreg", out=tmp_path / "h.head", quiet=True)
    picks = ["circle/img003.png", "square/img005.jpg", "stripes/img007.png"]
    proc = cli("predict", str(tmp_path / "h.head"), *[str(folder / p) for p in picks],
               "--out", str(tmp_path / "p.csv"))
    assert proc.returncode == 0, proc.stderr
    import csv

    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    with FeatureStore(store) as fs:
        idx = [list(fs.ids).index(p) for p in picks]
        X = fs.features(rows=np.asarray(idx))
        names = fs.label_names
    expect = res.pipeline.predict(X)
    proba = res.pipeline.predict_proba(X)
    assert [r["prediction"] for r in rows] == [names[k] for k in expect]
    np.testing.assert_allclose([float(r["p_circle"]) for r in rows], proba[:, 0], atol=1e-4)
    (tmp_path / "bad.png").write_bytes(b"")
    bad = cli("predict", str(tmp_path / "h.head"), str(tmp_path / "bad.png"), str(folder / picks[0]))
    assert bad.returncode == 0 and "empty file" in bad.stdout
