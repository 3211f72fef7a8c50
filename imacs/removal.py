"""How removed pixels are filled: one choice (``--removal``) for every test that hides part of
an image from a model (what-if removal of clusters and concepts, the trust stage's deletion
and insertion curves) and for the dashboard's pictures of it.

Removing content means showing the model something else in its place, and that something
must not be read as content itself. Four fills:

* ``baseline``: the run's Integrated Gradients baseline (black, 50 % grey or the blurred
  image, ``--baseline``). A black box is a new object to a model: on the bundled demo,
  random black boxes of the patch size flip model A on 72 % of the logo concept's images.
* ``blur``: the image blurred (Gaussian, ``sigma`` a sixteenth of the shorter side), so the
  removed region keeps its colours but loses its shapes; what was removed leaks into the
  fill a little (a white mark leaves a pale smudge).
* ``mean``: the mean colour of the pixels kept, a flat region (nothing of the removed
  content leaks into it).
* ``road``: noisy linear imputation, as ROAD (Rong et al., ICML 2022) fills pixels: every
  removed pixel equals the weighted mean of its 8 neighbours (direct neighbours weigh 1/6,
  diagonal ones 1/12), which is one sparse linear system over the removed pixels solved
  exactly (scipy; the trust curves, which fill thousands of images, solve it approximately,
  within 0.01 on average), plus Gaussian noise of ``ROAD_NOISE``. The fill is made from the kept
  pixels only, so nothing of the removed content leaks into it, and it continues the
  colours around it, so it shifts the image less than a box of any one colour.

``FILLS`` lists them; :data:`DEFAULT` is the one that disturbs the models least on random
regions (measured on the demo and the test fixtures, BENCHMARKS.md). Everything here is
numpy and scipy (no torch): the web app renders the removal with the very same function.
"""

from __future__ import annotations

import numpy as np

from .settings import REMOVAL_DEFAULT, REMOVAL_FILLS

#: the ``--removal`` choices
FILLS = REMOVAL_FILLS
#: the default fill (BENCHMARKS.md, "Which fill removes content without adding any")
DEFAULT = REMOVAL_DEFAULT
#: fills that do not depend on which pixels are removed (one fill image per image)
MASK_FREE = frozenset({"baseline", "blur"})
#: standard deviation of the noise added to ``road``'s imputed pixels, in [0, 1] units
ROAD_NOISE = 0.02
#: neighbour offsets (dy, dx) and weights of ``road``'s imputation
_NEIGHBOURS = (
    ((-1, 0), 1 / 6),
    ((1, 0), 1 / 6),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((1, 1), 1 / 12),
)


def check_fill(kind: object) -> str:
    """Check a ``--removal`` value (a ValueError names the choices)."""
    text = str(kind).strip()
    if text not in FILLS:
        raise ValueError(f"choose one of {', '.join(FILLS)}")
    return text


def blur_sigma(hw: tuple[int, int]) -> float:
    """The ``blur`` fill's Gaussian sigma for an (H, W) image: a sixteenth of its shorter
    side, at least 1 pixel."""
    return max(1.0, min(hw) / 16.0)


def ig_baseline(images: np.ndarray, kind: str) -> np.ndarray:
    """The Integrated Gradients baseline (``--baseline``) of (n, 3, H, W) images, computed
    as :meth:`imacs.attribution.PairedAttribution.baseline` does, without torch (the web
    app draws the ``baseline`` fill with it): ``black`` zeros, ``gray`` 0.5, ``blur`` a box
    blur over a quarter of the shorter side (odd, at least 3), edges replicated."""
    from scipy.ndimage import uniform_filter

    images = np.asarray(images, np.float32)
    if kind == "black":
        return np.zeros_like(images)
    if kind == "gray":
        return np.full_like(images, 0.5)
    k = max(3, (min(images.shape[-2:]) // 4) | 1)
    return uniform_filter(images, size=(1, 1, k, k), mode="nearest").astype(np.float32)


def fill_image(images: np.ndarray, kind: str, base: np.ndarray | None = None) -> np.ndarray:
    """What a mask-free fill (``baseline``, ``blur``) puts in every pixel.

    Args:
        images (numpy.ndarray): (n, 3, H, W) float32 pixels in [0, 1].
        kind (str): one of :data:`MASK_FREE`.
        base (numpy.ndarray, optional): (n, 3, H, W) the IG baseline of these images;
            needed for ``baseline``.

    Returns:
        (n, 3, H, W) float32.
    """
    from scipy.ndimage import gaussian_filter

    images = np.asarray(images, np.float32)
    if kind == "baseline":
        if base is None:
            raise ValueError("the baseline fill needs the baseline images")
        return np.asarray(base, np.float32)
    if kind == "blur":
        s = blur_sigma(images.shape[-2:])
        return gaussian_filter(images, sigma=(0, 0, s, s), mode="reflect").astype(np.float32)
    raise ValueError(f"{kind!r} is not a mask-free fill; choose one of {sorted(MASK_FREE)}")


def kept_mean(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(n, 3, 1, 1) the ``mean`` fill: each image's mean colour over its kept pixels (over
    all of them for an image removed whole)."""
    keep = ~np.asarray(masks, bool)[:, None]
    count = keep.sum(axis=(2, 3), keepdims=True)
    kept = (images * keep).sum(axis=(2, 3), keepdims=True) / np.maximum(count, 1)
    return np.where(count > 0, kept, images.mean(axis=(2, 3), keepdims=True)).astype(np.float32)


def fill(
    images: np.ndarray,
    masks: np.ndarray,
    kind: str,
    base: np.ndarray | None = None,
    seeds: list | None = None,
    exact: bool = True,
) -> np.ndarray:
    """``images`` with the pixels under ``masks`` removed and filled by ``kind``.

    Args:
        images (numpy.ndarray): (n, 3, H, W) float32 pixels in [0, 1].
        masks (numpy.ndarray): (n, H, W) bool, True where a pixel is removed.
        kind (str): one of :data:`FILLS`.
        base (numpy.ndarray, optional): (n, 3, H, W) the IG baseline of these images
            (``baseline`` only).
        seeds (list, optional): per image, the seed of ``road``'s noise (an int or a list
            of ints, as :func:`numpy.random.default_rng` takes). Default: the image's index.
        exact (bool): ``road`` only: solve exactly, or approximately and faster (see
            :func:`road`). Default: True.

    Returns:
        (n, 3, H, W) float32; pixels outside the masks are the images' own.
    """
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, bool)
    if masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    kind = check_fill(kind)
    if kind in MASK_FREE:
        return np.where(masks[:, None], fill_image(images, kind, base), images)
    if kind == "mean":
        return np.where(masks[:, None], kept_mean(images, masks), images)
    return road(images, masks, list(range(len(images))) if seeds is None else seeds, exact)


def road(images: np.ndarray, masks: np.ndarray, seeds: list, exact: bool = True) -> np.ndarray:
    """ROAD's noisy linear imputation of a batch of images.

    Args:
        images (numpy.ndarray): (n, 3, H, W) float32 pixels in [0, 1].
        masks (numpy.ndarray): (n, H, W) bool, True where a pixel is removed.
        seeds (list): per image, the seed of its noise.
        exact (bool): solve each image's system exactly (sparse LU); False solves the same
            equations for the whole batch at once, approximately and several times faster
            (:func:`_impute_multiscale`; the trust curves fill thousands of images this
            way). Default: True.

    Returns:
        (n, 3, H, W) float32: kept pixels unchanged, removed ones imputed from their
        neighbours plus noise, clipped to [0, 1]. An image removed whole gets its mean
        colour; every removed region of a partly kept image touches a kept pixel, so its
        system is always solvable.
    """
    out = np.asarray(images, np.float32).copy()
    whole = masks.reshape(len(masks), -1).all(axis=1)
    part = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1) & ~whole)
    approx = _impute_multiscale(out[part], masks[part]) if not exact and len(part) else None
    for k in range(len(out)):
        if whole[k]:
            out[k] = images[k].mean(axis=(1, 2), keepdims=True)
    for j, k in enumerate(part):
        solved = _impute(out[k], masks[k]) if approx is None else approx[j][:, masks[k]]
        noise = np.random.default_rng(seeds[k]).normal(0.0, ROAD_NOISE, solved.shape)
        out[k][:, masks[k]] = np.clip(solved + noise, 0.0, 1.0)
    return out


def _impute(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3, removed pixels): the removed pixels of one image, each the weighted mean of its
    neighbours (one sparse symmetric positive definite system, solved exactly)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    c, h, w = image.shape
    ys, xs = np.nonzero(mask)
    m = len(ys)
    index = np.full((h, w), -1, np.int64)
    index[ys, xs] = np.arange(m)
    diag = np.zeros(m)
    rhs = np.zeros((m, c))
    rows, cols, vals = [np.arange(m)], [np.arange(m)], []
    for (dy, dx), wt in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = np.flatnonzero((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w))
        diag[inside] += wt
        j = index[ny[inside], nx[inside]]
        unknown = j >= 0
        rows.append(inside[unknown])
        cols.append(j[unknown])
        vals.append(np.full(int(unknown.sum()), -wt))
        known = inside[~unknown]
        rhs[known] += wt * image[:, ny[known], nx[known]].T
    a = csc_matrix(
        (np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))),
        shape=(m, m),
    )
    return splu(a).solve(rhs).T


def _impute_multiscale(images: np.ndarray, masks: np.ndarray, sweeps: int = 8) -> np.ndarray:
    """(n, 3, H, W): every removed pixel as :func:`_impute` makes it, approximately, for a
    batch at once: the kept pixels' means on ever coarser grids (halving the side until
    every cell keeps a pixel) fill the removed pixels from the coarsest grid up, and at
    each scale ``sweeps`` Jacobi sweeps of the imputation's equations (twice as many per
    coarser scale) smooth the fill. On the demo's tiles it is within 0.01 of the exact
    solve on average (tests/test_whatif.py), below the fill's noise."""
    keep = ~np.asarray(masks, bool)[:, None]
    return _fill_scale(np.asarray(images, np.float32), keep, sweeps)


def _fill_scale(x: np.ndarray, keep: np.ndarray, sweeps: int) -> np.ndarray:
    n, c, h, w = x.shape
    if keep.all():
        return x
    if h > 1 or w > 1:  # the next coarser grid: means of the kept pixels of 2 x 2 cells
        hp, wp = h + h % 2, w + w % 2
        xs = np.zeros((n, c, hp, wp), np.float32)
        ks = np.zeros((n, 1, hp, wp), np.float32)
        xs[:, :, :h, :w] = x * keep
        ks[:, :, :h, :w] = keep
        xs = xs.reshape(n, c, hp // 2, 2, wp // 2, 2).sum((3, 5))
        ks = ks.reshape(n, 1, hp // 2, 2, wp // 2, 2).sum((3, 5))
        coarse = _fill_scale(xs / np.maximum(ks, 1e-12), ks > 0, 2 * sweeps)
        up = coarse.repeat(2, axis=2).repeat(2, axis=3)[:, :, :h, :w]
    else:
        up = x
    est = np.where(keep, x, up)
    weight = 1.0 / _neighbour_sum(np.ones((1, 1, h, w), np.float32))
    for _ in range(sweeps):
        est = np.where(keep, x, _neighbour_sum(est) * weight)
    return est


def _neighbour_sum(x: np.ndarray) -> np.ndarray:
    """The weighted sum of each pixel's in-image neighbours (:data:`_NEIGHBOURS`)."""
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[-2:]
    out = np.zeros_like(x)
    for (dy, dx), wt in _NEIGHBOURS:
        out += np.float32(wt) * p[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out
