"""Stage 6: what-if removal, the causal check of a cluster (or a concept).

A cluster's ``diff`` says where a model *looks*; removal says whether it *needs* what it
looks at. For each cluster a reader looks at first (the ``top`` clusters by ``|diff|``, plus
every significant one), every image holding a patch of the cluster is run through both
models again, forward passes only, with that content removed *wherever it is in the image*:

* **Regions.** Every image is cut into patch-size tiles overlapping by half (the grid the
  patches are cut from), and each tile is placed in the run's embedding (the very features
  or answers its patches were clustered by, :class:`imacs.embedding.FittedEmbedding`) and
  assigned to the nearest cluster centre, if it lies within that cluster's reach: the
  ``reach`` quantile (default 0.95) of the distances of the cluster's own patches to its
  centre (:meth:`RegionSpace.assign`). Removing a cluster removes its patches in the image
  and every tile assigned to it (a concept: to any of its clusters), so a frame around the
  image or a background colour goes (nearly) whole, not only where the maps were hottest.
  A tile that mixes two contents goes to the one it is nearer, so a thin rim of a
  background can stay beside the object it surrounds (BENCHMARKS.md).
* **Fill.** Removed pixels are filled as ``--removal`` says (:mod:`imacs.removal`; by default
  ROAD's noisy linear imputation from the kept neighbours, which adds no object of its own).
* **Control.** The same images get the same area removed at random elsewhere: patch-size
  tiles off the removed region (and off each other while there is room), seeded by the
  run's seed (:func:`control_region`).

Per cluster and model: ``flip`` (share of images whose predicted class changes), ``drop``
(mean fall of the probability of the originally predicted class), accuracy before and after,
and the same ``flip`` and ``drop`` for the random regions; ``area``, the mean share of an
image removed. Each tested image's removed regions are kept (``whatif_boxes.parquet``), so
the dashboard shows exactly what the models were shown.

The verdict rule (``whatif_effect``): model X *depends* on a cluster when removing it flips X
on clearly more images than the random regions do:

* the random regions alone flip X on at most ``inconclusive`` (default 25 %) of the images;
  above that, X's part is *inconclusive* (removing that much of an image anywhere already
  changes X's answer, so the test cannot tell what X needs),
* the excess ``flip - control_flip`` is at least ``min_excess`` (default 0.1), and
* a one-sided exact McNemar test on the paired outcomes (per image: removal flipped it,
  the random regions did not, or the reverse) gives ``p <= alpha / (2 * clusters tested)``
  (Bonferroni over both models and every tested cluster; ``alpha`` default 0.05). Exact,
  so it holds for small clusters: with 10 clusters tested it needs at least 9 images where
  only the removal flips the model.

``whatif_effect`` is ``"B depends"``, ``"A depends"``, ``"both"``, ``"neither"`` or, when
no model depends and a model's part is inconclusive, ``"inconclusive"``; ``whatif_verdict``
says the numbers in one sentence.

This module imports no torch (the run reader imports its column names); the engine does the
forward passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .removal import fill
from .runformat import ROLES, empty, whatif_box_columns, whatif_columns, whatif_image_columns
from .settings import AttributionSettings, Preprocess, WhatIfSettings
from .stage import stage

if TYPE_CHECKING:
    from .attribution import PairedAttribution
    from .clustering import PatchClusterer
    from .data import ImageRecord
    from .embedding import FittedEmbedding
    from .encoders import LoadedEncoder
    from .responses import PatchViews

EFFECTS = ("B depends", "A depends", "both", "neither", "inconclusive")

#: columns of ``whatif.parquet`` (also merged into :attr:`imacs.run.Run.clusters`)
COLUMNS: dict[str, str] = whatif_columns("cluster")
#: columns of ``whatif_images.parquet``: each tested (cluster, image) pair's predictions
#: after the removal (the predictions before are in ``images.parquet``) and the share of
#: the image removed
IMAGE_COLUMNS: dict[str, str] = whatif_image_columns("cluster")
#: columns of ``whatif_boxes.parquet``: the regions removed from each tested image
#: (``control`` False) and the random regions of its control (True)
BOX_COLUMNS: dict[str, str] = whatif_box_columns("cluster")


def empty_images() -> pd.DataFrame:
    """An empty ``whatif_images`` table."""
    return empty("whatif_images")


def empty_boxes() -> pd.DataFrame:
    """An empty ``whatif_boxes`` table."""
    return empty("whatif_boxes")


def empty_table() -> pd.DataFrame:
    """An empty ``whatif`` table."""
    return empty("whatif")


def chosen_clusters(clusters: pd.DataFrame, top: int) -> list[int]:
    """Clusters ranked 1..``top``, plus every significant one, in rank order."""
    pick = clusters["rank"] <= top
    if "significant" in clusters:
        pick |= clusters["significant"].astype(bool)
    return [int(c) for c in clusters.loc[pick].sort_values("rank")["cluster"]]


def tile_boxes(hw: tuple[int, int], side: int) -> np.ndarray:
    """(t, 4) int32 x0, y0, x1, y1 of every patch-size tile of an (H, W) model input,
    overlapping by half: the grid salient patches are cut from
    (:func:`imacs.patches.image_patches`)."""
    from .patches import _positions

    ys, xs = _positions(hw[0], side), _positions(hw[1], side)
    y0, x0 = np.repeat(ys, len(xs)), np.tile(xs, len(ys))
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def cluster_reach(
    embedding: np.ndarray, labels: np.ndarray, centres: np.ndarray, quantile: float
) -> np.ndarray:
    """(k,) per cluster, the ``quantile`` of its own patches' distances to its centre (0
    for a cluster without patches)."""
    d = np.linalg.norm(np.asarray(embedding, np.float64) - centres[labels], axis=1)
    out = np.zeros(len(centres))
    for c in range(len(centres)):
        mine = d[labels == c]
        if len(mine):
            out[c] = float(np.quantile(mine, quantile))
    return out


@dataclass
class RegionSpace:
    """Where any patch-size region of an analysed image falls among the run's clusters.

    Args:
        centres (numpy.ndarray): (k, d) the clusters' centres in the patch embedding.
        reach (numpy.ndarray): (k,) how far from its centre a region may lie and still join
            a cluster (:func:`cluster_reach`).
        side (int): the regions' side, the patch side, in model-input pixels.
        hw (tuple[int, int]): (height, width) of the model input.
        embed (callable): ``embed(image_ids, boxes)`` -> (m, d) float32: regions (boxes in
            model-input pixels of the given images) in the patch embedding.
    """

    centres: np.ndarray
    reach: np.ndarray
    side: int
    hw: tuple[int, int]
    embed: Callable[[np.ndarray, np.ndarray], np.ndarray]
    _assigned: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def tiles(self) -> np.ndarray:
        """(t, 4) the tiles every image is cut into (:func:`tile_boxes`)."""
        return tile_boxes(self.hw, self.side)

    def assign(self, image_ids: np.ndarray, block: int = 64) -> dict[int, np.ndarray]:
        """Per image, the cluster of each of its tiles ((t,) int64): the nearest centre,
        if the tile lies within that cluster's reach, else -1. Computed once per image, in
        blocks of ``block`` images."""
        tiles = self.tiles
        todo = [int(i) for i in image_ids if int(i) not in self._assigned]
        for s in range(0, len(todo), block):
            part = np.asarray(todo[s : s + block], np.int64)
            ids = np.repeat(part, len(tiles))
            boxes = np.tile(tiles, (len(part), 1))
            vec = np.asarray(self.embed(ids, boxes), np.float64)
            d = np.linalg.norm(vec[:, None, :] - self.centres[None, :, :], axis=2)
            near = d.argmin(1)
            near = np.where(d[np.arange(len(d)), near] <= self.reach[near], near, -1)
            for k, i in enumerate(part):
                self._assigned[int(i)] = near[k * len(tiles) : (k + 1) * len(tiles)]
        return {int(i): self._assigned[int(i)] for i in image_ids}


def region_space(
    engine: PairedAttribution,
    records: list[ImageRecord],
    fitted: FittedEmbedding,
    embedding: np.ndarray,
    clusterer: PatchClusterer,
    *,
    preprocess: Preprocess,
    side: int,
    attribution: AttributionSettings,
    reach: float,
    views: PatchViews | None = None,
    encoder: LoadedEncoder | None = None,
) -> RegionSpace:
    """The run's clusters as a :class:`RegionSpace`: a region is embedded as a patch is
    (its pixels cropped from the original image and resized, for ``handcrafted``; both
    models' answers to it alone, or the encoder's vector of it, otherwise).

    Args:
        engine (PairedAttribution): the run's models (``models`` and encoder embeddings).
        records (list[ImageRecord]): the analysed images.
        fitted (FittedEmbedding): the patches' fitted embedding.
        embedding (numpy.ndarray): (n, d) the patches' embedding.
        clusterer (PatchClusterer): the fitted clusters (``labels_``, ``cluster_centers_``).
        preprocess (Preprocess): how an image becomes a model input.
        side (int): the patch side, in model-input pixels.
        attribution (AttributionSettings): ``batch_size`` sizes the forward passes.
        reach (float): the quantile of :func:`cluster_reach`.
        views (PatchViews, optional): the patches' views (their kept response classes).
        encoder (LoadedEncoder, optional): the run's encoder.
    """
    from .patches import PatchTable
    from .responses import patch_views

    hw = preprocess.input_size
    centres = np.asarray(clusterer.cluster_centers_, np.float64)
    limit = cluster_reach(embedding, clusterer.labels_, centres, reach)

    def embed(ids: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if fitted.needs_pixels:
            return fitted.transform(region_pixels(records, ids, boxes, hw), None)
        zeros = np.zeros(len(ids), np.float32)
        table = PatchTable(ids, boxes.astype(np.int32), zeros, zeros, zeros)
        tile_views = patch_views(
            engine, records, table, preprocess, encoder,
            batch_size=max(16, 4 * attribution.batch_size),
            kept=views.kept if views is not None else None,
        )  # fmt: skip
        return fitted.transform(None, tile_views)

    return RegionSpace(centres, limit, side, hw, embed)


def region_pixels(
    records: list[ImageRecord], ids: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]
) -> np.ndarray:
    """(m, S, S, 3) uint8: each region (``boxes`` in model-input pixels of image ``ids``)
    cropped from its original image and resized as a patch's pixels are for the embedding
    (:func:`imacs.thumbnails.thumbnails_and_pixels`)."""
    from PIL import Image

    from .attribute_set import _pool
    from .errors import ImageDecodeError, InputError
    from .imaging import load_rgb
    from .patches import to_original_pixels
    from .thumbnails import EMBED_SIZE

    out = np.zeros((len(ids), EMBED_SIZE, EMBED_SIZE, 3), np.uint8)

    def work(image: int) -> None:
        try:
            im = load_rgb(records[image].path)
        except ImageDecodeError as exc:
            raise InputError(
                f"{records[image].path}: changed while imacs was running ({exc}); run again"
            ) from None
        rows = np.flatnonzero(ids == image)
        size = np.tile(np.asarray(im.size, np.int64), (len(rows), 1))
        for k, (x0, y0, x1, y1) in zip(
            rows, to_original_pixels(boxes[rows], hw, size), strict=True
        ):
            crop = im.crop((int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)))
            out[k] = np.asarray(crop.resize((EMBED_SIZE, EMBED_SIZE), Image.Resampling.BILINEAR))

    with _pool() as pool:
        list(pool.map(work, np.unique(ids).tolist()))
    return out


def patch_side(patches: pd.DataFrame, hw: tuple[int, int]) -> int:
    """The run's patch side (every patch has it), in model-input pixels; a quarter of the
    shorter input side for a run without patches."""
    if len(patches) == 0:
        return max(2, min(hw) // 4)
    return int((patches["in_x1"] - patches["in_x0"]).max())


def widened(boxes: np.ndarray, margin: int, hw: tuple[int, int]) -> np.ndarray:
    """``boxes`` grown by ``margin`` pixels on every side, within the (H, W) image: their
    union is the removed region dilated by ``margin``. Tiles cut the content on a grid of
    half a patch, so a rim of it can stay beside the tiles removed, and ROAD would fill
    the region from that very rim; a margin of a quarter patch removes it too."""
    out = np.asarray(boxes, np.int64).reshape(-1, 4).copy()
    out[:, :2] = np.maximum(out[:, :2] - margin, 0)
    out[:, 2] = np.minimum(out[:, 2] + margin, hw[1])
    out[:, 3] = np.minimum(out[:, 3] + margin, hw[0])
    return out.astype(np.int32)


def _mask(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = np.zeros(hw, bool)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] = True
    return out


def control_region(
    removed: np.ndarray, tiles: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Random tiles covering as much area as ``removed``, elsewhere.

    Tiles are drawn at random among those off the removed region and off the tiles already
    drawn; when none is left, among those off the removed region that add area; when none
    is left, among those that overlap the removed region least (the overlap is counted).
    The last tile is the one that brings the area closest to the removed one's.

    Args:
        removed (numpy.ndarray): (H, W) bool, the removed region.
        tiles (numpy.ndarray): (t, 4) the candidate tiles (:func:`tile_boxes`).
        rng (numpy.random.Generator): the random source.

    Returns:
        (k, 4) int32 boxes and how many of their pixels lie in ``removed``.
    """
    target = int(removed.sum())
    placed = np.zeros_like(removed)
    picked: list[int] = []

    def sums(mask: np.ndarray) -> np.ndarray:
        ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
        ii[1:, 1:] = mask.cumsum(0).cumsum(1)
        x0, y0, x1, y1 = tiles.T
        return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]

    on_removed = sums(removed)
    size = (tiles[:, 2] - tiles[:, 0]) * (tiles[:, 3] - tiles[:, 1])
    while placed.sum() < target:
        left = target - int(placed.sum())
        new = sums(~placed)  # area each tile would add
        off = (on_removed == 0) & (new > 0)
        last = left < size.max()
        fresh = off if last else off & (new == size)
        if not fresh.any():
            fresh = off
        if not fresh.any():
            fresh = new > 0
            if fresh.any():
                fresh &= on_removed == on_removed[fresh].min()
        if not fresh.any():
            break
        if last:  # the last tile: the one that brings the area closest to the removed one's
            gap = np.where(fresh, np.abs(new - left), np.iinfo(np.int64).max)
            fresh = gap == gap.min()
        j = int(rng.choice(np.flatnonzero(fresh)))
        picked.append(j)
        x0, y0, x1, y1 = tiles[j]
        placed[y0:y1, x0:x1] = True
    return tiles[picked].astype(np.int32), int((placed & removed).sum())


def excess_p_value(only_removal: int, only_control: int) -> float:
    """One-sided exact McNemar p-value: P(X >= only_removal), X ~ Binomial(n, 1/2), n the
    discordant pairs (images that flipped under one treatment and not the other)."""
    n = only_removal + only_control
    if n == 0:
        return 1.0
    return sum(math.comb(n, j) for j in range(only_removal, n + 1)) / 2**n


@dataclass
class _Jobs:
    """One row per (cluster, image): the regions to remove and their random controls."""

    cluster: np.ndarray
    image: np.ndarray
    removal: list[np.ndarray]
    control: list[np.ndarray]
    overlap: np.ndarray  #: control pixels that fall on the removed region
    area: np.ndarray  #: removed pixels


def _plan(
    patches: pd.DataFrame,
    chosen: list[int],
    hw: tuple[int, int],
    seed: list[int],
    space: RegionSpace | None,
    members: dict[int, list[int]],
    tiles: np.ndarray,
) -> _Jobs:
    """Each (cluster, image) job: its patches' boxes plus every tile assigned to one of
    its clusters (``members``), and a control of the same area."""
    p = patches[patches["cluster"].isin(chosen)]
    pairs = p[["cluster", "image_id"]].drop_duplicates().sort_values(["cluster", "image_id"])
    boxes_of = {
        key: g[["in_x0", "in_y0", "in_x1", "in_y1"]].to_numpy(np.int32)
        for key, g in p.groupby(["cluster", "image_id"])
    }
    ids = pairs["image_id"].unique()
    assigned = space.assign(ids) if space is not None else {}
    n = len(pairs)
    margin = int(tiles[0, 2] - tiles[0, 0]) // 4 if len(tiles) else 0
    jobs = _Jobs(
        pairs["cluster"].to_numpy(np.int64),
        pairs["image_id"].to_numpy(np.int64),
        [],
        [],
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
    )
    for k, (c, i) in enumerate(zip(jobs.cluster.tolist(), jobs.image.tolist(), strict=True)):
        boxes = boxes_of[(c, i)]
        if i in assigned:
            own = np.isin(assigned[i], members.get(c, [c]))
            boxes = widened(np.concatenate([boxes, tiles[own]]), margin, hw)
        removed = _mask(boxes, hw)
        rng = np.random.default_rng([*seed, c, i])  # independent of the order
        ctrl, overlap = control_region(removed, tiles, rng)
        jobs.removal.append(boxes)
        jobs.control.append(ctrl)
        jobs.overlap[k] = overlap
        jobs.area[k] = int(removed.sum())
    return jobs


#: what ``level`` a what-if call tests, mixed into the seeds of its random draws
LEVELS = {"cluster": 0, "concept": 1}


def fill_seed(seed: int, level: str, cluster: int, image: int, control: bool) -> list[int]:
    """The seed of the fill's noise (``road``) for one removal: the dashboard redraws the
    removal with it."""
    return [seed, LEVELS[level], cluster, image, int(control)]


def what_if(
    engine: PairedAttribution,
    records: list[ImageRecord],
    images: pd.DataFrame,
    patches: pd.DataFrame,
    clusters: pd.DataFrame,
    *,
    whatif: WhatIfSettings,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    seed: int,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
    space: RegionSpace | None = None,
    members: dict[int, list[int]] | None = None,
    level: str = "cluster",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """Remove each chosen cluster's content and run both models again.

    Args:
        engine (PairedAttribution): the run's models, on their device, with its baseline.
        records (list[ImageRecord]): the analysed images; ``image_id`` indexes it.
        images (pandas.DataFrame): the images table (``label``, ``pred_a``, ``pred_b``).
        patches (pandas.DataFrame): the patches table (``cluster``, ``in_x0..in_y1``).
        clusters (pandas.DataFrame): the clusters table (``rank``, ``significant``).
        whatif (WhatIfSettings): which clusters, the fill, the verdicts' thresholds.
        preprocess (Preprocess): how an image becomes a model input.
        attribution (AttributionSettings): its ``baseline`` is the ``baseline`` fill;
            ``batch_size`` sizes the forward passes.
        seed (int): seed of the control regions and of the fill's noise.
        progress (bool): show a progress bar. Default: False.
        say (callable, optional): receives one-line status messages.
        space (RegionSpace, optional): where every tile of an image falls among the
            run's clusters; None removes the patches' boxes only. Default: None.
        members (dict, optional): the clusters of ``space`` that make each tested unit
            (a concept's clusters); None: each unit is the cluster of that id.
        level (str): ``cluster`` or ``concept``, what the units are (seeds differ).
            Default: ``cluster``.

    Returns:
        The what-if table (one row per tested cluster, in rank order; columns
        :data:`COLUMNS`), each tested image's predictions after the removal (columns
        :data:`IMAGE_COLUMNS`), the removed and control regions (:data:`BOX_COLUMNS`) and
        what was done, for ``run.json``.
    """
    from .errors import ImacsError

    t0 = time.perf_counter()
    ws = whatif
    info = _info(ws, attribution.baseline, space is not None)
    nothing = (empty_table(), empty_images(), empty_boxes(), info)
    if not ws.enabled:
        return nothing
    chosen = chosen_clusters(clusters, ws.top)
    if not chosen:  # --whatif-top 0 and nothing significant
        return nothing
    hw = preprocess.input_size
    tiles = tile_boxes(hw, space.side if space is not None else patch_side(patches, hw))
    jobs = _plan(patches, chosen, hw, [seed, LEVELS[level]], space, members or {}, tiles)
    fill_settings = _Fill(ws.removal, attribution.baseline, seed, level)
    try:
        after = _forward(engine, records, images, jobs, preprocess, attribution, fill_settings,
                         progress, info)  # fmt: skip
    except ImacsError as exc:  # the run keeps everything else
        (say or (lambda _m: None))(f"warning: what-if removal stopped: {exc}")
        info["error"] = str(exc)
        return nothing
    table = _statistics(jobs, after, images, chosen, ws, hw)
    done = np.flatnonzero(after["removal", "a"][0] >= 0)
    per_image = _per_image(jobs, after, done, hw)
    info.update(
        clusters=[int(c) for c in table["cluster"]],
        n_clusters=len(table),
        n_images=len(np.unique(jobs.image)),
        seconds=round(time.perf_counter() - t0, 4),
    )
    return table, per_image, _boxes_table(jobs, done), info


def _info(ws: WhatIfSettings, baseline: str, regions: bool) -> dict[str, object]:
    """What a what-if call records in ``run.json`` before it starts."""
    return {
        "enabled": ws.enabled,
        "top": ws.top,
        "removal": ws.removal,
        "baseline": baseline,
        "regions": "tiles" if regions else "patches",
        "alpha": ws.alpha,
        "min_excess": ws.min_excess,
        "inconclusive": ws.inconclusive,
        "reach": ws.reach,
        "clusters": [],
        "n_clusters": 0,
        "n_images": 0,
        "n_forward": 0,
    }


@dataclass(frozen=True)
class _Fill:
    """How a what-if call fills what it removes, and the seed of its noise."""

    kind: str
    baseline: str
    seed: int
    level: str


def _per_image(
    jobs: _Jobs,
    after: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    done: np.ndarray,
    hw: tuple[int, int],
) -> pd.DataFrame:
    """Each tested image's predictions after the removal, and the share of it removed."""
    return pd.DataFrame(
        {
            "cluster": jobs.cluster[done],
            "image_id": jobs.image[done],
            **{
                f"{k}_{r}_after": after["removal", r][i][done]
                for r in ROLES
                for i, k in ((0, "pred"), (1, "prob"))
            },
            "area": jobs.area[done] / float(hw[0] * hw[1]),
        }
    ).astype(IMAGE_COLUMNS)


def _boxes_table(jobs: _Jobs, done: np.ndarray) -> pd.DataFrame:
    parts = [
        pd.DataFrame(
            {
                "cluster": jobs.cluster[j],
                "image_id": jobs.image[j],
                "control": control,
                **dict(
                    zip(("x0", "y0", "x1", "y1"), np.asarray(boxes).reshape(-1, 4).T, strict=True)
                ),
            }
        )
        for j in done
        for control, boxes in ((False, jobs.removal[j]), (True, jobs.control[j]))
        if len(boxes)
    ]
    return pd.concat(parts, ignore_index=True).astype(BOX_COLUMNS) if parts else empty_boxes()


def _forward(
    engine: PairedAttribution,
    records: list[ImageRecord],
    images: pd.DataFrame,
    jobs: _Jobs,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    how: _Fill,
    progress: bool,
    info: dict[str, object],
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per (removal|control, model): each job's predicted class and probability of the
    originally predicted class, after the fill (-1 / NaN for images that failed)."""
    from .attribute_set import _decode, _pool  # torch-free callers never reach this
    from .progress import Progress
    from .removal import ig_baseline

    hw = preprocess.input_size
    before = {r: images[f"pred_{r}"].to_numpy() for r in ROLES}
    after = {
        (v, r): (np.full(len(jobs.image), -1, np.int64), np.full(len(jobs.image), np.nan))
        for v in ("removal", "control")
        for r in ROLES
    }
    ids = np.unique(jobs.image)
    batch = max(16, 4 * attribution.batch_size)  # forward passes only
    order = np.argsort(jobs.image, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(jobs.image[order])) + 1) if len(ids) else []
    by_image = dict(zip(ids.tolist(), groups, strict=True))  # image -> its jobs
    with Progress(len(ids), "what-if", enabled=progress) as bar, _pool() as pool:
        for s in range(0, len(ids), max(8, batch // 2)):
            part = ids[s : s + max(8, batch // 2)]
            decoded = list(pool.map(lambda i: _decode(records[i], preprocess), part))
            pixels = {int(i): d[0] for i, d in zip(part, decoded, strict=True) if d[0] is not None}
            todo = np.concatenate([by_image[i] for i in pixels] or [np.zeros(0, np.int64)])
            for t in range(0, len(todo), batch):
                js = todo[t : t + batch]
                x = np.stack([pixels[int(jobs.image[j])] for j in js])
                base = ig_baseline(x, how.baseline) if how.kind == "baseline" else None
                for variant, boxes in (("removal", jobs.removal), ("control", jobs.control)):
                    masks = np.stack([_mask(boxes[j], hw) for j in js])
                    seeds = [
                        fill_seed(how.seed, how.level, int(jobs.cluster[j]), int(jobs.image[j]),
                                  variant == "control")
                        for j in js
                    ]  # fmt: skip
                    filled = fill(x, masks, how.kind, base=base, seeds=seeds)
                    for r in ROLES:
                        probs = engine.probabilities_array(r, filled)
                        pred, prob = after[variant, r]
                        pred[js] = probs.argmax(1)
                        prob[js] = probs[np.arange(len(js)), before[r][jobs.image[js]]]
                info["n_forward"] = int(info["n_forward"]) + 2 * len(js)  # type: ignore[call-overload]
            bar.update(len(part))
    return after


def _statistics(
    jobs: _Jobs,
    after: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    images: pd.DataFrame,
    chosen: list[int],
    ws: WhatIfSettings,
    hw: tuple[int, int],
) -> pd.DataFrame:
    """One row per tested cluster: flip rates, drops, accuracies, p-values, verdict."""
    label = images["label"].to_numpy()
    before = {r: images[f"pred_{r}"].to_numpy() for r in ROLES}
    prob_before = {r: images[f"prob_{r}"].to_numpy(np.float64) for r in ROLES}
    rows = []
    n_tests = 2 * max(1, len(chosen))
    for c in chosen:
        js = np.flatnonzero((jobs.cluster == c) & (after["removal", "a"][0] >= 0))
        if len(js) == 0:
            continue
        img = jobs.image[js]
        row: dict[str, object] = {
            "cluster": c,
            "whatif_n_images": len(js),
            "whatif_n_boxes": int(sum(len(jobs.removal[j]) for j in js)),
            "whatif_area": float(jobs.area[js].mean() / (hw[0] * hw[1])),
            "whatif_control_overlap": float(jobs.overlap[js].sum() / max(1, jobs.area[js].sum())),
        }
        depends, unsure = {}, {}
        for r in ROLES:
            flip = after["removal", r][0][js] != before[r][img]
            flip_c = after["control", r][0][js] != before[r][img]
            p = excess_p_value(int((flip & ~flip_c).sum()), int((flip_c & ~flip).sum()))
            row[f"whatif_flip_{r}"] = float(flip.mean())
            row[f"whatif_drop_{r}"] = float(
                (prob_before[r][img] - after["removal", r][1][js]).mean()
            )
            row[f"whatif_acc_before_{r}"] = float((before[r][img] == label[img]).mean())
            row[f"whatif_acc_after_{r}"] = float((after["removal", r][0][js] == label[img]).mean())
            row[f"whatif_control_flip_{r}"] = float(flip_c.mean())
            row[f"whatif_control_drop_{r}"] = float(
                (prob_before[r][img] - after["control", r][1][js]).mean()
            )
            row[f"whatif_p_{r}"] = p
            unsure[r] = bool(flip_c.mean() > ws.inconclusive)
            row[f"whatif_inconclusive_{r}"] = unsure[r]
            depends[r] = (
                not unsure[r]
                and flip.mean() - flip_c.mean() >= ws.min_excess
                and p <= ws.alpha / n_tests
            )
        row["whatif_effect"] = effect(depends, unsure)
        row["whatif_verdict"] = verdict(row)
        rows.append(row)
    table = pd.DataFrame(rows) if rows else empty_table()
    return table.astype(COLUMNS)[list(COLUMNS)]


def effect(depends: dict[str, bool], unsure: dict[str, bool]) -> str:
    """The verdict's one word (:data:`EFFECTS`) from which models depend on the content
    and whose random control flipped too often to tell."""
    if depends["a"] and depends["b"]:
        return "both"
    if depends["b"]:
        return "B depends"
    if depends["a"]:
        return "A depends"
    return "inconclusive" if unsure["a"] or unsure["b"] else "neither"


def verdict(row: dict[str, object] | pd.Series) -> str:
    """One sentence: how often removal flips each model, against random regions of the same
    area; a model whose random regions alone flip it too often is "inconclusive"."""

    def pct(key: str) -> str:
        return f"{float(row[key]):.0%}"  # type: ignore[arg-type]

    def unsure(r: str) -> bool:
        value = row.get(f"whatif_inconclusive_{r}", False)  # type: ignore[union-attr]
        return bool(value) and not pd.isna(value)

    n = int(row["whatif_n_images"])  # type: ignore[call-overload]
    images = f"{n} image{'s' if n != 1 else ''}"
    clear = [r for r in ("b", "a") if not unsure(r)]
    parts = []
    if clear:
        flips = ", ".join(f"{r.upper()} on {pct(f'whatif_flip_{r}')}" for r in clear)
        controls = ", ".join(f"{r.upper()} on {pct(f'whatif_control_flip_{r}')}" for r in clear)
        parts.append(
            f"removing it flips {_with_count(flips, images)}; random regions of the same area "
            f"flip {controls}"
        )
    for r in ("b", "a"):
        if unsure(r):
            parts.append(
                f"{r.upper()}: inconclusive: random regions alone flip {r.upper()} on "
                f"{pct(f'whatif_control_flip_{r}')}" + ("" if clear else f" of {images}")
            )
    return "; ".join(parts)


def _with_count(flips: str, images: str) -> str:
    """``"B on 100%, A on 0%"`` -> ``"B on 100% of 21 images, A on 0%"``."""
    first, sep, rest = flips.partition(", ")
    return f"{first} of {images}{sep}{rest}"


@stage(
    "whatif",
    reads=(
        *("engine", "records", "images", "patches", "clusters", "concepts", "progress", "say"),
        *("embedding", "embedding_space", "clusterer", "views", "encoder"),
    ),
    produces=(
        *("whatif", "whatif_images", "whatif_boxes"),
        *("concept_whatif", "concept_whatif_images", "concept_whatif_boxes", "whatif_info"),
    ),
    settings=("whatif", "preprocess", "attribution", "seed"),
)
def whatif_stage(
    engine: PairedAttribution,
    records: list[ImageRecord],
    images: pd.DataFrame,
    patches: pd.DataFrame,
    clusters: pd.DataFrame,
    concepts: pd.DataFrame,
    progress: bool,
    say: Callable[[str], None],
    embedding: np.ndarray,
    embedding_space: FittedEmbedding | None,
    clusterer: PatchClusterer,
    views: PatchViews,
    encoder: LoadedEncoder | None,
    **settings: object,
) -> dict[str, object]:
    """What-if removal of the top clusters, then of the top concepts (each with its own
    tables, keyed ``cluster`` and ``concept``); every tile of a tested image is placed among
    the clusters once, for both."""
    space = None
    if embedding_space is not None and settings["whatif"].enabled:  # type: ignore[attr-defined]
        hw = settings["preprocess"].input_size  # type: ignore[attr-defined]
        space = region_space(
            engine, records, embedding_space, embedding, clusterer,
            preprocess=settings["preprocess"], side=patch_side(patches, hw),
            attribution=settings["attribution"], reach=settings["whatif"].reach,
            views=views, encoder=encoder,
        )  # type: ignore[arg-type]  # fmt: skip
    run = {"engine": engine, "records": records, "images": images, "progress": progress}
    table, per_image, boxes, info = what_if(
        **run, patches=patches, clusters=clusters, say=say, space=space, **settings
    )  # type: ignore[arg-type]
    members = {int(c): sorted(int(x) for x in g["cluster"]) for c, g in clusters.groupby("concept")}
    c_table, c_per_image, c_boxes, c_info = what_if(
        **run,
        patches=patches.assign(cluster=patches["concept"]),
        clusters=concepts.rename(columns={"concept": "cluster"}),
        say=say,
        space=space,
        members=members,
        level="concept",
        **settings,  # type: ignore[arg-type]
    )
    concept = {"cluster": "concept"}
    return {
        "whatif": table,
        "whatif_images": per_image,
        "whatif_boxes": boxes,
        "concept_whatif": c_table.rename(columns=concept),
        "concept_whatif_images": c_per_image.rename(columns=concept),
        "concept_whatif_boxes": c_boxes.rename(columns=concept),
        "whatif_info": {**info, "concepts": c_info},
    }
