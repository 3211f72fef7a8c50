"""Stage 5: per-cluster comparison of the two models.

For each cluster: how many patches and images it holds, the mean share of A's and of B's
positive attribution its patches hold, and their difference ``diff = attr_b - attr_a``
(always B minus A). Rank 1 is the cluster with the largest absolute difference.

Uncertainty is computed for the family of all clusters at once, so that "significant" keeps
its promise however many clusters a run has:

* ``p_value``: a family-wise adjusted p-value from a sign-flip permutation test. Under the
  null hypothesis the two models are exchangeable within each image, so swapping A and B in
  an image flips the sign of every ``attr_b - attr_a`` in it, in all clusters at once. Each
  cluster's statistic is its summed difference over the root of its per-image sums of
  squares; comparing each cluster with the *maximum* over clusters of the permuted
  statistics (Westfall and Young's single-step max-T) controls the family-wise error rate.
  ``significant`` is ``p_value < 1 - ci`` *and* the whole simultaneous interval beyond the
  bar (:attr:`ComparisonSettings.bar`: ``--min-effect``, or what a reference pair of two
  trainings of one recipe surely differs by, if larger); ``within_bar`` marks a difference
  that is real (``p_value < 1 - ci``) but not shown to exceed the bar.
* ``diff_lo``/``diff_hi``: simultaneous intervals from a bootstrap over *images* (patches of
  one image are not independent; one resample serves every cluster; Poisson weights, see
  :func:`resample_weights`), widened by the
  bootstrap's max-|t| over clusters so that all intervals hold together at level ``ci``.
  ``diff_se`` is each cluster's bootstrap standard error. A difference of two shares lies
  in [-1, 1], and so do the intervals (clipped where the normal-theory width overshoots).

Relative reliance. ``attr_a``/``attr_b`` are shares of each model's attribution over the whole
image, so a model with diffuse maps (little mass in any patch) gets low shares in every
cluster and ``diff`` leans towards the other model everywhere. The second definition removes
that bias: ``attr_a_rel``/``attr_b_rel`` are each model's shares renormalised over the
image's selected patches (per image and model they sum to 1; 0 where the model has no
positive attribution in them), aggregated per cluster exactly as ``attr_a``/``attr_b``, with
``diff_rel = attr_b_rel - attr_a_rel`` and its simultaneous interval
``diff_rel_lo``/``diff_rel_hi`` from the same bootstrap procedure. It answers "of what each
model attends to among the salient regions, how much is this kind of content?"; ``diff`` stays
the headline and the ranking.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import sparse

from .errors import InputError
from .settings import ComparisonSettings


def compare_clusters(
    patches: pd.DataFrame,
    images: pd.DataFrame,
    classes: list[str],
    settings: ComparisonSettings | None = None,
    with_classes: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cluster statistics and their per-class breakdown.

    Args:
        patches (pandas.DataFrame): one row per patch with columns ``image_id``,
            ``cluster``, ``attr_a``, ``attr_b`` and ``saliency``; ``attr_a_rel`` and
            ``attr_b_rel`` when the table has them (else from these patches, per image).
        images (pandas.DataFrame): one row per image, indexed by ``image_id``, with columns
            ``label``, ``pred_a``, ``pred_b``.
        classes (list[str]): class names by index.
        settings (ComparisonSettings, optional): bootstrap settings.
        with_classes (bool): compute the per-class breakdown (else it is empty). Default:
            True

    Returns:
        ``clusters``: one row per cluster (sorted by rank) with ``cluster, rank,
        n_patches, n_images, attr_a, attr_b, diff, diff_se, diff_lo, diff_hi, p_value,
        significant, saliency, top_class, top_class_share, disagree_rate, acc_a, acc_b,
        attr_a_rel, attr_b_rel, diff_rel, diff_rel_lo, diff_rel_hi`` (relative reliance:
        see the module's notes);
        ``cluster_classes``: one row per (cluster, class) with ``cluster, class,
        class_name, n_patches, n_images, attr_a, attr_b, diff``.
    """
    settings = settings or ComparisonSettings()
    p = patches.join(images[["label", "pred_a", "pred_b"]], on="image_id")
    rel = ["attr_a_rel", "attr_b_rel"]
    if not set(rel) <= set(p.columns) or p[rel].isna().all().any():  # runs before issue 10
        p = p.assign(**relative_shares(p))
    p = p.astype(dict.fromkeys(["attr_a", "attr_b", *rel], np.float64))  # means in float64
    if p.empty:
        raise InputError("no clusters to compare: no patches were found")
    stats, stats_rel = _family_stats(p, settings, extra=(("attr_a_rel", "attr_b_rel"),))
    means = _rows(p, classes)
    intervals = pd.DataFrame(
        [_interval_columns(stats, stats_rel, k, settings) for k in range(len(means))]
    )
    clusters = pd.concat([means, intervals], axis=1)
    return _ranked(clusters), _by_class(p if with_classes else p.iloc[:0], classes)


_COLUMNS = (
    *("cluster", "n_patches", "n_images", "attr_a", "attr_b", "diff", "diff_se", "diff_lo"),
    *("diff_hi", "p_value", "significant", "saliency", "top_class", "top_class_share"),
    *("disagree_rate", "acc_a", "acc_b", "attr_a_rel", "attr_b_rel", "diff_rel"),
    *("diff_rel_lo", "diff_rel_hi", "n_images_rel", "within_bar"),
)


def _rows(p: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Every cluster's means and counts, in ascending cluster order: over its patches, and
    over the images holding them (each image once)."""
    g = p.groupby("cluster", sort=True)
    t = g.agg(
        n_patches=("attr_a", "size"),
        attr_a=("attr_a", "mean"),
        attr_b=("attr_b", "mean"),
        saliency=("saliency", "mean"),
        attr_a_rel=("attr_a_rel", "mean"),
        attr_b_rel=("attr_b_rel", "mean"),
    )
    # the most frequent class among its patches (ties: the lowest class index)
    by_label = p.groupby(["cluster", "label"], sort=True).size().reset_index(name="n")
    by_label = by_label.sort_values(["cluster", "n"], ascending=[True, False], kind="stable")
    top = by_label.drop_duplicates("cluster").set_index("cluster")
    names = [classes[c] if 0 <= c < len(classes) else str(c) for c in top["label"].astype(int)]
    # its images, each once: how often the models disagree, and each model's accuracy
    img = p.drop_duplicates(["cluster", "image_id"])
    flags = pd.DataFrame(
        {
            "cluster": img["cluster"].to_numpy(),
            "disagree_rate": (img["pred_a"] != img["pred_b"]).to_numpy(np.float64),
            "acc_a": (img["pred_a"] == img["label"]).to_numpy(np.float64),
            "acc_b": (img["pred_b"] == img["label"]).to_numpy(np.float64),
        }
    ).groupby("cluster", sort=True)
    rates = flags.mean()
    out = pd.DataFrame(
        {
            "cluster": t.index.to_numpy().astype(int),
            "n_patches": t["n_patches"].to_numpy(),
            "n_images": flags.size().to_numpy(),
            "attr_a": t["attr_a"].to_numpy(),
            "attr_b": t["attr_b"].to_numpy(),
            "diff": (t["attr_b"] - t["attr_a"]).to_numpy(),
            "saliency": t["saliency"].to_numpy(),
            "top_class": names,
            "top_class_share": (top["n"] / t["n_patches"]).to_numpy(),
            "disagree_rate": rates["disagree_rate"].to_numpy(),
            "acc_a": rates["acc_a"].to_numpy(),
            "acc_b": rates["acc_b"].to_numpy(),
            "attr_a_rel": t["attr_a_rel"].to_numpy(),
            "attr_b_rel": t["attr_b_rel"].to_numpy(),
            "diff_rel": (t["attr_b_rel"] - t["attr_a_rel"]).to_numpy(),
        }
    )
    return out


def _interval_columns(stats: dict, stats_rel: dict, k: int, settings: ComparisonSettings) -> dict:
    """The k-th cluster's intervals, family-wise p-value and verdict against the bar."""
    lo, hi, bar = float(stats["lo"][k]), float(stats["hi"][k]), settings.bar
    real = bool(stats["p"][k] < 1.0 - settings.ci)
    beyond = lo > bar or hi < -bar
    return {
        "diff_se": float(stats["se"][k]),
        "diff_lo": lo,
        "diff_hi": hi,
        "p_value": float(stats["p"][k]),
        "significant": real and beyond,
        "within_bar": real and not beyond,
        "diff_rel_lo": float(stats_rel["lo"][k]),
        "diff_rel_hi": float(stats_rel["hi"][k]),
        "n_images_rel": int(stats_rel["n_images"][k]),
    }


def _ranked(clusters: pd.DataFrame) -> pd.DataFrame:
    """Clusters sorted by rank: 1 = largest ``|diff|`` (ties by cluster id)."""
    clusters = clusters[list(_COLUMNS)]
    order = np.lexsort((clusters["cluster"].to_numpy(), -clusters["diff"].abs().to_numpy()))
    clusters = clusters.assign(rank=0)
    clusters.loc[clusters.index[order], "rank"] = np.arange(1, len(clusters) + 1)
    clusters = clusters.sort_values("rank").reset_index(drop=True)
    front = ["cluster", "rank"]
    return clusters[front + [c for c in clusters.columns if c not in front]]


def _by_class(p: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per (cluster, class)."""
    by_class = (
        p.groupby(["cluster", "label"], sort=True)
        .agg(
            n_patches=("attr_a", "size"),
            n_images=("image_id", "nunique"),
            attr_a=("attr_a", "mean"),
            attr_b=("attr_b", "mean"),
        )
        .reset_index()
        .rename(columns={"label": "class"})
    )
    by_class["diff"] = by_class["attr_b"] - by_class["attr_a"]
    by_class.insert(
        2,
        "class_name",
        [classes[c] if c < len(classes) else str(c) for c in by_class["class"]],
    )
    return by_class


def relative_shares(patches: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each patch's ``attr_a``/``attr_b`` renormalised over its image's patches.

    Args:
        patches (pandas.DataFrame): every selected patch of the images concerned, with
            ``image_id``, ``attr_a`` and ``attr_b``.

    Returns:
        ``attr_a_rel``, ``attr_b_rel`` and ``diff_rel`` per patch (float64); per image and
        model the shares sum to 1, or are all 0 when the model's shares in them are; NaN
        for the patch of an image with a single selected patch (left out of the measure).
    """
    out = {}
    # an image with one selected patch gives it a share of 1 from both models: it says
    # nothing about what either prefers, so it is left out (NaN) of the relative measure
    alone = patches.groupby("image_id")["image_id"].transform("size").to_numpy() < 2
    for r in ("a", "b"):
        share = patches[f"attr_{r}"].to_numpy(np.float64)
        total = patches.groupby("image_id")[f"attr_{r}"].transform("sum").to_numpy(np.float64)
        rel = np.where(total > 0, share / np.where(total > 0, total, 1.0), 0.0)
        out[f"attr_{r}_rel"] = np.where(alone, np.nan, rel)
    out["diff_rel"] = out["attr_b_rel"] - out["attr_a_rel"]
    return out


#: from this many images on, intervals and p-values are computed in normal theory (the
#: delta method and the joint normal law of the clusters' statistics), which the bootstrap
#: and the permutations agree with at such sizes (test cmp012), in a fraction of the time
NORMAL_ABOVE = 20_000


def _poisson_table() -> np.ndarray:
    """Poisson(1)'s quantiles at the midpoints of 65,536 equal steps: a uniform 16-bit draw
    looked up here is a Poisson(1) draw (mean 1, variance 0.99997)."""
    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    cdf, k, p = np.exp(-1.0), 0, np.exp(-1.0)
    out = np.zeros(1 << 16, np.float32)
    while True:  # weight k for every u past P(K <= k)
        above = u > cdf
        if not above.any():
            return out
        out[above] += 1
        k += 1
        p /= k
        cdf += p


_POISSON = _poisson_table()


def resample_weights(
    rng: np.random.Generator, n_boot: int, n: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Bootstrap resamples of ``n`` units as weights, a block at a time: ``(first
    resample's index, (n, block) float32 weights)`` (a column per resample, so a sparse
    (groups, n) matrix multiplies it without a copy).

    A Poisson bootstrap: each unit's weight in each resample is an independent Poisson(1)
    draw (how often it would be drawn, as ``n`` draws with replacement give it for large
    ``n``). For means (ratios of weighted sums) it is asymptotically equivalent to the
    ordinary bootstrap, and each unit's weight is its own: two slices that share images
    share their weights. A draw costs a 16-bit random number and a table look-up (a fifth
    of the time of drawing ``n`` indices and counting them).

    Args:
        rng (numpy.random.Generator): where the draws come from.
        n_boot (int): resamples in all.
        n (int): units (images).
    """
    block = max(1, 4_000_000 // max(n, 1))  # bound memory: ~4M weights at a time
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        u = np.frombuffer(rng.bytes(2 * b * n), dtype=np.uint16).reshape(n, b)
        yield start, _POISSON[u]


def random_signs(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """(n, b) float32 signs, each +1 or -1 with probability 1/2, from random bits."""
    bits = np.unpackbits(np.frombuffer(rng.bytes((b * n + 7) // 8), dtype=np.uint8))
    return bits[: b * n].reshape(n, b).astype(np.float32) * 2 - 1


def ratio(sums: sparse.spmatrix, counts: sparse.spmatrix, w: np.ndarray) -> np.ndarray:
    """Weighted means per row of ``sums``/``counts`` (groups × units) under each column of
    weights ``w`` (units × resamples): (resamples, groups), NaN where no unit counts."""
    num, den = (sums @ w).T, (counts @ w).T
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def simultaneous(
    boot: np.ndarray, estimate: np.ndarray, ci: float, bound: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous intervals for a family of estimates from their bootstrap replicates.

    Args:
        boot (numpy.ndarray): (resamples, family) replicates; NaN where a member has no
            value in a resample.
        estimate (numpy.ndarray): (family,) the estimates.
        ci (float): the level all intervals hold at together.
        bound (float): the estimates lie in [-bound, bound]; so do the intervals.

    Returns:
        ``lo``, ``hi`` and the bootstrap standard errors ``se``: each estimate ± the
        ``ci`` quantile of the bootstrap's max-|t| over the family times its ``se``.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # a member with no value (relative measure, single-patch images): no spread
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nan_to_num(np.nanstd(boot, axis=0, ddof=1))
        t = np.abs(boot - estimate) / np.where(se > 0, se, np.inf)
    max_t = np.nanmax(np.where(np.isnan(t), -np.inf, t), axis=1)
    finite = max_t[np.isfinite(max_t)]  # none when no member has a value
    q = float(np.quantile(finite, ci)) if len(finite) else 0.0
    lo = np.clip(estimate - q * se, -bound, bound)
    hi = np.clip(estimate + q * se, -bound, bound)
    return lo, hi, se


def _family_stats(
    p: pd.DataFrame,
    settings: ComparisonSettings,
    extra: tuple[tuple[str, str], ...] = (),
) -> list[dict[str, np.ndarray]]:
    """Standard errors, simultaneous intervals and family-wise p-values for every cluster
    (in ascending cluster order), from per-(cluster, image) sums of ``attr_b - attr_a``;
    then standard errors and simultaneous intervals (no p-values) of each ``(col_a, col_b)``
    pair in ``extra``, from the very same bootstrap resamples (drawing them is most of the
    cost, and the first result does not change with ``extra``). From :data:`NORMAL_ABOVE`
    images on, in normal theory instead (:func:`_normal_intervals`)."""
    c_codes, c_ids = pd.factorize(p["cluster"], sort=True)
    i_codes, i_ids = pd.factorize(p["image_id"], sort=True)
    n_c, n_i = len(c_ids), len(i_ids)
    pairs = (("attr_a", "attr_b"), *extra)
    # (cluster, image) sums and counts, sparse: an image holds a few clusters' patches
    sums, counts = [], []  # per pair; counts: the patches that count (not NaN)
    for col_a, col_b in pairs:
        d = (p[col_b] - p[col_a]).to_numpy(np.float64)
        ok = ~np.isnan(d)
        where = (c_codes[ok], i_codes[ok])
        sums.append(sparse.csr_matrix((d[ok], where), shape=(n_c, n_i)))
        counts.append(sparse.csr_matrix((np.ones(int(ok.sum())), where), shape=(n_c, n_i)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.stack(
            [
                np.asarray(s.sum(1)).ravel() / np.asarray(c.sum(1)).ravel()
                for s, c in zip(sums, counts, strict=True)
            ]
        )
    rng = np.random.default_rng(settings.seed)
    if n_i >= NORMAL_ABOVE:
        triples = zip(sums, counts, diff, strict=True)
        out = [_normal_intervals(s, c, d, settings, rng) for s, c, d in triples]
        out[0]["p"] = _p_values(sums[0], settings, rng, normal=True)
        return out
    out = _bootstrap_intervals(sums, counts, diff, settings, rng)
    out[0]["p"] = _p_values(sums[0], settings, rng, normal=False)
    return out


def _bootstrap_intervals(
    sums: list[sparse.csr_matrix],
    counts: list[sparse.csr_matrix],
    diff: np.ndarray,
    settings: ComparisonSettings,
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Standard errors and simultaneous intervals of each pair's per-cluster means, from
    one bootstrap over images (every pair from the same resamples)."""
    n_c, n_i = sums[0].shape
    boot = np.empty((len(sums), settings.n_boot, n_c))
    sums32 = [m.astype(np.float32) for m in sums]  # float32 products: half the time
    counts32 = [m.astype(np.float32) for m in counts]
    for start, w in resample_weights(rng, settings.n_boot, n_i):
        for j in range(len(sums)):
            boot[j, start : start + w.shape[1]] = ratio(sums32[j], counts32[j], w)
    out = []
    for j in range(len(sums)):
        lo, hi, se = simultaneous(boot[j], diff[j], settings.ci, bound=1.0)
        n_img = np.asarray((counts[j] > 0).sum(1)).ravel()
        out.append({"se": se, "lo": lo, "hi": hi, "n_images": n_img})
    return out


def _p_values(
    first: sparse.csr_matrix,
    settings: ComparisonSettings,
    rng: np.random.Generator,
    normal: bool,
) -> np.ndarray:
    """Family-wise p-values (max-T) of each cluster's statistic, its summed difference over
    the root of its per-image sums of squares, against the max over clusters under random
    sign flips of the images (swapping A and B in an image flips its differences' sign):
    drawn as ``settings.n_perm`` permutations, or with ``normal`` from their normal law
    (each statistic has mean 0, variance 1 and, with another cluster, the correlation of
    their per-image sums)."""
    norm = np.sqrt(np.asarray(first.multiply(first).sum(1)).ravel())
    scale = np.where(norm > 0, norm, np.inf)
    observed = np.abs(np.asarray(first.sum(1)).ravel()) / scale
    maxima = (
        [max_abs_normal((first @ first.T).toarray(), settings.n_perm, rng)]
        if normal
        else _sign_flip_maxima(first, scale, settings.n_perm, rng)
    )
    exceed = np.zeros(first.shape[0])
    for max_z in maxima:
        exceed += (max_z[:, None] >= observed[None, :] - 1e-12).sum(0)
    p_value = (1.0 + exceed) / (settings.n_perm + 1.0)
    p_value[norm == 0] = 1.0
    return p_value


def _sign_flip_maxima(
    first: sparse.csr_matrix, scale: np.ndarray, n_perm: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """The max over clusters of the statistic under ``n_perm`` sign-flip permutations, a
    block of permutations at a time."""
    n_i = first.shape[1]
    first32 = first.astype(np.float32)
    block = max(1, 4_000_000 // max(n_i, 1))
    for start in range(0, n_perm, block):
        signs = random_signs(rng, min(block, n_perm - start), n_i)
        yield (np.abs((first32 @ signs).T) / scale).max(axis=1)


def max_abs_normal(cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of ``max_c |Z_c|`` for Z normal with the correlations of ``cov``
    (members with no variance left out; none left: zeros)."""
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    keep = sd > 0
    if not keep.any():
        return np.zeros(n)
    corr = cov[np.ix_(keep, keep)] / np.outer(sd[keep], sd[keep])
    vals, vecs = np.linalg.eigh(corr)
    root = vecs * np.sqrt(np.clip(vals, 0, None))
    return np.abs(rng.standard_normal((n, len(vals))) @ root.T).max(axis=1)


def influence(
    sums: sparse.spmatrix, counts: sparse.spmatrix, mean: np.ndarray
) -> sparse.csr_matrix:
    """Each unit's influence on each group's mean ``sums / counts`` (groups × units): its
    sum less the mean times its count, over the group's whole count (the delta method; 0
    for a group with no count)."""
    total = np.asarray(counts.sum(1)).ravel()
    inv = np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)
    return sparse.diags(inv) @ (sums - sparse.diags(np.nan_to_num(mean)) @ counts)


def normal_bounds(
    influences: sparse.spmatrix,
    estimate: np.ndarray,
    settings: ComparisonSettings,
    rng: np.random.Generator,
    bound: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous intervals in normal theory for a family of estimates whose per-unit
    influences are ``influences`` (family × units): ``lo``, ``hi`` (clipped to
    [-bound, bound]) and the standard errors ``se``; the multiplier is the ``ci`` quantile
    of the max |Z| over the family under their joint normal law."""
    cov = (influences @ influences.T).toarray()
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    q = float(np.quantile(max_abs_normal(cov, max(settings.n_boot, 2000), rng), settings.ci))
    lo = np.clip(estimate - q * se, -bound, bound)
    hi = np.clip(estimate + q * se, -bound, bound)
    return lo, hi, se


def _normal_intervals(
    sums: sparse.csr_matrix,
    counts: sparse.csr_matrix,
    diff: np.ndarray,
    settings: ComparisonSettings,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """What :func:`_bootstrap_intervals` estimates, in normal theory: each cluster's
    standard error from the images' influence on its mean (the delta method), and the
    simultaneous intervals' multiplier from the joint normal law of all clusters' means
    (their covariance from the same influences)."""
    lo, hi, se = normal_bounds(influence(sums, counts, diff), diff, settings, rng, bound=1.0)
    n_img = np.asarray((counts > 0).sum(1)).ravel()
    return {"se": se, "lo": lo, "hi": hi, "n_images": n_img}
