"""Stage 6: what-if removal, the causal check of a cluster.

A cluster's ``diff`` says where a model *looks*; removal says whether it *needs* what it
looks at. For each cluster a reader looks at first (the ``top`` clusters by ``|diff|``, plus
every significant one), every image holding a patch of the cluster is run through both
models again, forward passes only, with that cluster's patch boxes filled with the run's
Integrated Gradients baseline (black, gray or the blurred image: the very baseline IG used,
from :meth:`imacs.attribution.PairedAttribution.baseline`). As a control the same images get
the same number of same-size boxes at random places that do not overlap the cluster's
patches (nor each other, where the image has room), seeded by the run's seed.

Per cluster and model: ``flip`` (share of images whose predicted class changes), ``drop``
(mean fall of the probability of the originally predicted class), accuracy before and after,
and the same ``flip`` and ``drop`` for the random boxes.

The verdict rule (``whatif_effect``): model X *depends* on a cluster when removing it flips X
on clearly more images than the random boxes do:

* the excess ``flip - control_flip`` is at least ``min_excess`` (default 0.1), and
* a one-sided exact McNemar test on the paired outcomes (per image: removal flipped it,
  the random boxes did not, or the reverse) gives ``p <= alpha / (2 * clusters tested)``
  (Bonferroni over both models and every tested cluster; ``alpha`` default 0.05). Exact,
  so it holds for small clusters: with 10 clusters tested it needs at least 9 images where
  only the removal flips the model.

``whatif_effect`` is ``"B depends"``, ``"A depends"``, ``"both"`` or ``"neither"``;
``whatif_verdict`` says the numbers in one sentence.

This module imports no torch (the run reader imports its column names); the engine does the
forward passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .runformat import ROLES, empty, whatif_columns, whatif_image_columns
from .settings import AttributionSettings, Preprocess, WhatIfSettings
from .stage import stage

if TYPE_CHECKING:
    from .attribution import PairedAttribution
    from .data import ImageRecord

EFFECTS = ("B depends", "A depends", "both", "neither")

#: columns of ``whatif.parquet`` (also merged into :attr:`imacs.run.Run.clusters`)
COLUMNS: dict[str, str] = whatif_columns("cluster")
#: columns of ``whatif_images.parquet``: each tested (cluster, image) pair's predictions
#: after the removal (the predictions before are in ``images.parquet``)
IMAGE_COLUMNS: dict[str, str] = whatif_image_columns("cluster")


def empty_images() -> pd.DataFrame:
    """An empty ``whatif_images`` table."""
    return empty("whatif_images")


def empty_table() -> pd.DataFrame:
    """An empty ``whatif`` table."""
    return empty("whatif")


def chosen_clusters(clusters: pd.DataFrame, top: int) -> list[int]:
    """Clusters ranked 1..``top``, plus every significant one, in rank order."""
    pick = clusters["rank"] <= top
    if "significant" in clusters:
        pick |= clusters["significant"].astype(bool)
    return [int(c) for c in clusters.loc[pick].sort_values("rank")["cluster"]]


def control_boxes(
    boxes: np.ndarray, hw: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Boxes of the same sizes as ``boxes`` at random places off them.

    Each box goes to a uniformly random position that overlaps neither ``boxes`` nor the
    control boxes already placed; failing that, one off ``boxes`` only; failing that, one
    that overlaps ``boxes`` least (counted as a clash).

    Args:
        boxes (numpy.ndarray): (k, 4) x0, y0, x1, y1 in model-input pixels (x1, y1 exclusive).
        hw (tuple[int, int]): (height, width) of the model input.
        rng (numpy.random.Generator): the random source.

    Returns:
        (k, 4) int32 boxes, and how many of them overlap ``boxes``.
    """
    h, w = hw
    cluster = np.zeros((h, w), dtype=np.int32)
    for x0, y0, x1, y1 in boxes:
        cluster[y0:y1, x0:x1] = 1
    placed = cluster.copy()
    out = np.zeros((len(boxes), 4), dtype=np.int32)
    clashes = 0
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        bw, bh = int(x1 - x0), int(y1 - y0)
        on_cluster = _window_sums(cluster, bh, bw)
        free = _window_sums(placed, bh, bw) == 0
        if not free.any():
            free = on_cluster == 0
        if not free.any():
            free = on_cluster == on_cluster.min()
            clashes += 1
        cand = np.flatnonzero(free.ravel())
        y, x = divmod(int(cand[rng.integers(len(cand))]), free.shape[1])
        out[j] = (x, y, x + bw, y + bh)
        placed[y : y + bh, x : x + bw] = 1
    return out, clashes


def _window_sums(mask: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Sum of ``mask`` in every bh x bw window, indexed by the window's top-left corner."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = mask.cumsum(0).cumsum(1)
    return ii[bh:, bw:] - ii[:-bh, bw:] - ii[bh:, :-bw] + ii[:-bh, :-bw]


def excess_p_value(only_removal: int, only_control: int) -> float:
    """One-sided exact McNemar p-value: P(X >= only_removal), X ~ Binomial(n, 1/2), n the
    discordant pairs (images that flipped under one treatment and not the other)."""
    n = only_removal + only_control
    if n == 0:
        return 1.0
    return sum(math.comb(n, j) for j in range(only_removal, n + 1)) / 2**n


@dataclass
class _Jobs:
    """One row per (cluster, image): the boxes to remove and their random controls."""

    cluster: np.ndarray
    image: np.ndarray
    removal: list[np.ndarray]
    control: list[np.ndarray]
    clashes: np.ndarray


def _plan(patches: pd.DataFrame, chosen: list[int], hw: tuple[int, int], seed: int) -> _Jobs:
    p = patches[patches["cluster"].isin(chosen)]
    cl, im = p["cluster"].to_numpy(np.int64), p["image_id"].to_numpy(np.int64)
    order = np.lexsort((im, cl))
    cl, im = cl[order], im[order]
    all_boxes = p[["in_x0", "in_y0", "in_x1", "in_y1"]].to_numpy(np.int64)[order]
    starts = np.flatnonzero(np.r_[len(cl) > 0, (cl[1:] != cl[:-1]) | (im[1:] != im[:-1])])
    ends = np.r_[starts[1:], len(cl)] if len(starts) else starts
    clusters, images, removal, control, clashes = [], [], [], [], []
    for s, e in zip(starts, ends, strict=True):
        c, i, boxes = int(cl[s]), int(im[s]), all_boxes[s:e]
        rng = np.random.default_rng([seed, c, i])  # independent of the order
        ctrl, clash = control_boxes(boxes, hw, rng)
        clusters.append(c)
        images.append(i)
        removal.append(boxes)
        control.append(ctrl)
        clashes.append(clash)
    return _Jobs(
        np.asarray(clusters, np.int64),
        np.asarray(images, np.int64),
        removal,
        control,
        np.asarray(clashes, np.int64),
    )


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
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """Remove each chosen cluster's patches and run both models again.

    Args:
        engine (PairedAttribution): the run's models, on their device, with its baseline.
        records (list[ImageRecord]): the analysed images; ``image_id`` indexes it.
        images (pandas.DataFrame): the images table (``label``, ``pred_a``, ``pred_b``).
        patches (pandas.DataFrame): the patches table (``cluster``, ``in_x0..in_y1``).
        clusters (pandas.DataFrame): the clusters table (``rank``, ``significant``).
        whatif (WhatIfSettings): which clusters, and the verdicts' thresholds.
        preprocess (Preprocess): how an image becomes a model input.
        attribution (AttributionSettings): its ``baseline`` fills the removed boxes;
            ``batch_size`` sizes the forward passes.
        seed (int): seed of the control boxes.
        progress (bool): show a progress bar. Default: False.
        say (callable, optional): receives one-line status messages.

    Returns:
        The what-if table (one row per tested cluster, in rank order; columns
        :data:`COLUMNS`), each tested image's predictions after the removal (columns
        :data:`IMAGE_COLUMNS`) and what was done, for ``run.json``.
    """
    from .attribute_set import _decode, _pool  # torch-free callers never reach this
    from .errors import ImacsError
    from .progress import Progress

    t0 = time.perf_counter()
    ws = whatif
    info: dict[str, object] = {
        "enabled": ws.enabled,
        "top": ws.top,
        "baseline": attribution.baseline,
        "alpha": ws.alpha,
        "min_excess": ws.min_excess,
        "clusters": [],
        "n_clusters": 0,
        "n_images": 0,
        "n_forward": 0,
    }
    if not ws.enabled:
        return empty_table(), empty_images(), info
    chosen = chosen_clusters(clusters, ws.top)
    if not chosen:  # --whatif-top 0 and nothing significant
        return empty_table(), empty_images(), info
    jobs = _plan(patches, chosen, preprocess.input_size, seed)
    ids = np.unique(jobs.image)
    label = images["label"].to_numpy()
    before = {r: images[f"pred_{r}"].to_numpy() for r in ROLES}
    prob_before = {r: images[f"prob_{r}"].to_numpy(np.float64) for r in ROLES}
    # per job and model: predicted class and probability of the original class, after
    after = {
        (v, r): (np.full(len(jobs.image), -1, np.int64), np.full(len(jobs.image), np.nan))
        for v in ("removal", "control")
        for r in ROLES
    }
    batch = max(16, 4 * attribution.batch_size)  # forward passes only
    order = np.argsort(jobs.image, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(jobs.image[order])) + 1) if len(ids) else []
    by_image = dict(zip(ids.tolist(), groups, strict=True))  # image -> its jobs
    block = max(8, batch // 2)
    base: dict[int, np.ndarray] = {}
    try:
        with Progress(len(ids), "what-if", enabled=progress) as bar, _pool() as pool:
            for s in range(0, len(ids), block):
                part = ids[s : s + block]
                decoded = list(pool.map(lambda i: _decode(records[i], preprocess), part))
                pixels = {
                    int(i): d[0] for i, d in zip(part, decoded, strict=True) if d[0] is not None
                }
                todo = np.concatenate([by_image[i] for i in pixels] or [np.zeros(0, np.int64)])
                if len(todo):
                    base = dict(
                        zip(
                            pixels,
                            engine.baseline_array(np.stack(list(pixels.values()))),
                            strict=True,
                        )
                    )
                for t in range(0, len(todo), batch):
                    js = todo[t : t + batch]
                    for variant, boxes in (("removal", jobs.removal), ("control", jobs.control)):
                        x = np.stack([_filled(pixels, base, jobs.image[j], boxes[j]) for j in js])
                        for r in ROLES:
                            probs = engine.probabilities_array(r, x)
                            orig = before[r][jobs.image[js]]
                            pred, prob = after[variant, r]
                            pred[js] = probs.argmax(1)
                            prob[js] = probs[np.arange(len(js)), orig]
                    info["n_forward"] = int(info["n_forward"]) + 2 * len(js)
                bar.update(len(part))
    except ImacsError as exc:  # the run keeps everything else
        (say or (lambda _m: None))(f"warning: what-if removal stopped: {exc}")
        info["error"] = str(exc)
        return empty_table(), empty_images(), info

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
        }
        depends = {}
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
            depends[r] = flip.mean() - flip_c.mean() >= ws.min_excess and p <= ws.alpha / n_tests
        box_count = int(row["whatif_n_boxes"])  # type: ignore[call-overload]
        row["whatif_control_overlap"] = float(jobs.clashes[js].sum() / max(1, box_count))
        row["whatif_effect"] = (
            "both"
            if depends["a"] and depends["b"]
            else "B depends"
            if depends["b"]
            else "A depends"
            if depends["a"]
            else "neither"
        )
        row["whatif_verdict"] = verdict(row)
        rows.append(row)
    table = pd.DataFrame(rows) if rows else empty_table()
    table = table.astype(COLUMNS)[list(COLUMNS)]
    done = np.flatnonzero(after["removal", "a"][0] >= 0)
    per_image = pd.DataFrame(
        {
            "cluster": jobs.cluster[done],
            "image_id": jobs.image[done],
            **{
                f"{k}_{r}_after": after["removal", r][i][done]
                for r in ROLES
                for i, k in ((0, "pred"), (1, "prob"))
            },
        }
    ).astype(IMAGE_COLUMNS)
    info.update(
        clusters=[int(c) for c in table["cluster"]],
        n_clusters=len(table),
        n_images=len(ids),
        seconds=round(time.perf_counter() - t0, 4),
    )
    return table, per_image, info


def verdict(row: dict[str, object] | pd.Series) -> str:
    """One sentence: how often removal flips each model, against random boxes."""

    def pct(key: str) -> str:
        return f"{float(row[key]):.0%}"  # type: ignore[arg-type]

    n = int(row["whatif_n_images"])  # type: ignore[call-overload]
    return (
        f"removing it flips B on {pct('whatif_flip_b')} of {n} image{'s' if n != 1 else ''}, "
        f"A on {pct('whatif_flip_a')}; random boxes flip B on {pct('whatif_control_flip_b')}, "
        f"A on {pct('whatif_control_flip_a')}"
    )


def _filled(
    pixels: dict[int, np.ndarray], base: dict[int, np.ndarray], image: int, boxes: np.ndarray
) -> np.ndarray:
    x = pixels[int(image)].copy()
    b = base[int(image)]
    for x0, y0, x1, y1 in boxes:
        x[:, y0:y1, x0:x1] = b[:, y0:y1, x0:x1]
    return x


@stage(
    "whatif",
    reads=("engine", "records", "images", "patches", "clusters", "concepts", "progress", "say"),
    produces=("whatif", "whatif_images", "concept_whatif", "concept_whatif_images", "whatif_info"),
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
    **settings: object,
) -> dict[str, object]:
    """What-if removal of the top clusters, then of the top concepts (each with its own
    tables, keyed ``cluster`` and ``concept``)."""
    run = {"engine": engine, "records": records, "images": images, "progress": progress}
    table, per_image, info = what_if(**run, patches=patches, clusters=clusters, say=say, **settings)
    c_table, c_per_image, c_info = what_if(
        **run,
        patches=patches.assign(cluster=patches["concept"]),
        clusters=concepts.rename(columns={"concept": "cluster"}),
        say=say,
        **settings,
    )
    return {
        "whatif": table,
        "whatif_images": per_image,
        "concept_whatif": c_table.rename(columns={"cluster": "concept"}),
        "concept_whatif_images": c_per_image.rename(columns={"cluster": "concept"}),
        "whatif_info": {**info, "concepts": c_info},
    }
