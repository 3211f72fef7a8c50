"""Slice against slice (imacs.shift): each model's change of reliance between two slices, its
simultaneous intervals, and the CLI, API and dashboard that reach it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imacs.settings import ComparisonSettings
from imacs.shift import compare_slices
from tests.helpers import run_cli


def _patches(seed: int, n_images: int = 400, lift: float = 0.0) -> pd.DataFrame:
    """Five groups per image; images alternate between slice X (even) and Y (odd); in Y,
    model B's share of group 2 is ``lift`` higher."""
    rng = np.random.default_rng(seed)
    image = np.repeat(np.arange(n_images), 5)
    group = np.tile(np.arange(5), n_images)
    a = rng.uniform(0.05, 0.15, len(image))
    b = rng.uniform(0.05, 0.15, len(image)) + lift * ((group == 2) & (image % 2 == 1))
    return pd.DataFrame({"image_id": image, "cluster": group, "attr_a": a, "attr_b": b})


def test_sft001_a_planted_change_of_one_model_comes_first_with_an_interval_around_it() -> None:
    p = _patches(1, lift=0.2)
    x = (p["image_id"] % 2 == 0).to_numpy()
    t = compare_slices(p, x, ~x)
    top = t.iloc[0]
    assert top["cluster"] == 2 and top["rank"] == 1
    assert top["b_change"] == pytest.approx(0.2, abs=0.01)
    assert top["b_change_lo"] < 0.2 < top["b_change_hi"] and top["b_change_lo"] > 0.15
    assert top["b_shifted"] and top["gap_shifted"] and not top["a_shifted"]
    assert top["diff_x"] == pytest.approx(0.0, abs=0.01)
    assert top["diff_y"] == pytest.approx(0.2, abs=0.01)
    rest = t.iloc[1:]
    assert not rest["b_shifted"].any() and (rest["b_change"].abs() < 0.02).all()
    assert (t[["n_images_x", "n_images_y"]] == 200).all().all()
    # by A's change, group 2 is nothing special; within Y, B - A puts it first
    assert abs(compare_slices(p, x, ~x, by="a").iloc[0]["a_change"]) == pytest.approx(
        t["a_change"].abs().max()
    )
    assert compare_slices(p, x, ~x, by="y").iloc[0]["cluster"] == 2
    # overlapping slices (X: every image, Y: the odd ones): half the lift, still called;
    # shared images count alike in both, so a group that does not change has an interval
    # half as wide as between the disjoint halves (its change is half of theirs)
    both = compare_slices(p, np.ones(len(p), bool), ~x).set_index("cluster")
    assert both.loc[2, "b_change"] == pytest.approx(0.1, abs=0.01) and both.loc[2, "b_shifted"]
    apart = t.set_index("cluster")
    for k in (0, 1, 3, 4):
        ratio = (both.loc[k, "b_change_hi"] - both.loc[k, "b_change_lo"]) / (
            apart.loc[k, "b_change_hi"] - apart.loc[k, "b_change_lo"]
        )
        assert 0.4 < ratio < 0.6, (k, ratio)


def test_sft002_no_change_is_called_shifted_more_often_than_the_level_allows() -> None:
    settings = ComparisonSettings(n_boot=300)
    false_calls = 0
    for seed in range(40):
        p = _patches(100 + seed, n_images=200)
        x = (p["image_id"] % 2 == 0).to_numpy()
        t = compare_slices(p, x, ~x, settings)
        false_calls += bool(t["b_shifted"].any())
    assert false_calls <= 6  # 5 % family-wise: ~2 of 40 expected


def test_sft003_few_images_and_a_group_in_one_slice_are_never_called_shifted() -> None:
    p = _patches(1, n_images=16, lift=0.5)
    x = (p["image_id"] % 2 == 0).to_numpy()
    t = compare_slices(p, x, ~x)
    assert t["few_images"].all() and not t["b_shifted"].any()
    only_y = p.assign(cluster=np.where((p["cluster"] == 4) & x, 3, p["cluster"]))
    t = compare_slices(only_y, x, ~x).set_index("cluster")
    assert t.loc[4, "n_images_x"] == 0 and np.isnan(t.loc[4, "b_change"])
    assert t.index[-1] == 4  # no change: last


def test_sft004_the_mark_is_bs_within_the_marked_images_and_every_image_is_the_run(
    marked_run,
) -> None:
    run = marked_run
    top = int(run.concepts.iloc[0]["concept"])  # B's mark (test_pip001)
    t = run.compare_slices("mark=no", "mark=yes").set_index("concept")
    mark = t.loc[top]
    # the mark's concept lives in the marked images: B - A there is large and sure; with
    # no patch of it in the unmarked images there is no change to call
    assert mark["n_images_x"] == 0 and mark["n_images_y"] >= 30
    assert mark["diff_y"] > 0.5 and mark["diff_y_lo"] > 0.3 and np.isnan(mark["b_change"])
    assert not t["b_shifted"][t["few_images"]].any()
    # against every image, slice Y's B - A is the run's own statistic, concept by concept
    whole = run.compare_slices("mark=yes", "").set_index("concept")
    stored = run.concepts.set_index("concept")
    assert np.allclose(whole["diff_y"], stored.loc[whole.index, "diff"], atol=1e-6)
    assert (whole["n_images_y"] == stored.loc[whole.index, "n_images"]).all()
    # a query slice and its shorthand are one slice; patches slices work too
    same = run.compare_slices("SELECT image_id FROM images WHERE mark = 'no'", "mark=yes")
    assert np.allclose(same["diff_y"], t.loc[same["concept"], "diff_y"], equal_nan=True)
    pos = run.compare_slices("", "SELECT patch_id FROM patches WHERE diff > 0", level="cluster")
    assert (pos["diff_y"].dropna() > 0).all()


def test_sft005_the_cli_prints_the_ranking_writes_csv_and_refuses_bad_slices(
    marked_run, tmp_path
) -> None:
    out = run_cli("compare-slices", str(marked_run.path), "mark=no", "mark=yes", "--rows", "2")
    assert out.returncode == 0, out.stderr
    assert "concepts ranked by the larger change of the two models" in out.stdout
    assert "only in Y" in out.stdout and "B - A:" in out.stdout
    csv = tmp_path / "shift.csv"
    out = run_cli(
        "compare-slices", str(marked_run.path), "mark=yes", "", "--csv", str(csv), "--by", "y"
    )
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(csv)
    assert table["diff_y"].abs().iloc[0] == pytest.approx(table["diff_y"].abs().max())
    for x, says in (
        ("SELECT 1 AS one", "slice X: the query returns no image_id or patch_id column"),
        ("mark=maybe", "slice X holds no patch"),
        ("season=autumn", 'slice X: query: Binder Error: Referenced column "season"'),
    ):
        out = run_cli("compare-slices", str(marked_run.path), x, "")
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_sft006_normal_theory_agrees_with_the_bootstrap_at_scale(monkeypatch) -> None:
    """From NORMAL_ABOVE images on, the intervals come from normal theory; on 30,000 images
    (overlapping slices) they match the bootstrap's within its Monte Carlo noise."""
    import imacs.shift as shift

    p = _patches(7, n_images=30_000, lift=0.05)
    x = (p["image_id"] % 3 != 0).to_numpy()  # two thirds
    y = (p["image_id"] % 2 == 1).to_numpy()  # half: they share a third of the images
    normal = compare_slices(p, x, y).set_index("cluster").sort_index()
    monkeypatch.setattr(shift, "NORMAL_ABOVE", 10**9)
    boot = compare_slices(p, x, y).set_index("cluster").sort_index()
    for m in ("a_change", "b_change", "diff_x", "diff_y", "gap_change"):
        ratio = (normal[f"{m}_hi"] - normal[f"{m}_lo"]) / (boot[f"{m}_hi"] - boot[f"{m}_lo"])
        assert ratio.between(0.92, 1.08).all(), (m, ratio.to_numpy())
    assert (normal["b_shifted"] == boot["b_shifted"]).all() and normal.loc[2, "b_shifted"]
