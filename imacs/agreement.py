"""Per-image agreement of the two models' attribution maps.

Two numbers per image, computed a block of images at a time so that memory-mapped maps of a
large set are never loaded whole:

* ``map_spearman``: Spearman's rank correlation of A's and B's signed attribution over all
  pixels (1: the two maps order the pixels the same way; 0: unrelated; below 0: opposite).
* ``map_iou_top10``: intersection over union of each model's top 10 % pixels by *positive*
  attribution, the part of a map that patches are cut from (:func:`imacs.patches.share_map`).
  Only pixels with positive attribution can be in a model's top set, so a model with
  little positive attribution has a smaller set. 1: the same pixels; 0: none in common.

An image on which a map is constant (no ranking) gets NaN for Spearman; one where neither
model has positive attribution gets NaN for the IoU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .stage import stage

if TYPE_CHECKING:
    from .attribute_set import SetAttribution

#: fraction of an image's pixels that make up a model's "top" set for the IoU
TOP_FRACTION = 0.10
#: images per block: (block, H*W) float64 ranks, about 26 MB at 224 px
BLOCK = 64


def map_agreement(
    maps_a: np.ndarray, maps_b: np.ndarray, top_fraction: float = TOP_FRACTION
) -> dict[str, np.ndarray]:
    """Per-image agreement of two stacks of attribution maps.

    Args:
        maps_a (numpy.ndarray): (N, H, W) attribution maps of model A (may be memory-mapped).
        maps_b (numpy.ndarray): (N, H, W) attribution maps of model B, same shape.
        top_fraction (float): share of the pixels in each model's top set. Default: 0.1.

    Returns:
        dict with ``map_spearman`` and ``map_iou_top10``, each (N,) float32.
    """
    if maps_a.shape != maps_b.shape or maps_a.ndim != 3:
        raise ValueError("maps_a and maps_b must both be (N, H, W) with the same shape")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError("top_fraction must be in (0, 1]")
    n = maps_a.shape[0]
    pixels = maps_a.shape[1] * maps_a.shape[2]
    k = max(1, int(np.ceil(top_fraction * pixels)))
    rho = np.full(n, np.nan, np.float32)
    iou = np.full(n, np.nan, np.float32)
    for s in range(0, n, BLOCK):
        a = np.asarray(maps_a[s : s + BLOCK], dtype=np.float64).reshape(-1, pixels)
        b = np.asarray(maps_b[s : s + BLOCK], dtype=np.float64).reshape(-1, pixels)
        rho[s : s + len(a)] = _spearman_rows(a, b)
        iou[s : s + len(a)] = _top_iou_rows(a, b, k)
    return {"map_spearman": rho, "map_iou_top10": iou}


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``a`` with the same row of ``b`` (ties: average ranks)."""
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    num = (ra * rb).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _top_mask(m: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest pixels, keeping only those with positive attribution."""
    idx = np.argpartition(-m, k - 1, axis=1)[:, :k] if k < m.shape[1] else None
    mask = np.zeros(m.shape, dtype=bool)
    if idx is None:
        mask[:] = True
    else:
        np.put_along_axis(mask, idx, True, axis=1)
    return mask & (m > 0)


def _top_iou_rows(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    ta, tb = _top_mask(a, k), _top_mask(b, k)
    inter = (ta & tb).sum(1)
    union = (ta | tb).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def agreement_summary(images: dict[str, np.ndarray] | object) -> dict[str, float | None]:
    """Median and 10th percentile of both numbers over the images (NaN rows left out)."""
    out: dict[str, float | None] = {}
    for col in ("map_spearman", "map_iou_top10"):
        values = np.asarray(images[col], dtype=np.float64)  # type: ignore[index]
        values = values[np.isfinite(values)]
        out[f"{col}_median"] = float(np.median(values)) if len(values) else None
        out[f"{col}_p10"] = float(np.quantile(values, 0.1)) if len(values) else None
    return out


@stage("agreement", reads=("att", "images"), produces=("images",))
def agreement_stage(att: SetAttribution, images: pd.DataFrame) -> dict[str, object]:
    """The images table with each image's map agreement (``map_spearman``,
    ``map_iou_top10``)."""
    return {"images": images.assign(**map_agreement(att.maps["a"], att.maps["b"]))}
