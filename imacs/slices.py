"""Stage: the statistics of the common slices, computed once at analysis time.

A filter to one class or one outcome (both right, only A right, only B right, both wrong)
is what a dashboard user asks first. This stage computes each such slice's per-group
statistics (:func:`imacs.comparison.compare_clusters` on the slice's patches, exactly as
the dashboard does for a filter) at both levels, and the run stores them as the
``slice_stats`` table, so the first visit of such a filter reads them instead of computing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .comparison import compare_clusters
from .runformat import empty
from .settings import ComparisonSettings
from .stage import stage

#: what each image's outcome is called (a filter's value in the dashboard's URL)
OUTCOMES = {
    "both_right": "both right",
    "only_a": "only A right",
    "only_b": "only B right",
    "both_wrong": "both wrong",
}
#: the columns of the patches the statistic reads
COLUMNS = ("image_id", "cluster", "attr_a", "attr_b", "saliency")


def outcomes(images: pd.DataFrame) -> np.ndarray:
    """Each image's outcome (a key of :data:`OUTCOMES`) from ``correct_a``/``correct_b``."""
    a = images["correct_a"].to_numpy(bool)
    b = images["correct_b"].to_numpy(bool)
    return np.select([a & b, a & ~b, ~a & b], ["both_right", "only_a", "only_b"], "both_wrong")


def slice_key(kind: str, value: str) -> str:
    """A common slice's name in ``slice_stats``: ``class=cat``, ``outcome=only_b``."""
    return f"{kind}={value}"


def slice_input(patches: pd.DataFrame, group: str, keep: np.ndarray) -> pd.DataFrame:
    """What the statistic reads of the patches in a slice (rows ``keep``), grouped by the
    patches' column ``group`` (``cluster`` or ``concept``)."""
    return pd.DataFrame(
        {c: patches[group if c == "cluster" else c].to_numpy()[keep] for c in COLUMNS}
    )


@stage(
    "slices",
    reads=("patches", "images", "classes"),
    produces=("slice_stats",),
    settings=("comparison",),
)
def slices_stage(
    patches: pd.DataFrame,
    images: pd.DataFrame,
    classes: list[str],
    comparison: ComparisonSettings,
) -> dict[str, object]:
    """Every class's and every outcome's per-group statistics, at both levels."""
    img = images.set_index("image_id", drop=False)
    slices = {slice_key("class", c): img["label_name"].to_numpy() == c for c in classes}
    outcome = outcomes(img)
    slices |= {slice_key("outcome", o): outcome == o for o in OUTCOMES}
    parts = []
    for key, chosen in slices.items():
        keep = patches["image_id"].isin(img.index[chosen]).to_numpy()
        if not keep.any():
            continue
        for level in ("concept", "cluster"):
            stats, _ = compare_clusters(
                slice_input(patches, level, keep), img, classes, comparison, with_classes=False
            )
            parts.append(stats.assign(level=level, slice=key))
    table = pd.concat(parts, ignore_index=True) if parts else empty("slice_stats")
    return {"slice_stats": table}


__all__ = ["COLUMNS", "OUTCOMES", "outcomes", "slice_input", "slice_key", "slices_stage"]
