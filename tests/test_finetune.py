import json
import re

import numpy as np
import pytest
import torch
from helpers import ROOT, assert_clean_error, blobs, cli, synthetic_store, write_folder

import featcache
from featcache import faults
from featcache.compare import compare
from featcache.costs import TimeEstimate, cell_cost
from featcache.finetune import FinetuneConfig, finetune
from featcache.nets import FinetuneNet, block_groups, build_net
from featcache.report import summarise
from featcache.store import FeatureStore
from featcache.strategies import MODES, init_head_from_logreg, make_strategy

# fp32 stated: resumed-vs-uninterrupted comparisons mean fp32, and `auto` would be bf16 on bf16 CPUs
FAST = {"epochs": 1, "batch_size": 8, "workers": 0, "augment": False, "precision": "fp32", "quiet": True}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("ft")
    folder = write_folder(root / "imgs", per_class=12)
    return featcache.extract(folder, root / "s.h5", **tiny).store


def _initial_state(store):
    with FeatureStore(store) as fs:
        net, _ = build_net(fs, 3, 0.0)
    return {k: v.clone() for k, v in net.backbone.state_dict().items()}, net


def _changed(before: dict, after: dict, prefix: str = "backbone.") -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[prefix + k])}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear", "last-n", "full", "lp-ft", "gradual"])
def test_each_mode_trains_only_what_it_should(store, tmp_path, mode):
    before, net = _initial_state(store)
    res = finetune(store, out=tmp_path / mode, mode=mode, unfreeze=1, **FAST)
    after = torch.load(tmp_path / mode / "model.pt", weights_only=True)
    changed = _changed(before, after)
    groups = block_groups(net.backbone)
    in_last = {id(t) for m in groups[-1] for t in [*m.parameters(), *m.buffers()]}
    last = {n for n, t in [*net.backbone.named_parameters(), *net.backbone.named_buffers()] if id(t) in in_last}
    if mode in ("linear", "gradual"):  # gradual trains only the head in its first epoch
        assert changed == set(), sorted(changed)[:5]
    elif mode == "last-n":  # weights and BatchNorm statistics outside the last group stay as they were
        assert changed and changed <= last, sorted(changed - last)[:5]
    else:
        assert len(changed) > len(before) // 2
    assert not torch.equal(after["head.weight"], net.head.weight)  # the head always trains
    r = res.record
    n_test = featcache.load(store, split="test")[1].size
    assert r["metrics"]["n"] == n_test == np.sum(r["metrics"]["confusion_matrix"])  # scored on the test rows
    assert r["epochs_run"] == len(r["history"]) == 1 and r["best_epoch"] == 0
    head_params = sum(p.numel() for p in net.head.parameters())
    if mode in ("linear", "gradual"):  # only the head trains (gradual: in its first epoch)
        assert r["trainable_params"] == head_params
    else:
        assert head_params < r["trainable_params"] <= r["total_params"]
    assert r["peak_rss_bytes"] > 0 and r["images_per_s"] > 0 and r["config"]["mode"] == mode


@pytest.mark.slow
@pytest.mark.parametrize("bn_stats", ["frozen", "frozen-parts"])
def test_bn_stats_option_decides_whether_running_statistics_move(store, tmp_path, bn_stats):
    before, _ = _initial_state(store)
    finetune(store, out=tmp_path / bn_stats, mode="full", bn_stats=bn_stats, **FAST)
    after = torch.load(tmp_path / bn_stats / "model.pt", weights_only=True)
    stats = {k for k in _changed(before, after) if k.endswith(("running_mean", "running_var"))}
    weights = {k for k in _changed(before, after) if k.endswith("weight")}
    assert weights  # both train the whole backbone
    assert (stats == set()) == (bn_stats == "frozen"), sorted(stats)[:5]


@pytest.mark.slow
def test_lora_keeps_the_backbone_frozen(store, tmp_path):
    before, _ = _initial_state(store)
    res = finetune(store, out=tmp_path / "lora", mode="lora", lora_rank=2, **FAST)
    after = torch.load(tmp_path / "lora" / "model.pt", weights_only=True)
    base = {k.replace(".base.", "."): v for k, v in after.items() if ".down." not in k and ".up." not in k}
    assert _changed(before, base) == set()
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if ".up." in k)
    assert res.record["trainable_params"] < res.record["total_params"] / 2


def test_gradual_unfreezes_top_down(store):
    _, net = _initial_state(store)
    groups = block_groups(net.backbone)
    assert len(groups) >= 3
    s = make_strategy(FinetuneConfig(mode="gradual", epochs=len(groups) + 1))  # one more group each epoch
    with FeatureStore(store) as fs:
        s.setup(net, fs)

    def trainable(g):
        return any(p.requires_grad for m in g for p in m.parameters())

    s.on_epoch(net, 0)
    assert not any(trainable(g) for g in groups)
    s.on_epoch(net, 1)
    flags = [trainable(g) for g in groups]
    assert flags[-1] and not flags[0] and flags == sorted(flags)  # a suffix of groups, top-down
    assert sum(flags) == 1
    s.on_epoch(net, len(groups))
    assert all(trainable(g) for g in groups)


def test_lpft_head_starts_equal_to_the_logistic_head(tmp_path):
    from featcache.heads import fit_head

    X, y = blobs(30, n_classes=4, dim=10)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    net = FinetuneNet(torch.nn.Identity(), 10, 4)
    with FeatureStore(store) as fs:
        extra = init_head_from_logreg(net, fs, FinetuneConfig(mode="lp-ft"))
    pipe = fit_head(store, "logreg", save=False, quiet=True).pipeline
    assert extra["lp_value"] == fit_head(store, "logreg", save=False, quiet=True).meta["value"]
    with torch.no_grad():
        logits = net(torch.as_tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(logits, pipe.decision_function(X), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_continues_at_the_right_epoch(store, tmp_path):
    opts = {**FAST, "epochs": 3, "patience": 5, "mode": "last-n", "unfreeze": 1}
    full = finetune(store, out=tmp_path / "full", **opts)
    with faults.inject("epoch-checkpointed", 1), pytest.raises(KeyboardInterrupt):  # Ctrl-C after epoch 1
        finetune(store, out=tmp_path / "cut", **opts)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 0
    resumed = finetune(store, out=tmp_path / "cut", resume=True, **opts)
    assert [h["epoch"] for h in resumed.record["history"]] == [0, 1, 2]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert resumed.metrics == full.metrics


@pytest.mark.slow
def test_compare_resumes_and_the_report_matches_results(store, tmp_path):
    opts = {"epochs": 1, "batch_size": 8, "workers": 0, "augment": False, "precision": "fp32"}
    results = compare(store, methods=["logreg", "ridge", "linear"], budgets=[2, None], out=tmp_path / "c",
                      quiet=True, **opts)
    assert len(results["cells"]) == 6
    (tmp_path / "c" / "cells" / "ridge_2_s0.json").unlink()
    stale = tmp_path / "c" / "cells" / "linear_2_s0.json"  # computed under other defaults: not reused
    cell = json.loads(stale.read_text())
    assert cell["options"]["bn_stats"] == "frozen" and cell["options"]["epochs"] == 1
    stale.write_text(json.dumps({**cell, "options": {**cell["options"], "bn_stats": "frozen-parts"}}))
    again = compare(store, methods=["logreg", "ridge", "linear"], budgets=[2, None], out=tmp_path / "c", quiet=True,
                    **opts)
    assert sorted(again["computed"]) == ["linear@2/s0", "ridge@2/s0"] and len(again["cells"]) == 6

    report = (tmp_path / "c" / "report.md").read_text()
    table = {(m, b): float(acc) for m, b, acc in re.findall(r"^\| (\w[\w-]*) \| (\w+) \| ([0-9.]+)[ |]", report, re.M)}
    rows = {(r["method"], r["budget"]): r["accuracy"] for r in summarise(json.loads(
        (tmp_path / "c" / "results.json").read_text()))}
    assert table.keys() == rows.keys()
    for k, v in rows.items():
        assert abs(table[k] - v) < 1e-4
    assert "## Recommendation" in report and "labels per class" in report
    for png in ("accuracy_vs_labels.png", "accuracy_vs_time.png"):
        assert (tmp_path / "c" / png).stat().st_size > 1000


def test_compare_time_budget_skips_with_a_note(tmp_path):
    X, y = blobs(20)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    res = compare(store, methods=["ridge", "full"], budgets=[None], out=tmp_path / "c", time_budget_minutes=0,
                  quiet=True)
    cells = {c["method"]: c for c in res["cells"]}
    assert "skipped" in cells["full"] and "accuracy" in cells["ridge"]["metrics"]
    assert "skipped:" in (tmp_path / "c" / "report.md").read_text()


def test_time_estimate_scales_the_slowest_measured_cell():
    cfg = FinetuneConfig(epochs=1, min_steps=1)
    n_train, n_val = 100, 20
    linear, full = cell_cost("linear", n_train, n_val, cfg), cell_cost("full", n_train, n_val, cfg)
    assert linear == MODES["linear"].step_cost * n_train + n_val and full > 4 * linear
    assert cell_cost("ridge", n_train, n_val, cfg) < linear / 100  # heads run first
    est = TimeEstimate()
    assert est.minutes(linear) == pytest.approx(linear / 30 / 60)  # ~30 forward images/s before any measurement
    est.observe(60.0, linear)  # a linear cell took one minute
    est.observe(30.0, linear)  # and a faster one: the slowest rate counts, erring on the side of skipping
    assert est.minutes(full) == pytest.approx(full / linear)


def test_report_shows_spread_over_seeds_and_test_noise_for_one_seed(tmp_path):
    X, y = blobs(30, sep=0.6)
    store = synthetic_store(tmp_path / "s.h5", X, y)
    one = compare(store, methods=["ridge", "logreg"], budgets=[5], out=tmp_path / "one", quiet=True)
    report = (tmp_path / "one" / "report.md").read_text()
    rows = summarise(one)
    n_test = rows[0]["n_test"]
    assert n_test == len(featcache.load(store, split="test")[1])
    assert not [line for line in report.splitlines() if line.startswith(("| ridge", "| logreg")) and "±" in line]
    best = max(rows, key=lambda r: r["accuracy"])
    half = 100 * 1.96 * (best["accuracy"] * (1 - best["accuracy"]) / n_test) ** 0.5
    assert f"One seed on {n_test} test images: ±{half:.1f} points" in report
    two = compare(store, methods=["ridge", "logreg"], budgets=[5], seeds=2, out=tmp_path / "two", quiet=True)
    report = (tmp_path / "two" / "report.md").read_text()
    for r in summarise(two):
        assert r["seeds_run"] == 2
        assert f"| {r['method']} | 5 | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} |" in report
    assert "One seed" not in report


@pytest.mark.slow
def test_finetuned_model_predicts_from_the_cli(store, tmp_path):
    finetune(store, out=tmp_path / "m", mode="linear", **FAST)
    new = write_folder(tmp_path / "new", per_class=1, seed=4)
    out = cli("predict", str(tmp_path / "m"), str(new))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("id,prediction,error,p_circle") and len(lines) == 4


def test_finetune_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    reg = synthetic_store(tmp_path / "r.h5", rng.normal(size=(30, 4)), rng.normal(size=30), task="regression")
    assert_clean_error(cli("finetune", str(reg)), "classification")
    with pytest.raises(featcache.InputError, match="bn_stats"):
        finetune(str(reg), bn_stats="sometimes")
    X, y = blobs(10)
    clf = synthetic_store(tmp_path / "c.h5", X, y)
    assert_clean_error(cli("compare", str(clf), "--methods", "logreg,magic"), "unknown method")
    assert_clean_error(cli("compare", str(clf), "--budgets", "5,lots"), "budgets")
    assert_clean_error(cli("compare", str(clf), "--budgets", "500"), "more than the train split has")
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{m}`" in readme for m in MODES), "every fine-tune mode is documented in the README"


@pytest.mark.slow
def test_bf16_fine_tuning_runs_on_any_cpu(store, tmp_path):
    """bf16 autocast in the training loop (native on some CPUs, emulated on others): it trains and says so."""
    res = finetune(store, out=tmp_path / "bf16", mode="last-n", unfreeze=1, **{**FAST, "precision": "bf16"})
    r = res.record
    assert r["precision"] == "bf16" and r["config"]["precision"] == "bf16"
    assert np.isfinite([h["loss"] for h in r["history"]]).all()
    assert r["metrics"]["accuracy"] > 1 / 3  # better than chance on the three visibly different classes


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cell-saved:1:kill", "epoch-checkpointed:1:kill"])
def test_compare_killed_in_a_head_cell_or_a_fine_tune_cell_resumes_to_the_same_results(store, tmp_path, fault):
    """SIGKILL after the first cell is saved, or inside the fine-tune cell after its first epoch's checkpoint;
    the re-run computes only what is missing (the killed fine-tune resumes from its checkpoint) and its
    results are those of an uninterrupted run."""
    args = ["compare", str(store), "--methods", "logreg,ridge,linear", "--budgets", "2", "--epochs", "2",
            "--batch-size", "8", "--workers", "0", "--no-augment", "--precision", "fp32", "-q"]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = cli(*args, "--out", str(tmp_path / "cut"), env={"FEATCACHE_FAULT": fault})
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    again = cli(*args, "--out", str(tmp_path / "cut"))
    assert again.returncode == 0, again.stderr
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    if fault.startswith("cell-saved"):
        assert len(b["computed"]) == 2  # the first cell was kept
    cells = {(c["method"], c["budget"], c["seed"]): c for c in a["cells"]}
    assert {(c["method"], c["budget"], c["seed"]) for c in b["cells"]} == set(cells)
    for c in b["cells"]:
        ref = cells[c["method"], c["budget"], c["seed"]]
        for k in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert c["metrics"][k] == pytest.approx(ref["metrics"][k], abs=1e-9), (c["method"], k)
        assert c["metrics"]["confusion_matrix"] == ref["metrics"]["confusion_matrix"], c["method"]


@pytest.mark.slow
def test_finetune_killed_after_an_epoch_resumes_to_the_same_model(store, tmp_path):
    args = ["finetune", str(store), "--mode", "last-n", "--unfreeze", "1", "--epochs", "3", "--patience", "5",
            "--batch-size", "8", "--workers", "0", "--no-augment", "--precision", "fp32", "-q"]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = cli(*args, "--out", str(tmp_path / "cut"), env={"FEATCACHE_FAULT": "epoch-checkpointed:2:kill"})
    assert killed.returncode == -9 and (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    history = json.loads((tmp_path / "cut" / "model.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
