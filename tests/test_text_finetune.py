"""Text stores after extraction: fine-tuning in every mode, LP-FT's starting head, resume, predict (a head and a
fine-tuned model, sentences from a file or stdin), BackboneFeatures on strings, and one-line errors. A tiny random
BERT and 60 generated reviews keep the whole file fast."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, write_text_csv, write_tiny_bert

import featcache
from featcache import faults
from featcache.errors import InputError
from featcache.finetune import FinetuneConfig, finetune
from featcache.heads import fit_head
from featcache.nets import block_groups, build_net
from featcache.store import FeatureStore
from featcache.strategies import MODES, make_strategy

FAST = {"epochs": 1, "batch_size": 8, "min_steps": 4, "workers": 0, "precision": "fp32", "quiet": True}


def _extract(csv, bert, out):
    return featcache.extract(str(csv), str(out), backbone=f"hf:{bert}", group_col="movie", quiet=True,
                             precision="fp32").store


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_text_csv(tmp_path_factory.mktemp("reviews") / "reviews.csv")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, reviews):
    return _extract(reviews, tiny_bert, tmp_path_factory.mktemp("tstore") / "t.h5")


def _encoder_state(store):
    with FeatureStore(store) as fs:
        net, _ = build_net(fs, 2, 0.0)
    return {k: v.clone() for k, v in net.backbone.state_dict().items()}, net


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_fine_tunes_a_text_store(store, tmp_path, mode):
    before, net = _encoder_state(store)
    res = finetune(store, out=tmp_path / mode, mode=mode, unfreeze=1, lora_rank=2, **FAST)
    r = json.loads((tmp_path / mode / "model.json").read_text())
    after = torch.load(tmp_path / mode / "model.pt", weights_only=True)
    head = sum(p.numel() for p in net.head.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert r["modality"] == "text" and r["augment_applied"] is False and r["config"]["mode"] == mode
    assert r["dim"] == 32 and r["metrics"]["n"] == featcache.load(store, split="test")[1].size
    assert r["images_per_s"] > 0 and np.isfinite([h["loss"] for h in r["history"]]).all()
    changed = {k for k, v in before.items() if not torch.equal(v, after.get("backbone." + k, v))}
    if mode in ("linear", "gradual"):  # gradual: only the head in its first epoch
        assert r["trainable_params"] == head and r["total_params"] == total and not changed
    elif mode == "last-n":  # the last transformer layer and the head
        last = sum(p.numel() for m in block_groups(net.backbone)[-1] for p in m.parameters())
        assert r["trainable_params"] == last + head < total
        assert changed and all(".layer.1." in k for k in changed), sorted(changed)[:3]
    elif mode == "lora":  # peft's adapters and the head; the encoder's own weights do not move
        adapters = r["total_params"] - total
        assert adapters > 0 and r["trainable_params"] == adapters + head
        base = {k.replace(".base_layer.", "."): v for k, v in after.items() if "lora_" not in k}
        assert all(torch.equal(v, base["backbone." + k]) for k, v in before.items())
    else:
        assert r["trainable_params"] == r["total_params"] == total and changed
    assert str(res).startswith(f"{mode}: test accuracy")


def test_lpft_head_starts_at_the_logistic_heads_decision_function(tmp_path, reviews):
    """Step 0 of LP-FT: the network's logits are the logreg pipeline's decision function on the same rows, through
    the encoder's own pooling and L2 normalisation (a sentence-transformers folder)."""
    bert = write_tiny_bert(tmp_path / "st-bert", sentence_transformers=True)
    store = _extract(reviews, bert, tmp_path / "st.h5")
    with FeatureStore(store) as fs:
        assert fs.attrs["text"]["normalize"] is True
        net, encoder = build_net(fs, 2, 0.0)
        make_strategy(FinetuneConfig(mode="lp-ft")).setup(net, fs)
        rows = fs.row_indices("default:test")
        X = fs.features("pooled", rows)
        texts = [featcache.provenance.store_source(fs).read(int(r)) for r in rows]
    pipe = fit_head(store, "logreg", save=False, quiet=True).pipeline
    with torch.no_grad():
        logits = net.eval()(encoder.pad(encoder.tokenize(texts))).numpy()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], pipe.decision_function(X), rtol=1e-4, atol=1e-4)


def test_a_resumed_text_fine_tune_equals_an_uninterrupted_one(store, tmp_path):
    opts = {**FAST, "epochs": 2, "patience": 5, "mode": "last-n", "unfreeze": 1}
    full = finetune(store, out=tmp_path / "full", **opts)
    with faults.inject("epoch-checkpointed", 1), pytest.raises(KeyboardInterrupt):
        finetune(store, out=tmp_path / "cut", **opts)
    resumed = finetune(store, out=tmp_path / "cut", resume=True, **opts)
    assert [h["epoch"] for h in resumed.record["history"]] == [0, 1]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert resumed.metrics == full.metrics


def test_predict_sentences_with_a_head_and_a_fine_tuned_model(store, tmp_path):
    head = fit_head(store, "logreg", out=tmp_path / "t.head", quiet=True).path
    model = finetune(store, out=tmp_path / "lora", mode="lora", lora_rank=2, **FAST).out
    lines = ["a great movie, moving and sharp", "", "dull plot and weak cast"]
    (tmp_path / "new.txt").write_text("\n".join(lines) + "\n")
    from_file = cli("predict", str(head), str(tmp_path / "new.txt"))
    assert from_file.returncode == 0, from_file.stderr
    out = from_file.stdout.strip().splitlines()
    assert out[0] == "id,prediction,error,p_neg,p_pos" and [r.split(",")[0] for r in out[1:]] == ["1", "3"]
    api = featcache.predict(head, [lines[0], lines[2]])
    assert [r["prediction"] for r in api] == [r.split(",")[1] for r in out[1:]] and api[0]["id"] == "0"
    from_stdin = cli("predict", str(model), "-", "--out", str(tmp_path / "p.csv"), stdin="\n".join(lines))
    assert from_stdin.returncode == 0, from_stdin.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "id,prediction,error,p_neg,p_pos" and len(rows) == 3
    p = featcache.predict(model, [lines[0]])[0]
    assert p["prediction"] in ("neg", "pos") and abs(p["p_neg"] + p["p_pos"] - 1) < 1e-5


def test_backbone_features_embeds_strings_in_a_pipeline(store, reviews, tiny_bert):
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from featcache.sources import open_source

    src = open_source(str(reviews), group_col="movie")
    texts, y = src.texts, src.labels
    for features in (featcache.BackboneFeatures(store=store), featcache.BackboneFeatures(backbone=f"hf:{tiny_bert}")):
        pipe = clone(make_pipeline(features, LogisticRegression(max_iter=500)))
        assert pipe.fit(texts[:40], y[:40]).predict(texts[40:] + ["an unseen sentence"]).shape == (21,)
    cached = featcache.BackboneFeatures(store=store).fit()
    fresh = featcache.BackboneFeatures(backbone=f"hf:{tiny_bert}").fit()
    with FeatureStore(store) as fs:
        stored = fs.features("pooled", np.arange(3))
    np.testing.assert_allclose(cached.transform(texts[:3]), stored)  # read from the store
    np.testing.assert_allclose(fresh.transform(texts[:3]), stored, rtol=1e-4, atol=1e-5)  # computed: the same
    with pytest.raises(ValueError, match="strings"):
        cached.transform([1, 2])
    # texts edited since extraction: the store cannot serve as a cache, the sentences are embedded afresh
    original = reviews.read_text()
    try:
        reviews.write_text(original.replace(texts[0], texts[0] + " and more", 1))
        stale = featcache.BackboneFeatures(store=store).fit()
        assert stale.cache_index_ == {}
        np.testing.assert_allclose(stale.transform(texts[:3]), stored, rtol=1e-4, atol=1e-5)
    finally:
        reviews.write_text(original)  # the module's store reads this file


def test_text_inputs_errors_are_one_line(store, tmp_path, tiny_bert, reviews):
    head = fit_head(store, "logreg", out=tmp_path / "t.head", quiet=True).path
    (tmp_path / "empty.txt").write_text("\n\n")
    assert_clean_error(cli("predict", str(head), str(tmp_path / "empty.txt")), "no sentences")
    (tmp_path / "photos").mkdir()
    assert_clean_error(cli("predict", str(head), str(tmp_path / "photos")), "folder", "sentences")
    with pytest.raises(InputError, match="strings"):
        featcache.predict(head, [tmp_path / "photo.png"])
    bert = shutil.copytree(tiny_bert, tmp_path / "bert")
    gone = _extract(reviews, bert, tmp_path / "gone.h5")
    shutil.rmtree(bert)
    assert_clean_error(cli("finetune", str(gone), "--epochs", "1", "--out", str(tmp_path / "ft")), "is gone")


def test_lpft_head_gives_no_weight_to_features_that_barely_vary(tmp_path):
    """all-MiniLM-L6-v2 has dimensions of size 1e-33: folding the scaler into the head would weigh them ~1e30, and the
    first encoder update would send the logits to infinity."""
    from helpers import blobs, synthetic_store

    from featcache.nets import FinetuneNet
    from featcache.strategies import init_head_from_logreg

    X, y = blobs(30, n_classes=2, dim=6)
    X[:, 0] *= 1e-33
    store = synthetic_store(tmp_path / "s.h5", X, y)
    net = FinetuneNet(torch.nn.Identity(), 6, 2)
    with FeatureStore(store) as fs:
        extra = init_head_from_logreg(net, fs, FinetuneConfig(mode="lp-ft"))
    assert extra["lp_zeroed_features"] == 1
    assert torch.all(net.head.weight[:, 0] == 0) and net.head.weight.abs().max() < 1e3
