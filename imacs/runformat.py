"""The run directory's format, in one torch-free module: the contract between the pipeline
(which writes runs), the reader (:mod:`imacs.run`) and the dashboard.

Layout of a run directory (format version 2)::

    run.json                 manifest (:class:`Manifest`): models, data, settings, versions,
                             timings, skipped inputs, warnings, trust, what-if, summary, files
    images.parquet           one row per analysed image (:data:`TABLES`, as every table)
    patches.parquet          one row per salient patch
    clusters.parquet         one row per cluster, sorted by rank
    cluster_classes.parquet  one row per (cluster, class)
    concepts.parquet         one row per concept (clusters grouped by the models' answers)
    whatif.parquet, whatif_images.parquet, whatif_boxes.parquet
                             what-if removal of the top clusters, each tested image's
                             predictions after it, and the regions it removed from each
                             (and those of its random control)
    concept_whatif.parquet, concept_whatif_images.parquet, concept_whatif_boxes.parquet
                             the same for concepts, keyed ``concept``
    layer_agreement.parquet, layer_cka.parquet, layer_channels.parquet
                             inside the networks (:mod:`imacs.layers`): each layer's probe
                             agreement, CKA of A's and B's layers, each top concept's channels
    attr_a.npy, attr_b.npy   (images, H, W) float16 attribution maps, each image's map divided
                             by its largest absolute value (``attr_scale_a/b`` in images)
    probs_a.npy, probs_b.npy (images, classes) float32 class probabilities
    embedding.npy            (patches, k) float32 patch embeddings
    thumbs/images/ID.jpg     image thumbnails (longest side 256 px)
    thumbs/patches/ID.jpg    patch thumbnails (96 x 96 px)

A run of an older format is brought up to date when it is read, never rewritten (the web
app does not write to runs): :func:`upgrade` for its manifest, :func:`upgrade_table` for each
table, and :func:`derived` for the tables it lacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

FORMAT = "imacs-run"
FORMAT_VERSION = 2
MANIFEST = "run.json"

#: the two models, in the order every table and manifest section names them
ROLES = ("a", "b")
#: the levels the statistics and the what-if are computed at (each table keyed by its name)
LEVELS = ("cluster", "concept")

_STATS: dict[str, str] = {
    "rank": "int64",
    "n_patches": "int64",
    "n_images": "int64",
    "attr_a": "float64",
    "attr_b": "float64",
    "diff": "float64",
    "diff_se": "float64",
    "diff_lo": "float64",
    "diff_hi": "float64",
    "p_value": "float64",
    "significant": "bool",
    "saliency": "float64",
    "top_class": "object",
    "top_class_share": "float64",
    "disagree_rate": "float64",
    "acc_a": "float64",
    "acc_b": "float64",
    "attr_a_rel": "float64",
    "attr_b_rel": "float64",
    "diff_rel": "float64",
    "diff_rel_lo": "float64",
    "diff_rel_hi": "float64",
    "n_images_rel": "int64",
    "within_bar": "bool",
}
_ALONE = {"alone_a": "object", "alone_a_share": "float64"} | {
    "alone_b": "object",
    "alone_b_share": "float64",
}


def whatif_columns(key: str) -> dict[str, str]:
    """Columns of a what-if table keyed ``key`` (``cluster`` or ``concept``)."""
    per_model = ("flip", "drop", "acc_before", "acc_after", "control_flip", "control_drop", "p")
    return {
        key: "int64",
        "whatif_n_images": "int64",
        "whatif_n_boxes": "int64",
        **{f"whatif_{k}_{r}": "float64" for k in per_model for r in ROLES},
        "whatif_area": "float64",
        "whatif_control_overlap": "float64",
        **{f"whatif_inconclusive_{r}": "bool" for r in ROLES},
        "whatif_effect": "object",
        "whatif_verdict": "object",
    }


def whatif_image_columns(key: str) -> dict[str, str]:
    """Columns of a what-if images table: each tested (group, image) pair's predictions
    after the removal (the predictions before are in ``images``)."""
    after = {
        f"{k}_{r}_after": t for r in ROLES for k, t in (("pred", "int64"), ("prob", "float64"))
    }
    return {key: "int64", "image_id": "int64", **after, "area": "float64"}


def whatif_box_columns(key: str) -> dict[str, str]:
    """Columns of a what-if boxes table: the regions removed from each tested (group,
    image) pair (``control`` False) and the random regions of its control (True), as x0,
    y0, x1, y1 in model-input pixels (x1, y1 exclusive); a region is its boxes' union."""
    return {
        key: "int64",
        "image_id": "int64",
        "control": "bool",
        **{k: "int32" for k in ("x0", "y0", "x1", "y1")},
    }


#: every table of a run: its columns and their types (a table may carry more columns:
#: the images' meta-annotations, say)
TABLES: dict[str, dict[str, str]] = {
    "images": {
        "image_id": "int64",
        "image": "object",
        "label": "int64",
        "label_name": "object",
        "width": "int64",
        "height": "int64",
        **{
            f"{k}_{r}": t
            for r in ROLES
            for k, t in (
                ("pred", "int64"),
                ("prob", "float32"),
                ("correct", "bool"),
                ("target", "int64"),
                ("delta", "float32"),
                ("attr_scale", "float32"),
            )
        },
        "map_spearman": "float32",
        "map_iou_top10": "float32",
    },
    "patches": {
        "patch_id": "int64",
        "image_id": "int64",
        **{c: "int32" for c in ("x0", "y0", "x1", "y1", "in_x0", "in_y0", "in_x1", "in_y1")},
        "attr_a": "float32",
        "attr_b": "float32",
        "diff": "float32",
        "saliency": "float32",
        "cluster": "int64",
        "concept": "int64",
        "proj_x": "float32",
        "proj_y": "float32",
        "alone_a": "int64",
        "alone_a_prob": "float32",
        "alone_b": "int64",
        "alone_b_prob": "float32",
        "attr_a_rel": "float64",
        "attr_b_rel": "float64",
        "diff_rel": "float64",
    },
    "clusters": {"cluster": "int64", **_STATS, "concept": "int64", **_ALONE},
    "cluster_classes": {
        "cluster": "int64",
        "class": "int64",
        "class_name": "object",
        "n_patches": "int64",
        "n_images": "int64",
        "attr_a": "float64",
        "attr_b": "float64",
        "diff": "float64",
    },
    "concepts": {
        "concept": "int64",
        "rank": "int64",
        "n_clusters": "int64",
        "clusters": "object",
        **_STATS,
        **_ALONE,
    },
    # each common slice's (one class, one outcome) per-group statistics, at each level
    "slice_stats": {"level": "object", "slice": "object", "cluster": "int64", **_STATS},
    "whatif": whatif_columns("cluster"),
    "whatif_images": whatif_image_columns("cluster"),
    "whatif_boxes": whatif_box_columns("cluster"),
    "concept_whatif": whatif_columns("concept"),
    "concept_whatif_images": whatif_image_columns("concept"),
    "concept_whatif_boxes": whatif_box_columns("concept"),
    # inside the networks (imacs.layers): concept -1 is every image
    "layer_agreement": {
        "role": "object",
        "depth": "int64",
        "layer": "object",
        "channels": "int64",
        "concept": "int64",
        "agree": "float64",
        "n_images": "int64",
        "agree_without": "float64",
        "n_without": "int64",
    },
    "layer_cka": {
        "concept": "int64",
        "layer_a": "object",
        "layer_b": "object",
        "depth_a": "int64",
        "depth_b": "int64",
        "cka": "float64",
        "n_images": "int64",
    },
    "layer_channels": {
        "concept": "int64",
        "role": "object",
        "layer": "object",
        "depth": "int64",
        "rank": "int64",
        "channel": "int64",
        "score": "float64",
        "share": "float64",
        "flip_top": "float64",
        "flip_random": "float64",
        "n_zeroed": "int64",
        "flip_top_k": "float64",
        "flip_random_k": "float64",
        "n_ablated": "int64",
        "top_patches": "object",
    },
}

#: the tables of the view inside the networks
LAYER_TABLES = ("layer_agreement", "layer_cka", "layer_channels")

#: the run's arrays (``.npy``, memory-mappable)
ARRAYS = ("embedding", *(f"{k}_{r}" for k in ("attr", "probs") for r in ROLES))

#: the what-if tables of each level
WHATIF_TABLES = {
    "cluster": ("whatif", "whatif_images", "whatif_boxes"),
    "concept": ("concept_whatif", "concept_whatif_images", "concept_whatif_boxes"),
}


def empty(name: str) -> pd.DataFrame:
    """An empty table ``name`` with its columns and types."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TABLES[name].items()})


def typed(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with table ``name``'s declared columns first, in their declared types."""
    spec = TABLES[name]
    frame = frame.astype({c: t for c, t in spec.items() if c in frame.columns})
    return frame[[c for c in spec if c in frame.columns] + [c for c in frame if c not in spec]]


def merge_whatif(table: pd.DataFrame, whatif: pd.DataFrame, key: str) -> pd.DataFrame:
    """A cluster or concept table (``key``) with its what-if columns (NaN where untested)."""
    cols = [c for c in whatif_columns(key) if c != key]
    base = table.drop(columns=[c for c in cols if c in table.columns])
    return base.merge(whatif[[key, *cols]], on=key, how="left")


@dataclass
class Manifest:
    """``run.json``, typed. Unknown keys of a newer writer are kept in ``extra``."""

    fingerprint: str
    created: str
    models: dict[str, dict[str, Any]]
    data: dict[str, Any]
    settings: dict[str, Any]
    files: dict[str, str]
    summary: dict[str, Any]
    command: str | None = None
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    trust: dict[str, Any] = field(default_factory=dict)
    whatif: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    #: tables this run lacks and how the reader makes them (filled by :func:`upgrade`)
    derived: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """The typed manifest of an up-to-date manifest dict (see :func:`upgrade`)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in d.items() if k in names},
            extra={k: v for k, v in d.items() if k not in names},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = out.pop("extra")
        if not out["derived"]:
            out.pop("derived")
        head = {"format": out.pop("format"), "format_version": out.pop("format_version")}
        return {**head, **out, **extra}

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def meta_columns(self) -> list[str]:
        return list(self.data.get("meta_columns", []))

    @property
    def names(self) -> dict[str, str]:
        return {r: self.models[r]["name"] for r in ROLES}


class FormatError(ValueError):
    """A manifest of another format, or of a version this reader cannot bring up to date."""


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """An older run's manifest brought up to this format version (in memory; the run on
    disk is left as it is). Tables the run lacks are listed in ``derived``: the reader
    makes them with :func:`derived`.

    Raises:
        FormatError: not a run manifest, or a version newer than this reader's.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError("not an imacs run manifest")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise FormatError(
            f"run format {version} is newer than this imacs reads ({FORMAT_VERSION}); upgrade imacs"
        )
    if not isinstance(version, int) or version < 1:
        raise FormatError(
            f"run format {version} is not one this imacs reads (1 to {FORMAT_VERSION}); "
            "re-run imacs analyze"
        )
    m = dict(manifest)
    if version == 1:
        m = _v1_to_v2(m)
    files = m.get("files") or {}
    boxes = {  # runs made before what-if kept its regions removed their patch boxes; runs
        name: "empty"  # made before the common slices or the layer view lack their tables
        for name in ("whatif_boxes", "concept_whatif_boxes", "slice_stats", *LAYER_TABLES)
        if name not in files and name not in m.get("derived", {})
    }
    if boxes:
        m["derived"] = {**m.get("derived", {}), **boxes}
    return m


def _v1_to_v2(m: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the clustering settings at the top of ``settings``, and runs made
    before the evidence stages or concepts lack their tables and manifest sections."""
    settings = dict(m.get("settings") or {})
    clustering = {k: settings.pop(k) for k in ("n_clusters", "projection") if k in settings}
    settings.setdefault("clustering", clustering)
    files = dict(m.get("files") or {})
    derived: dict[str, str] = {}
    for name in ("whatif", "whatif_images"):
        if name not in files:
            derived[name] = "empty"
    if "concepts" not in files:  # every cluster is its own concept
        derived |= {
            "concepts": "clusters",
            "concept_whatif": "whatif",
            "concept_whatif_images": "whatif_images",
        }
    for name in ("concept_whatif", "concept_whatif_images"):
        if name not in files and name not in derived:
            derived[name] = "empty"
    summary = dict(m.get("summary") or {})
    summary.setdefault("n_concepts", summary.get("n_clusters"))
    for k in ("map_spearman_median", "map_spearman_p10", "map_iou_top10_median"):
        summary.setdefault(k, None)
    m.update(settings=settings, files=files, summary=summary, format_version=2)
    m["derived"] = {**derived, **m.get("derived", {})}
    for key, default in (("warnings", []), ("trust", {}), ("whatif", {}), ("embedding", {})):
        if m.get(key) is None:
            m[key] = default
    return m


def upgrade_table(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """A table of an older run with the columns this version declares: the concept of a
    patch or cluster of a run made before concepts is its cluster, a patch's relative shares
    are computed from its absolute ones; other missing columns are missing values."""
    spec = TABLES.get(name, {})
    if name in ("patches", "clusters") and "concept" not in frame.columns:
        frame = frame.assign(concept=frame["cluster"])
    if name == "patches" and "attr_a_rel" not in frame.columns:  # runs before issue 10
        from .comparison import relative_shares

        frame = frame.assign(**relative_shares(frame))
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: pd.Series(pd.NA, index=frame.index) for c in missing})
    return frame


def derived(name: str, recipe: str, read: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """Table ``name`` of a run that lacks it, made by ``recipe`` from the tables ``read``
    returns (see :func:`upgrade`)."""
    if recipe == "empty":
        return empty(name)
    if name == "concepts" and recipe == "clusters":
        t = read("clusters").drop(columns="concept", errors="ignore")
        t = t.rename(columns={"cluster": "concept"})
        t.insert(2, "n_clusters", 1)
        t.insert(3, "clusters", t["concept"].astype(str))
        return t[[c for c in t.columns if not c.startswith("whatif_")]]
    if name.startswith("concept_") and recipe in ("whatif", "whatif_images"):
        return read(recipe).rename(columns={"cluster": "concept"})
    raise FormatError(f"no way to make table {name} from {recipe}")
