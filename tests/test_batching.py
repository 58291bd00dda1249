"""--batch-size auto: probed on the first real batches, cached per machine and setting, recorded in the store."""

import json

import numpy as np
import pytest
from helpers import assert_clean_error, cli

import featcache
from featcache.batching import CPU_SIZES, FEW_ROWS_SIZE, BatchSizer, cache_path, parse_batch_size
from featcache.errors import InputError
from featcache.sources import Source, in_memory
from featcache.store import FeatureStore

KEY = '{"setting": "test"}'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_CACHE_DIR", str(tmp_path / "cache"))
    return cache_path()


def drive(sizer: BatchSizer, rate_of, peak_of=None) -> list[int]:
    """Feed the sizer forward batches timed as ``rate_of(size)`` images/s until it decides; the sizes run."""
    ran = []
    while not sizer.decided:
        n = sizer.next_size()
        ran.append(n)
        sizer.observe(n, n / rate_of(n), peak_of(n) if peak_of else None)
        assert len(ran) < 100
    return ran


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("16", 16), (16, 16)])
def test_batch_size_values(value, expected):
    assert parse_batch_size(value) == expected


@pytest.mark.parametrize("value", ["0", "-4", "big", 2.5, 8.0, "", True, "+8", "1_000", float("inf"), "٨"])
def test_bad_batch_sizes_are_input_errors(value):
    with pytest.raises(InputError, match="--batch-size must be a positive integer or auto"):
        parse_batch_size(value)


def test_the_probe_picks_the_fastest_size_stops_when_it_gets_slower_and_is_cached(cache):
    rates = {8: 100.0, 16: 140.0, 32: 120.0, 64: 60.0, 128: 50.0}
    sizer = BatchSizer("auto", "cpu", KEY, rows_to_do=100_000)
    assert sizer.grain == CPU_SIZES[0] and not sizer.decided
    ran = drive(sizer, rates.__getitem__)
    assert sizer.size == 16 and "measured fastest" in sizer.reason and "32 was 86% as fast" in sizer.reason
    assert 64 not in ran  # stopped at the first clearly slower size
    assert ran.count(8) == 1 + 8 and ran.count(32) == 1 + 2  # a warm-up at each shape, then >= 64 rows, 2 batches
    saved = json.loads(cache.read_text())[KEY]
    assert saved["size"] == 16 and saved["rates"] == {"8": 100.0, "16": 140.0, "32": 120.0}

    again = BatchSizer("auto", "cpu", KEY, rows_to_do=100_000)
    assert again.decided and again.size == again.grain == 16 and "cached" in again.reason
    other = BatchSizer("auto", "cpu", KEY.replace("test", "other"), rows_to_do=100_000)
    assert not other.decided  # another setting is measured on its own


def test_a_monotone_machine_runs_at_the_largest_size(cache):
    sizer = BatchSizer("auto", "cpu", KEY, rows_to_do=100_000)
    drive(sizer, lambda n: 50.0 + n)
    assert sizer.size == max(CPU_SIZES) and "largest size measured" in sizer.reason


def test_given_sizes_and_short_runs_do_not_probe(cache):
    given = BatchSizer(24, "cpu", KEY, rows_to_do=100_000)
    assert given.decided and given.size == given.grain == 24 and given.reason == "given (--batch-size 24)"
    short = BatchSizer("auto", "cpu", KEY, rows_to_do=500)
    assert short.decided and short.size == FEW_ROWS_SIZE["cpu"] == 32 and "too few" in short.reason
    gpu = BatchSizer("auto", "cuda", KEY, rows_to_do=5000)  # a GPU starves at 32: short CUDA runs use 256
    assert gpu.decided and gpu.size == FEW_ROWS_SIZE["cuda"] == 256 and "too few" in gpu.reason
    tiny = BatchSizer("auto", "cpu", KEY, rows_to_do=5)
    assert tiny.size == 5
    assert BatchSizer("auto", "cuda", KEY, rows_to_do=100).size == 100
    assert not cache.exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({KEY: 16}), json.dumps({KEY: [16]}),
                                  json.dumps({KEY: {"size": True, "rates": {}, "at": "2026-11-01T00:00:00+00:00"}}),
                                  json.dumps({KEY: {"size": 10**9, "rates": {}, "at": "2026-11-01T00:00:00+00:00"}}),
                                  json.dumps({KEY: {"size": 16, "rates": [1], "at": "2026-11-01T00:00:00+00:00"}}),
                                  json.dumps({KEY: {"size": 16, "rates": {"16": "x"}, "at": "2026-11-01T00:00:00"}}),
                                  json.dumps({KEY: {"size": 16, "rates": {}, "at": "yesterday"}}),
                                  json.dumps({KEY: {"size": 16, "rates": {}, "at": "2020-01-01T00:00:00+00:00"}})])
def test_a_damaged_odd_or_stale_cache_entry_is_measured_again(cache, text):
    cache.parent.mkdir(parents=True)
    cache.write_text(text)
    assert not BatchSizer("auto", "cpu", KEY, rows_to_do=100_000).decided


def test_a_well_formed_recent_entry_is_used(cache):
    from featcache.files import utc_now

    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({KEY: {"size": 16, "rates": {"16": 100.0}, "at": utc_now()}}))
    assert BatchSizer("auto", "cpu", KEY, rows_to_do=100_000).size == 16


def test_batches_short_of_rows_are_not_measurements(cache):
    sizer = BatchSizer("auto", "cpu", KEY, rows_to_do=100_000)
    sizer.observe(5, 0.001)  # the end of the data: ignored
    assert sizer.next_size() == 8 and not sizer.probing[0].warm


def test_data_that_ends_during_the_probe_keeps_the_fastest_so_far_uncached(cache):
    sizer = BatchSizer("auto", "cpu", KEY, rows_to_do=100_000)
    while sizer.next_size() < 32:
        n = sizer.next_size()
        sizer.observe(n, n / {8: 100.0, 16: 150.0}[n])
    assert sizer.describe() == {"batch_size": 32, "batch_size_reason": "auto: probing"}
    sizer.conclude()
    assert sizer.size == 16 and "the data ended during the probe" in sizer.reason and not cache.exists()


def test_cuda_stops_before_a_size_that_would_not_fit(cache):
    sizer = BatchSizer("auto", "cuda", KEY, rows_to_do=1_000_000, memory_limit=1000)
    drive(sizer, lambda n: 10.0 * n, peak_of=lambda n: 4 * n)  # 256 rows would need 1024 bytes
    assert sizer.size == 128 and "would not fit" in sizer.reason


def test_out_of_memory_falls_back_to_the_best_size_measured_and_is_not_cached(cache):
    sizer = BatchSizer("auto", "cuda", KEY, rows_to_do=1_000_000)
    while sizer.next_size() < 128:
        n = sizer.next_size()
        sizer.observe(n, n / (10.0 * n))
    assert sizer.out_of_memory(128) == 64 and sizer.decided
    assert "a batch of 128 ran out of device memory" in sizer.reason
    assert sizer.out_of_memory(64) == 32 and sizer.next_size() == 32  # later batches can run out too: halve
    assert not cache.exists()


def test_out_of_memory_at_the_first_size_halves_it(cache):
    sizer = BatchSizer("auto", "cuda", KEY, rows_to_do=1_000_000)
    assert sizer.out_of_memory(32) == 16 and sizer.decided and not cache.exists()


def _broken_every(root, n_files: int, every: int):
    from PIL import Image

    for k in range(n_files):
        d = root / ("a" if k % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        if k % every == every - 1:
            (d / f"{k:05d}.png").write_bytes(b"\x89PNG\r\n\x1a\n-truncated")
        else:
            Image.fromarray(np.full((8, 8), k % 251, np.uint8)).save(d / f"{k:05d}.png")
    return root


def test_forward_batches_have_exactly_the_size_asked_despite_unreadable_rows(tmp_path, tiny, cache):
    from featcache.backbones import build_backbone
    from featcache.embed import embed_batches
    from featcache.sources import open_source

    src = open_source(_broken_every(tmp_path / "imgs", 100, every=7))
    bb = build_backbone(tiny["backbone"], weights=tiny["weights"], image_size=32)
    batches = list(embed_batches(src, bb, batch_size=16, workers=0, precision="fp32", quiet=True))
    assert [len(b.good) for b in batches[:-1]] == [16] * (len(batches) - 1) and len(batches[-1].good) <= 16
    seen = [i for b in batches for i in b.index]
    assert seen == list(range(100))  # every row once, in order
    failed = [i for b in batches for i, _ in b.failed]
    assert failed == [i for i in range(100) if src.ids[i].endswith(tuple(f"{k:05d}.png" for k in range(6, 100, 7)))]
    assert all(set(b.good) | {i for i, _ in b.failed} == set(b.index) for b in batches)
    assert all(b.feats["pooled"].shape[0] == len(b.good) for b in batches)


def test_the_probe_finishes_when_many_rows_are_unreadable(tmp_path, tiny, cache):
    """one file in 7 broken: probe batches are still cut at exactly their size, so the probe decides."""
    from featcache.backbones import build_backbone
    from featcache.embed import embed_batches
    from featcache.sources import open_source

    src = open_source(_broken_every(tmp_path / "imgs", 1000, every=7))
    bb = build_backbone(tiny["backbone"], weights=tiny["weights"], image_size=32)
    info: dict = {}
    rows = sum(len(b.good) for b in embed_batches(src, bb, workers=0, device="cpu", precision="fp32",
                                                   quiet=True, info=info))
    assert rows == 1000 - 1000 // 7
    assert info["batch_size"] in CPU_SIZES and "measured fastest" in info["batch_size_reason"]


def test_auto_extraction_probes_on_real_rows_records_why_and_matches_a_fixed_size(tmp_path, tiny, cache):
    rng = np.random.default_rng(0)
    src = Source("memory", [str(i) for i in range(900)], rng.integers(0, 2, 900), "classification", ["a", "b"],
                 images=rng.integers(0, 256, (900, 20, 20), dtype=np.uint8))
    auto = featcache.extract(src, tmp_path / "auto.h5", **{**tiny, "batch_size": "auto", "device": "cpu"})
    fixed = featcache.extract(src, tmp_path / "fixed.h5", **{**tiny, "device": "cpu"})
    assert auto.batch_size in CPU_SIZES and "measured fastest" in auto.batch_size_reason
    assert f"batch size {auto.batch_size}: auto: measured" in str(auto)
    with FeatureStore(auto.store) as a, FeatureStore(fixed.store) as f:
        assert list(a.ids) == list(f.ids)  # the probe's rows are kept, in order, none twice
        np.testing.assert_allclose(a.features(), f.features(), rtol=1e-4, atol=1e-5)
        run = a.attrs["pipeline"]
        assert run["batch_size"] == auto.batch_size and run["batch_size_reason"] == auto.batch_size_reason
        assert "uint8 array" in run["decoder"] and run["workers"] == 0
    assert json.loads(cache.read_text())  # remembered
    again = featcache.extract(src, tmp_path / "again.h5", **{**tiny, "batch_size": "auto", "device": "cpu"})
    assert again.batch_size == auto.batch_size and "cached" in again.batch_size_reason


def test_unlabeled_sources_are_refused_before_any_work(tmp_path, tiny):
    with pytest.raises(InputError, match="a feature store needs labels"):
        featcache.extract(in_memory(np.zeros((4, 8, 8), np.uint8)), tmp_path / "s.h5", **tiny)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.partial").exists()


def test_cli_batch_size(tmp_path, image_folder, tiny_cli):
    bad = cli("extract", str(image_folder), "--store", str(tmp_path / "s.h5"), *tiny_cli, "--batch-size", "0")
    assert_clean_error(bad, "--batch-size must be a positive integer or auto")
    ok = cli("extract", str(image_folder), "--store", str(tmp_path / "s.h5"), *tiny_cli)
    assert ok.returncode == 0, ok.stderr
    assert "batch size 24: auto: 24 rows are too few to repay a measurement; 24 without probing" in ok.stdout
    info = cli("info", str(tmp_path / "s.h5"))
    assert "batch size: 24 (auto: 24 rows are too few" in info.stdout and "decoding: PIL" in info.stdout


def test_a_batch_is_shrunk_to_fit_memory_and_an_image_too_big_for_it_is_refused_before_any_write(
        tmp_path, image_folder, tiny, monkeypatch):
    """--image-size 3000 was OOM-killed at 24 GB: the forward's memory per image is estimated (hooks on a small
    forward, extrapolated) and bounds the batch; an image that cannot fit at all is refused up front."""
    from featcache.backbones import build_backbone
    from featcache.batching import forward_bytes
    from featcache.runtime import MEMORY_ENV

    bb = build_backbone(tiny["backbone"], weights=tiny["weights"], image_size=32)
    per_image = forward_bytes(bb, 32)
    assert 0 < per_image < 10 * 2**20
    big = build_backbone(tiny["backbone"], weights=tiny["weights"], image_size=1024)
    assert forward_bytes(big, 1024) == pytest.approx(per_image * 32**2, rel=0.5)  # grows with the pixel count

    monkeypatch.setenv(MEMORY_ENV, str(per_image * 8))  # half of it: room for 4 images
    res = featcache.extract(image_folder, tmp_path / "s.h5", **{**tiny, "batch_size": 16, "device": "cpu"})
    assert res.batch_size == 4
    assert "given (--batch-size 16), shrunk to 4: a batch of more than 4" in res.batch_size_reason

    monkeypatch.setenv(MEMORY_ENV, str(per_image // 4))
    with pytest.raises(InputError, match="--image-size 32: one image needs about .* use a smaller --image-size"):
        featcache.extract(image_folder, tmp_path / "t.h5", **{**tiny, "device": "cpu"})
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "t.h5.partial").exists()
