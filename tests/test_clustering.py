"""Stage 4: clusters and the 2-D projection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from imacs.clustering import PatchClusterer, default_n_clusters
from imacs.errors import InputError


def _blobs(sizes=(50, 30, 20), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (len(sizes), 8))
    X = np.concatenate(
        [c + rng.normal(0, 0.5, (n, 8)) for c, n in zip(centres, sizes, strict=True)]
    )
    return X.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_clu001_recovers_blobs_with_ids_by_size() -> None:
    X, y = _blobs()
    c = PatchClusterer(n_clusters=3, projection="pca").fit(X)
    assert c.n_clusters_ == 3
    # cluster 0 is the largest blob, 1 the next, 2 the smallest
    assert (c.labels_ == y).all()
    assert c.projection_.shape == (100, 2) and c.cluster_centers_.shape == (3, 8)


def test_clu002_same_seed_same_result_umap() -> None:
    X, _ = _blobs(seed=1)
    one = PatchClusterer(n_clusters=3, projection="umap", random_state=7).fit(X)
    two = PatchClusterer(n_clusters=3, projection="umap", random_state=7).fit(X)
    assert (one.labels_ == two.labels_).all()
    assert np.array_equal(one.projection_, two.projection_)
    # the map keeps the blobs apart
    assert silhouette_score(one.projection_, one.labels_) > 0.5


def test_clu003_default_number_and_errors() -> None:
    assert default_n_clusters(1500) == 19
    assert default_n_clusters(10) == 4
    assert default_n_clusters(2) == 2
    assert default_n_clusters(10**6) == 40
    X, _ = _blobs((3, 2))
    with pytest.raises(InputError, match="only 5 patches"):
        PatchClusterer(n_clusters=9).fit(X)
    assert PatchClusterer(projection="pca").fit(X).n_clusters_ == 4


def test_clu005_a_large_set_is_mapped_by_umap_fitted_on_a_sample(monkeypatch) -> None:
    """Above UMAP_FIT_AT_MOST patches UMAP is fitted on a seeded sample and places the rest
    with transform: every patch gets a place, the blobs stay apart for the placed points as
    for the fitted ones, and the same seed gives the same map."""
    import imacs.clustering as clustering

    monkeypatch.setattr(clustering, "UMAP_FIT_AT_MOST", 120)
    X, y = _blobs(sizes=(150, 100, 50), seed=2)
    one = PatchClusterer(n_clusters=3, projection="umap", random_state=3).fit(X)
    two = PatchClusterer(n_clusters=3, projection="umap", random_state=3).fit(X)
    assert one.projection_.shape == (300, 2) and np.isfinite(one.projection_).all()
    assert np.array_equal(one.projection_, two.projection_)
    assert silhouette_score(one.projection_, y) > 0.5
    # each placed point lies nearest to the centre of its own blob in the map
    centres = np.stack([one.projection_[y == k].mean(0) for k in range(3)])
    nearest = np.argmin(((one.projection_[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y).mean() > 0.95
