"""Slice against slice: how each model's reliance on each group changes between two slices.

The IMACS paper's own case study is a domain shift: the same two models, the images of
domain X and of domain Y. For every group (concept or cluster) and each model this measures
its reliance in slice X and in slice Y (the mean share of the model's attribution that the
group's patches hold, as in :mod:`imacs.comparison`), the change ``Y - X``, and, within each
slice, ``B - A``:

* ``a_x, a_y, a_change``: model A's reliance in X, in Y, and ``a_y - a_x``;
* ``b_x, b_y, b_change``: the same for model B;
* ``diff_x, diff_y``: ``B - A`` within each slice;
* ``gap_change = diff_y - diff_x = b_change - a_change``: how much more B's reliance changes
  than A's (the interaction).

Every measure has simultaneous intervals (``_lo``/``_hi``) over all groups at level ``ci``,
from one bootstrap over images (:func:`imacs.comparison.simultaneous`). The two slices may
share images (e.g. "autumn" and "A right"): each image has one weight per resample (a
Poisson bootstrap), so a shared image counts alike in both slices, and the changes'
intervals account for the overlap. ``a_shifted``/``b_shifted``/
``gap_shifted`` say an interval lies wholly on one side of 0: the change is real at level
``ci`` for all groups together; never for a group with fewer than :data:`MIN_IMAGES` images
in a slice (``few_images``: a bootstrap over a handful of images says little). There are no
permutation p-values here: the intervals are the evidence.

Groups are ranked by ``by``: ``either`` (the larger of ``|a_change|`` and ``|b_change|``,
the default), ``a``, ``b`` or ``gap`` (absolute values). A group that has no patch in one
of the slices has no change (NaN) and comes last.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from .comparison import (
    NORMAL_ABOVE,
    influence,
    normal_bounds,
    ratio,
    relative_shares,
    resample_weights,
    simultaneous,
)
from .errors import InputError
from .settings import MEASURES, SHIFT_RANKINGS, ComparisonSettings

#: what ``by`` may rank by, and the column it ranks by (absolute values)
RANK_BY = {
    "either": "shift",
    "a": "a_change",
    "b": "b_change",
    "gap": "gap_change",
    "x": "diff_x",
    "y": "diff_y",
}
#: how each ranking reads
RANK_TITLES = SHIFT_RANKINGS


def reliance(patches: pd.DataFrame, group: str, measure: str = "share") -> pd.DataFrame:
    """What :func:`compare_slices` reads from a run's patches: ``image_id``, ``cluster``
    (the patch's ``group`` column: ``cluster`` or ``concept``) and ``attr_a``/``attr_b``
    (for ``measure`` "relative", the relative shares under these names)."""
    if measure not in MEASURES:
        raise InputError(f"measure {measure!r}: choose one of {', '.join(MEASURES)}")
    cols = ("attr_a", "attr_b") if measure == "share" else ("attr_a_rel", "attr_b_rel")
    if not set(cols) <= set(patches.columns):  # a run made before relative shares
        patches = patches.assign(**relative_shares(patches))
    return pd.DataFrame(
        {
            "image_id": patches["image_id"].to_numpy(),
            "cluster": patches[group].to_numpy(),
            "attr_a": patches[cols[0]].to_numpy(np.float64),
            "attr_b": patches[cols[1]].to_numpy(np.float64),
        }
    )


#: fewer images than this in either slice: the group's changes are not called shifted
MIN_IMAGES = 10

#: the measures with intervals: name -> its bound (a share lies in [0, 1])
_MEASURES = {"a_change": 1.0, "b_change": 1.0, "diff_x": 1.0, "diff_y": 1.0, "gap_change": 2.0}


def compare_slices(
    patches: pd.DataFrame,
    in_x: np.ndarray,
    in_y: np.ndarray,
    settings: ComparisonSettings | None = None,
    by: str = "either",
) -> pd.DataFrame:
    """Per group, each model's reliance in slice X and slice Y, its change, and intervals.

    Args:
        patches (pandas.DataFrame): one row per patch, with ``image_id``, ``cluster`` (its
            group), ``attr_a`` and ``attr_b`` (the measure: shares of attribution, or the
            relative shares under these names).
        in_x (numpy.ndarray): bool per row of ``patches``: the patch is in slice X.
        in_y (numpy.ndarray): bool per row: the patch is in slice Y.
        settings (ComparisonSettings, optional): resamples, level and seed.
        by (str): what ranks the groups, one of :data:`RANK_BY`. Default: "either"

    Returns:
        One row per group holding a patch of either slice, sorted by ``rank``:
        ``cluster, rank, n_images_x, n_images_y, n_patches_x, n_patches_y, a_x, a_y,
        a_change, a_change_lo, a_change_hi, a_shifted, b_x, ..., b_shifted, diff_x,
        diff_x_lo, diff_x_hi, diff_y, ..., gap_change, gap_change_lo, gap_change_hi,
        gap_shifted, few_images, shift``.

    Raises:
        InputError: a slice holds no patch, or ``by`` is unknown.
    """
    settings = settings or ComparisonSettings()
    if by not in RANK_BY:
        raise InputError(f"rank by {by!r}: choose one of {', '.join(RANK_BY)}")
    in_x, in_y = np.asarray(in_x, bool), np.asarray(in_y, bool)
    for name, mask in (("X", in_x), ("Y", in_y)):
        if not mask.any():
            raise InputError(f"slice {name} holds no patch: widen it (fewer conditions)")
    p = patches[in_x | in_y]
    in_x, in_y = in_x[in_x | in_y], in_y[in_x | in_y]
    g_codes, g_ids = pd.factorize(p["cluster"], sort=True)
    i_codes, i_ids = pd.factorize(p["image_id"], sort=True)
    shape = (len(g_ids), len(i_ids))

    def sums(values: np.ndarray, rows: np.ndarray) -> sparse.csr_matrix:
        ok = rows & ~np.isnan(values)
        where = (g_codes[ok], i_codes[ok])
        return sparse.csr_matrix((values[ok], where), shape=shape)

    a, b = (p[c].to_numpy(np.float64) for c in ("attr_a", "attr_b"))
    ones = np.ones(len(p))
    mats = {  # (group, image) sums of each model's shares and the patch counts, per slice
        f"{m}_{s}": sums(v, rows)
        for s, rows in (("x", in_x), ("y", in_y))
        for m, v in (("a", a), ("b", b), ("n", ones))
    }
    full = np.ones((shape[1], 1))
    est = _measures({k: ratio(mats[k], mats[f"n_{k[-1]}"], full)[0] for k in _KEYS})
    rng = np.random.default_rng(settings.seed)
    if shape[1] >= NORMAL_ABOVE:
        intervals = _normal(mats, est, settings, rng)
    else:
        intervals = _bootstrap(mats, est, settings, rng)
    return _table(g_ids, est, intervals, mats, by)


def _bootstrap(
    mats: dict[str, sparse.csr_matrix],
    est: dict[str, np.ndarray],
    settings: ComparisonSettings,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each measure's simultaneous intervals from one bootstrap over the images."""
    n_groups, n_images = mats["n_x"].shape
    mats32 = {k: m.astype(np.float32) for k, m in mats.items()}  # float32 products: faster
    boot = {m: np.empty((settings.n_boot, n_groups)) for m in _MEASURES}
    for start, w in resample_weights(rng, settings.n_boot, n_images):
        means = {k: ratio(mats32[k], mats32[f"n_{k[-1]}"], w) for k in _KEYS}
        for m, values in _measures(means).items():
            if m in boot:
                boot[m][start : start + w.shape[1]] = values
    return {
        m: simultaneous(boot[m], est[m], settings.ci, bound)[:2] for m, bound in _MEASURES.items()
    }


#: each measure as a sum of the four means, with signs
_COMBOS = {
    "a_change": (("a_y", 1), ("a_x", -1)),
    "b_change": (("b_y", 1), ("b_x", -1)),
    "diff_x": (("b_x", 1), ("a_x", -1)),
    "diff_y": (("b_y", 1), ("a_y", -1)),
    "gap_change": (("b_y", 1), ("a_y", -1), ("b_x", -1), ("a_x", 1)),
}


def _normal(
    mats: dict[str, sparse.csr_matrix],
    est: dict[str, np.ndarray],
    settings: ComparisonSettings,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What :func:`_bootstrap` estimates, in normal theory (from :data:`NORMAL_ABOVE`
    images on): each mean's per-image influence (the delta method), each measure's as the
    signed sum of its means', and the simultaneous multiplier from their joint normal law
    (see :func:`imacs.comparison._normal_intervals`)."""
    infl = {k: influence(mats[k], mats[f"n_{k[-1]}"], est[k]) for k in _KEYS}
    out = {}
    for m, bound in _MEASURES.items():
        u = sum(sign * infl[k] for k, sign in _COMBOS[m])
        out[m] = normal_bounds(u, est[m], settings, rng, bound)[:2]
    return out


#: the four weighted means every measure is made of
_KEYS = ("a_x", "b_x", "a_y", "b_y")


def _measures(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reliances and every measure of change, from the four means."""
    out = dict(means)
    out["a_change"] = means["a_y"] - means["a_x"]
    out["b_change"] = means["b_y"] - means["b_x"]
    out["diff_x"] = means["b_x"] - means["a_x"]
    out["diff_y"] = means["b_y"] - means["a_y"]
    out["gap_change"] = out["diff_y"] - out["diff_x"]
    return out


def _table(
    groups: np.ndarray,
    est: dict[str, np.ndarray],
    intervals: dict[str, tuple[np.ndarray, np.ndarray]],
    mats: dict[str, sparse.csr_matrix],
    by: str,
) -> pd.DataFrame:
    """The estimates, intervals and counts as one ranked table."""
    t = pd.DataFrame({"cluster": np.asarray(groups)})
    for s in ("x", "y"):
        t[f"n_images_{s}"] = np.asarray((mats[f"n_{s}"] > 0).sum(1)).ravel()
        t[f"n_patches_{s}"] = np.asarray(mats[f"n_{s}"].sum(1)).ravel().astype(np.int64)
    for m in _MEASURES:
        lo, hi = intervals[m]
        if m.endswith("_change"):
            r = m[: -len("_change")]
            if r in ("a", "b"):
                t[f"{r}_x"], t[f"{r}_y"] = est[f"{r}_x"], est[f"{r}_y"]
        t[m], t[f"{m}_lo"], t[f"{m}_hi"] = est[m], lo, hi
        known = ~np.isnan(est[m])
        t.loc[~known, [f"{m}_lo", f"{m}_hi"]] = np.nan
        if m.endswith("_change"):
            t[f"{m[: -len('_change')]}_shifted"] = known & ((lo > 0) | (hi < 0))
    t["few_images"] = np.minimum(t["n_images_x"], t["n_images_y"]) < MIN_IMAGES
    for r in ("a", "b", "gap"):
        t[f"{r}_shifted"] &= ~t["few_images"]
    t["shift"] = np.fmax(np.abs(t["a_change"]), np.abs(t["b_change"]))
    key = np.abs(t[RANK_BY[by]].to_numpy())
    order = np.lexsort((t["cluster"].to_numpy(), -np.nan_to_num(key, nan=-1.0)))
    t = t.iloc[order].reset_index(drop=True)
    t.insert(1, "rank", np.arange(1, len(t) + 1))
    return t


def describe(table: pd.DataFrame, level: str, names: dict[str, str]) -> list[str]:
    """Lines for a terminal: per group, each model's reliance X -> Y with the change's
    interval (``*``: shifted), and B - A within each slice."""
    out = []
    for r in table.itertuples(index=False):
        row = r._asdict()
        n = f"{row['n_images_x']} / {row['n_images_y']} images"
        head = f"{level} {row[level]} (#{row['rank']}, {n})"
        if min(row["n_images_x"], row["n_images_y"]) == 0:
            head += ", only in " + ("Y" if row["n_images_x"] == 0 else "X")
        elif row["few_images"]:
            head += ", too few images to call a change"
        out.append(head)
        for m in ("a", "b"):
            out.append(f"  {names[m]}: {_change(row, m)}")
        out.append(
            f"  B - A: {_num(row['diff_x'])} in X, {_num(row['diff_y'])} in Y "
            f"(change {_interval(row, 'gap_change')}{' *' if row['gap_shifted'] else ''})"
        )
    return out


def _num(x: float) -> str:
    return "–" if x != x else f"{x:+.3f}"


def _interval(row: dict, m: str) -> str:
    if row[m] != row[m]:
        return "– (not in both slices)"
    return f"{row[m]:+.3f} [{row[f'{m}_lo']:+.3f}, {row[f'{m}_hi']:+.3f}]"


def _change(row: dict, m: str) -> str:
    x, y = row[f"{m}_x"], row[f"{m}_y"]
    shown = "–" if x != x else f"{x:.3f}", "–" if y != y else f"{y:.3f}"
    mark = " *" if row[f"{m}_shifted"] else ""
    return f"{shown[0]} -> {shown[1]}, change {_interval(row, f'{m}_change')}{mark}"


__all__ = [
    *("MEASURES", "MIN_IMAGES", "RANK_BY", "RANK_TITLES", "compare_slices", "describe"),
    "reliance",
]
