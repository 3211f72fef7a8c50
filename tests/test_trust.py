"""Trust in the maps: deletion/insertion against a random order, infidelity, sensitivity."""

from __future__ import annotations

import numpy as np
import pytest

import imacs
from imacs.attribution import PairedAttribution
from imacs.errors import InputError
from imacs.settings import AnalysisSettings
from imacs.trust import TrustSettings, auc, pick_sample


def test_tru001_settings_are_declared_once_and_checked() -> None:
    s = AnalysisSettings.from_keywords(trust_sample=10, seed=3)
    assert s.trust.sample == 10 and s.trust.seed == 3
    assert s.result_fields()["trust"]["sample"] == 10  # part of the run's fingerprint
    for bad in (-1, 2.5, "many"):
        with pytest.raises(InputError, match=r"setting sample \(--trust-sample\)"):
            AnalysisSettings.from_keywords(trust_sample=bad)
    assert TrustSettings().sample == 64
    assert pick_sample(10, 64, 0).tolist() == list(range(10))
    assert pick_sample(100, 5, 0).tolist() == pick_sample(100, 5, 0).tolist()
    assert auc(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == [1.0, 0.25]


@pytest.mark.slow
def test_tru002_noise_maps_are_no_better_than_random_real_ones_are(
    shortcut, tmp_path, monkeypatch
) -> None:
    real_attribute = PairedAttribution.attribute

    def noisy_a(self, role, images, labels=None):  # model A's maps replaced by noise
        res = real_attribute(self, role, images, labels)
        if role == "a":
            rng = np.random.default_rng(int(images.sum() * 1000) % 2**32)
            res.maps = rng.normal(size=res.maps.shape).astype(np.float32)
        return res

    monkeypatch.setattr(PairedAttribution, "attribute", noisy_a)
    run = imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "noise", image_size=32,
        steps=16, projection="pca", progress=False, cache_dir=None, trust_sample=32,
        removal="baseline",  # black: a fill that hides stripes, so the control has power
    )  # fmt: skip
    trust = run.manifest["trust"]
    a, b = trust["a"], trust["b"]
    assert trust["n_images"] == 32 and len(trust["fractions"]) == 17
    # noise: deletion in the map's order is no faster than at random
    assert not a["better_than_random"]
    assert abs(a["deletion_auc"] - a["deletion_auc_random"]) < 0.05
    assert any("model A" in w and "no better than a random" in w for w in run.manifest["warnings"])
    assert "no better than a random pixel order" in a["reading"]
    # B's real maps find its mark: deleting it first drops the prediction far faster
    assert b["better_than_random"] and b["deletion_auc"] < b["deletion_auc_random"] - 0.2
    assert b["insertion_auc"] > b["insertion_auc_random"]
    assert b["drop_ratio"] > 3
    assert not any("model B" in w for w in run.manifest["warnings"])
    # curves start at the prediction and end at the baseline
    assert b["deletion_curve"][0] == pytest.approx(b["insertion_curve"][-1], abs=1e-5)
    assert b["deletion_curve"][-1] == pytest.approx(b["insertion_curve"][0], abs=1e-5)
    for r in "ab":
        # maps move under a 0.02 perturbation, and IG's completeness error is measured
        assert 0 < trust[r]["sensitivity_max"] < np.inf and trust[r]["n_sensitivity"] == 8
        d = trust[r]["delta"]
        assert np.isfinite(trust[r]["infidelity"])
        assert 0 < d["median_abs"] <= d["p90_abs"] <= d["max_abs"] < np.inf
    assert b["infidelity"] < b["infidelity_shuffled"]
    assert "trust" in run.manifest["timings"] and "agreement" in run.manifest["timings"]
    assert run.trust == trust and run.warnings == run.manifest["warnings"]
    summary = run.summary()
    assert "trust (32 images): A's maps" in summary and "warning: model A" in summary


def test_tru003_real_maps_beat_the_random_order_or_the_test_says_it_cannot_tell(
    shortcut_run,
) -> None:
    trust = shortcut_run.manifest["trust"]  # the shared run: default sample of 64 of 80
    assert trust["n_images"] == 64 and trust["removal"] == "road"
    b = trust["b"]  # B reads a red mark: deleting it first is far faster than at random
    assert b["better_than_random"] and b["deletion_auc"] < b["deletion_auc_random"] - 0.2
    # A reads stripes, which road's imputation rebuilds from the pixels kept: measured, A
    # keeps its answer until 15/16 of the pixels are gone in any order, so the test cannot
    # rank A's maps, and says so instead of "no better than random"
    a = trust["a"]
    assert a["inconclusive"] and a["inconclusive_why"] == "late" and a["random_half"] >= 0.85
    assert "inconclusive: the model keeps its answer until" in a["reading"]
    assert not shortcut_run.manifest["warnings"]


def test_tru004_bad_trust_sample_through_the_cli(tmp_path) -> None:
    from tests.test_cli import _run

    for bad, fix in (("-1", "must be at least 0"), ("lots", "give a whole number")):
        proc = _run("analyze", "--model-a", "a.pt", "--model-b", "b.pt", "--data", ".",
                    "--out", str(tmp_path / "r"), "--trust-sample", bad)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "--trust-sample" in proc.stderr and fix in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert "--trust-sample N" in _run("analyze", "--help").stdout


def test_tru005_a_run_from_before_the_trust_columns_still_loads(shortcut_run, tmp_path) -> None:
    import json
    import shutil

    import pandas as pd

    from imacs.comparison import compare_clusters

    old = tmp_path / "old"
    shutil.copytree(shortcut_run.path, old)
    m = json.loads((old / "run.json").read_text())
    m.pop("trust")
    m["format_version"] = 1  # runs made before this stage were format 1
    for k in [k for k in m["summary"] if k.startswith("map_")]:
        m["summary"].pop(k)
    m["timings"] = {k: v for k, v in m["timings"].items() if k not in ("trust", "agreement")}
    (old / "run.json").write_text(json.dumps(m))
    new_cols = ("map_spearman", "map_iou_top10", "attr_a_rel", "attr_b_rel", "diff_rel")
    for name in ("images", "patches", "clusters"):
        df = pd.read_parquet(old / f"{name}.parquet")
        df.drop(columns=[c for c in df.columns if c.startswith(new_cols)]).to_parquet(
            old / f"{name}.parquet"
        )
    run = imacs.load_run(old)
    text = run.summary()
    assert "top concepts" in text and "trust (" not in text and "map agreement" not in text
    assert run.trust == {} and run.warnings == []
    run.export(patches_csv=tmp_path / "p.csv", clusters_csv=tmp_path / "c.csv")
    # the dashboard's recomputation on an old patch table derives the relative shares
    clusters, _ = compare_clusters(
        run.patches, run.images.set_index("image_id"), run.classes, run.comparison_settings()
    )
    fresh = shortcut_run.clusters.set_index("cluster")
    got = clusters.set_index("cluster")
    assert np.allclose(got["diff_rel"], fresh.loc[got.index, "diff_rel"], atol=1e-6)
    assert np.allclose(got["diff"], fresh.loc[got.index, "diff"])


def test_tru006_new_numbers_reach_export_and_the_run_api(shortcut_run, tmp_path) -> None:
    import pandas as pd

    shortcut_run.export(patches_csv=tmp_path / "p.csv", clusters_csv=tmp_path / "c.csv")
    p, c = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "c.csv")
    assert {"attr_a_rel", "attr_b_rel", "diff_rel"} <= set(p.columns)
    assert {"attr_a_rel", "attr_b_rel", "diff_rel", "diff_rel_lo", "diff_rel_hi"} <= set(c.columns)
    sums = p.groupby("image_id")[["attr_a_rel", "attr_b_rel"]].sum()
    multi = p.groupby("image_id").size() >= 2  # single-patch images are left out (NaN)
    assert np.allclose(sums[multi], 1.0, atol=1e-5)
    alone = p["image_id"].isin(multi.index[~multi])
    assert p.loc[alone, ["attr_a_rel", "attr_b_rel"]].isna().all().all()
    # the planted shortcut (rank 1 by diff) is also the cluster B relies on most by diff_rel
    # (measured: +0.50 [+0.29, +0.72]); by |diff_rel| its counterpart ranks first: A's stripes
    # in the marked images, which B's renormalised maps leave empty (-0.66)
    top_rel = c.loc[c["diff_rel"].idxmax()]
    assert top_rel["cluster"] == c.iloc[0]["cluster"] and top_rel["diff_rel_lo"] > 0.2
    assert {"map_spearman", "map_iou_top10"} <= set(shortcut_run.images.columns)


def test_tru007_a_model_failing_on_altered_images_warns_instead_of_losing_the_run(
    tmp_path, monkeypatch
) -> None:
    from PIL import Image

    from imacs import trust
    from imacs.attribute_set import SetAttribution
    from imacs.data import ImageRecord

    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "x.png")
    recs = [ImageRecord(tmp_path / "x.png", "x.png", 0, 1, 1)] * 3
    att = SetAttribution(
        ok=np.ones(3, bool), reason=[""] * 3, size=np.full((3, 2), 8),
        maps={r: np.ones((3, 8, 8), np.float32) for r in "ab"},
        per_role={r: {"pred": np.zeros(3, np.int64), "delta": np.full(3, 0.1)} for r in "ab"},
        classes=["x", "y"],
    )  # fmt: skip

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in user layer\nmore detail")

    monkeypatch.setattr(trust, "curves", broken)
    settings = AnalysisSettings.from_keywords(image_size=8, trust_sample=2)
    names = {"a": "m1", "b": "m2"}
    out, warnings = trust.trust_report(None, recs, att, settings.trust, settings.preprocess, names)
    assert warnings == [
        "model A (m1): trust tests failed (shape mismatch in user layer)",
        "model B (m2): trust tests failed (shape mismatch in user layer)",
    ]
    assert out["n_images"] == 2 and out["a"]["delta"]["median_abs"] == pytest.approx(0.1)
    assert "reading" not in out["a"]


def _tiny_engine(size: int = 16):
    import torch

    from tests.helpers import TinyCNN

    torch.manual_seed(0)
    models = {r: TinyCNN().eval() for r in "ab"}
    s = AnalysisSettings.from_keywords(image_size=size, device="cpu")
    return PairedAttribution(models, s.preprocess, s.attribution)


def test_tru008_batched_curves_match_a_plain_step_by_step_loop() -> None:
    """The curves run every (image, step, curve, order) in large passes; each point is the
    model's probability on the image with exactly its share of pixels filled."""
    from imacs.removal import fill
    from imacs.trust import _removal_ranks, curves

    engine = _tiny_engine()
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 16, 16)).astype(np.float32)
    maps = rng.normal(size=(5, 16, 16)).astype(np.float32)
    target = np.array([0, 1, 1, 0, 1])
    steps = 4
    ranks = _removal_ranks(maps, seed=3)
    counts = np.round(np.linspace(0, 256, steps + 1)).astype(int)
    for kind in ("baseline", "mean", "road"):
        got = curves(engine, "a", x, maps, target, steps, seed=3, removal=kind)
        for o, suffix in enumerate(("", "_random")):
            for c, curve in enumerate(("deletion", "insertion")):
                for k in (0, 2, steps):
                    gone = ranks[o].reshape(5, 16, 16) < counts[k]
                    gone = gone if c == 0 else ~gone
                    seeds = [[3, o, i, c, k] for i in range(5)]
                    base = np.zeros_like(x) if kind == "baseline" else None
                    filled = fill(x, gone, kind, base=base, seeds=seeds, exact=False)
                    p = engine.probabilities_array("a", filled)[np.arange(5), target]
                    np.testing.assert_allclose(got[curve + suffix][:, k], p, atol=1e-5)


def test_tru009_a_random_order_that_collapses_at_once_is_inconclusive() -> None:
    from imacs.trust import _reading, auc, degenerate_control

    flat = np.linspace(1.0, 0.2, 17)[None].repeat(4, 0)
    # black dots: 1/16 of the pixels at random already takes 90 % of the way to the end
    collapsed = np.r_[1.0, np.full(16, 0.28)][None].repeat(4, 0)
    cur = {"deletion": flat, "deletion_random": collapsed}
    d = degenerate_control(cur, 0.5)
    assert d["inconclusive"] and d["random_first_step"] == pytest.approx(0.9)
    res = {
        **d, "better_than_random": False, "deletion_curve": list(flat[0]),
        "deletion_auc": float(auc(flat).mean()),
        "deletion_auc_random": float(auc(collapsed).mean()),
        "insertion_auc": 0.5, "insertion_auc_random": 0.5,
    }  # fmt: skip
    text = _reading("a", "m1", res)
    assert text.startswith("A's maps (m1): inconclusive: removing 6% of the pixels at random ")
    assert "90% of the way" in text and "no better" not in text
    # a random order that degrades gently leaves room: a real comparison, not inconclusive
    gentle = np.linspace(1.0, 0.2, 17)[None].repeat(4, 0)
    assert not degenerate_control({"deletion": flat, "deletion_random": gentle}, 0.5)[
        "inconclusive"
    ]
    # a fill the model does not notice at all: nothing to measure
    still = np.full((4, 17), 0.9)
    assert degenerate_control({"deletion": still, "deletion_random": still}, 0.5)["inconclusive"]


def test_tru010_a_fill_that_rebuilds_what_the_model_reads_is_inconclusive() -> None:
    """Measured on the stripes model A under ``road``: its answer stays until 15/16 of the
    pixels are filled in any order, so the deletion test cannot rank its maps."""
    from imacs.trust import _reading, auc, degenerate_control

    # the stripes model's curves (tests' shortcut run, road fill), rounded
    late = np.r_[np.full(13, 0.99), 0.96, 0.87, 0.74, 0.49][None].repeat(4, 0)
    mine = np.r_[np.full(14, 0.99), 0.96, 0.88, 0.49][None].repeat(4, 0)
    d = degenerate_control({"deletion": mine, "deletion_random": late}, 0.5, 0.85)
    assert d["inconclusive"] and d["inconclusive_why"] == "late"
    assert d["random_half"] == pytest.approx(15 / 16)
    res = {
        **d, "better_than_random": False, "deletion_curve": list(mine[0]),
        "deletion_auc": float(auc(mine).mean()), "deletion_auc_random": float(auc(late).mean()),
        "insertion_auc": 0.95, "insertion_auc_random": 0.95,
    }  # fmt: skip
    text = _reading("a", "m1", res)
    assert "inconclusive: the model keeps its answer until 94% of the pixels" in text
    assert "--removal baseline" in text and "no better" not in text
    # the same curves with the random order dropping halfway at 50 %: a real comparison
    mid = np.r_[np.linspace(0.99, 0.74, 9), np.linspace(0.70, 0.49, 8)][None].repeat(4, 0)
    d = degenerate_control({"deletion": mine, "deletion_random": mid}, 0.5, 0.85)
    assert not d["inconclusive"] and d["random_half"] == pytest.approx(0.5)
    # the rule is off at late=1.0 (the old behaviour): a map that loses is "no better"
    assert not degenerate_control({"deletion": mine, "deletion_random": late}, 0.5, 1.0)[
        "inconclusive"
    ]
