"""Fixtures: tiny generated images, a tiny timm backbone with saved weights (helpers are in helpers.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import TINY, write_folder

# Hubs are unreachable here: make any download attempt fail at once rather than after a long timeout.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FEATCACHE_OFFLINE"] = "1"
# the batch-size cache of this run, not the user's: a test must not learn from (or teach) a real run
os.environ["FEATCACHE_CACHE_DIR"] = tempfile.mkdtemp(prefix="featcache-test-cache-")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A saved state dict for the tiny backbone: tests load real files, never random init by accident."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_cli(tiny_weights) -> list[str]:
    """The same tiny backbone for ``featcache extract`` on the command line (precision left to ``auto``:
    add ``--precision fp32`` where numbers are compared)."""
    return ["--backbone", TINY, "--weights", str(tiny_weights), "--image-size", "32", "--workers", "0"]


@pytest.fixture(scope="session")
def tiny(tiny_weights) -> dict:
    """Keyword arguments for a fast extraction with the tiny backbone.

    fp32 is stated, not left to ``auto``: tests compare stored numbers with fp32 references, and ``auto``
    is bf16 on CPUs with native bf16 (tests/test_precision.py covers that path on every CPU).
    Shared by the session: copy it (``{**tiny, ...}``) to change a setting.
    """
    return {"backbone": TINY, "weights": str(tiny_weights), "image_size": 32, "batch_size": 8,
            "workers": 0, "precision": "fp32", "quiet": True}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT folder (``hf:`` + this path), built once per session from a config: no download."""
    pytest.importorskip("transformers", reason="the text extra is not installed: pip install 'featcache[text]'")
    from helpers import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def text_csv(tmp_path) -> Path:
    """60 generated reviews (pos/neg, 12 movies) as a CSV with columns text, label, movie."""
    from helpers import write_text_csv

    return write_text_csv(tmp_path / "reviews.csv")
