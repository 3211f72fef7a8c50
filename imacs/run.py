"""Reading a run directory (no torch import: the web app uses this module).

The layout is :mod:`imacs.runformat`'s; a run of an older format version is brought up to
date as it is read (:func:`imacs.runformat.upgrade`), never rewritten.

Every file a run reads is checked to lie inside the run directory *after* symbolic links
are resolved (a manifest entry such as ``"../../x.parquet"`` or a ``thumbs`` folder that
links elsewhere is refused). A run pins the identity of what it read (the directory's and
the manifest's inode and modification time, :attr:`Run.identity`): :meth:`Run.snapshot`
reads every table and opens every array at once and checks that nothing was replaced
meanwhile, so a server never mixes two runs that were swapped under it.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import InputError, disk_error
from .runformat import (
    MANIFEST,
    ROLES,
    TABLES,
    WHATIF_TABLES,
    FormatError,
    Manifest,
    derived,
    merge_whatif,
    upgrade,
    upgrade_table,
)
from .settings import AnalysisSettings, ComparisonSettings

if TYPE_CHECKING:
    from .query import QueryEngine


class RunReplaced(InputError):
    """The run directory was replaced (or removed) on disk while it was being read."""


def identity(path: Path) -> tuple[int, ...] | None:
    """What changes when a run directory is replaced, by a new ``imacs analyze`` (which
    renames a new folder into place) or by copying over it: the folder's device and inode,
    and its manifest's inode, modification time (ns) and size. None if either is gone."""
    try:
        d = os.stat(path)
        m = os.stat(path / MANIFEST)
    except OSError:
        return None
    return (d.st_dev, d.st_ino, m.st_ino, m.st_mtime_ns, m.st_size)


def _check_entries(manifest_path: Path, files: dict[str, str]) -> None:
    """Every ``files`` entry is a plain relative path (no ``..``, not absolute, no NUL)."""
    for name, rel in files.items():
        bad = not isinstance(rel, str) or not rel or "\x00" in rel
        if not bad:
            parts = Path(rel).parts
            bad = Path(rel).is_absolute() or ".." in parts
        if bad:
            raise InputError(
                f"{manifest_path}: its {name} file ({rel!r}) is not a path inside the run; "
                "re-run imacs analyze"
            )


class Run:
    """A finished analysis, read from its run directory.

    Tables are pandas DataFrames read on first use (and kept); arrays are memory-mapped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(
                f"{self.path}: not an imacs run (no {MANIFEST}); make one with imacs analyze"
            )
        for _ in range(3):  # a manifest replaced while it is read is read again
            self.identity = identity(self.path)
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                if identity(self.path) != self.identity:
                    continue
                raise InputError(f"{manifest_path}: unreadable run manifest ({exc})") from None
            if identity(self.path) == self.identity:
                break
        else:
            raise RunReplaced(f"{self.path}: the run is being replaced; try again in a moment")
        try:
            self.manifest: dict = upgrade(manifest)
        except FormatError as exc:
            raise InputError(f"{manifest_path}: {exc}") from None
        self.info = Manifest.from_dict(self.manifest)
        _check_entries(manifest_path, self.info.files)
        self._tables: dict[str, pd.DataFrame] = {}
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def token(self) -> str:
        """A short id of the run as read (changes when the run is replaced); the web app
        puts it in file URLs so a page of a replaced run never gets the new run's files."""
        return hashlib.sha1(repr(self.identity).encode()).hexdigest()[:12]

    def current(self) -> bool:
        """Whether the directory still holds the run this object read."""
        return self.identity is not None and identity(self.path) == self.identity

    def inside(self, rel: str | Path) -> Path:
        """``rel`` under the run directory, symbolic links resolved; InputError if it
        leads outside the run (or names no path at all)."""
        try:
            target = (self.path / rel).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a link loop
            target = None
        if target is None or not target.is_relative_to(self.path):
            raise InputError(
                f"{self.path}: {str(rel)!r} leads outside the run (a link?); re-run imacs analyze"
            )
        return target

    def _file(self, name: str) -> Path:
        if name not in self.info.files:
            raise InputError(f"{self.path / MANIFEST}: lists no {name} file; re-run imacs analyze")
        return self.inside(self.info.files[name])

    def snapshot(self) -> Run:
        """Read every table and open every array now, and check that the directory still
        holds this run afterwards (RunReplaced if not): from then on the run answers from
        what it read, even if its directory is replaced or removed (memory-mapped arrays
        keep the files they opened). Returns the run itself."""
        try:
            for name in (*self.info.files, *self.info.derived):
                if name in TABLES:
                    self.table(name)
                elif name in self.info.files:
                    self._array(name)
            for prop in ("images", "patches", "clusters", "concepts"):
                getattr(self, prop)
        except Exception:  # half of one run and half of another reads as damaged
            if not self.current():
                raise RunReplaced(
                    f"{self.path}: the run was replaced while it was read; reload"
                ) from None
            raise
        if not self.current():
            raise RunReplaced(f"{self.path}: the run was replaced while it was read; reload")
        return self

    def __repr__(self) -> str:
        s = self.info.summary
        return (
            f"Run({str(self.path)!r}, {self.names['a']} vs {self.names['b']}, "
            f"{s['n_images']} images, {s['n_clusters']} clusters)"
        )

    def table(self, name: str) -> pd.DataFrame:
        """Table ``name`` of the run format as stored (brought up to date), without the
        what-if columns merged in. Read once and kept: treat it as read-only."""
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self._read_table(name)
        return table

    def _read_table(self, name: str) -> pd.DataFrame:
        recipe = self.info.derived.get(name)
        if recipe is not None:
            return derived(name, recipe, self.table)
        if name not in self.info.files:
            raise InputError(f"{self.path / MANIFEST}: lists no {name} table; re-run imacs analyze")
        path = self._file(name)
        try:
            return upgrade_table(name, pd.read_parquet(path))
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the run; re-run imacs analyze") from None
        except Exception as exc:  # pyarrow raises its own types for truncated files
            raise InputError(
                f"{path}: unreadable ({type(exc).__name__}); re-run imacs analyze"
            ) from None

    def current_file(self, name: str) -> Path | None:
        """Table ``name``'s Parquet file when it needs no upgrade (it holds every column
        this version declares), for readers that take Parquet directly; else None."""
        try:
            path = self._file(name)
            import pyarrow.parquet as pq

            columns = set(pq.read_schema(path).names)
        except Exception:  # not listed, missing, unreadable: the table's reader says why
            return None
        needed = set(TABLES.get(name, {}))
        if name == "patches":
            needed |= {"concept", "attr_a_rel", "attr_b_rel"}
        return path if needed <= columns else None

    @cached_property
    def images(self) -> pd.DataFrame:
        """One row per image: ``image_id, image, label, label_name, pred_a, pred_b, ...``,
        and the agreement of the two maps, ``map_spearman`` and ``map_iou_top10``."""
        return self.table("images")

    @cached_property
    def patches(self) -> pd.DataFrame:
        """One row per patch: ``patch_id, image_id, x0, y0, x1, y1, attr_a, attr_b, cluster,
        concept...``, and what each model answers to the patch alone (``alone_a``,
        ``alone_a_prob``...: class index and probability)."""
        return self.table("patches")

    @cached_property
    def clusters(self) -> pd.DataFrame:
        """One row per cluster, sorted by rank (1 = largest absolute ``diff``); relative
        reliance in ``attr_a_rel, attr_b_rel, diff_rel, diff_rel_lo, diff_rel_hi``, and the
        what-if columns of :attr:`whatif` (NaN for clusters it did not test)."""
        return merge_whatif(self.table("clusters"), self.whatif, "cluster")

    @cached_property
    def concepts(self) -> pd.DataFrame:
        """One row per concept, sorted by rank (1 = largest absolute ``diff``): the clusters
        it groups (``n_clusters``; ``clusters``, their ids separated by spaces), the same
        statistics as :attr:`clusters`, what each model most often answers to its patches
        alone (``alone_a``, ``alone_a_share``, ``alone_b``, ``alone_b_share``) and its
        what-if columns. In a run made before concepts existed, every cluster is its own
        concept."""
        return merge_whatif(self.table("concepts"), self.concept_whatif, "concept")

    def level(self, level: str) -> pd.DataFrame:
        """:attr:`clusters` or :attr:`concepts` (``level`` is ``cluster`` or ``concept``)."""
        return self.clusters if level == "cluster" else self.concepts

    def whatif_of(self, level: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """The what-if table, its images table and its boxes table at ``level`` (keyed
        ``level``)."""
        return tuple(self.table(name) for name in WHATIF_TABLES[level])  # type: ignore[return-value]

    @cached_property
    def whatif(self) -> pd.DataFrame:
        """What-if removal, one row per tested cluster in rank order: ``cluster``,
        ``whatif_n_images``, per model (``_a``, ``_b``) ``whatif_flip_, whatif_drop_,
        whatif_acc_before_, whatif_acc_after_, whatif_control_flip_, whatif_control_drop_,
        whatif_p_``, and ``whatif_effect``, ``whatif_verdict`` (see :mod:`imacs.whatif`).
        Empty for a run made with ``--no-whatif`` or before the stage existed."""
        return self.table("whatif")

    @cached_property
    def whatif_images(self) -> pd.DataFrame:
        """Each image what-if removal tested, per cluster: ``cluster, image_id`` and each
        model's ``pred_a_after, prob_a_after, pred_b_after, prob_b_after`` (the predicted
        class, and the probability of the class it predicted before)."""
        return self.table("whatif_images")

    @cached_property
    def concept_whatif(self) -> pd.DataFrame:
        """As :attr:`whatif`, for the concepts it tested (keyed ``concept``)."""
        return self.table("concept_whatif")

    @cached_property
    def concept_whatif_images(self) -> pd.DataFrame:
        """As :attr:`whatif_images`, for concepts (keyed ``concept``)."""
        return self.table("concept_whatif_images")

    @cached_property
    def whatif_boxes(self) -> pd.DataFrame:
        """The regions what-if removal took out of each tested image, per cluster:
        ``cluster, image_id, control`` (False: the cluster's regions, True: the random
        regions of the control) and ``x0, y0, x1, y1`` in model-input pixels (a region is
        the union of its boxes). Empty for runs made before it kept them (they removed the
        cluster's patch boxes)."""
        return self.table("whatif_boxes")

    @cached_property
    def concept_whatif_boxes(self) -> pd.DataFrame:
        """As :attr:`whatif_boxes`, for concepts (keyed ``concept``)."""
        return self.table("concept_whatif_boxes")

    @cached_property
    def layer_agreement(self) -> pd.DataFrame:
        """Inside the networks (:mod:`imacs.layers`): per model (``role``), layer (``depth``
        1.., ``layer``; the last depth is the model's ``output``) and top ``concept`` (-1:
        every image), how often a cross-fitted linear probe on the layer's pooled
        activations agrees with the model's final answer on the concept's images
        (``agree``, ``n_images``) and on the others (``agree_without``, ``n_without``).
        Empty for a model that takes no hooks (``layers`` in the manifest says why), a run
        made with ``--no-layers`` or before the stage existed."""
        return self.table("layer_agreement")

    @cached_property
    def layer_cka(self) -> pd.DataFrame:
        """Debiased linear CKA of every layer of A (``layer_a``, ``depth_a``) with every
        layer of B (about 0 for unrelated representations, even on few images),
        on every image (``concept`` -1) and on each top concept's images."""
        return self.table("layer_cka")

    @cached_property
    def layer_channels(self) -> pd.DataFrame:
        """Each top concept's top channels in each model's last two layers looked at
        (``rank``, ``channel``, ``score``: mean attribution inside the concept's boxes,
        ``share`` of its positive total), the ablation check (``flip_top``,
        ``flip_random``: zeroing the top channels or as many random ones; ``n_zeroed``,
        ``flip_top_k``, ``flip_random_k``: the same with the top ``n_zeroed``, the first
        count that flips half the images) and ``top_patches``, the ids of the patches that
        activate the channel most."""
        return self.table("layer_channels")

    def inside_sentence(self, concept: int) -> str:
        """Inside the networks for one concept, in a sentence (empty when not computed)."""
        from .layers import concept_sentence

        return concept_sentence(
            self.layer_agreement, self.layer_channels, concept, self.settings.layers.decided
        )

    @cached_property
    def cluster_classes(self) -> pd.DataFrame:
        """Per-cluster, per-class breakdown."""
        return self.table("cluster_classes")

    @property
    def trust(self) -> dict:
        """Per model (``"a"``, ``"b"``): deletion/insertion areas and mean curves against a
        random pixel order, infidelity, sensitivity, the convergence delta's distribution
        and a one-line ``reading`` (:mod:`imacs.trust`); also ``n_images``, ``steps`` and
        ``fractions``. Empty for runs made before it existed."""
        return dict(self.info.trust)

    @property
    def warnings(self) -> list[str]:
        """The run's warnings (class order, maps no better than random...)."""
        return list(self.info.warnings)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def names(self) -> dict[str, str]:
        """Display names of the models: ``{"a": ..., "b": ...}``."""
        return self.info.names

    @cached_property
    def settings(self) -> AnalysisSettings:
        """The settings the run was computed with."""
        return AnalysisSettings.from_dict(self.info.settings)

    @property
    def bar(self) -> float:
        """The difference a cluster's interval must clear to be significant (0 in runs
        made before it existed)."""
        return self.settings.comparison.bar if "min_effect" in self._comparison_dict else 0.0

    @property
    def _comparison_dict(self) -> dict:
        return dict(self.info.settings.get("comparison") or {})

    def bar_sentence(self) -> str:
        """One line: what "significant" means in this run."""
        if "min_effect" not in self._comparison_dict:
            return "significant: the difference is not 0 (family-wise, 5 %)"
        cs = self.settings.comparison
        why = f"--min-effect {cs.min_effect:.3f}"
        if cs.reference_bar > cs.min_effect:
            why = (
                f"what the reference pair surely differs by, {cs.reference_bar:.3f}: "
                f"run {self.path.name}-reference"
            )
        return f"significant: the whole {cs.ci:.0%} interval beyond ±{cs.bar:.3f} ({why})"

    def comparison_settings(self) -> ComparisonSettings:
        """The comparison settings the run was computed with (to recompute its statistics
        on a subset of patches the same way)."""
        return self.settings.comparison

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._open_array(name)
        return arr

    def _open_array(self, name: str) -> np.ndarray:
        path = self._file(name)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the run; re-run imacs analyze") from None
        except ValueError as exc:
            raise InputError(f"{path}: unreadable ({exc}); re-run imacs analyze") from None

    def attribution_map(self, role: str, image_id: int) -> np.ndarray:
        """(H, W) float32 attribution map of model ``role`` ("a" or "b") for one image."""
        if role not in ROLES:
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
        return Path(self.info.data["root"]) / rel

    def image_thumbnail(self, image_id: int) -> Path:
        """The image's thumbnail (InputError if the ``thumbs`` folder leads outside)."""
        return self.inside(f"thumbs/images/{int(image_id)}.jpg")

    def patch_thumbnail(self, patch_id: int) -> Path:
        """The patch's thumbnail (InputError if the ``thumbs`` folder leads outside)."""
        return self.inside(f"thumbs/patches/{int(patch_id)}.jpg")

    def patch_rows(self) -> pd.DataFrame:
        """Patches joined with their image's label, predictions, map agreement and
        meta-annotations (the patches CSV of ``imacs export``)."""
        img = self.images
        meta = self.info.meta_columns
        agree = [c for c in ("map_spearman", "map_iou_top10") if c in img.columns]
        cols = ["image_id", "image", "label_name", "pred_a", "pred_b", *agree, *meta]
        p = self.patches.merge(img[cols], on="image_id", how="left")
        classes = np.asarray(self.classes, dtype=object)
        p["pred_a"] = classes[p["pred_a"].to_numpy()]
        p["pred_b"] = classes[p["pred_b"].to_numpy()]
        p = p.rename(columns={"label_name": "label"})
        for r in ROLES:  # what the model answers to the patch alone, by name
            col = f"alone_{r}"
            if col in p.columns:  # missing (NA) in runs made before it was computed
                known = p[col].notna().to_numpy()
                names = np.full(len(p), None, dtype=object)
                names[known] = classes[p.loc[known, col].to_numpy(np.int64)]
                p[col] = names
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

    @cached_property
    def query_engine(self) -> QueryEngine:
        """The run's tables as read-only SQL views (:mod:`imacs.query`), built on first use."""
        from .query import QueryEngine

        return QueryEngine(self)

    def query(self, sql: str) -> pd.DataFrame:
        """The result of one read-only SQL ``SELECT`` over the run's views (``images``,
        ``patches``, ``clusters``, ``concepts``, ``whatif_images``, ``meta``) and helpers
        (``images_with(k)``...; see :mod:`imacs.query`).

        Raises:
            QueryError: not one SELECT, wrong SQL, or slower than the time limit (10 s).
        """
        return self.query_engine.query(sql)

    def compare_slices(
        self, x: str, y: str, level: str = "concept", by: str = "either", measure: str = "share"
    ) -> pd.DataFrame:
        """How each model's reliance on each group changes from slice ``x`` to slice ``y``
        (see :mod:`imacs.shift`): e.g. ``run.compare_slices("season=autumn",
        "season=summer")``.

        Args:
            x (str): slice X: one SELECT returning ``image_id`` or ``patch_id`` (see
                :meth:`query`), ``column=value`` (the images whose meta-annotation or
                ``images`` column reads ``value``), or "" (every image).
            y (str): slice Y, the same way.
            level (str): ``concept`` or ``cluster``. Default: "concept"
            by (str): the ranking, one of :data:`imacs.shift.RANK_BY`. Default: "either"
            measure (str): ``share`` or ``relative``. Default: "share"

        Returns:
            One row per group (keyed ``level``), ranked: each model's reliance in X and Y,
            the changes and ``B - A`` within each slice, with simultaneous intervals.

        Raises:
            QueryError: a slice's query fails or returns no image_id or patch_id column.
            InputError: a slice holds no patch, or an unknown level, ranking or measure.
        """
        from .query import QueryError, run_slice
        from .shift import compare_slices, reliance

        if level not in ("concept", "cluster"):
            raise InputError(f"level {level!r}: choose concept or cluster")
        masks = []
        for name, text in (("X", x), ("Y", y)):
            sl = run_slice(self, text)
            if not sl.slices:
                why = sl.message or "the query returns no image_id or patch_id column"
                raise QueryError(f"slice {name}: {why}")
            masks.append(sl.patch_mask(self.patches))
        p = reliance(self.patches, level, measure)
        table = compare_slices(p, masks[0], masks[1], self.comparison_settings(), by)
        return table.rename(columns={"cluster": level})

    def _inside_lines(self) -> list[str]:
        """The run-level lines of the view inside the networks: each model's layers and
        where its probe reaches the decided share, CKA of the two models' last layers, and
        why a model's part is absent."""
        info = self.info.layers or {}
        lines = []
        ag = self.layer_agreement
        from .layers import decided_words

        if info.get("enabled") is False:
            return ["  inside the models: not looked at (made with --no-layers)"]
        for r in ROLES:
            names = (info.get("layers") or {}).get(r)
            if names and not ag.empty:
                d = decided_words(ag, r, -1, "agree", self.settings.layers.decided)
                lines.append(
                    f"  inside {r.upper()}: layers {', '.join(names)}; its probes agree with "
                    f"its answer on {self.settings.layers.decided:.0%} of the images from {d}"
                )
        cka = self.layer_cka
        every = cka[cka["concept"] == -1]
        if len(every):
            last = every[(every["depth_a"] == every["depth_a"].max())
                         & (every["depth_b"] == every["depth_b"].max())]  # fmt: skip
            lines.append(
                f"  CKA of A's and B's last layers: {float(last['cka'].iloc[0]):.2f} "
                "(1 = the same representation up to rotation and scale)"
            )
        for why in (info.get("absent") or {}).values():
            lines.append(f"  inside: {why}")
        return lines

    def summary(self) -> str:
        """A few lines for a terminal: accuracies and the top clusters."""
        s = self.info.summary
        a, b = self.names["a"], self.names["b"]
        lines = [
            f"run {self.path}",
            f"  {s['n_images']} images ({s['n_skipped']} skipped), {s['n_patches']} patches, "
            f"{s['n_clusters']} clusters",
            *_skipped_lines(self.info.skipped),
            f"  maps: {self.settings.attribution.describe()}",
            f"  accuracy: A {a} {s['accuracy_a']:.3f}  B {b} {s['accuracy_b']:.3f}  "
            f"agreement {s['agreement']:.3f}",
        ]
        if s.get("map_spearman_median") is not None:  # runs before issue 10 lack it
            iou = s.get("map_iou_top10_median")
            lines.append(
                f"  map agreement per image (median): Spearman {s['map_spearman_median']:.2f}, "
                f"top-10% IoU {'n/a' if iou is None else f'{iou:.2f}'} (1 = same pixels)"
            )
        emb = self.info.embedding
        if emb:
            lines.append(
                f"  embedding {emb['kind']}; {s['n_concepts']} concepts (clusters the models "
                f"answer alike, distance < {self.settings.concepts.distance})"
            )
        lines.append("  top concepts (diff = B - A share of attribution):")
        lines.append(f"  {self.bar_sentence()}")
        for row in self.concepts.head(5).itertuples():
            n = int(row.n_clusters)
            lines.append(
                f"    #{row.rank} concept {row.concept}: diff {row.diff:+.3f} "
                f"[{row.diff_lo:+.3f}, {row.diff_hi:+.3f}]{_verdict(row, self.bar)}, "
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
            inside = self.inside_sentence(int(row.concept))
            if inside:
                lines.append(f"        inside: {inside}")
        lines += self._inside_lines()
        trust = self.trust  # runs before issue 10 have none
        for r in ROLES:
            if trust.get(r, {}).get("reading"):
                lines.append(f"  trust ({trust['n_images']} images): {trust[r]['reading']}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        total = sum(self.info.timings.values())
        when = self.info.created.replace("T", " ")[:16]
        lines.append(f"  computed {when} UTC in {total:.1f}s")
        return "\n".join(lines)


def _skipped_lines(skipped: list[dict[str, str]], show: int = 5) -> list[str]:
    """The skipped inputs, one line each (the first ``show``; ``imacs export`` and
    ``run.json`` list them all)."""
    lines = [f"    skipped {s.get('path', '?')}: {s.get('reason', '?')}" for s in skipped[:show]]
    if len(skipped) > show:
        lines.append(f"    ... and {len(skipped) - show} more (run.json lists them all)")
    return lines


def _verdict(row: object, bar: float) -> str:
    """`` significant``, `` within ±BAR`` (real but not beyond the bar) or nothing."""
    if getattr(row, "significant", False) is True:
        return " significant"
    if getattr(row, "within_bar", False) is True:
        return f" real but within ±{bar:.3f}"
    return ""


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
