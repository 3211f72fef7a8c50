"""The dashboard's data: a loaded run (:class:`RunView`) and what the filters derive from it.

A view has a *level*: ``concept`` (clusters grouped by the models' answers, the default) or
``cluster``. At either level the view speaks of its groups as "clusters" to the components
(``patches["cluster"]`` is the patch's group at the view's level, :meth:`RunView.clusters`
the groups' table keyed ``cluster``), so every component works at both levels and only
words change (:attr:`RunView.unit`). :meth:`RunView.at` gives the same run at the other
level.

Runs come from :class:`imacs_app.catalog.RunCatalog`, which reads run directories written by
``imacs analyze`` (through :mod:`imacs.run`, which never imports torch); nothing here writes
to a run. Components only render what a view returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

import numpy as np
import pandas as pd

from imacs.comparison import compare_clusters
from imacs.query import QueryError, Slice, run_slice
from imacs.run import Run
from imacs.runformat import merge_whatif
from imacs.shift import compare_slices, reliance
from imacs.slices import outcomes, slice_input, slice_key

#: the levels a view ranks: concepts (clusters grouped) or plain clusters
LEVELS = ("concept", "cluster")

#: meta columns with more distinct values than this are not offered as filters
MAX_META_VALUES = 50
#: representative thumbnails shown per cluster in the ranking
STRIP = 8

T = TypeVar("T")
#: results memoised per view, (name, filters) pairs in all (see :meth:`RunView._memoised`)
MEMO_KEPT = 48
#: filtered patch tables kept per view (each a copy of the selected rows)
FRAMES_KEPT = 4


@dataclass(frozen=True)
class Filters:
    """What the user filtered on; empty means everything."""

    classes: tuple[str, ...] = ()
    outcome: str | None = None
    meta: tuple[tuple[str, str], ...] = ()  # (column, value) pairs
    query: str = ""  # SQL over the run (imacs.query): the images or patches it returns

    @property
    def active(self) -> bool:
        return bool(self.classes or self.outcome or self.meta or self.query)


#: what a query makes of a view (the name the components know)
QuerySlice = Slice


@dataclass(frozen=True)
class Inside:
    """The view inside the models (:mod:`imacs.layers`) of one concept, or of every image
    (``concept`` -1): the rows of the run's three tables that belong to it.

    Attributes:
        concept (int): the concept (-1: every image).
        agreement (DataFrame): its rows of ``layer_agreement``, by role and depth.
        cka (DataFrame): its rows of ``layer_cka``, by A's depth then B's.
        channels (DataFrame): its rows of ``layer_channels``, by role, depth and rank.
        layers (dict): each model's layers looked at, by role ("a", "b").
        absent (dict): why a model's part is absent, by role (a model without hooks).
        decided (float): the share of agreement at which a depth has decided.
        top (int): the concepts ranked 1..top were looked at.
        made (bool): the run has the stage's tables, or says why a part is absent (False:
            made before the stage, or with ``--no-layers``).
    """

    concept: int
    agreement: pd.DataFrame
    cka: pd.DataFrame
    channels: pd.DataFrame
    layers: dict[str, list[str]]
    absent: dict[str, str]
    decided: float
    top: int
    made: bool

    @property
    def looked_at(self) -> bool:
        """Whether the stage looked at this concept (every image always is, if made)."""
        return not self.agreement.empty


@dataclass
class RunView:
    """A loaded run plus the derived tables the dashboard needs."""

    run_id: str
    run: Run
    level: str = "cluster"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _memo: dict[tuple[str, Filters], object] = field(default_factory=dict, repr=False)
    _levels: dict[str, RunView] = field(default_factory=dict, repr=False)

    def at(self, level: str) -> RunView:
        """This run at ``level`` (``concept`` or ``cluster``); one view per level, kept, so
        each level's memoised tables last."""
        if level == self.level:
            return self
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}")
        with self._lock:
            view = self._levels.get(level)
            if view is None:
                view = RunView(self.run_id, self.run, level, _levels=self._levels)
                self._levels[self.level] = self
                self._levels[level] = view
        return view

    @property
    def unit(self) -> str:
        """What a group is called at this level: ``concept`` or ``cluster``."""
        return self.level

    @cached_property
    def groups(self) -> pd.DataFrame:
        """The stored table of this level's groups, keyed ``cluster`` (what-if merged)."""
        if self.level == "concept":
            return self.run.concepts.rename(columns={"concept": "cluster"})
        return self.run.clusters

    @property
    def whatif(self) -> pd.DataFrame:
        """What-if removal of this level's groups, keyed ``cluster``."""
        if self.level == "concept":
            return self.run.concept_whatif.rename(columns={"concept": "cluster"})
        return self.run.whatif

    @property
    def whatif_images(self) -> pd.DataFrame:
        """Each image what-if removal tested, per group of this level (keyed ``cluster``)."""
        if self.level == "concept":
            return self.run.concept_whatif_images.rename(columns={"concept": "cluster"})
        return self.run.whatif_images

    @cached_property
    def images(self) -> pd.DataFrame:
        img = self.run.images.copy()
        img["outcome"] = outcomes(img)
        return img.set_index("image_id", drop=False)

    @cached_property
    def patches(self) -> pd.DataFrame:
        """The patches with their image's label, outcome and meta-annotations; ``cluster``
        is the patch's group at this level (``cluster_id`` its cluster, ``concept_id`` its
        concept, whatever the level)."""
        p = self.run.patches.assign(
            cluster_id=lambda t: t["cluster"], concept_id=lambda t: t["concept"]
        )
        if self.level == "concept":
            p["cluster"] = p["concept_id"]
        img = self.images
        cols = ["label_name", "outcome", *self.meta_columns]
        joined = p.join(img[cols], on="image_id")
        return joined

    @cached_property
    def meta_columns(self) -> list[str]:
        return self.run.info.meta_columns

    @cached_property
    def meta_options(self) -> list[tuple[str, str]]:
        """(column, value) pairs offered as filters (columns with few distinct values)."""
        out = []
        for c in self.meta_columns:
            values = self.run.images[c].dropna().unique()
            if len(values) <= MAX_META_VALUES:
                out.extend((c, str(v)) for v in sorted(values, key=str))
        return out

    @cached_property
    def _nearest_first(self) -> np.ndarray:
        """Row positions of the patch table sorted by group, then by distance to their
        cluster's centre in the embedding (the embedding's rows are the table's rows). A
        concept's patches take turns between its clusters (each cluster's nearest, then
        each one's second nearest...), so its strip shows every look it groups."""
        emb = np.asarray(self.run.embedding, dtype=np.float32)
        clusters = self.patches["cluster_id"].to_numpy()
        dist = np.zeros(len(clusters), dtype=np.float64)
        turn = np.zeros(len(clusters), dtype=np.int64)
        for c in np.unique(clusters):
            idx = np.flatnonzero(clusters == c)
            centre = emb[idx].mean(axis=0)
            dist[idx] = ((emb[idx] - centre) ** 2).sum(axis=1)
            turn[idx[np.argsort(dist[idx], kind="stable")]] = np.arange(len(idx))
        groups = self.patches["cluster"].to_numpy()
        ids = self.patches["patch_id"].to_numpy()
        if self.level == "cluster":
            return np.lexsort((ids, dist, groups))
        return np.lexsort((ids, dist, turn, groups))

    def representatives(self, f: Filters) -> dict[int, list[int]]:
        """Up to :data:`STRIP` patch ids per cluster among the filtered patches, nearest the
        cluster's centre first."""
        return self._memoised("representatives", f, self._representatives)

    def _representatives(self, f: Filters) -> dict[int, list[int]]:
        order = self._nearest_first
        if f.active:
            keep = self.patches["image_id"].isin(self.images.index[self.image_mask(f)])
            order = order[keep.to_numpy()[order]]
        labels = self.patches["cluster"].to_numpy()[order]
        ids = self.patches["patch_id"].to_numpy()[order]
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        return {int(labels[a]): ids[a : a + STRIP].astype(int).tolist() for a in starts.tolist()}

    def summary(self, f: Filters) -> dict[str, float | int]:
        """Accuracy, agreement and counts over the images that pass the filters.

        Keys: ``n_images`` (kept), ``n_images_total``, ``accuracy_a``, ``accuracy_b``,
        ``agreement`` (NaN when no image is kept), ``n_patches``, ``n_patches_total``,
        ``n_clusters`` (clusters with a kept patch), ``n_clusters_total``, ``n_skipped``.
        """
        img = self.images[self.image_mask(f)]
        p = self.filtered_patches(f)
        summ = self.run.info.summary
        n = len(img)

        def rate(values: pd.Series) -> float:
            return float(values.mean()) if n else float("nan")

        return {
            "n_images": n,
            "n_images_total": len(self.images),
            "accuracy_a": rate(img["correct_a"]),
            "accuracy_b": rate(img["correct_b"]),
            "agreement": rate(img["pred_a"] == img["pred_b"]),
            "n_patches": len(p),
            "n_patches_total": len(self.patches),
            "n_clusters": int(p["cluster"].nunique()),
            "n_clusters_total": len(self.groups),
            "n_skipped": int(summ["n_skipped"]),
        }

    @cached_property
    def _traits(self) -> pd.DataFrame:
        """Per image, the columns a cluster is broken down by, as categories of text: the
        meta-annotation columns, what each model predicts, and the class (in this order: a
        tie between columns goes to the first)."""
        img = self.images
        classes = np.asarray(self.run.classes, dtype=object)
        out = pd.DataFrame(index=img.index)
        for c in self.meta_columns:
            out[c] = img[c].astype(str).where(img[c].notna(), "(none)")
        out["A predicts"] = classes[img["pred_a"].to_numpy()]
        out["B predicts"] = classes[img["pred_b"].to_numpy()]
        out["class"] = img["label_name"].astype(str)
        return out.astype("category")

    @property
    def _column_order(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self._traits.columns)}

    def cluster_breakdown(self, f: Filters, cluster: int | None = None) -> pd.DataFrame:
        """What the clusters' images have in common, against all filtered images.

        One row per cluster, column (each meta-annotation column, ``A predicts``,
        ``B predicts`` and ``class``) and value held by at least one of the cluster's
        images: ``cluster, column, value, n_images`` (the cluster's images with this
        value), ``share`` (of the cluster's images) and ``overall`` (share of all filtered
        images). Rows are sorted by cluster, column, then ``share``, largest first.
        ``cluster`` limits the table to one cluster.
        """
        p = self.filtered_patches(f)
        if cluster is not None:
            p = p[p["cluster"] == cluster]
        pairs = p[["cluster", "image_id"]].drop_duplicates()
        at = self.images.index.get_indexer(pairs["image_id"])
        found, which = np.unique(pairs["cluster"].to_numpy(), return_inverse=True)
        per_cluster = np.bincount(which, minlength=len(found))
        kept = self.image_mask(f)
        frames = []
        for col in self._traits.columns:
            values = self._traits[col].cat
            codes, k = values.codes.to_numpy(), len(values.categories)
            counts = np.bincount(which * k + codes[at], minlength=len(found) * k)
            counts = counts.reshape(len(found), k)
            overall = np.bincount(codes[kept], minlength=k) / max(int(kept.sum()), 1)
            ci, vi = np.nonzero(counts)
            frames.append(
                pd.DataFrame(
                    {
                        "cluster": found[ci],
                        "column": col,
                        "value": np.asarray(values.categories, dtype=object)[vi],
                        "n_images": counts[ci, vi],
                        "share": counts[ci, vi] / per_cluster[ci],
                        "overall": overall[vi],
                    }
                )
            )
        out = pd.concat(frames, ignore_index=True)
        out["_col"] = out["column"].map(self._column_order)
        out = out.sort_values(
            ["cluster", "_col", "share", "value"], ascending=[True, True, False, True]
        )
        return out.drop(columns="_col").reset_index(drop=True)

    def cluster_traits(self, f: Filters) -> pd.DataFrame:
        """Per cluster, the one value of :meth:`cluster_breakdown` that sets it apart most:
        held by at least half of its images and the furthest above its overall share
        (``excess = share - overall``, at least 0.1). Indexed by cluster; a cluster where
        nothing stands out is absent."""
        return self._memoised("traits", f, self._cluster_traits)

    def _cluster_traits(self, f: Filters) -> pd.DataFrame:
        b = self.cluster_breakdown(f)
        b = b.assign(excess=b["share"] - b["overall"], _col=b["column"].map(self._column_order))
        b = b[(b["share"] >= 0.5) & (b["excess"] >= 0.1)]
        b = b.sort_values(
            ["cluster", "excess", "share", "_col"], ascending=[True, False, False, True]
        )
        return b.groupby("cluster").head(1).drop(columns="_col").set_index("cluster")

    def query_slice(self, sql: str) -> QuerySlice:
        """What ``sql`` (one SELECT over :mod:`imacs.query`'s views, or ``column=value``)
        makes of this run, memoised per level (both levels query the run's one engine)."""
        key = ("query", Filters(query=sql))
        with self._lock:
            hit = self._memo.get(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        out = run_slice(self.run, sql)
        with self._lock:
            self._memo[key] = out
        return out

    def image_mask(self, f: Filters) -> np.ndarray:
        img = self.images
        mask = np.ones(len(img), dtype=bool)
        if f.query:
            sl = self.query_slice(f.query)
            if sl.slices:
                mask &= img.index.isin(sl.images)
        if f.classes:
            mask &= img["label_name"].isin(f.classes).to_numpy()
        if f.outcome:
            mask &= (img["outcome"] == f.outcome).to_numpy()
        by_col: dict[str, list[str]] = {}
        for col, val in f.meta:
            if col in self.meta_columns:
                by_col.setdefault(col, []).append(val)
        for col, vals in by_col.items():  # OR within a column, AND across columns
            mask &= img[col].astype(str).isin(vals).to_numpy()
        return mask

    def patch_mask(self, f: Filters) -> np.ndarray:
        """Bool per row of :attr:`patches` (and of the run's patches, in the same order):
        the patch passes the filters (its image does; for a patch slice, it is in it).
        Memoised per filter and read-only: every callback of an interaction asks for it."""
        if not f.active:
            return np.ones(len(self.patches), dtype=bool)
        return self._memoised("patch_mask", f, self._patch_mask)

    def _patch_mask(self, f: Filters) -> np.ndarray:
        p = self.patches
        keep = self.images.index[self.image_mask(f)]
        mask = p["image_id"].isin(keep).to_numpy(copy=True)
        if f.query:
            sl = self.query_slice(f.query)
            if sl.kind == "patches":
                mask &= sl.patch_mask(p)
        mask.flags.writeable = False
        return mask

    def _kept(self, patches: pd.DataFrame, f: Filters) -> pd.DataFrame:
        """The rows of ``patches`` (the run's patches, in their order) that pass the
        filters."""
        return patches if not f.active else patches[self.patch_mask(f)]

    def filtered_patches(self, f: Filters) -> pd.DataFrame:
        """The patches that pass the filters: memoised for the last few filters (at a
        million patches one selection takes 30 ms, and an interaction's callbacks ask for
        the same one four or five times). Read it, do not change it."""
        if not f.active:
            return self.patches
        return self._memoised("patches", f, self._filtered_patches, keep=FRAMES_KEPT)

    def _filtered_patches(self, f: Filters) -> pd.DataFrame:
        return self._kept(self.patches, f)

    def clusters(self, f: Filters) -> pd.DataFrame:
        """Per-cluster statistics over the filtered images (the stored table when unfiltered).

        Filtered tables are memoised (a few per run): the ranking and the cluster detail ask
        for the same one, and the bootstrap is the slowest step of the dashboard.
        """
        if not f.active:
            return self.groups
        return self._memoised("clusters", f, self._filtered_clusters)

    def _memoised(
        self, name: str, f: Filters, compute: Callable[[Filters], T], keep: int = MEMO_KEPT
    ) -> T:
        """``compute(f)``, kept for the last few (name, filters) asked for: at most
        :data:`MEMO_KEPT` in all, and ``keep`` of this ``name``."""
        with self._lock:
            hit = self._memo.get((name, f))
        if hit is not None:
            return hit
        value = compute(f)
        with self._lock:
            self._memo[name, f] = value
            mine = [k for k in self._memo if k[0] == name]
            for k in mine[: max(0, len(mine) - keep)]:
                self._memo.pop(k)
            while len(self._memo) > MEMO_KEPT:
                self._memo.pop(next(iter(self._memo)))
        return value

    def _filtered_clusters(self, f: Filters) -> pd.DataFrame:
        clusters = self._stored_slice(f)
        if clusters is None:
            mask = self.patch_mask(f)
            if not mask.any():
                return self.groups.iloc[0:0]
            clusters, _ = compare_clusters(
                slice_input(self.patches, "cluster", mask),
                self.images,
                self.run.classes,
                self.run.comparison_settings(),  # the very statistic the run was computed with
                with_classes=False,
            )
        # what-if removal was measured on all images: its columns are the run's, unfiltered
        clusters = merge_whatif(clusters, self.whatif, "cluster")
        extra = [c for c in self.groups.columns if c not in clusters.columns]
        return clusters.merge(self.groups[["cluster", *extra]], on="cluster", how="left")

    def shift(
        self, f: Filters, versus: str, by: str = "either", measure: str = "share"
    ) -> pd.DataFrame:
        """Slice against slice (:mod:`imacs.shift`): slice X is what ``f`` keeps, slice Y
        the same filters with the query ``versus`` in place of ``f.query``; memoised.

        Raises:
            InputError: ``versus`` fails or selects nothing, or a slice holds no patch.
        """
        g = replace(f, query=versus)
        return self._memoised(
            f"shift {by} {measure}",
            (f, g),  # type: ignore[arg-type]
            lambda fg: self._shift(fg, by, measure),  # type: ignore[arg-type]
        )

    def _shift(self, fg: tuple[Filters, Filters], by: str, measure: str) -> pd.DataFrame:
        f, g = fg
        sl = self.query_slice(g.query)
        if not sl.slices:
            why = sl.message or "the query returns no image_id or patch_id column"
            raise QueryError(f"slice Y: {why}")
        p = self.patches
        masks = [self.patch_mask(h) for h in (f, g)]
        return compare_slices(
            reliance(p, "cluster", measure), *masks, self.run.comparison_settings(), by
        )

    @cached_property
    def _slice_stats(self) -> dict[str, pd.DataFrame]:
        """The run's precomputed common slices at this level (:mod:`imacs.slices`), by
        name; none for a run made before them."""
        t = self.run.table("slice_stats")
        t = t[t["level"] == self.level].drop(columns=["level"])
        return {k: g.drop(columns="slice").reset_index(drop=True) for k, g in t.groupby("slice")}

    def _stored_slice(self, f: Filters) -> pd.DataFrame | None:
        """The stored statistics of ``f`` when it is one common slice (one class, or one
        outcome, and nothing else), else None."""
        if f.meta or f.query or bool(f.classes) == bool(f.outcome) or len(f.classes) > 1:
            return None
        key = slice_key("class", f.classes[0]) if f.classes else slice_key("outcome", f.outcome)
        return self._slice_stats.get(key)

    def inside(self, concept: int) -> Inside:
        """The view inside the models of ``concept`` (-1: every image); see :class:`Inside`.
        The tables are on every image of the run: the filters do not apply."""
        run = self.run
        info = run.info.layers or {}
        ag, cka, ch = run.layer_agreement, run.layer_cka, run.layer_channels
        absent = {str(r): str(why) for r, why in (info.get("absent") or {}).items()}
        made = bool(absent) or not (ag.empty and cka.empty and ch.empty)
        return Inside(
            concept=concept,
            agreement=ag[ag["concept"] == concept].sort_values(["role", "depth"]),
            cka=cka[cka["concept"] == concept].sort_values(["depth_a", "depth_b"]),
            channels=ch[ch["concept"] == concept].sort_values(["role", "depth", "rank"]),
            layers={str(r): list(v) for r, v in (info.get("layers") or {}).items()},
            absent=absent,
            decided=float(info.get("decided", run.settings.layers.decided)),
            top=int(info.get("top", run.settings.layers.top)),
            made=made,
        )

    @cached_property
    def _patch_images(self) -> pd.Series:
        return self.run.patches.set_index("patch_id")["image_id"]

    def patch_images(self, patch_ids: list[int]) -> dict[int, int]:
        """The image of each patch id that is in the run (others are left out)."""
        known = self._patch_images
        return {int(p): int(known.loc[p]) for p in patch_ids if p in known.index}

    def export_patches(self, f: Filters) -> pd.DataFrame:
        return self._kept(self.run.patch_rows(), f)
