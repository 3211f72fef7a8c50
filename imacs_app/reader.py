"""The dashboard's one data object: runs on disk, filters, derived tables and renderings.

Everything the web app shows comes through :class:`RunCatalog`. It reads run directories
written by ``imacs analyze`` (through :mod:`imacs.run`, which never imports torch), keeps a
small per-process cache of loaded runs, and never writes to a run. Components only render
what it returns.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from imacs.comparison import compare_clusters
from imacs.errors import InputError
from imacs.run import Run

OUTCOMES = {
    "both_right": "both right",
    "only_a": "only A right",
    "only_b": "only B right",
    "both_wrong": "both wrong",
}
#: meta columns with more distinct values than this are not offered as filters
MAX_META_VALUES = 50
#: representative thumbnails shown per cluster in the ranking
STRIP = 8

T = TypeVar("T")


@dataclass(frozen=True)
class Filters:
    """What the user filtered on; empty means everything."""

    classes: tuple[str, ...] = ()
    outcome: str | None = None
    meta: tuple[tuple[str, str], ...] = ()  # (column, value) pairs

    @property
    def active(self) -> bool:
        return bool(self.classes or self.outcome or self.meta)


@dataclass
class RunView:
    """A loaded run plus the derived tables the dashboard needs."""

    run_id: str
    run: Run
    mtime: float
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _memo: dict[tuple[str, Filters], object] = field(default_factory=dict, repr=False)

    @cached_property
    def images(self) -> pd.DataFrame:
        img = self.run.images.copy()
        a, b = img["correct_a"].to_numpy(), img["correct_b"].to_numpy()
        img["outcome"] = np.select(
            [a & b, a & ~b, ~a & b], ["both_right", "only_a", "only_b"], "both_wrong"
        )
        return img.set_index("image_id", drop=False)

    @cached_property
    def patches(self) -> pd.DataFrame:
        p = self.run.patches
        img = self.images
        cols = ["label_name", "outcome", *self.meta_columns]
        joined = p.join(img[cols], on="image_id")
        return joined

    @cached_property
    def meta_columns(self) -> list[str]:
        return list(self.run.manifest["data"].get("meta_columns", []))

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
        """Row positions of the patch table sorted by cluster, then by distance to the
        cluster's centre in the embedding (the embedding's rows are the table's rows)."""
        emb = np.asarray(self.run.embedding, dtype=np.float32)
        labels = self.patches["cluster"].to_numpy()
        dist = np.zeros(len(labels), dtype=np.float64)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            centre = emb[idx].mean(axis=0)
            dist[idx] = ((emb[idx] - centre) ** 2).sum(axis=1)
        return np.lexsort((self.patches["patch_id"].to_numpy(), dist, labels))

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
        summ = self.run.manifest["summary"]
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
            "n_clusters_total": int(summ["n_clusters"]),
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

    def image_mask(self, f: Filters) -> np.ndarray:
        img = self.images
        mask = np.ones(len(img), dtype=bool)
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

    def _kept(self, patches: pd.DataFrame, f: Filters) -> pd.DataFrame:
        """The rows of ``patches`` whose image passes the filters."""
        if not f.active:
            return patches
        keep = self.images.index[self.image_mask(f)]
        return patches[patches["image_id"].isin(keep)]

    def filtered_patches(self, f: Filters) -> pd.DataFrame:
        return self._kept(self.patches, f)

    def clusters(self, f: Filters) -> pd.DataFrame:
        """Per-cluster statistics over the filtered images (the stored table when unfiltered).

        Filtered tables are memoised (a few per run): the ranking and the cluster detail ask
        for the same one, and the bootstrap is the slowest step of the dashboard.
        """
        if not f.active:
            return self.run.clusters
        return self._memoised("clusters", f, self._filtered_clusters)

    def _memoised(self, name: str, f: Filters, compute: Callable[[Filters], T]) -> T:
        """``compute(f)``, kept for the last few (name, filters) asked for."""
        with self._lock:
            hit = self._memo.get((name, f))
        if hit is not None:
            return hit
        value = compute(f)
        with self._lock:
            self._memo[name, f] = value
            while len(self._memo) > 48:
                self._memo.pop(next(iter(self._memo)))
        return value

    def _filtered_clusters(self, f: Filters) -> pd.DataFrame:
        p = self.filtered_patches(f)
        if p.empty:
            return self.run.clusters.iloc[0:0]
        clusters, _ = compare_clusters(
            p[["image_id", "cluster", "attr_a", "attr_b", "saliency"]],
            self.images,
            self.run.classes,
            self.run.comparison_settings(),  # the very statistic the run was computed with
        )
        return clusters

    def export_patches(self, f: Filters) -> pd.DataFrame:
        return self._kept(self.run.patch_rows(), f)


class RunCatalog:
    """Runs under a root folder: the root itself if it is a run, or runs one or two levels down.

    Args:
        root (str or Path): a run directory or a folder of run directories.
        max_cached (int): loaded runs kept in memory per process. Default: 8.
    """

    def __init__(self, root: str | Path, max_cached: int = 8) -> None:
        self.root = Path(root).expanduser().resolve()
        self.max_cached = max_cached
        self._cache: OrderedDict[str, RunView] = OrderedDict()
        self._checked: dict[Path, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def _candidates(self) -> dict[str, Path]:
        if (self.root / "run.json").is_file():
            return {self.root.name: self.root}
        found: dict[str, Path] = {}
        if not self.root.is_dir():
            return found
        manifests = sorted(self.root.glob("*/run.json")) + sorted(self.root.glob("*/*/run.json"))
        for manifest in manifests:
            d = manifest.parent
            if any(part.startswith(".") for part in d.relative_to(self.root).parts):
                continue  # temporary folders of runs being written
            found[d.relative_to(self.root).as_posix()] = d
        return found

    def _check(self, path: Path) -> str | None:
        """None if the run's manifest is readable and of this format, else why not."""
        try:
            mtime = (path / "run.json").stat().st_mtime
        except OSError as exc:
            return str(exc)
        with self._lock:
            hit = self._checked.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        try:
            Run(path)
            problem = None
        except InputError as exc:
            problem = str(exc)
        with self._lock:
            self._checked[path] = (mtime, problem)
        return problem

    def run_dirs(self) -> dict[str, Path]:
        """Readable runs, newest first: id (path relative to the root, or the root's name)
        -> directory. A run's age is its manifest's modification time."""
        found = {k: p for k, p in self._candidates().items() if self._check(p) is None}

        def age(item: tuple[str, Path]) -> tuple[float, str]:
            try:
                return (-(item[1] / "run.json").stat().st_mtime, item[0])
            except OSError:  # removed since it was listed: last
                return (0.0, item[0])

        return dict(sorted(found.items(), key=age))

    def problems(self) -> dict[str, str]:
        """Runs found but not readable (an older format, a broken manifest): id -> why."""
        out = {}
        for k, p in self._candidates().items():
            why = self._check(p)
            if why is not None:
                out[k] = why
        return out

    def default_run(self) -> str | None:
        """The newest run: the one a user just made is the one they want to see."""
        return next(iter(self.run_dirs()), None)

    def get(self, run_id: str | None) -> RunView:
        """The run with this id (or the newest one); raises InputError if there is none."""
        dirs = self.run_dirs()
        if run_id is None:
            run_id = next(iter(dirs), None)
            if run_id is None:
                raise InputError(f"{self.root}: no imacs runs found; make one with imacs analyze")
        elif run_id not in dirs:
            raise InputError(
                f"no run named {run_id!r} under {self.root} (removed, or never made); "
                "pick one in the run list"
            )
        path = dirs[run_id]
        try:
            mtime = (path / "run.json").stat().st_mtime
        except OSError:
            raise InputError(
                f"{path}: the run was removed while it was being read; pick one in the run list"
            ) from None
        with self._lock:
            view = self._cache.get(run_id)
            if view is not None and view.mtime == mtime:
                self._cache.move_to_end(run_id)
                return view
        view = RunView(run_id=run_id, run=Run(path), mtime=mtime)
        with self._lock:
            self._cache[run_id] = view
            self._cache.move_to_end(run_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return view

    def safe_file(self, run_id: str, subpath: str) -> Path | None:
        """A thumbnail file inside the run's ``thumbs/`` folder, or None (never outside)."""
        dirs = self.run_dirs()
        if run_id not in dirs:
            return None
        base = (dirs[run_id] / "thumbs").resolve()
        target = (base / subpath).resolve()
        if not target.is_relative_to(base) or target.suffix.lower() not in (".jpg", ".png"):
            return None
        return target if target.is_file() else None


# ---- renderings --------------------------------------------------------------------------

_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_DIVERGING = np.array(
    [
        [33, 102, 172],
        [103, 169, 207],
        [209, 229, 240],
        [247, 247, 247],
        [253, 219, 199],
        [239, 138, 98],
        [178, 24, 43],
    ],
    dtype=np.float64,
)


def _lut(anchors: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(anchors) - 1)
    w = (t - lo)[..., None]
    return anchors[lo] * (1 - w) + anchors[hi] * w


def _share(view: RunView, role: str, image_id: int) -> np.ndarray:
    m = np.clip(view.run.attribution_map(role, image_id), 0, None)
    total = m.sum()
    return m / total if total > 0 else m


#: overlays are scaled to this percentile of the image's values, and clipped above it
OVERLAY_PERCENTILE = 99.0


@dataclass(frozen=True)
class OverlayScale:
    """The colour scales of one image's overlays, in share of a model's positive
    attribution per map pixel.

    ``share`` tops the A and B overlays (one scale for both models: the 99th percentile of
    both maps' values), ``diff`` bounds the B − A overlay (the 99th percentile of its
    absolute values); values beyond are clipped. ``pixels`` is the map's size, so a uniform
    map's share is ``1 / pixels``.
    """

    share: float
    diff: float
    pixels: int

    @property
    def share_vs_average(self) -> float:
        """``share`` as a multiple of the share of an average pixel."""
        return self.share * self.pixels

    @property
    def diff_vs_average(self) -> float:
        return self.diff * self.pixels


def _robust_top(values: np.ndarray) -> float:
    """The percentile scale of ``values`` (>= 0); their maximum if that is 0, else 1."""
    top = float(np.percentile(values, OVERLAY_PERCENTILE)) if values.size else 0.0
    if top <= 0:
        top = float(values.max()) if values.size else 0.0
    return top if top > 0 else 1.0


def overlay_scale(view: RunView, image_id: int) -> OverlayScale:
    """The colour scales :func:`render_png` uses for this image's A, B and B − A overlays."""
    if image_id not in view.images.index:
        raise KeyError(image_id)
    return _scale_of(_share(view, "a", image_id), _share(view, "b", image_id))


def _scale_of(sa: np.ndarray, sb: np.ndarray) -> OverlayScale:
    return OverlayScale(
        share=_robust_top(np.concatenate([sa.ravel(), sb.ravel()])),
        diff=_robust_top(np.abs(sb - sa).ravel()),
        pixels=int(sa.size),
    )


#: colour stops of the A/B overlays and of the B − A overlay, for colour bars on the page
INFERNO_CSS = tuple(f"rgb({r},{g},{b})" for r, g, b in _INFERNO.astype(int).tolist())
DIVERGING_CSS = tuple(f"rgb({r},{g},{b})" for r, g, b in _DIVERGING.astype(int).tolist())


#: renderings are at least this many pixels on their longest side
RENDER_SIDE = 256


def _base_image(view: RunView, image_id: int) -> Image.Image:
    path = view.run.image_thumbnail(image_id)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (FileNotFoundError, OSError):  # a missing thumbnail: grey stand-in, same shape
        row = view.images.loc[image_id]
        w, h = int(row["width"]), int(row["height"])
        scale = RENDER_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return Image.new("RGB", size, (200, 200, 200))
    factor = max(1, RENDER_SIDE // max(im.size))
    if factor > 1:  # small images: enlarge with crisp pixels so outlines stay thin
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    return im


def _outline(view: RunView, im: Image.Image, image_id: int, highlight: int | None = None) -> None:
    row = view.images.loc[image_id]
    sx, sy = im.width / float(row["width"]), im.height / float(row["height"])
    draw = ImageDraw.Draw(im)
    patches = view.patches[view.patches["image_id"] == image_id]
    for p in patches.itertuples():
        box = (
            p.x0 * sx,
            p.y0 * sy,
            max(p.x0 * sx + 1, p.x1 * sx - 1),
            max(p.y0 * sy + 1, p.y1 * sy - 1),
        )
        strong = highlight is None or p.patch_id == highlight
        draw.rectangle(
            box, outline=(255, 220, 0) if strong else (255, 255, 255), width=2 if strong else 1
        )


def render_png(view: RunView, image_id: int, kind: str, patch_id: int | None = None) -> bytes:
    """A PNG of an image: ``image`` (patches outlined), ``a``/``b`` (each model's share of
    attribution, on one shared scale), ``diff`` (B minus A) or ``context`` (one patch outlined).

    The overlays' scales are robust (:func:`overlay_scale`): the single hottest pixel does
    not wash out the rest of the map.
    """
    if image_id not in view.images.index:
        raise KeyError(image_id)
    base = _base_image(view, image_id)
    if kind in ("image", "context"):
        im = base.copy()
        _outline(view, im, image_id, highlight=patch_id if kind == "context" else None)
    else:
        sa, sb = _share(view, "a", image_id), _share(view, "b", image_id)
        scale = _scale_of(sa, sb)
        if kind == "diff":
            t = np.clip((sb - sa) / scale.diff, -1.0, 1.0)
            rgb = _lut(_DIVERGING, t * 0.5 + 0.5)
            alpha = np.sqrt(np.abs(t))
        elif kind in ("a", "b"):
            t = np.clip((sa if kind == "a" else sb) / scale.share, 0.0, 1.0)
            rgb = _lut(_INFERNO, t)
            alpha = np.sqrt(t)
        else:
            raise KeyError(kind)
        heat = Image.fromarray(np.uint8(rgb)).resize(base.size, Image.Resampling.BILINEAR)
        mask = Image.fromarray(np.uint8(np.clip(alpha * 0.85, 0, 1) * 255)).resize(
            base.size, Image.Resampling.BILINEAR
        )
        grey = base.convert("L").convert("RGB")
        im = Image.composite(heat, grey, mask)
        _outline(view, im, image_id)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()
