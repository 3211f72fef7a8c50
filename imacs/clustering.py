"""Stage 4: cluster ids and a 2-D projection of the patch embeddings."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from .errors import InputError
from .settings import ClusteringSettings
from .stage import stage

#: above this many patches, MiniBatchKMeans replaces KMeans
MINIBATCH_ABOVE = 50_000
#: above this many patches, UMAP is fitted on a sample of this size (seeded) and places the
#: rest with its ``transform`` (the fitted neighbour graph and a short optimisation per
#: point), so a million patches project in minutes, not hours, on two cores
UMAP_FIT_AT_MOST = 50_000


def default_n_clusters(n_patches: int) -> int:
    """A sensible number of clusters: about sqrt(n)/2, between 4 and 40 (never more than n)."""
    k = int(np.clip(round(math.sqrt(n_patches) / 2), 4, 40))
    return max(1, min(k, n_patches))


class PatchClusterer:
    """K-means clusters and a 2-D map (UMAP or PCA) of patch embeddings.

    Args:
        n_clusters (int, optional): number of clusters. Default: None
            (:func:`default_n_clusters`).
        projection (str): ``"umap"`` or ``"pca"`` for the 2-D map. Default: ``"umap"``.
        n_neighbors (int): UMAP neighbourhood size. Default: 15.
        min_dist (float): UMAP minimum distance. Default: 0.1.
        random_state (int): seed for k-means and UMAP. Default: 0.

    Attributes:
        labels_ (numpy.ndarray): (n,) cluster id per patch; ids are ordered by cluster size,
            largest first.
        n_clusters_ (int): the number of clusters used.
        cluster_centers_ (numpy.ndarray): (k, d) centre of each cluster.
        projection_ (numpy.ndarray): (n, 2) float32 coordinates for display.
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        projection: str = "umap",
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.projection = projection
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state

    def fit(self, X: np.ndarray) -> PatchClusterer:
        """Cluster and project ``X`` (n, d)."""
        if self.projection not in ("umap", "pca"):
            raise InputError(f"--projection {self.projection}: choose umap or pca")
        n = X.shape[0]
        if n == 0:
            raise InputError("no patches to cluster: every image was skipped")
        k = self.n_clusters if self.n_clusters is not None else default_n_clusters(n)
        if k < 1:
            raise InputError(f"--clusters {k}: must be at least 1")
        if k > n:
            raise InputError(f"--clusters {k}: only {n} patches were found; use at most {n}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if n > MINIBATCH_ABOVE:
            km = MiniBatchKMeans(
                n_clusters=k, random_state=self.random_state, n_init=3, batch_size=4096
            )
        else:
            km = KMeans(n_clusters=k, random_state=self.random_state, n_init=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # duplicate points
            raw = km.fit_predict(X) if k > 1 else np.zeros(n, dtype=np.int64)
        centers = km.cluster_centers_ if k > 1 else X.mean(axis=0, keepdims=True)
        # relabel: largest cluster first, ties by smallest first member, so ids are stable
        sizes = np.bincount(raw, minlength=k)
        first = np.array([np.argmax(raw == c) if sizes[c] else n for c in range(k)])
        order = np.lexsort((first, -sizes))
        remap = np.empty(k, dtype=np.int64)
        remap[order] = np.arange(k)
        self.labels_ = remap[raw]
        self.cluster_centers_ = centers[order]
        self.n_clusters_ = int(k)
        self.projection_ = self._project(X)
        return self

    def _project(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        if n < 3:
            out = np.zeros((n, 2), dtype=np.float32)
            out[:, 0] = np.arange(n)
            return out
        if self.projection == "pca" or n < 16:
            k = min(2, X.shape[1])
            p = PCA(n_components=k, random_state=self.random_state).fit_transform(X)
            out = np.zeros((n, 2), dtype=np.float32)
            out[:, :k] = p
            return out
        from .cache import default_cache_dir

        # the CLI's folder too: one compiled UMAP for every entry point
        os.environ.setdefault("NUMBA_CACHE_DIR", str(default_cache_dir() / "numba"))
        import umap  # slow import (numba): only when needed

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(self.n_neighbors, n - 1),
            min_dist=self.min_dist,
            random_state=self.random_state,
            n_jobs=1,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs/random_state and spectral-init notices
            if n <= UMAP_FIT_AT_MOST:
                return reducer.fit_transform(X).astype(np.float32)
            rng = np.random.default_rng(self.random_state)
            fit = np.zeros(n, dtype=bool)
            fit[rng.choice(n, size=UMAP_FIT_AT_MOST, replace=False)] = True
            out = np.empty((n, 2), dtype=np.float32)
            out[fit] = reducer.fit_transform(X[fit])
            rest = np.flatnonzero(~fit)
            for start in range(0, len(rest), 100_000):  # bounded memory per call
                part = rest[start : start + 100_000]
                out[part] = reducer.transform(X[part])
            return out


@stage("clustering", reads=("embedding",), produces=("clusterer",), settings=("clustering", "seed"))
def clustering_stage(
    embedding: np.ndarray, clustering: ClusteringSettings, seed: int
) -> dict[str, object]:
    """A cluster per patch and the 2-D map."""
    clusterer = PatchClusterer(
        n_clusters=clustering.n_clusters, projection=clustering.projection, random_state=seed
    ).fit(embedding)
    return {"clusterer": clusterer}
