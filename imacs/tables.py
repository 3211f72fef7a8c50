"""The run's tables and manifest: what each column and field of a run directory holds."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .agreement import agreement_summary
from .attribute_set import ROLES, SetAttribution
from .clustering import PatchClusterer
from .comparison import relative_shares
from .data import Dataset, ImageRecord
from .models import LoadedModel
from .patches import PatchTable
from .responses import PatchViews
from .settings import AnalysisSettings
from .store import FORMAT, FORMAT_VERSION, write_array, write_scaled_maps, write_table


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


def class_order_warnings(images: pd.DataFrame, n_classes: int, names: dict[str, str]) -> list[str]:
    """A warning per model whose accuracy is below chance while some reordering of its
    classes would fit the labels well: the class order is most likely wrong."""
    from scipy.optimize import linear_sum_assignment

    out = []
    labels = images["label"].to_numpy()
    for r in ROLES:
        pred = images[f"pred_{r}"].to_numpy()
        if len(labels) < 10 or n_classes < 2:
            continue
        acc = float((pred == labels).mean())
        confusion = np.zeros((n_classes, n_classes))
        np.add.at(confusion, (labels, pred), 1)
        rows, cols = linear_sum_assignment(confusion, maximize=True)
        best = float(confusion[rows, cols].sum() / len(labels))
        if acc < 1.0 / n_classes and best >= acc + 0.25:
            out.append(
                f"model {r.upper()} ({names[r]}) is right on {acc:.0%} of the images, below "
                f"chance ({1 / n_classes:.0%}), but would be right on {best:.0%} with its "
                "classes in another order: check the class order (--classes FILE with the "
                "models' class names in output order)"
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


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "imacs": __version__}
    for dist in (
        "torch",
        "captum",
        "numpy",
        "scikit-learn",
        "umap-learn",
        "pandas",
        "pyarrow",
        "pillow",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def manifest(
    *,
    fingerprint: str,
    models: dict[str, LoadedModel],
    names: dict[str, str],
    dataset: Dataset,
    settings: AnalysisSettings,
    device: str,
    timings: dict[str, float],
    skipped: list[dict[str, str]],
    images_df: pd.DataFrame,
    clusters_df: pd.DataFrame,
    n_patches: int,
    n_clusters: int,
    concepts_df: pd.DataFrame,
    embedding_info: dict[str, object],
    files: dict[str, str],
    warnings: list[str] | None = None,
    trust: dict[str, object] | None = None,
    whatif: dict[str, object] | None = None,
) -> dict[str, object]:
    top = clusters_df.iloc[0]
    model_info = {}
    for r in ROLES:
        info = models[r].describe()
        info["name"] = names[r]
        info["num_classes"] = len(dataset.classes)
        model_info[r] = info
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("imacs") else None,
        "models": model_info,
        "data": {
            "root": str(dataset.root),
            "labels_csv": str(dataset.labels_csv) if dataset.labels_csv else None,
            "classes": dataset.classes,
            "meta_columns": [str(c) for c in dataset.meta.columns],
            "n_listed": len(dataset.records) + len(dataset.missing),
            "fingerprint": dataset.fingerprint(),
        },
        "settings": asdict(settings),
        "device": device,
        "versions": _versions(),
        "timings": timings,
        "skipped": skipped,
        "warnings": warnings or [],
        "trust": trust or {},
        "whatif": whatif or {},
        "embedding": embedding_info,
        "summary": {
            "n_images": len(images_df),
            "n_skipped": len(skipped),
            "n_patches": n_patches,
            "n_clusters": n_clusters,
            "n_concepts": len(concepts_df),
            "accuracy_a": float(images_df["correct_a"].mean()),
            "accuracy_b": float(images_df["correct_b"].mean()),
            "agreement": float((images_df["pred_a"] == images_df["pred_b"]).mean()),
            "median_abs_delta_a": float(images_df["delta_a"].abs().median()),
            "median_abs_delta_b": float(images_df["delta_b"].abs().median()),
            **agreement_summary(images_df),
            "top_cluster": {
                "cluster": int(top["cluster"]),
                "diff": float(top["diff"]),
                "diff_lo": float(top["diff_lo"]),
                "diff_hi": float(top["diff_hi"]),
                "n_patches": int(top["n_patches"]),
                "top_class": str(top["top_class"]),
            },
        },
        "files": files,
    }


def write_run_files(
    tmp: Path, tables: dict[str, pd.DataFrame], embedding: np.ndarray, att: SetAttribution
) -> dict[str, str]:
    """Write the run's tables, the embedding, both models' scaled maps and probabilities
    into ``tmp``; returns the manifest's ``files`` entry."""
    files = {name: write_table(tmp, name, frame) for name, frame in tables.items()}
    files["embedding"] = write_array(tmp, "embedding", embedding)
    images = tables["images"]
    for r in ROLES:
        scale = images[f"attr_scale_{r}"].to_numpy(np.float32)
        files[f"attr_{r}"] = write_scaled_maps(tmp, f"attr_{r}", att.maps[r], scale)
        files[f"probs_{r}"] = write_array(tmp, f"probs_{r}", att.per_role[r]["probs"])
    return files
