"""Stage 2: salient patches.

For each image, each model's attribution map is reduced to its positive part and normalised
to sum to 1: the model's *share* map. The union saliency is the mean of the two share maps,
so a region salient to either model is a candidate. Square windows are scored by their union
mass (integral images make every window O(1)) and picked greedily by the mass they *add*:
mass already inside a picked patch does not count again, so each patch brings new evidence
and a single hot spot does not yield several near-copies. Windows that overlap a picked one
by more than ``max_overlap`` (IoU) are not candidates. Each patch records the share of A's
and of B's positive attribution that falls inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .settings import PatchSettings, Preprocess
from .stage import stage

if TYPE_CHECKING:
    from .attribute_set import SetAttribution


@dataclass
class PatchTable:
    """All patches of a run, one row per patch (arrays of equal length)."""

    image: np.ndarray  #: (n,) int64 index of the image (row in the images table)
    box: np.ndarray  #: (n, 4) int32 x0, y0, x1, y1 in model-input pixels (x1, y1 exclusive)
    attr_a: np.ndarray  #: (n,) float32 share of A's positive attribution inside the patch
    attr_b: np.ndarray  #: (n,) float32 share of B's positive attribution inside the patch
    saliency: np.ndarray  #: (n,) float32 union mass / uniform expectation

    def __len__(self) -> int:
        return len(self.image)


def share_map(attribution: np.ndarray) -> np.ndarray:
    """Positive part of a (H, W) attribution map, normalised to sum to 1 (zeros if none)."""
    pos = np.clip(attribution.astype(np.float64), 0.0, None)
    total = pos.sum()
    return pos / total if total > 0 else pos


def _window_sums(m: np.ndarray, side: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    ii = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = m.cumsum(0).cumsum(1)
    y0, x0 = ys[:, None], xs[None, :]
    y1, x1 = y0 + side, x0 + side
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


def _positions(length: int, side: int) -> np.ndarray:
    stride = max(1, side // 2)
    pos = list(range(0, length - side + 1, stride))
    if pos[-1] != length - side:
        pos.append(length - side)  # cover the far edge
    return np.asarray(pos, dtype=np.int64)


def image_patches(
    map_a: np.ndarray, map_b: np.ndarray, settings: PatchSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Salient patches of one image.

    Args:
        map_a (numpy.ndarray): (H, W) attribution map of model A.
        map_b (numpy.ndarray): (H, W) attribution map of model B.
        settings (PatchSettings): patch settings.

    Returns:
        boxes (k, 4) as x0, y0, x1, y1; share of A; share of B; saliency; for k >= 1 patches.
    """
    if map_a.shape != map_b.shape:
        raise ValueError(f"attribution maps differ in shape: {map_a.shape} vs {map_b.shape}")
    h, w = map_a.shape
    side = settings.side((h, w))
    sa, sb = share_map(map_a), share_map(map_b)
    ys, xs = _positions(h, side), _positions(w, side)
    # shares are in [0, 1]; clipping removes the float noise of integral-image differences
    mass_a = np.clip(_window_sums(sa, side, ys, xs), 0.0, 1.0)
    mass_b = np.clip(_window_sums(sb, side, ys, xs), 0.0, 1.0)
    union_map = 0.5 * (sa + sb)
    union = 0.5 * (mass_a + mass_b)
    uniform = side * side / (h * w)
    n_x = len(xs)
    wy, wx = np.repeat(ys, n_x), np.tile(xs, len(ys))  # top-left corner of every window
    covered = np.zeros((h, w), dtype=bool)
    blocked = np.zeros(len(wy), dtype=bool)
    marginal = union.ravel().copy()
    picked: list[int] = []
    while len(picked) < settings.per_image and not blocked.all():
        # best window by the salient mass it adds; argmax takes the first of equals
        flat = int(np.argmax(np.where(blocked, -np.inf, marginal)))
        if picked and marginal[flat] < settings.min_saliency * uniform:
            break
        picked.append(flat)
        y, x = wy[flat], wx[flat]
        covered[y : y + side, x : x + side] = True
        inter = np.clip(side - np.abs(wy - y), 0, None) * np.clip(side - np.abs(wx - x), 0, None)
        blocked |= inter / (2 * side * side - inter) > settings.max_overlap
        blocked[flat] = True
        marginal = _window_sums(np.where(covered, 0.0, union_map), side, ys, xs).ravel()
    iy, ix = np.divmod(np.asarray(picked, dtype=np.int64), len(xs))
    y0, x0 = ys[iy], xs[ix]
    boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)
    return (
        boxes,
        mass_a.ravel()[picked].astype(np.float32),
        mass_b.ravel()[picked].astype(np.float32),
        (union.ravel()[picked] / uniform).astype(np.float32),
    )


def extract_patches(maps_a: np.ndarray, maps_b: np.ndarray, settings: PatchSettings) -> PatchTable:
    """Salient patches for a stack of images.

    Args:
        maps_a (numpy.ndarray): (N, H, W) attribution maps of model A.
        maps_b (numpy.ndarray): (N, H, W) attribution maps of model B.
        settings (PatchSettings): patch settings.
    """
    if maps_a.shape != maps_b.shape or maps_a.ndim != 3:
        raise ValueError("maps_a and maps_b must both be (N, H, W) with the same shape")
    images, boxes, shares_a, shares_b, sal = [], [], [], [], []
    for i in range(maps_a.shape[0]):
        b, a_share, b_share, s = image_patches(maps_a[i], maps_b[i], settings)
        images.append(np.full(len(b), i, dtype=np.int64))
        boxes.append(b)
        shares_a.append(a_share)
        shares_b.append(b_share)
        sal.append(s)
    if not images:
        empty = np.zeros(0, dtype=np.float32)
        return PatchTable(
            np.zeros(0, np.int64), np.zeros((0, 4), np.int32), empty, empty.copy(), empty.copy()
        )
    return PatchTable(
        image=np.concatenate(images),
        box=np.concatenate(boxes),
        attr_a=np.concatenate(shares_a),
        attr_b=np.concatenate(shares_b),
        saliency=np.concatenate(sal),
    )


def to_original_pixels(
    box: np.ndarray, input_size: tuple[int, int], original: np.ndarray
) -> np.ndarray:
    """Map (n, 4) boxes from model-input pixels to each image's original pixels.

    Args:
        box (numpy.ndarray): (n, 4) x0, y0, x1, y1 in model-input pixels.
        input_size (tuple[int, int]): (height, width) of the model input.
        original (numpy.ndarray): (n, 2) original width, height of each patch's image.
    """
    h, w = input_size
    sx = original[:, 0].astype(np.float64) / w
    sy = original[:, 1].astype(np.float64) / h
    out = np.empty_like(box, dtype=np.int32)
    out[:, 0] = np.floor(box[:, 0] * sx)
    out[:, 2] = np.ceil(box[:, 2] * sx)
    out[:, 1] = np.floor(box[:, 1] * sy)
    out[:, 3] = np.ceil(box[:, 3] * sy)
    out[:, 2] = np.minimum(out[:, 2], original[:, 0])
    out[:, 3] = np.minimum(out[:, 3], original[:, 1])
    return out


@stage(
    "patches",
    reads=("att", "say"),
    produces=("patch_table", "box_orig"),
    settings=("patches", "preprocess"),
)
def patches_stage(
    att: SetAttribution, say: Callable[[str], None], patches: PatchSettings, preprocess: Preprocess
) -> dict[str, object]:
    """The salient patches of every analysed image, with their boxes in the original
    image's pixels."""
    table = extract_patches(att.maps["a"], att.maps["b"], patches)
    box_orig = to_original_pixels(table.box, preprocess.input_size, att.size[table.image])
    say(f"{len(table)} salient patches")
    return {"patch_table": table, "box_orig": box_orig}
