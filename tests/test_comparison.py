"""Stage 5: per-cluster comparison with uncertainty."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imacs.comparison import ComparisonSettings, compare_clusters


def _data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_img = 60
    images = pd.DataFrame(
        {
            "label": np.arange(n_img) % 2,
            "pred_a": np.arange(n_img) % 2,
            "pred_b": np.where(
                np.arange(n_img) < 10, 1 - np.arange(n_img) % 2, np.arange(n_img) % 2
            ),
        },
        index=pd.Index(np.arange(n_img), name="image_id"),
    )
    rows = []
    for img in range(n_img):
        # cluster 0: everyone, A and B alike; cluster 1: B relies on it (+0.4); cluster 2: A (-0.1)
        rows.append((img, 0, 0.2 + rng.normal(0, 0.02), 0.2 + rng.normal(0, 0.02)))
        if img % 2 == 1:
            rows.append((img, 1, 0.1 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)))
        if img < 10:
            rows.append((img, 2, 0.3 + rng.normal(0, 0.02), 0.2 + rng.normal(0, 0.02)))
    patches = pd.DataFrame(rows, columns=["image_id", "cluster", "attr_a", "attr_b"])
    patches["saliency"] = 2.0
    return patches, images


def test_cmp001_rank_sign_and_interval() -> None:
    patches, images = _data()
    clusters, by_class = compare_clusters(patches, images, ["even", "odd"])
    assert clusters["cluster"].tolist() == [1, 2, 0]  # by |diff|
    assert clusters["rank"].tolist() == [1, 2, 3]
    top = clusters.iloc[0]
    assert top["diff"] == pytest.approx(top["attr_b"] - top["attr_a"])
    assert top["diff"] == pytest.approx(0.4, abs=0.02)
    assert top["diff_lo"] < top["diff"] < top["diff_hi"] and top["significant"]
    assert top["n_images"] == 30 and top["top_class"] == "odd" and top["top_class_share"] == 1.0
    second = clusters.iloc[1]
    assert second["diff"] < 0 and second["significant"]
    assert second["disagree_rate"] == 1.0 and second["acc_b"] == 0.0
    same = clusters.iloc[2]
    assert same["diff_lo"] < 0 < same["diff_hi"] and not same["significant"]
    row = by_class[(by_class["cluster"] == 0) & (by_class["class_name"] == "even")].iloc[0]
    assert row["n_images"] == 30


def test_cmp002_bootstrap_is_seeded() -> None:
    patches, images = _data()
    one, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=4))
    two, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=4))
    other, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=5))
    assert one.equals(two)
    assert not one["diff_lo"].equals(other["diff_lo"])
    # the interval is about one standard error wide on each side times 1.96
    width = (one["diff_hi"] - one["diff_lo"]) / (2 * 1.96 * one["diff_se"])
    assert ((width > 0.7) & (width < 1.3)).all()
