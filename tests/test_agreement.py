"""Per-image agreement of the two models' maps (Spearman and top-10 % IoU)."""

from __future__ import annotations

import numpy as np
import pytest

from imacs.agreement import agreement_summary, map_agreement


def test_agr001_identical_opposite_and_unrelated_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(70, 16, 20)).astype(np.float32)  # more than one block
    same = map_agreement(a, a.copy())
    assert np.allclose(same["map_spearman"], 1.0) and np.allclose(same["map_iou_top10"], 1.0)
    flipped = map_agreement(a, -a)
    assert np.allclose(flipped["map_spearman"], -1.0) and np.all(flipped["map_iou_top10"] == 0)
    other = map_agreement(a, rng.normal(size=a.shape).astype(np.float32))
    assert abs(float(np.median(other["map_spearman"]))) < 0.1
    assert float(np.median(other["map_iou_top10"])) < 0.15  # chance: about 0.05
    # a constant map has no ranking; no positive attribution in either: no top set
    zeros = map_agreement(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    assert np.isnan(zeros["map_spearman"]).all() and np.isnan(zeros["map_iou_top10"]).all()
    summary = agreement_summary({**same, "map_spearman": np.r_[same["map_spearman"][:-1], np.nan]})
    assert summary["map_spearman_median"] == pytest.approx(1.0)


def test_agr002_the_top_set_is_the_positive_top_tenth() -> None:
    a = np.zeros((1, 10, 10))
    b = np.zeros((1, 10, 10))
    a[0, 0, :10] = np.arange(1, 11)  # A's top 10 pixels: row 0
    b[0, 0, :5] = 5.0  # B: half of row 0 ...
    b[0, 9, :5] = 5.0  # ... and half of row 9
    got = map_agreement(a, b)
    assert got["map_iou_top10"][0] == pytest.approx(5 / 15)


@pytest.mark.slow
def test_agr003_identical_models_agree_everywhere(shortcut, tmp_path) -> None:
    import imacs

    run = imacs.analyze(
        shortcut["b"], shortcut["b"], shortcut["data"], tmp_path / "same",
        image_size=32, steps=16, projection="pca", progress=False, cache_dir=None,
        trust_sample=0,
    )  # fmt: skip
    img = run.images
    assert img["map_spearman"].min() > 0.999 and img["map_iou_top10"].min() > 0.999
    assert run.manifest["summary"]["map_spearman_median"] == pytest.approx(1.0, abs=1e-3)
    assert "map agreement per image (median): Spearman 1.00, top-10% IoU 1.00" in run.summary()
    trust = run.manifest["trust"]  # --trust-sample 0: no tests, only the delta distribution
    assert trust["n_images"] == 0 and "reading" not in trust["b"] and "delta" in trust["b"]
    assert "trust (" not in run.summary()


@pytest.mark.slow
def test_agr004_a_shortcut_on_top_of_the_same_evidence_lowers_agreement_where_the_mark_is(
    shortcut, shortcut_run, tmp_path
) -> None:
    import json

    import torch

    import imacs

    marks = shortcut["marks"]

    def medians(run) -> dict[str, tuple[float, float]]:
        img = run.images
        marked = img["image"].map(lambda rel: marks[rel] is not None).to_numpy()
        return {
            k: (float(np.median(img[k][marked])), float(np.median(img[k][~marked])))
            for k in ("map_spearman", "map_iou_top10")
        }

    # B = A + the shortcut model: Integrated Gradients is linear in the model, so B's map is
    # A's plus the mark model's, and the two differ most where the mark is
    class Both(torch.nn.Module):
        def __init__(self, a: torch.nn.Module, b: torch.nn.Module) -> None:
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

    both = tmp_path / "a_plus_shortcut.pt"
    torch.jit.script(Both(torch.jit.load(shortcut["a"]), torch.jit.load(shortcut["b"]))).save(
        str(both)
    )
    run = imacs.analyze(
        shortcut["a"], both, shortcut["data"], tmp_path / "ab", image_size=32, steps=16,
        projection="pca", progress=False, cache_dir=None, trust_sample=0,
    )  # fmt: skip
    got = medians(run)
    print(json.dumps(got))  # measured: Spearman 0.82 vs 0.86, IoU 0.58 vs 0.69
    (rho_marked, rho_clean), (iou_marked, iou_clean) = got.values()
    assert rho_marked < rho_clean - 0.02 and iou_marked < iou_clean - 0.05
    assert rho_marked > 0.7 and iou_marked > 0.45  # still largely the same evidence

    # the fixture's A (stripes) and B (only the mark) look at unrelated pixels everywhere:
    # agreement at chance (two random 10 % sets: IoU 0.05), marked or not
    (rho_marked, rho_clean), (iou_marked, iou_clean) = medians(shortcut_run).values()
    assert max(abs(rho_marked), abs(rho_clean)) < 0.1 and max(iou_marked, iou_clean) < 0.15


def test_agr005_export_carries_each_patch_images_agreement(shortcut_run, tmp_path) -> None:
    import csv

    out = tmp_path / "patches.csv"
    shortcut_run.export(patches_csv=out)
    rows = list(csv.DictReader(out.open()))
    by_image = shortcut_run.images.set_index("image_id")["map_spearman"]
    assert len(rows) == len(shortcut_run.patches)
    for row in rows[:20]:
        assert float(row["map_spearman"]) == pytest.approx(by_image[int(row["image_id"])])
