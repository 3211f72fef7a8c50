"""Stage 3: patch embeddings put similar content close together."""

from __future__ import annotations

import numpy as np
import pytest

from imacs.embedding import PatchEmbedder


def _patches(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    out = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        noise = rng.normal(0, 8, (32, 32, 3))
        if kind == "red":
            base = np.array([200, 30, 30]) + noise
        elif kind == "hstripes":
            base = (np.sin(np.arange(32) / 2 + rng.uniform(0, 6))[:, None, None] * 60 + 120) + noise
        else:
            base = (np.sin(np.arange(32) / 2 + rng.uniform(0, 6))[None, :, None] * 60 + 120) + noise
        out[i] = np.clip(base, 0, 255)
    return out


def test_emb001_same_kind_is_closer_than_other_kinds() -> None:
    rng = np.random.default_rng(0)
    kinds = ["red", "hstripes", "vstripes"]
    X = np.concatenate([_patches(rng, k, 20) for k in kinds])
    y = np.repeat(np.arange(3), 20)
    Z = PatchEmbedder(n_components=16).fit_transform(X)
    d = np.linalg.norm(Z[:, None] - Z[None], axis=-1)
    same = d[y[:, None] == y[None]].mean()
    other = d[y[:, None] != y[None]].mean()
    assert same < 0.5 * other
    # orientation matters: horizontal vs vertical stripes of the same colours separate
    hv = d[np.ix_(y == 1, y == 2)].mean()
    hh = d[np.ix_(y == 1, y == 1)].mean()
    assert hh < hv


def test_emb002_estimator_conventions() -> None:
    rng = np.random.default_rng(1)
    X = _patches(rng, "red", 10)
    emb = PatchEmbedder(n_components=4, random_state=3)
    assert emb.n_components == 4 and not hasattr(emb, "pca_")
    with pytest.raises(RuntimeError, match="not fitted"):
        emb.transform(X)
    assert emb.fit(X) is emb
    Z = emb.transform(X)
    assert Z.shape == (10, 4) and Z.dtype == np.float32
    assert np.allclose(Z, PatchEmbedder(n_components=4, random_state=3).fit_transform(X), atol=1e-5)
