"""Write a synthetic run directory of the real format, at any size (for dashboard benchmarks).

The tables are random but consistent (clusters have distinct A/B shares, images carry a meta
column), the cluster table comes from the real ``compare_clusters``, and thumbnails are
written for the first images and patches only (missing ones are the app's fallback path).

Usage: python benchmarks/make_large_run.py OUT_DIR [--patches 100000] [--clusters 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imacs.comparison import ComparisonSettings, compare_clusters, relative_shares
from imacs.runformat import FORMAT
from imacs.slices import slices_stage
from imacs.store import write_array, write_table


def make_run(
    out: Path,
    n_patches: int = 100_000,
    n_clusters: int = 40,
    seed: int = 0,
    thumbs: int = 200,
    current: bool = False,
) -> Path:
    """A synthetic run in ``out``; with ``current``, its images and patches tables hold every
    column a current analysis writes (else the older shape, which the reader upgrades)."""
    rng = np.random.default_rng(seed)
    per_image = 4
    n_images = n_patches // per_image
    classes = [f"class_{i}" for i in range(10)]
    size = 64
    out.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, len(classes), n_images)
    pred_a = np.where(rng.random(n_images) < 0.85, labels, rng.integers(0, len(classes), n_images))
    pred_b = np.where(rng.random(n_images) < 0.8, labels, rng.integers(0, len(classes), n_images))
    images = pd.DataFrame(
        {
            "image_id": np.arange(n_images),
            "image": [f"{classes[k]}/{i:06d}.png" for i, k in enumerate(labels)],
            "label": labels,
            "label_name": np.asarray(classes, dtype=object)[labels],
            "width": 256,
            "height": 256,
            "pred_a": pred_a,
            "prob_a": rng.random(n_images).astype(np.float32),
            "correct_a": pred_a == labels,
            "target_a": pred_a,
            "delta_a": rng.normal(0, 0.01, n_images).astype(np.float32),
            "attr_scale_a": np.ones(n_images, np.float32),
            "pred_b": pred_b,
            "prob_b": rng.random(n_images).astype(np.float32),
            "correct_b": pred_b == labels,
            "target_b": pred_b,
            "delta_b": rng.normal(0, 0.01, n_images).astype(np.float32),
            "attr_scale_b": np.ones(n_images, np.float32),
            "site": rng.choice(["north", "south", "east"], n_images),
        }
    )
    cluster = rng.integers(0, n_clusters, n_patches)
    centres = rng.normal(0, 5, (n_clusters, 2))
    bias = rng.normal(0, 0.15, n_clusters)
    attr_a = np.clip(rng.beta(2, 8, n_patches) - bias[cluster] / 2, 0, 1).astype(np.float32)
    attr_b = np.clip(rng.beta(2, 8, n_patches) + bias[cluster] / 2, 0, 1).astype(np.float32)
    xy = centres[cluster] + rng.normal(0, 0.6, (n_patches, 2))
    x0 = rng.integers(0, 192, n_patches)
    y0 = rng.integers(0, 192, n_patches)
    patches = pd.DataFrame(
        {
            "patch_id": np.arange(n_patches),
            "image_id": np.repeat(np.arange(n_images), per_image)[:n_patches],
            "x0": x0,
            "y0": y0,
            "x1": x0 + 64,
            "y1": y0 + 64,
            "in_x0": x0 // 4,
            "in_y0": y0 // 4,
            "in_x1": x0 // 4 + 16,
            "in_y1": y0 // 4 + 16,
            "attr_a": attr_a,
            "attr_b": attr_b,
            "diff": attr_b - attr_a,
            "saliency": rng.uniform(1.5, 6, n_patches).astype(np.float32),
            "cluster": cluster,
            "proj_x": xy[:, 0].astype(np.float32),
            "proj_y": xy[:, 1].astype(np.float32),
        }
    )
    if current:  # what analysis has written since concepts, relative shares, map agreement
        patches["concept"] = patches["cluster"]
        patches = patches.assign(**relative_shares(patches))
        for r in ("a", "b"):
            patches[f"alone_{r}"] = rng.integers(0, len(classes), n_patches)
            patches[f"alone_{r}_prob"] = rng.random(n_patches).astype(np.float32)
        images["map_spearman"] = rng.uniform(-0.2, 0.9, n_images).astype(np.float32)
        images["map_iou_top10"] = rng.uniform(0, 0.6, n_images).astype(np.float32)
    clusters, by_class = compare_clusters(
        patches, images.set_index("image_id"), classes, ComparisonSettings()
    )
    files = {
        "images": write_table(out, "images", images),
        "patches": write_table(out, "patches", patches),
        "clusters": write_table(out, "clusters", clusters),
        "cluster_classes": write_table(out, "cluster_classes", by_class),
        "embedding": write_array(
            out,
            "embedding",
            np.concatenate([xy, rng.normal(0, 0.1, (n_patches, 6))], 1).astype(np.float32),
        ),
    }
    if current:  # the common slices' statistics, as the analysis's slices stage stores them
        stats = slices_stage.fn(patches, images, classes, ComparisonSettings())["slice_stats"]
        files["slice_stats"] = write_table(out, "slice_stats", stats)
    for role in ("a", "b"):
        maps = rng.normal(0, 0.3, (n_images, size, size)).astype(np.float16)
        files[f"attr_{role}"] = write_array(out, f"attr_{role}", maps)
        probs = rng.dirichlet(np.ones(len(classes)), n_images).astype(np.float32)
        files[f"probs_{role}"] = write_array(out, f"probs_{role}", probs)
    (out / "thumbs" / "images").mkdir(parents=True, exist_ok=True)
    (out / "thumbs" / "patches").mkdir(parents=True, exist_ok=True)
    for i in range(min(thumbs, n_images)):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(
            out / "thumbs" / "images" / f"{i}.jpg"
        )
    for i in range(min(thumbs * per_image, n_patches)):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(
            out / "thumbs" / "patches" / f"{i}.jpg"
        )
    settings = {
        "preprocess": {"image_size": [size, size]},
        "attribution": {"steps": 50, "baseline": "black", "target": "pred"},
        "seed": seed,
    }
    top = clusters.iloc[0]
    manifest = {
        "format": FORMAT,
        # the shape of a format-1 run made before concepts and what-if: the reader's
        # upgrade() derives the rest, as for a user's older run
        "format_version": 1,
        "fingerprint": f"synthetic-{n_patches}-{seed}",
        "created": "2026-11-22T00:00:00+00:00",
        "command": None,
        "models": {
            r: {"name": f"synthetic_{r}", "kind": "torchscript", "sha256": "0" * 64} for r in "ab"
        },
        "data": {
            "root": "/nonexistent",
            "labels_csv": None,
            "classes": classes,
            "meta_columns": ["site"],
        },
        "settings": settings,
        "device": "cpu",
        "versions": {},
        "timings": {"synthetic": 0.0},
        "skipped": [],
        "summary": {
            "n_images": n_images,
            "n_skipped": 0,
            "n_patches": n_patches,
            "n_clusters": n_clusters,
            "accuracy_a": float(images["correct_a"].mean()),
            "accuracy_b": float(images["correct_b"].mean()),
            "agreement": float((pred_a == pred_b).mean()),
            "top_cluster": {"cluster": int(top["cluster"]), "diff": float(top["diff"])},
        },
        "files": files,
    }
    (out / "run.json").write_text(json.dumps(manifest, indent=2))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--clusters", type=int, default=40)
    ap.add_argument("--current", action="store_true", help="every column a current analysis writes")
    a = ap.parse_args()
    print(make_run(a.out, a.patches, a.clusters, current=a.current))
