"""What used to end in a traceback or differ between runs: container start-up, a factory
that raises, a full disk at the first memory-mapped file, a damaged cache entry, an
unreadable class folder, and runs made from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import imacs
from tests import helpers

#: two untrained factory models (no training: these tests stay in the fast lane)
A, B = "tests.helpers:make_tiny_cnn", "tests.helpers:make_tiny_cnn_other"
#: a small analysis: 32 px, few steps, no trust tests or what-if removal
SMALL = {
    "image_size": 32,
    "steps": 8,
    "projection": "pca",
    "trust_sample": 0,
    "whatif": False,
    "progress": False,
}


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """24 images of 32 px in two class folders."""
    helpers.write_eval_set(tmp_path / "data", n_per_class=12)
    return tmp_path / "data"


def _run_files(run: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix in (".parquet", ".npy")
    }


def test_rob001_a_run_made_from_the_cache_is_byte_identical(small_set, tmp_path) -> None:
    """The second run takes every attribution chunk from the cache, so its first forward
    pass is a patch response, not a probe: the responses must still come out of the same
    memory layout (they differed in a few ``alone_*_prob`` values)."""
    cache = tmp_path / "cache"
    fresh = imacs.analyze(A, B, small_set, tmp_path / "fresh", cache_dir=cache, **SMALL)
    again = imacs.analyze(A, B, small_set, tmp_path / "again", cache_dir=cache, **SMALL)
    assert fresh.manifest["fingerprint"] == again.manifest["fingerprint"]
    first, second = _run_files(fresh.path), _run_files(again.path)
    assert "patches.parquet" in first and first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
