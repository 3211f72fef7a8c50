"""The run's images and patches tables, and the stages that make them ("images",
"comparison"): what each of their columns holds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .attribute_set import SetAttribution
from .clustering import PatchClusterer
from .comparison import compare_clusters, relative_shares
from .data import Dataset, ImageRecord
from .patches import PatchTable
from .responses import PatchViews
from .runformat import ROLES
from .settings import ComparisonSettings
from .stage import stage


def images_table(
    records: list[ImageRecord],
    dataset: Dataset,
    valid: np.ndarray,
    att: SetAttribution,
) -> pd.DataFrame:
    """One row per analysed image: label, both models' predictions, delta and map scale.

    ``att`` holds only the analysed images (``valid`` rows of the data set)."""
    sizes = att.size
    labels = np.array([r.label for r in records], dtype=np.int64)
    df = pd.DataFrame(
        {
            "image_id": np.arange(len(records), dtype=np.int64),
            "image": [r.relpath for r in records],
            "label": labels,
            "label_name": [dataset.classes[i] for i in labels],
            "width": sizes[:, 0],
            "height": sizes[:, 1],
        }
    )
    for r in ROLES:
        pr = att.per_role[r]
        df[f"pred_{r}"] = pr["pred"]
        df[f"prob_{r}"] = pr["probs"][np.arange(len(records)), pr["pred"]]
        df[f"correct_{r}"] = pr["pred"] == labels
        df[f"target_{r}"] = pr["target"]
        df[f"delta_{r}"] = pr["delta"]
        df[f"attr_scale_{r}"] = _abs_max_per_row(att.maps[r])
    if not dataset.meta.empty:
        meta = dataset.meta.iloc[valid].reset_index(drop=True)
        for c in meta.columns:
            df[c] = meta[c].to_numpy()
    return df


#: a model whose most frequent answer covers this share of the images or more answers the
#: same to everything (a random-weight model, a broken export)
CONSTANT_SHARE = 0.98
#: a class order is suspect when some reordering of the classes is right on this share more
#: of the images than the given order, and on 5 images more at least (above chance too: two
#: swapped classes of ten are 20 points; an honest model's best order is its own)
REORDER_GAIN = 0.1


def class_order_warnings(
    images: pd.DataFrame, n_classes: int, names: dict[str, str], classes: list[str] | None = None
) -> list[str]:
    """Warnings per model about its answers, before anything is read into its maps:

    * it gives the same answer to (almost) every image (:data:`CONSTANT_SHARE`): its maps
      explain that one answer, whatever the image;
    * some reordering of its classes would be right on :data:`REORDER_GAIN` more of the
      images than the order given, below chance or not: the class order is most likely
      wrong (the classes it would swap are named)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    labels = images["label"].to_numpy()
    names_of = classes or [str(k) for k in range(n_classes)]
    for r in ROLES:
        pred = images[f"pred_{r}"].to_numpy()
        if len(labels) < 10 or n_classes < 2:
            continue
        values, counts = np.unique(pred, return_counts=True)
        top = int(counts.argmax())
        if counts[top] >= CONSTANT_SHARE * len(pred) and len(np.unique(labels)) > 1:
            answer = names_of[int(values[top])] if values[top] < len(names_of) else values[top]
            out.append(
                f"model {r.upper()} ({names[r]}) answers {answer!s} to {counts[top]} of the "
                f"{len(pred)} images: a model that says the same whatever the image (random "
                "weights, a broken export?) has maps that explain nothing; check the model"
            )
            continue
        acc = float((pred == labels).mean())
        confusion = np.zeros((n_classes, n_classes))
        np.add.at(confusion, (labels, pred), 1)
        rows, cols = linear_sum_assignment(confusion, maximize=True)
        best = float(confusion[rows, cols].sum() / len(labels))
        if best >= acc + REORDER_GAIN and (best - acc) * len(labels) >= 5:
            moved = [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if i != j]
            swaps = ", ".join(
                f"{names_of[i] if i < len(names_of) else i} as "
                f"{names_of[j] if j < len(names_of) else j}"
                for i, j in moved[:3]
            )
            where = "below" if acc < 1.0 / n_classes else "above"
            out.append(
                f"model {r.upper()} ({names[r]}) is right on {acc:.0%} of the images ({where} "
                f"chance, {1 / n_classes:.0%}), but would be right on {best:.0%} with its "
                f"classes in another order (reading {swaps}"
                f"{', ...' if len(moved) > 3 else ''}): check the class order (--classes FILE "
                "with the models' class names in output order)"
            )
    return out


def _abs_max_per_row(maps: np.ndarray, block: int = 256) -> np.ndarray:
    """max |map| per image, a block of rows at a time (maps may be memory-mapped)."""
    out = np.zeros(len(maps), np.float32)
    for s in range(0, len(maps), block):
        out[s : s + block] = np.abs(maps[s : s + block]).reshape(len(out[s : s + block]), -1).max(1)
    return out


def patches_table(
    table: PatchTable, box_orig: np.ndarray, clusterer: PatchClusterer, views: PatchViews
) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "patch_id": np.arange(len(table), dtype=np.int64),
            "image_id": table.image,
            "x0": box_orig[:, 0],
            "y0": box_orig[:, 1],
            "x1": box_orig[:, 2],
            "y1": box_orig[:, 3],
            "in_x0": table.box[:, 0],
            "in_y0": table.box[:, 1],
            "in_x1": table.box[:, 2],
            "in_y1": table.box[:, 3],
            "attr_a": table.attr_a,
            "attr_b": table.attr_b,
            "diff": table.attr_b - table.attr_a,
            "saliency": table.saliency,
            "cluster": clusterer.labels_.astype(np.int64),
            "proj_x": clusterer.projection_[:, 0],
            "proj_y": clusterer.projection_[:, 1],
            # what each model answers to the patch alone (imacs.responses)
            "alone_a": views.answer["a"],
            "alone_a_prob": views.answer_prob["a"],
            "alone_b": views.answer["b"],
            "alone_b_prob": views.answer_prob["b"],
        }
    )
    # relative reliance: each model's shares renormalised over the image's patches
    return df.assign(**relative_shares(df))


@stage(
    "images",
    reads=("records", "dataset", "valid", "att", "names", "say"),
    produces=("images", "warnings"),
)
def images_stage(
    records: list[ImageRecord],
    dataset: Dataset,
    valid: np.ndarray,
    att: SetAttribution,
    names: dict[str, str],
    say: object,
) -> dict[str, object]:
    """The images table, and a warning per model whose class order looks wrong."""
    images = images_table(records, dataset, valid, att)
    warnings = class_order_warnings(images, len(dataset.classes), names, list(dataset.classes))
    for w in warnings:
        say(f"warning: {w}")  # type: ignore[operator]
    return {"images": images, "warnings": warnings}


@stage(
    "comparison",
    reads=("patch_table", "box_orig", "clusterer", "views", "images", "classes"),
    produces=("patches", "clusters", "cluster_classes"),
    settings=("comparison",),
)
def comparison_stage(
    patch_table: PatchTable,
    box_orig: np.ndarray,
    clusterer: PatchClusterer,
    views: PatchViews,
    images: pd.DataFrame,
    classes: list[str],
    comparison: ComparisonSettings,
) -> dict[str, object]:
    """The patches table and each cluster's statistics (overall and per class)."""
    patches = patches_table(patch_table, box_orig, clusterer, views)
    clusters, by_class = compare_clusters(
        patches, images.set_index("image_id"), classes, comparison
    )
    return {"patches": patches, "clusters": clusters, "cluster_classes": by_class}
