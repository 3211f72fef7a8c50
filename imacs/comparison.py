"""Stage 5: per-cluster comparison of the two models.

For each cluster: how many patches and images it holds, the mean share of A's and of B's
positive attribution its patches hold, and their difference ``diff = attr_b - attr_a``
(always B minus A). The uncertainty of ``diff`` comes from a bootstrap over *images* (patches
of one image are not independent), giving a standard error and a confidence interval.
Rank 1 is the cluster with the largest absolute difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError
from .options import real, setting, validate, whole


@dataclass(frozen=True)
class ComparisonSettings:
    """Settings of the comparison.

    Args:
        n_boot (int): bootstrap resamples. Default: 1000.
        ci (float): confidence level of the interval. Default: 0.95.
        seed (int): bootstrap seed. Default: 0.
    """

    n_boot: int = setting(1000, convert=whole(10))
    ci: float = setting(0.95, convert=real(0.5, below=1.0))
    seed: int = setting(0, flag="--seed", convert=whole(0, 2**32 - 1))

    def __post_init__(self) -> None:
        validate(self)


def compare_clusters(
    patches: pd.DataFrame,
    images: pd.DataFrame,
    classes: list[str],
    settings: ComparisonSettings | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cluster statistics and their per-class breakdown.

    Args:
        patches (pandas.DataFrame): one row per patch with columns ``image_id``,
            ``cluster``, ``attr_a``, ``attr_b`` and ``saliency``.
        images (pandas.DataFrame): one row per image, indexed by ``image_id``, with columns
            ``label``, ``pred_a``, ``pred_b``.
        classes (list[str]): class names by index.
        settings (ComparisonSettings, optional): bootstrap settings.

    Returns:
        ``clusters``: one row per cluster (sorted by rank) with ``cluster, rank,
        n_patches, n_images, attr_a, attr_b, diff, diff_se, diff_lo, diff_hi,
        significant, saliency, top_class, top_class_share, disagree_rate, acc_a, acc_b``;
        ``cluster_classes``: one row per (cluster, class) with ``cluster, class,
        class_name, n_patches, n_images, attr_a, attr_b, diff``.
    """
    settings = settings or ComparisonSettings()
    p = patches.join(images[["label", "pred_a", "pred_b"]], on="image_id")
    p = p.astype({"attr_a": np.float64, "attr_b": np.float64})  # means and diff in float64
    alpha = (1.0 - settings.ci) / 2.0
    rows = []
    for cluster, grp in p.groupby("cluster", sort=True):
        per_image = (
            grp.assign(d=grp["attr_b"] - grp["attr_a"])
            .groupby("image_id", sort=True)
            .agg(sum_d=("d", "sum"), count=("d", "size"))
        )
        rng = np.random.default_rng([settings.seed, int(cluster)])
        boot = _bootstrap_mean(
            per_image["sum_d"].to_numpy(), per_image["count"].to_numpy(), settings.n_boot, rng
        )
        attr_a, attr_b = float(grp["attr_a"].mean()), float(grp["attr_b"].mean())
        diff = attr_b - attr_a
        lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
        img_ids = per_image.index.to_numpy()
        img = images.loc[img_ids]
        label_counts = grp["label"].value_counts()
        top = int(label_counts.index[0])
        rows.append(
            {
                "cluster": int(cluster),
                "n_patches": len(grp),
                "n_images": len(img_ids),
                "attr_a": attr_a,
                "attr_b": attr_b,
                "diff": diff,
                "diff_se": float(boot.std(ddof=1)) if len(boot) > 1 else 0.0,
                "diff_lo": float(lo),
                "diff_hi": float(hi),
                "significant": bool(lo > 0 or hi < 0),
                "saliency": float(grp["saliency"].mean()),
                "top_class": classes[top] if top < len(classes) else str(top),
                "top_class_share": float(label_counts.iloc[0] / len(grp)),
                "disagree_rate": float((img["pred_a"] != img["pred_b"]).mean()),
                "acc_a": float((img["pred_a"] == img["label"]).mean()),
                "acc_b": float((img["pred_b"] == img["label"]).mean()),
            }
        )
    clusters = pd.DataFrame(rows)
    if clusters.empty:
        raise InputError("no clusters to compare: no patches were found")
    order = np.lexsort((clusters["cluster"].to_numpy(), -clusters["diff"].abs().to_numpy()))
    clusters["rank"] = 0
    clusters.loc[clusters.index[order], "rank"] = np.arange(1, len(clusters) + 1)
    clusters = clusters.sort_values("rank").reset_index(drop=True)
    front = ["cluster", "rank"]
    clusters = clusters[front + [c for c in clusters.columns if c not in front]]

    by_class = (
        p.groupby(["cluster", "label"], sort=True)
        .agg(
            n_patches=("attr_a", "size"),
            n_images=("image_id", "nunique"),
            attr_a=("attr_a", "mean"),
            attr_b=("attr_b", "mean"),
        )
        .reset_index()
        .rename(columns={"label": "class"})
    )
    by_class["diff"] = by_class["attr_b"] - by_class["attr_a"]
    by_class.insert(
        2,
        "class_name",
        [classes[c] if c < len(classes) else str(c) for c in by_class["class"]],
    )
    return clusters, by_class


def _bootstrap_mean(
    sum_d: np.ndarray, count: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap the patch-mean of d by resampling images (ratio of weighted sums)."""
    n = len(sum_d)
    if n == 1:
        return np.full(n_boot, sum_d[0] / count[0])
    out = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # bound memory: at most ~2M weights at a time
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        out[start : start + b] = (w @ sum_d) / np.maximum(w @ count, 1)
    return out
