"""The comparison as a page (report.html, checked in a real browser), as report.md, and as notebook objects."""

import json
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from chromium import Page, find_browser
from helpers import ROOT, assert_clean_error, blobs, cli, synthetic_store, write_folder

import featcache
from featcache.report import recommendations, summarise
from featcache.results import CompareResult

NAMES = ["T-shirt/top", "Trouser", "Ankle boot"]


@pytest.fixture(scope="module")
def heads_only(tmp_path_factory):
    """A comparison of two heads on a synthetic store, 2 seeds, with a fine-tune skipped by a zero time budget."""
    root = tmp_path_factory.mktemp("heads")
    X, y = blobs(30, sep=0.7)
    store = synthetic_store(root / "s.h5", X, y, label_names=NAMES)
    res = featcache.compare(store, methods="ridge,logreg,full", budgets="5,all", seeds=2, out=root / "c",
                            time_budget_minutes=0, quiet=True)
    return res, root / "c"


def _text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_compare_returns_an_object_a_notebook_can_use(heads_only):
    res, out = heads_only
    assert isinstance(res, CompareResult) and res["seeds"] == 2 and res.folder == out
    frame = res.to_frame()
    assert len(frame) == len(res["cells"]) == 3 * 2 * 2
    done = frame[frame["skipped"].isna()]
    for c in res["cells"]:
        if "skipped" not in c:
            row = done[(done.method == c["method"]) & (done.budget == str(c["budget"]).replace("None", "all"))
                       & (done.seed == c["seed"])]
            assert row["accuracy"].item() == c["metrics"]["accuracy"]
    assert set(frame[frame["skipped"].notna()]["method"]) == {"full"}
    figures = res.plot()
    assert list(figures) == ["accuracy_vs_labels", "accuracy_vs_time", "per_class"]
    assert all(f.axes for f in figures.values())
    summary = _text(res._repr_html_())
    recs = recommendations(summarise(res), res)
    assert res.recommendation == "\n".join(r.sentence() for r in recs) and len(recs) == 2
    for rec in recs:
        head, evidence, _ = rec.parts()
        assert head in summary and evidence and all(e in summary for e in evidence)
    assert CompareResult.load(out).recommendation == res.recommendation


def test_the_recommendation_carries_its_evidence(heads_only):
    res, _ = heads_only
    lines = res.recommendation.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["5 labels per class", "all labels"]
    for line in lines:
        # a gap in points with its 95 % interval over the 2 seeds, and a time ratio
        assert re.search(r"[+-]\d+\.\d points \(95% interval [+-]\d+\.\d to [+-]\d+\.\d, paired over 2 seeds\)", line)
        assert "total time" in line and "One seed" not in line


def test_the_page_is_self_contained_accessible_and_says_what_report_md_says(heads_only):
    res, out = heads_only
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)|<link\b|<script\s+src|@import|url\((?!#)""", html)
    assert re.findall(r"<h(\d)", html)[:3] == ["1", "2", "2"]
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert len(svgs) == 3
    for svg in svgs:
        assert re.search(r"<title id=[^>]*>[^<]+</title><desc id=[^>]*>[^<]{20,}</desc>", svg)
    headers = re.findall(r"<th\b[^>]*>", html)
    assert len(headers) > 10 and all("scope=" in th for th in headers)
    text = _text(html)
    for line in res.recommendation.splitlines():
        head = line.split(":")[0]
        assert head in text and f"- {head}:" in md
    skipped = [c["skipped"] for c in res["cells"] if "skipped" in c]
    assert skipped and all(s in text and s in md for s in skipped)
    command = json.loads((out / "results.json").read_text())["run"]["command"]
    assert command in text and command in md and "--time-budget 0" in command
    for fact in ("weights", "preprocessing", "splits", "machine", "featcache", featcache.__version__):
        assert fact in text and fact in md
    for name in ("accuracy_vs_labels.png", "accuracy_vs_time.png", "per_class.png"):
        assert f"]({name})" in md and (out / name).stat().st_size > 1000


def test_report_rebuilds_the_same_page_without_recomputing(heads_only, tmp_path):
    _, out = heads_only
    before = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    page = (out / "report.html").read_bytes()
    (out / "report.html").unlink()
    (out / "report.md").unlink()
    proc = cli("report", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report.html")
    assert (out / "report.html").read_bytes() == page and (out / "report.md").exists()
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == before
    assert_clean_error(cli("report", str(tmp_path)), "no results.json")
    (tmp_path / "results.json").write_text("{}")
    assert_clean_error(cli("report", str(tmp_path)), "not a featcache compare results file")


def test_report_takes_older_results_and_class_names_matplotlib_would_misread(heads_only, tmp_path):
    _, out = heads_only
    results = json.loads((out / "results.json").read_text())
    del results["out"]  # written by an older featcache
    results["run"] = {"label_names": ["price $5 - $10", "cost $\\frac{a$ or more", "x" * 120]}
    # a finished fine-tune beside the heads (made from a head's figures): the per-class figure names the classes
    tuned = [{**c, "method": "full", "kind": "finetune"} for c in results["cells"]
             if c["method"] == "logreg" and "skipped" not in c]
    results["cells"] = [c for c in results["cells"] if c["method"] != "full"] + tuned
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = cli("report", str(tmp_path), "-q")
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "report.html").read_text()
    assert "price $5 - $10" in html and "x" * 120 in html  # the tables keep the names whole
    (tmp_path / "results.json").write_text(json.dumps({**results, "cells": [1, 2]}))
    assert_clean_error(cli("report", str(tmp_path)), "not a featcache compare results file")


def test_the_recorded_command_reproduces_the_grid(heads_only):
    """Run as written, the command finds every cell computed under the same options: nothing to recompute."""
    _, out = heads_only
    command = json.loads((out / "results.json").read_text())["run"]["command"]
    proc = subprocess.run(command.replace("python", sys.executable, 1) + " -q", shell=True, cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "results.json").read_text())["computed"] == []


def test_the_public_names_stay_functions_whatever_was_imported_first():
    code = ("import featcache.compare, featcache.finetune, featcache.predict, featcache, inspect; "
            "print([inspect.isfunction(getattr(featcache, n)) for n in ('compare', 'finetune', 'predict')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[True, True, True]", out.stderr


@pytest.fixture(scope="module")
def with_fine_tunes(tmp_path_factory, tiny_cli):
    """A real comparison on images: a head and a fine-tune, 2 seeds, run from the command line."""
    root = tmp_path_factory.mktemp("images")
    folder = write_folder(root / "imgs", per_class=12)
    assert cli("extract", str(folder), "--store", str(root / "s.h5"), *tiny_cli, "-q").returncode == 0
    proc = cli("compare", str(root / "s.h5"), "--methods", "ridge,linear", "--budgets", "2,all", "--seeds",
               "2", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-augment", "--out", str(root / "c"))
    assert proc.returncode == 0, proc.stderr
    return proc, root / "c"


@pytest.mark.slow
def test_compare_prints_the_recommendation_and_the_page(with_fine_tunes):
    proc, out = with_fine_tunes
    res = CompareResult.load(out)
    assert res.recommendation in proc.stdout and f"report: {out / 'report.html'}" in proc.stdout
    page = _text((out / "report.html").read_text())
    for name in ("circle", "square", "stripes"):  # per-class rows and confusion matrices name the classes
        assert page.count(name) >= 3
    assert "logreg vs linear" in page or "ridge vs linear" in page
    record = json.loads(next((out / "runs").glob("linear_all_s0_*/model.json")).read_text())
    tuned = featcache.FinetuneResult(out / "runs", record)
    assert len(tuned.to_frame()) == record["epochs_run"] and tuned.plot().axes
    assert f"{record['metrics']['accuracy']:.4f}" in tuned._repr_html_()


def _not_blank(png: Path) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    inked = (pixels < 200).mean()
    assert pixels.std() > 10 and 0.01 < inked < 0.6, (pixels.std(), inked)


@pytest.mark.slow
@pytest.mark.skipif(find_browser() is None, reason="no Chromium or Chrome on PATH to render report.html in; "
                    "scripts/env.sh installs Debian's chromium where apt-get is usable as root")
def test_the_page_renders_in_a_real_browser(with_fine_tunes, tmp_path):
    _, out = with_fine_tunes
    with Page(find_browser(), width=1280, height=900) as page:
        page.open(out / "report.html")
        assert page.problems() == []
        _not_blank(page.screenshot(tmp_path / "report.png"))
        # legible at a laptop's width: nothing wider than the window, every figure drawn at a readable size
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        widths = page.evaluate("[...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().width)")
        assert len(widths) == 3 and min(widths) > 500
        assert page.evaluate("[...document.querySelectorAll('svg')].every(s => s.querySelector('title'))")
        accuracy = ("[...document.querySelectorAll('table.sortable tbody tr')].map("
                    "r => parseFloat(r.cells[3].getAttribute('data-sort'))).filter(x => !isNaN(x))")
        page.evaluate("document.querySelectorAll('table.sortable thead button')[3].click()")
        ascending = page.evaluate(accuracy)
        page.evaluate("document.querySelectorAll('table.sortable thead button')[3].click()")
        assert ascending == sorted(ascending) and page.evaluate(accuracy) == sorted(ascending, reverse=True)
        assert page.problems() == []
