"""Reading a run directory (no torch import: the web app uses this module).

Layout of a run directory (format version 1)::

    run.json                 manifest: models, data, settings, versions, timings, skipped
                             inputs, summary metrics, and the files below
    images.parquet           one row per analysed image
    patches.parquet          one row per salient patch
    clusters.parquet         one row per cluster, sorted by rank
    cluster_classes.parquet  one row per (cluster, class)
    whatif.parquet           one row per cluster tested by what-if removal (imacs.whatif);
                             absent in runs made before it
    whatif_images.parquet    one row per (cluster, image) it tested: predictions after
    whatif_boxes.parquet     the regions it removed from each of those images, and the
                             random regions of its control
    concepts.parquet         one row per concept (clusters grouped by the models' answers,
                             imacs.concepts), sorted by rank; absent in runs made before it
    concept_whatif.parquet, concept_whatif_images.parquet, concept_whatif_boxes.parquet
                             what-if removal of the top concepts, as for clusters
    attr_a.npy, attr_b.npy   (images, H, W) float16 attribution maps, each image's map divided
                             by its largest absolute value (``attr_scale_a/b`` in images)
    probs_a.npy, probs_b.npy (images, classes) float32 class probabilities
    embedding.npy            (patches, k) float32 patch embeddings
    thumbs/images/ID.jpg     image thumbnails (longest side 256 px)
    thumbs/patches/ID.jpg    patch thumbnails (96 x 96 px)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .comparison import ComparisonSettings
from .errors import InputError, disk_error
from .store import FORMAT, FORMAT_VERSION, MANIFEST
from .whatif import empty_boxes, empty_images, empty_table, merge_into

_TABLES = ("images", "patches", "clusters", "cluster_classes")


class Run:
    """A finished analysis, read from its run directory.

    Tables are pandas DataFrames read on first use; arrays are memory-mapped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(
                f"{self.path}: not an imacs run (no {MANIFEST}); make one with imacs analyze"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{manifest_path}: unreadable run manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{manifest_path}: not an imacs run manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(
                f"{self.path}: run format {version} is not the supported format "
                f"{FORMAT_VERSION}; re-run imacs analyze with this version"
            )
        self.manifest: dict = manifest

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Run({str(self.path)!r}, {m['models']['a']['name']} vs {m['models']['b']['name']}, "
            f"{m['summary']['n_images']} images, {m['summary']['n_clusters']} clusters)"
        )

    def _table(self, name: str) -> pd.DataFrame:
        path = self.path / self.manifest["files"][name]
        try:
            return pd.read_parquet(path)
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the run; re-run imacs analyze") from None
        except Exception as exc:  # pyarrow raises its own types for truncated files
            raise InputError(
                f"{path}: unreadable ({type(exc).__name__}); re-run imacs analyze"
            ) from None

    @cached_property
    def images(self) -> pd.DataFrame:
        """One row per image: ``image_id, image, label, label_name, pred_a, pred_b, ...``,
        and the agreement of the two maps, ``map_spearman`` and ``map_iou_top10`` (absent
        in runs made before they existed)."""
        return self._table("images")

    @cached_property
    def patches(self) -> pd.DataFrame:
        """One row per patch: ``patch_id, image_id, x0, y0, x1, y1, attr_a, attr_b, cluster,
        concept...``, and what each model answers to the patch alone (``alone_a``,
        ``alone_a_prob``...: class index and probability). Runs made before concepts
        existed get ``concept`` = ``cluster``."""
        t = self._table("patches")
        if "concept" not in t.columns:
            t["concept"] = t["cluster"]
        return t

    @cached_property
    def clusters(self) -> pd.DataFrame:
        """One row per cluster, sorted by rank (1 = largest absolute ``diff``); relative
        reliance in ``attr_a_rel, attr_b_rel, diff_rel, diff_rel_lo, diff_rel_hi``, and the
        what-if columns of :attr:`whatif` (NaN for clusters it did not test)."""
        return merge_into(self._table("clusters"), self.whatif)

    @cached_property
    def concepts(self) -> pd.DataFrame:
        """One row per concept, sorted by rank (1 = largest absolute ``diff``): the clusters
        it groups (``n_clusters``; ``clusters``, their ids separated by spaces), the same
        statistics as :attr:`clusters`, what each model most often answers to its patches
        alone (``alone_a``, ``alone_a_share``, ``alone_b``, ``alone_b_share``) and its
        what-if columns. In a run made before concepts existed, every cluster is its own
        concept."""
        if "concepts" not in self.manifest["files"]:
            t = self.clusters.drop(columns="concept", errors="ignore")
            t = t.rename(columns={"cluster": "concept"})
            t.insert(2, "n_clusters", 1)
            t.insert(3, "clusters", t["concept"].astype(str))
            return t
        whatif = self.concept_whatif.rename(columns={"concept": "cluster"})
        table = merge_into(self._table("concepts").rename(columns={"concept": "cluster"}), whatif)
        return table.rename(columns={"cluster": "concept"})

    @cached_property
    def concept_whatif(self) -> pd.DataFrame:
        """As :attr:`whatif`, for the concepts it tested (``concept`` instead of
        ``cluster``); in a run made before concepts existed, the clusters' own."""
        if "concepts" not in self.manifest["files"]:
            return self.whatif.rename(columns={"cluster": "concept"})
        return self._optional("concept_whatif", empty_table).rename(columns={"cluster": "concept"})

    @cached_property
    def concept_whatif_images(self) -> pd.DataFrame:
        """As :attr:`whatif_images`, for concepts (``concept`` instead of ``cluster``)."""
        if "concepts" not in self.manifest["files"]:
            return self.whatif_images.rename(columns={"cluster": "concept"})
        t = self._optional("concept_whatif_images", empty_images)
        return t.rename(columns={"cluster": "concept"})

    @cached_property
    def concept_whatif_boxes(self) -> pd.DataFrame:
        """As :attr:`whatif_boxes`, for concepts (``concept`` instead of ``cluster``)."""
        if "concepts" not in self.manifest["files"]:
            return self.whatif_boxes.rename(columns={"cluster": "concept"})
        t = self._optional("concept_whatif_boxes", empty_boxes)
        return t.rename(columns={"cluster": "concept"})

    def _optional(self, name: str, empty: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """A concept table keyed ``cluster`` (the what-if helpers' key); ``empty()`` when
        the run has none."""
        if name not in self.manifest["files"]:
            return empty()
        return self._table(name).rename(columns={"concept": "cluster"})

    @cached_property
    def whatif(self) -> pd.DataFrame:
        """What-if removal, one row per tested cluster in rank order: ``cluster``,
        ``whatif_n_images``, per model (``_a``, ``_b``) ``whatif_flip_, whatif_drop_,
        whatif_acc_before_, whatif_acc_after_, whatif_control_flip_, whatif_control_drop_,
        whatif_p_``, and ``whatif_effect``, ``whatif_verdict`` (see :mod:`imacs.whatif`).
        Empty for a run made with ``--no-whatif`` or before the stage existed."""
        if "whatif" not in self.manifest["files"]:
            return empty_table()
        return self._table("whatif")

    @cached_property
    def whatif_images(self) -> pd.DataFrame:
        """Each image what-if removal tested, per cluster: ``cluster, image_id`` and each
        model's ``pred_a_after, prob_a_after, pred_b_after, prob_b_after`` (the predicted
        class, and the probability of the class it predicted before). Empty for runs
        without it."""
        if "whatif_images" not in self.manifest["files"]:
            return empty_images()
        return self._table("whatif_images")

    @cached_property
    def whatif_boxes(self) -> pd.DataFrame:
        """The regions what-if removal took out of each tested image, per cluster:
        ``cluster, image_id, control`` (False: the cluster's regions, True: the random
        regions of the control) and ``x0, y0, x1, y1`` in model-input pixels (a region is
        the union of its boxes). Empty for runs made before regions were kept (they
        removed the cluster's patch boxes)."""
        if "whatif_boxes" not in self.manifest["files"]:
            return empty_boxes()
        return self._table("whatif_boxes")

    @cached_property
    def cluster_classes(self) -> pd.DataFrame:
        """Per-cluster, per-class breakdown."""
        return self._table("cluster_classes")

    @property
    def trust(self) -> dict:
        """Per model (``"a"``, ``"b"``): deletion/insertion areas and mean curves against a
        random pixel order, infidelity, sensitivity, the convergence delta's distribution
        and a one-line ``reading`` (:mod:`imacs.trust`); also ``n_images``, ``steps`` and
        ``fractions``. Empty for runs made before it existed."""
        return dict(self.manifest.get("trust") or {})

    @property
    def warnings(self) -> list[str]:
        """The run's warnings (class order, maps no better than random...)."""
        return list(self.manifest.get("warnings", []))

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["data"]["classes"])

    @property
    def names(self) -> dict[str, str]:
        """Display names of the models: ``{"a": ..., "b": ...}``."""
        return {r: self.manifest["models"][r]["name"] for r in ("a", "b")}

    def comparison_settings(self) -> ComparisonSettings:
        """The comparison settings the run was computed with (to recompute its statistics
        on a subset of patches the same way)."""
        saved = dict(self.manifest.get("settings", {}).get("comparison", {}))
        known = {f.name for f in dataclasses.fields(ComparisonSettings)}
        return ComparisonSettings(**{k: v for k, v in saved.items() if k in known})

    def _array(self, name: str) -> np.ndarray:
        path = self.path / self.manifest["files"][name]
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the run; re-run imacs analyze") from None
        except ValueError as exc:
            raise InputError(f"{path}: unreadable ({exc}); re-run imacs analyze") from None

    def attribution_map(self, role: str, image_id: int) -> np.ndarray:
        """(H, W) float32 attribution map of model ``role`` ("a" or "b") for one image."""
        if role not in ("a", "b"):
            raise ValueError("role must be 'a' or 'b'")
        maps = self._array(f"attr_{role}")
        scale = float(
            self.images.loc[self.images["image_id"] == image_id, f"attr_scale_{role}"].iloc[0]
        )
        return np.asarray(maps[image_id], dtype=np.float32) * scale

    def probabilities(self, role: str) -> np.ndarray:
        """(images, classes) class probabilities of model ``role``."""
        return self._array(f"probs_{role}")

    @property
    def embedding(self) -> np.ndarray:
        return self._array("embedding")

    def image_path(self, image_id: int) -> Path:
        """The original image file (in the data folder the run was made from)."""
        rel = self.images.loc[self.images["image_id"] == image_id, "image"].iloc[0]
        return Path(self.manifest["data"]["root"]) / rel

    def image_thumbnail(self, image_id: int) -> Path:
        return self.path / "thumbs" / "images" / f"{int(image_id)}.jpg"

    def patch_thumbnail(self, patch_id: int) -> Path:
        return self.path / "thumbs" / "patches" / f"{int(patch_id)}.jpg"

    def patch_rows(self) -> pd.DataFrame:
        """Patches joined with their image's label, predictions, map agreement and
        meta-annotations (the patches CSV of ``imacs export``)."""
        img = self.images
        meta = list(self.manifest["data"].get("meta_columns", []))
        agree = [c for c in ("map_spearman", "map_iou_top10") if c in img.columns]
        cols = ["image_id", "image", "label_name", "pred_a", "pred_b", *agree, *meta]
        p = self.patches.merge(img[cols], on="image_id", how="left")
        classes = np.asarray(self.classes, dtype=object)
        p["pred_a"] = classes[p["pred_a"].to_numpy()]
        p["pred_b"] = classes[p["pred_b"].to_numpy()]
        p = p.rename(columns={"label_name": "label"})
        for r in ("a", "b"):  # what the model answers to the patch alone, by name
            col = f"alone_{r}"
            if col in p.columns:
                p[col] = classes[p[col].to_numpy()]
        front = ["patch_id", "image_id", "image", "label", "x0", "y0", "x1", "y1"]
        front += ["cluster", "concept", "attr_a", "attr_b", "diff"]
        return p[front + [c for c in p.columns if c not in front]]

    def export(
        self,
        patches_csv: str | Path | None = None,
        clusters_csv: str | Path | None = None,
        concepts_csv: str | Path | None = None,
    ) -> None:
        """Write the patch, cluster and/or concept tables as CSV."""
        for target, frame in (
            (patches_csv, self.patch_rows),
            (clusters_csv, lambda: self.clusters),
            (concepts_csv, lambda: self.concepts),
        ):
            if target is None:
                continue
            target = Path(target).expanduser()
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(safe_csv(frame()), encoding="utf-8")
            except OSError as exc:
                raise disk_error(exc, target) from None

    def summary(self) -> str:
        """A few lines for a terminal: accuracies and the top clusters."""
        m, s = self.manifest, self.manifest["summary"]
        a, b = self.names["a"], self.names["b"]
        lines = [
            f"run {self.path}",
            f"  {s['n_images']} images ({s['n_skipped']} skipped), {s['n_patches']} patches, "
            f"{s['n_clusters']} clusters",
            f"  accuracy: A {a} {s['accuracy_a']:.3f}  B {b} {s['accuracy_b']:.3f}  "
            f"agreement {s['agreement']:.3f}",
        ]
        if s.get("map_spearman_median") is not None:  # runs before issue 10 lack it
            iou = s.get("map_iou_top10_median")
            lines.append(
                f"  map agreement per image (median): Spearman {s['map_spearman_median']:.2f}, "
                f"top-10% IoU {'n/a' if iou is None else f'{iou:.2f}'} (1 = same pixels)"
            )
        emb = m.get("embedding") or {}
        if emb:
            lines.append(
                f"  embedding {emb['kind']}; {s.get('n_concepts', s['n_clusters'])} concepts "
                f"(clusters the models answer alike, distance < {emb['concept_distance']})"
            )
        lines.append("  top concepts (diff = B - A share of attribution):")
        for row in self.concepts.head(5).itertuples():
            n = int(row.n_clusters)
            lines.append(
                f"    #{row.rank} concept {row.concept}: diff {row.diff:+.3f} "
                f"[{row.diff_lo:+.3f}, {row.diff_hi:+.3f}]"
                f"{' significant' if getattr(row, 'significant', False) else ''}, "
                f"{row.n_patches} patches in {row.n_images} images, mostly {row.top_class}; "
                f"{n} cluster{'s' if n != 1 else ''} ({row.clusters})"
            )
            if isinstance(getattr(row, "alone_a", None), str):
                lines.append(
                    f"        alone, its patches make A say {row.alone_a} "
                    f"({row.alone_a_share:.0%}), B say {row.alone_b} ({row.alone_b_share:.0%})"
                )
            if isinstance(getattr(row, "whatif_verdict", None), str):
                lines.append(f"        what-if: {row.whatif_effect}: {row.whatif_verdict}")
        trust = self.trust  # runs before issue 10 have none
        for r in ("a", "b"):
            if trust.get(r, {}).get("reading"):
                lines.append(f"  trust ({trust['n_images']} images): {trust[r]['reading']}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        total = sum(m["timings"].values())
        lines.append(f"  computed in {total:.1f}s")
        return "\n".join(lines)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_csv(frame: pd.DataFrame) -> str:
    """CSV text in which no text cell can run as a spreadsheet formula: a text cell that
    starts with ``= + - @``, a tab or a carriage return gets a leading ``'``. Numeric
    columns are left alone (a negative number stays a number)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: f"'{v}" if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return out.to_csv(index=False)


def load_run(path: str | Path) -> Run:
    """Open a run directory written by ``imacs analyze``.

    Raises:
        InputError: the folder holds no run, or one of another format version.
    """
    return Run(path)
