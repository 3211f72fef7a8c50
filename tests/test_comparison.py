"""Stage 5: per-cluster comparison with uncertainty."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imacs.comparison import ComparisonSettings, compare_clusters


def _data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_img = 60
    images = pd.DataFrame(
        {
            "label": np.arange(n_img) % 2,
            "pred_a": np.arange(n_img) % 2,
            "pred_b": np.where(
                np.arange(n_img) < 10, 1 - np.arange(n_img) % 2, np.arange(n_img) % 2
            ),
        },
        index=pd.Index(np.arange(n_img), name="image_id"),
    )
    rows = []
    for img in range(n_img):
        # cluster 0: everyone, A and B alike; cluster 1: B relies on it (+0.4); cluster 2: A (-0.1)
        rows.append((img, 0, 0.2 + rng.normal(0, 0.02), 0.2 + rng.normal(0, 0.02)))
        if img % 2 == 1:
            rows.append((img, 1, 0.1 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)))
        if img < 10:
            rows.append((img, 2, 0.3 + rng.normal(0, 0.02), 0.2 + rng.normal(0, 0.02)))
    patches = pd.DataFrame(rows, columns=["image_id", "cluster", "attr_a", "attr_b"])
    patches["saliency"] = 2.0
    return patches, images


def test_cmp001_rank_sign_and_interval() -> None:
    patches, images = _data()
    clusters, by_class = compare_clusters(patches, images, ["even", "odd"])
    assert clusters["cluster"].tolist() == [1, 2, 0]  # by |diff|
    assert clusters["rank"].tolist() == [1, 2, 3]
    top = clusters.iloc[0]
    assert top["diff"] == pytest.approx(top["attr_b"] - top["attr_a"])
    assert top["diff"] == pytest.approx(0.4, abs=0.02)
    assert top["diff_lo"] < top["diff"] < top["diff_hi"] and top["significant"]
    assert top["n_images"] == 30 and top["top_class"] == "odd" and top["top_class_share"] == 1.0
    second = clusters.iloc[1]
    assert second["diff"] < 0 and second["significant"]
    assert second["disagree_rate"] == 1.0 and second["acc_b"] == 0.0
    same = clusters.iloc[2]
    assert same["diff_lo"] < 0 < same["diff_hi"] and not same["significant"]
    row = by_class[(by_class["cluster"] == 0) & (by_class["class_name"] == "even")].iloc[0]
    assert row["n_images"] == 30


def test_cmp002_bootstrap_is_seeded() -> None:
    patches, images = _data()
    one, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=4))
    two, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=4))
    other, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(seed=5))
    assert one.equals(two)
    assert not one["diff_lo"].equals(other["diff_lo"])
    # the interval is about one standard error wide on each side times 1.96
    width = (one["diff_hi"] - one["diff_lo"]) / (2 * 1.96 * one["diff_se"])
    # simultaneous intervals: wider than one cluster's 95 % interval, by the max over clusters
    assert ((width > 1.0) & (width < 1.6)).all()


def _null(seed: int, n_img: int = 120, n_clusters: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Identical models: each patch's shares for A and B are one value plus noise that is
    exchangeable between A and B (nothing tells A from B)."""
    rng = np.random.default_rng(seed)
    images = pd.DataFrame(
        {"label": np.zeros(n_img, int), "pred_a": np.zeros(n_img, int), "pred_b": 0},
        index=pd.Index(np.arange(n_img), name="image_id"),
    )
    n = n_img * 4
    base = rng.uniform(0.05, 0.4, n)
    patches = pd.DataFrame(
        {
            "image_id": np.repeat(np.arange(n_img), 4),
            # uneven cluster sizes, as k-means gives: small clusters are where false alarms hide
            "cluster": rng.choice(n_clusters, n, p=np.linspace(3, 1, n_clusters) / 24),
            "attr_a": base + rng.normal(0, 0.05, n),
            "attr_b": base + rng.normal(0, 0.05, n),
            "saliency": 2.0,
        }
    )
    return patches, images


def test_cmp003_identical_models_give_no_significant_cluster() -> None:
    flagged = 0
    for seed in range(100):
        patches, images = _null(seed)
        clusters, _ = compare_clusters(
            patches, images, ["x"], ComparisonSettings(seed=seed, n_boot=200)
        )
        flagged += bool(clusters["significant"].any())
        assert ((clusters["p_value"] > 0) & (clusters["p_value"] <= 1)).all()
    # family-wise: no cluster of the run is flagged in at least 95 % of the runs
    assert flagged <= 5, f"{flagged} of 100 null runs flagged a cluster"


def test_cmp004_a_real_difference_stays_significant_among_many_clusters() -> None:
    patches, images = _null(0, n_img=120, n_clusters=12)
    small = patches["cluster"] == 11  # the smallest cluster: B relies on it by +0.12
    patches.loc[small, "attr_b"] += 0.12
    clusters, _ = compare_clusters(patches, images, ["x"], ComparisonSettings(n_boot=200))
    top = clusters.iloc[0]
    assert top["cluster"] == 11 and top["significant"] and top["p_value"] < 0.01
    assert top["diff_lo"] > 0  # its simultaneous interval excludes 0 too
    assert clusters["significant"].sum() == 1


def _diffuse_a(shortcut: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both models rank the content of every image the same, but A's maps are diffuse: only
    40 % of A's attribution lands in the salient patches (B: 100 %). With ``shortcut``, B
    also moves reliance onto cluster 3 (a mark in half the images) away from the rest."""
    rng = np.random.default_rng(1)
    n_img = 80
    images = pd.DataFrame(
        {"label": np.arange(n_img) % 2, "pred_a": np.arange(n_img) % 2,
         "pred_b": np.arange(n_img) % 2},
        index=pd.Index(np.arange(n_img), name="image_id"),
    )  # fmt: skip
    rows = []
    for img in range(n_img):
        clusters = [0, 1, 2] + ([3] if shortcut and img % 2 else [])
        weights = rng.dirichlet(np.full(3, 5.0))  # how B spreads over clusters 0-2
        if shortcut and img % 2:
            weights = np.r_[0.4 * weights, 0.6]  # B: 60 % on the mark
            a_weights = np.r_[0.9 * rng.dirichlet(np.full(3, 5.0)), 0.1]  # A: 10 %
        else:
            a_weights = weights
        for c, wb, wa in zip(clusters, weights, a_weights, strict=True):
            rows.append((img, c, 0.4 * wa, wb))  # A: same ranking, 40 % of the mass
    patches = pd.DataFrame(rows, columns=["image_id", "cluster", "attr_a", "attr_b"])
    patches["saliency"] = 2.0
    return patches, images


def test_cmp005_relative_reliance_removes_the_diffuse_map_bias() -> None:
    patches, images = _diffuse_a(shortcut=False)
    clusters, _ = compare_clusters(patches, images, ["e", "o"])
    # the plain diff leans towards B everywhere (A's maps are merely diffuse)...
    assert (clusters["diff"] > 0.15).all() and clusters["significant"].all()
    # ... the relative one sees that both models rank the content alike
    assert np.abs(clusters["diff_rel"]).max() < 1e-9
    assert (clusters["diff_rel_lo"] <= 1e-9).all() and (clusters["diff_rel_hi"] >= -1e-9).all()
    assert np.allclose(clusters["diff"], clusters["attr_b"] - clusters["attr_a"])  # unchanged
    assert np.allclose(clusters["diff_rel"], clusters["attr_b_rel"] - clusters["attr_a_rel"])
    # per image and model the relative shares sum to 1
    from imacs.comparison import relative_shares

    rel = patches.assign(**relative_shares(patches)).groupby("image_id")
    assert np.allclose(rel["attr_a_rel"].sum(), 1) and np.allclose(rel["attr_b_rel"].sum(), 1)


def test_cmp006_a_planted_shortcut_still_comes_first_by_diff_rel() -> None:
    patches, images = _diffuse_a(shortcut=True)
    clusters, _ = compare_clusters(patches, images, ["e", "o"])
    by_rel = clusters.sort_values("diff_rel", key=np.abs, ascending=False)
    assert by_rel["cluster"].iloc[0] == 3
    mark = clusters.set_index("cluster").loc[3]
    assert mark["diff_rel"] == pytest.approx(0.5, abs=0.01)  # 0.6 for B - 0.1 for A
    assert mark["diff_rel_lo"] > 0.4
    # plain diff: every cluster leans towards B, the mark among them
    assert (clusters["diff"] > 0).all()
    others = clusters.set_index("cluster").loc[[0, 1, 2]]
    assert (others["diff_rel"] < 0).all()  # B moved reliance away from them


def test_cmp007_significant_means_beyond_the_bar() -> None:
    """Cluster 2 (A -0.1 on 10 images) is a real difference; whether it counts depends on
    the bar its whole interval must clear: --min-effect, or a reference pair's."""
    patches, images = _data()
    zero, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(min_effect=0.0))
    default, _ = compare_clusters(patches, images, ["e", "o"])
    wide, _ = compare_clusters(patches, images, ["e", "o"], ComparisonSettings(min_effect=0.2))
    ref, _ = compare_clusters(
        patches, images, ["e", "o"], ComparisonSettings(min_effect=0.05, reference_bar=0.45)
    )
    at = {name: t.set_index("cluster") for name, t in
          (("zero", zero), ("default", default), ("wide", wide), ("ref", ref))}  # fmt: skip
    assert ComparisonSettings().min_effect == 0.05 and ComparisonSettings().bar == 0.05
    assert ComparisonSettings(min_effect=0.05, reference_bar=0.45).bar == 0.45
    # the +0.4 cluster clears 0, 0.05 and 0.2, not a reference pair that differs by 0.45
    assert [bool(at[k].loc[1, "significant"]) for k in at] == [True, True, True, False]
    assert bool(at["ref"].loc[1, "within_bar"]) and at["ref"].loc[1, "p_value"] < 0.05
    # the -0.1 cluster: its interval clears 0 and 0.05, not 0.2
    hi = at["zero"].loc[2, "diff_hi"]
    assert -0.2 < hi < -0.05
    assert [bool(at[k].loc[2, "significant"]) for k in at] == [True, True, False, False]
    assert bool(at["wide"].loc[2, "within_bar"])
    # the alike cluster is neither significant nor a real difference within the bar
    for k in at:
        assert not at[k].loc[0, "significant"] and not at[k].loc[0, "within_bar"]
    # the numbers themselves do not depend on the bar
    np.testing.assert_allclose(zero["diff_lo"], wide["diff_lo"])


@pytest.mark.slow
def test_cmp008_a_reference_pair_sets_the_bar(shortcut, tmp_path) -> None:
    """Two trainings of the clean recipe (seeds 10, 11) as the reference pair: retraining
    alone makes differences whose intervals clear 0 (measured 0.22-0.25 for this pair); the
    run says so, and the planted mark still clears the bar."""
    import json

    import torch

    from imacs.pipeline import reference_bar
    from imacs.run import Run
    from tests import helpers

    refs = []
    for seed in (10, 11):
        path = tmp_path / f"clean{seed}.pt"
        torch.jit.script(helpers.train("clean", seed=seed)).save(str(path))
        refs.append(path)
    out = tmp_path / "run"
    proc = helpers.analyze_cli(
        shortcut, out, "--reference-a", str(refs[0]), "--reference-b", str(refs[1]),
        "--trust-sample", "0", "--no-whatif",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = Run(tmp_path / "run-reference")
    assert ref.names == {"a": "clean10", "b": "clean11"}
    bar, _ = reference_bar(ref)
    assert 0.1 < bar < 0.35  # retraining alone surely moves a concept's share this much
    run = Run(out)
    m = json.loads((out / "run.json").read_text())
    assert m["settings"]["comparison"]["reference_bar"] == pytest.approx(bar, abs=1e-6)
    assert run.bar == pytest.approx(bar, abs=1e-6)
    c = run.concepts
    # the mark's concept clears it; every other concept's significance clears it too
    assert bool(c.iloc[0]["significant"]) and c.iloc[0]["diff_lo"] > bar
    sig = c[c["significant"].astype(bool)]
    assert ((sig["diff_lo"] > bar) | (sig["diff_hi"] < -bar)).all()
    assert "interval beyond" in proc.stdout and "reference pair" in proc.stdout
    assert "run-reference" in proc.stdout
    # half a pair is a one-line error before any work
    bad = helpers.run_cli(
        "analyze", "--model-a", str(shortcut["a"]), "--model-b", str(shortcut["b"]),
        "--data", str(shortcut["data"]), "--out", str(tmp_path / "bad"),
        "--reference-a", str(refs[0]),
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--reference-a and -b" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_cmp009_the_ranking_shades_the_bar_and_keeps_it_when_a_row_is_marked() -> None:
    from imacs_app.figures import ranking

    patches, images = _data()
    clusters, _ = compare_clusters(patches, images, ["e", "o"])
    fig = ranking(clusters, {"a": "A", "b": "B"}, None, bar=0.05)
    band = [s for s in fig["layout"]["shapes"] if s.get("name") == "bar"]
    assert len(band) == 1 and (band[0]["x0"], band[0]["x1"]) == (-0.05, 0.05)
    assert band[0]["xref"] == "x2"  # on the B − A panel
    assert "within ±0.05" in str(fig["layout"]["annotations"])
    # the relative view has no bar; a run without one shows none
    for kw in ({"relative": True, "bar": 0.05}, {"bar": 0.0}):
        assert not ranking(clusters, {"a": "A", "b": "B"}, None, **kw)["layout"]["shapes"]
    # selecting a row adds its mark beside the band (the browser test clicks it)
    marked = ranking(clusters, {"a": "A", "b": "B"}, 1, bar=0.05)["layout"]["shapes"]
    assert [s.get("name") for s in marked] == ["bar", None]


def test_cmp010_intervals_stay_within_what_a_share_difference_can_be() -> None:
    """A cluster B holds almost all of on a few images: +0.83 with a wide interval, which
    normal theory would stretch past +1 (a user saw [+0.635, +1.027])."""
    images = pd.DataFrame(
        {"label": [0, 1] * 4, "pred_a": [0, 1] * 4, "pred_b": [0, 1] * 4},
        index=pd.Index(np.arange(8), name="image_id"),
    )
    rows = [(i, 0, 0.0, b) for i, b in enumerate([1.0, 1.0, 0.99, 0.98, 0.35, 1.0, 0.35, 1.0])]
    rows += [(i, 1, 0.5, 0.5 + 0.01 * (i % 3)) for i in range(8)]
    patches = pd.DataFrame(rows, columns=["image_id", "cluster", "attr_a", "attr_b"])
    patches["saliency"] = 1.0
    clusters, _ = compare_clusters(patches, images, ["x", "y"], ComparisonSettings(n_boot=400))
    top = clusters.set_index("cluster").loc[0]
    assert top["diff"] == pytest.approx(0.834, abs=0.001)
    assert top["diff"] + 2.5 * top["diff_se"] > 1.0  # unclipped, it would overshoot
    assert top["diff_lo"] < top["diff"] and top["diff_hi"] == 1.0
    assert (clusters[["diff_lo", "diff_rel_lo"]] >= -1).all().all()
    assert (clusters[["diff_hi", "diff_rel_hi"]] <= 1).all().all()


def test_cmp011_images_with_one_salient_patch_are_left_out_of_relative_reliance() -> None:
    """52 of 60 images hold only the shortcut's patch (B 0.60, A 0.07): renormalised over
    the image, both models would give it 1.0 there and relative reliance would read +0.000.
    Left out, the measure rests on the 8 images with two patches, and says so."""
    rng = np.random.default_rng(3)
    n_img = 60
    images = pd.DataFrame(
        {"label": np.zeros(n_img, int), "pred_a": 0, "pred_b": 0},
        index=pd.Index(np.arange(n_img), name="image_id"),
    )
    rows = [(i, 1, 0.07 + rng.normal(0, 0.01), 0.6 + rng.normal(0, 0.01)) for i in range(n_img)]
    rows += [(i, 0, 0.3 + rng.normal(0, 0.01), 0.1 + rng.normal(0, 0.01)) for i in range(8)]
    patches = pd.DataFrame(rows, columns=["image_id", "cluster", "attr_a", "attr_b"])
    patches["saliency"] = 1.0
    clusters, _ = compare_clusters(patches, images, ["x"])
    mark = clusters.set_index("cluster").loc[1]
    assert mark["rank"] == 1 and mark["diff"] == pytest.approx(0.53, abs=0.01)
    assert mark["n_images"] == 60 and mark["n_images_rel"] == 8
    # on its 8 images: A 0.07 / 0.37, B 0.6 / 0.7, so about +0.67, not +0.000
    assert mark["diff_rel"] == pytest.approx(0.6 / 0.7 - 0.07 / 0.37, abs=0.03)
    assert mark["diff_rel_lo"] > 0.5
    from imacs.comparison import relative_shares

    rel = relative_shares(patches)
    assert np.isnan(rel["attr_a_rel"][8:60]).all() and not np.isnan(rel["attr_a_rel"][:8]).any()


def test_cmp012_normal_theory_agrees_with_the_bootstrap_and_permutations_at_scale(
    monkeypatch,
) -> None:
    """From NORMAL_ABOVE images on, intervals and p-values come from normal theory; on
    30,000 images they match the bootstrap and the sign-flip permutations they replace
    (within the bootstrap's own Monte Carlo noise), and take a fraction of the time."""
    import imacs.comparison as comparison

    rng = np.random.default_rng(3)
    n = 30_000
    image = np.repeat(np.arange(n), 4)
    cluster = rng.integers(0, 40, len(image))
    bias = rng.normal(0, 0.01, 40)
    a = rng.beta(2, 8, len(image))
    b = np.clip(rng.beta(2, 8, len(image)) + bias[cluster], 0, 1)
    p = pd.DataFrame({"image_id": image, "cluster": cluster, "attr_a": a, "attr_b": b})
    p = p.assign(**comparison.relative_shares(p))
    pairs = (("attr_a_rel", "attr_b_rel"),)
    assert n >= comparison.NORMAL_ABOVE
    normal = comparison._family_stats(p, ComparisonSettings(), extra=pairs)
    monkeypatch.setattr(comparison, "NORMAL_ABOVE", 10**9)
    boot = comparison._family_stats(p, ComparisonSettings(), extra=pairs)
    for j in range(2):
        se = normal[j]["se"] / boot[j]["se"]
        width = (normal[j]["hi"] - normal[j]["lo"]) / (boot[j]["hi"] - boot[j]["lo"])
        assert se.min() > 0.93 and se.max() < 1.07 and abs(np.median(se) - 1) < 0.02
        assert width.min() > 0.93 and width.max() < 1.07
    p_n, p_b = normal[0]["p"], boot[0]["p"]
    assert ((p_n < 0.05) == (p_b < 0.05)).all() and 5 < (p_n < 0.05).sum() < 40
    assert np.abs(p_n - p_b).max() < 0.05
