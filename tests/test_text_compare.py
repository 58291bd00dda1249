"""compare on a text store: the TF-IDF baseline beside the heads, on the same rows, in every part of the report."""

import csv
import json
import re

import numpy as np
import pytest
from chromium import Page, find_browser
from helpers import FILLER, assert_clean_error, blobs, cli, synthetic_store

import featcache
from featcache.compare import DEFAULT_METHODS, default_methods
from featcache.report import recommendations, summarise
from featcache.store import FeatureStore


def _separable_csv(path, n: int = 80, movies: int = 16, seed: int = 0):
    """Reviews whose one sentiment word ("superb" / "awful") gives the label away; the rest is shared filler."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "movie"])
        for i in range(n):
            words = [*rng.choice(FILLER, size=int(rng.integers(3, 10))), "superb" if i % 2 else "awful"]
            rng.shuffle(words)
            w.writerow([" ".join(words), "pos" if i % 2 else "neg", f"m{i % movies:02d}"])
    return path


@pytest.fixture(scope="module")
def text_compare(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("text-compare")
    store = root / "t.h5"
    featcache.extract(str(_separable_csv(root / "reviews.csv")), str(store), backbone=f"hf:{tiny_bert}",
                      group_col="movie", quiet=True)
    res = featcache.compare(store, methods="logreg,ridge,tfidf", budgets="2,all", out=root / "c", quiet=True)
    return store, res, root / "c"


def _cell(res, method, budget):
    return next(c for c in res["cells"] if c["method"] == method and c["budget"] == budget)


def test_tfidf_reads_the_same_rows_as_the_heads_and_separates_a_separable_corpus(text_compare):
    store, res, out = text_compare
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"] == ["logreg", "ridge", "tfidf"]
    with FeatureStore(store) as fs:
        n_test = fs.row_indices("default:test").size
    for budget in (2, None):
        tfidf, head = _cell(saved, "tfidf", budget), _cell(saved, "logreg", budget)
        assert tfidf["kind"] == "baseline" and head["kind"] == "head"
        assert tfidf["n_train"] == head["n_train"] and tfidf["split_sha256"] == head["split_sha256"]
        assert tfidf["metrics"]["n"] == head["metrics"]["n"] == n_test
        assert tfidf["chosen"]["C"] > 0 and tfidf["options"] == {}
    assert _cell(saved, "tfidf", None)["metrics"]["accuracy"] == 1.0  # one word tells the classes apart
    again = featcache.compare(store, methods="logreg,ridge,tfidf", budgets="2,all", out=out, quiet=True)
    assert again["computed"] == []  # a finished baseline cell is reused like a head's


def test_the_report_shows_the_baseline_but_recommends_a_head_or_fine_tune(text_compare):
    _, res, out = text_compare
    md = (out / "report.md").read_text()
    assert re.search(r"^\| tfidf \| all \| 1\.0000 \|", md, flags=re.M)
    assert "TF-IDF word unigrams and bigrams" in md and "cheapest head or fine-tune" in md
    assert "test texts" in md and "text encoding" in md and " px" not in md
    recs = recommendations(summarise(res), res)
    assert recs and all(r.chosen["kind"] == "head" and r.baseline.other["method"] == "tfidf" for r in recs)
    assert all("vs the baseline tfidf" in line for line in res.recommendation.splitlines())
    html = (out / "report.html").read_text()
    assert '<td class="text" data-sort="baseline">baseline</td>' in html


def test_the_headline_says_when_the_baseline_beats_every_head(text_compare, tmp_path):
    _, res, _ = text_compare
    results = json.loads(json.dumps(res.results))
    for c in results["cells"]:
        if c["kind"] == "head":
            c["metrics"]["accuracy"] = 0.3
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert cli("report", str(tmp_path), "-q").returncode == 0
    md = (tmp_path / "report.md").read_text()
    assert md.count("but the baseline **tfidf** (") == 2 and "but the baseline **tfidf** (1.000" in md
    results["cells"] = [{**c, "metrics": {**c["metrics"], "accuracy": 0.2}} if c["kind"] == "baseline" else c
                        for c in results["cells"]]
    assert not any("but the baseline" in r.sentence() for r in recommendations(summarise(results), results))


def test_a_text_store_compares_against_tfidf_by_default_an_image_store_refuses_it(text_compare, tmp_path):
    store, _, _ = text_compare
    with FeatureStore(store) as fs:
        assert "tfidf" in default_methods(fs) and "tfidf" not in DEFAULT_METHODS
    X, y = blobs(20)
    images = synthetic_store(tmp_path / "img.h5", X, y)
    proc = cli("compare", str(images), "--methods", "logreg,tfidf", "--budgets", "5", "--out", str(tmp_path / "c"))
    assert_clean_error(proc, "tfidf is a baseline for text stores")
    assert not (tmp_path / "c").exists()


@pytest.mark.skipif(find_browser() is None, reason="no Chromium or Chrome on PATH to render report.html in")
def test_the_text_page_renders_in_a_real_browser(text_compare, tmp_path):
    _, _, out = text_compare
    with Page(find_browser(), width=1280, height=900) as page:
        page.open(out / "report.html")
        assert page.problems() == []
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        kinds = page.evaluate("[...document.querySelectorAll('table.sortable tbody tr')]"
                              ".map(r => r.cells[1].textContent)")
        assert kinds.count("baseline") == 2 and kinds.count("head") == 4
