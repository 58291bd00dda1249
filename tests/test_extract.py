import h5py
import numpy as np
import pytest
import torch

import featcache
from featcache import faults
from featcache.backbones import build_backbone
from featcache.errors import CorruptInputError, StoreMismatchError, UnknownLayerError
from featcache.hdf5 import chunk_rows
from featcache.journal import Journal
from featcache.sources import open_source
from featcache.store import FeatureStore


def test_folder_to_store_matches_a_direct_forward_pass(tmp_path, image_folder, tiny):
    res = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert res.rows == 24 and res.failed == 0 and not res.up_to_date
    X, y, ids = featcache.load(res.store)
    assert X.shape[0] == 24 and X.dtype == np.float32 and np.isfinite(X).all()
    assert list(ids[:2]) == ["circle/img000.png", "circle/img001.png"] and y.tolist() == [0] * 8 + [1] * 8 + [2] * 8

    # the pipeline (loader, batching, normalisation, memory format) computes what a plain forward computes
    bb = build_backbone(tiny["backbone"], weights=tiny["weights"], image_size=32)
    src = open_source(image_folder)
    t = bb.preprocessing.pil_transform()
    x = bb.preprocessing.normalize(torch.stack([t(src.read(i)) for i in (0, 9, 23)]))
    with torch.inference_mode():
        ref = bb(x)["pooled"].numpy()
    np.testing.assert_allclose(X[[0, 9, 23]], ref, rtol=1e-4, atol=1e-5)


def test_store_layout_and_provenance(tmp_path, image_folder, tiny, tiny_weights):
    res = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    with h5py.File(res.store, "r") as f:
        a = f.attrs
        assert a["complete"] and a["format"] == "featcache-store"
        assert a["backbone"] == "timm:test_efficientnet" and a["image_size"] == 32
        from featcache.weights import sha256_file
        assert a["weights_sha256"] == sha256_file(tiny_weights)
        assert a["dataset_fingerprint"] == open_source(image_folder).fingerprint()
        for k in ("featcache_version", "preprocessing", "layers", "created_at", "dtype", "precision"):
            assert k in a
        ds = f["features/pooled"]
        assert ds.chunks == (chunk_rows(ds.shape[1], 4, 24), ds.shape[1])
        assert [s.decode() for s in f["label_names"][()]] == ["circle", "square", "stripes"]
        assert f["failures/ids"].shape == (0,)
    assert not (tmp_path / "s.h5.partial").exists()


def test_float16_and_intermediate_layers(tmp_path, image_folder, tiny):
    res = featcache.extract(image_folder, tmp_path / "s.h5", layers="pooled,blocks.1", dtype="float16", **tiny)
    with FeatureStore(res.store) as fs:
        assert fs.layers == ["pooled", "blocks.1"]
        assert fs.layout("blocks.1")[1] == np.float16
        assert fs.dim("blocks.1") != fs.dim("pooled")
        assert fs.features("blocks.1").dtype == np.float32  # read back as float32 for estimators
    X32, _, _ = featcache.load(featcache.extract(image_folder, tmp_path / "t.h5", **tiny).store)
    X16, _, _ = featcache.load(res.store, layer="pooled")
    np.testing.assert_allclose(X16, X32, rtol=2e-3, atol=2e-3)


def test_unknown_layer(tmp_path, image_folder, tiny):
    with pytest.raises(UnknownLayerError, match="no layer 'blocks.99'"):
        featcache.extract(image_folder, tmp_path / "s.h5", layers="blocks.99", **tiny)
    assert not (tmp_path / "s.h5").exists()


def test_corrupt_inputs_are_recorded_and_the_run_completes(tmp_path, image_folder, tiny):
    (image_folder / "circle" / "zero.png").write_bytes(b"")
    (image_folder / "square" / "text.jpg").write_text("not an image")
    res = featcache.extract(image_folder, tmp_path / "s.h5", **tiny)
    assert res.rows == 24 and res.failed == 2
    with FeatureStore(res.store) as fs:
        fails = dict(fs.failures)
        assert set(fails) == {"circle/zero.png", "square/text.jpg"}
        assert "not an image" in fails["square/text.jpg"]
        assert "circle/zero.png" not in set(fs.ids)
    with pytest.raises(CorruptInputError, match="empty file"):
        featcache.extract(image_folder, tmp_path / "strict.h5", strict=True, **tiny)
    assert not (tmp_path / "strict.h5").exists()


def test_rerun_is_free_and_changed_input_is_refused(tmp_path, image_folder, tiny):
    store = tmp_path / "s.h5"
    featcache.extract(image_folder, store, **tiny)
    before = store.read_bytes()
    again = featcache.extract(image_folder, store, **tiny)
    assert again.up_to_date and again.extracted == 0 and store.read_bytes() == before
    with pytest.raises(StoreMismatchError, match="image_size"):
        featcache.extract(image_folder, store, **{**tiny, "image_size": 48})
    (image_folder / "circle" / "img000.png").unlink()
    with pytest.raises(StoreMismatchError, match="input data differ"):
        featcache.extract(image_folder, store, **tiny)
    assert store.read_bytes() == before
    res = featcache.extract(image_folder, store, overwrite=True, **tiny)
    assert res.rows == 23


def test_resume_from_a_partial_journal_equals_a_full_run(tmp_path, image_folder, tiny):
    full = featcache.extract(image_folder, tmp_path / "full.h5", **tiny)
    with faults.inject("segment-committed", 2), pytest.raises(KeyboardInterrupt):  # Ctrl-C after 2 segments
        featcache.extract(image_folder, tmp_path / "r.h5", commit_interval=0, **tiny)
    assert not (tmp_path / "r.h5").exists() and Journal(tmp_path / "r.h5").committed_rows() == 16
    res = featcache.extract(image_folder, tmp_path / "r.h5", commit_interval=0, **tiny)
    assert res.resumed_from == 16 and res.extracted == 8
    a, b = featcache.load(full.store), featcache.load(res.store)
    assert list(a[2]) == list(b[2]) and (a[1] == b[1]).all()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_packaged_default_backbone_classifies_real_photos():
    """The packaged EfficientNet-Lite0 weights load strictly and recognise scikit-learn's two photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from featcache.backbones import load_classifier, preprocessing_of

    spec, model, weights = load_classifier()  # strict load_state_dict inside
    assert weights.source == "packaged" and spec.name == "timm:tf_efficientnet_lite0"
    prep = preprocessing_of(spec, model)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.interpolation == "bicubic" and prep.input_size == 224
    photos = load_sample_images().images  # china.jpg (a temple), flower.jpg (a dahlia)
    x = prep.normalize(torch.stack([prep.pil_transform()(Image.fromarray(p)) for p in photos]))
    with torch.inference_mode():
        top5 = model(x).topk(5).indices.tolist()
    buildings = {442, 497, 538, 663, 668, 698, 832}  # bell cote, church, dome, monastery, mosque, palace, stupa
    flowers = {985, 309, 738, 883}  # daisy, bee, pot, vase
    assert buildings & set(top5[0]), top5[0]
    assert top5[1][0] in flowers, top5[1]


def test_torchvision_weights_from_the_hub_cache(tmp_path, image_folder, monkeypatch):
    """A state dict under $TORCH_HOME/hub/checkpoints is found under its official file name."""
    import torchvision

    from featcache.weights import sha256_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), ckpt)
    res = featcache.extract(image_folder, tmp_path / "tv.h5", backbone="torchvision:mobilenet_v3_small",
                            image_size=32, batch_size=8, workers=0, quiet=True)
    with FeatureStore(res.store) as fs:
        assert fs.attrs["weights_source"].startswith("torch-hub-cache")
        assert fs.attrs["weights_sha256"] == sha256_file(ckpt)
        assert fs.dim() == 1024  # the input of the final Linear: the penultimate embedding
        assert fs.attrs["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_missing_weights_say_where_they_were_looked_for(tmp_path, image_folder, monkeypatch):
    from featcache.errors import WeightsNotFoundError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="hub/checkpoints/resnet18"):
        featcache.extract(image_folder, tmp_path / "x.h5", backbone="torchvision:resnet18", quiet=True)
    assert not (tmp_path / "x.h5").exists()


def test_random_weights_only_when_asked(tmp_path, image_folder):
    res = featcache.extract(image_folder, tmp_path / "x.h5", backbone="timm:test_resnet", weights="random",
                            image_size=32, workers=0, quiet=True)
    with FeatureStore(res.store) as fs:
        assert fs.attrs["weights_source"] == "random" and fs.attrs["weights_sha256"] == "random-seed0"


def test_worker_processes_give_the_same_store(tmp_path, image_folder, tiny):
    a = featcache.load(featcache.extract(image_folder, tmp_path / "a.h5", **tiny).store)
    b = featcache.load(featcache.extract(image_folder, tmp_path / "b.h5", **{**tiny, "workers": 2}).store)
    assert list(a[2]) == list(b[2])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
