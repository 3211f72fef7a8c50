"""Stage 2: salient patches and their shares of each model's attribution."""

from __future__ import annotations

import numpy as np
import pytest

from imacs.patches import PatchSettings, extract_patches, image_patches, to_original_pixels


def test_pat001_first_patch_covers_the_hot_spot() -> None:
    a = np.zeros((32, 32))
    b = np.zeros((32, 32))
    a[20:24, 4:8] = 1.0  # A looks bottom-left
    b[2:6, 26:30] = 1.0  # B looks top-right
    boxes, sa, sb, sal = image_patches(a, b, PatchSettings(per_image=4))
    assert len(boxes) == 2  # two salient places; the uniform rest is not salient
    found = {tuple(bx) for bx in boxes}
    assert any(x0 <= 4 and x1 >= 8 and y0 <= 20 and y1 >= 24 for x0, y0, x1, y1 in found)
    a_patch = int(np.argmax(sa))
    assert sa[a_patch] == pytest.approx(1.0) and sb[a_patch] == pytest.approx(0.0)
    assert sb[1 - a_patch] == pytest.approx(1.0)
    assert (sal > 1.5).all()


def test_pat002_shares_are_of_positive_attribution_only() -> None:
    a = np.full((16, 16), -1.0)
    a[0:4, 0:4] = 2.0
    b = np.ones((16, 16))
    boxes, sa, sb, _ = image_patches(a, b, PatchSettings(per_image=1))
    assert tuple(boxes[0]) == (0, 0, 4, 4)
    assert sa[0] == pytest.approx(1.0)  # negative attribution elsewhere is ignored
    assert sb[0] == pytest.approx(16 / 256)


def test_pat003_overlap_is_bounded() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((64, 64)) ** 8
    s = PatchSettings(per_image=6, max_overlap=0.25, min_saliency=0.0)
    boxes, *_ = image_patches(m, m, s)
    assert len(boxes) == 6  # every pair of the six is checked below
    for i in range(len(boxes)):
        for j in range(i):
            x0 = max(boxes[i][0], boxes[j][0])
            x1 = min(boxes[i][2], boxes[j][2])
            y0 = max(boxes[i][1], boxes[j][1])
            y1 = min(boxes[i][3], boxes[j][3])
            inter = max(0, x1 - x0) * max(0, y1 - y0)
            assert inter / (2 * 16 * 16 - inter) <= 0.25 + 1e-9


def test_pat004_every_image_gets_a_patch_even_with_no_attribution() -> None:
    table = extract_patches(np.zeros((3, 16, 16)), np.zeros((3, 16, 16)), PatchSettings())
    assert sorted(set(table.image.tolist())) == [0, 1, 2]


def test_pat005_boxes_map_to_original_pixels() -> None:
    box = np.array([[0, 0, 8, 8], [24, 16, 32, 32]])
    orig = np.array([[320, 160], [64, 64]])  # width, height of each image
    out = to_original_pixels(box, (32, 32), orig)
    assert out.tolist() == [[0, 0, 80, 40], [48, 32, 64, 64]]
