"""UMAP's cost and quality when fitted on a sample (``imacs.clustering.UMAP_FIT_AT_MOST``).

Fits ``PatchClusterer(n_clusters=30, projection="umap")`` on N synthetic 16-d points in 30
blobs, UMAP fitted on at most FIT_AT_MOST of them (the rest placed by ``transform``), and
prints wall and CPU seconds and the silhouette of the k-means labels in the map (on 5,000
points: how well the map keeps the clusters apart).

Usage: python benchmarks/bench_umap.py N_PATCHES FIT_AT_MOST
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import silhouette_score

import imacs.clustering as clustering


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("fit_at_most", type=int)
    args = ap.parse_args()
    clustering.UMAP_FIT_AT_MOST = args.fit_at_most
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (30, 16))
    X = centres[rng.integers(0, 30, args.n)] + rng.normal(0, 1, (args.n, 16))
    wall, cpu = time.perf_counter(), time.process_time()
    fitted = clustering.PatchClusterer(n_clusters=30, projection="umap").fit(X.astype("f4"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    idx = rng.choice(args.n, min(5000, args.n), replace=False)
    score = silhouette_score(fitted.projection_[idx], fitted.labels_[idx])
    print(f"{args.n} patches, UMAP fitted on at most {args.fit_at_most}: wall {wall:.1f} s, "
          f"CPU {cpu:.1f} s, silhouette {score:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
