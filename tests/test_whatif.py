"""What-if removal: removing the planted mark flips model B and not model A."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import imacs
from imacs.errors import InputError
from imacs.whatif import (
    COLUMNS,
    EFFECTS,
    chosen_clusters,
    excess_p_value,
)
from tests.helpers import analyze_cli as _analyze
from tests.helpers import holds_mark
from tests.helpers import run_cli as _run


def _mark_share(run, marks: dict) -> pd.Series:
    """Per cluster: the share of its patches that lie on the red mark (as test_pip001)."""
    p = run.patch_rows()
    p["on_mark"] = holds_mark(p, marks)
    return p.groupby("cluster")["on_mark"].mean()


def test_wif001_removing_the_mark_flips_b_not_a(shortcut, shortcut_run) -> None:
    run = shortcut_run
    on_mark = _mark_share(run, shortcut["marks"])
    top = run.clusters.iloc[0]
    assert on_mark[top["cluster"]] >= 0.75  # the mark's cluster, as test_pip001 finds it
    # measured: B flips on 100% of its 21 images, A on 0%; random boxes flip neither
    assert top["whatif_n_images"] == top["n_images"] >= 10
    assert top["whatif_flip_b"] >= 0.8, top["whatif_verdict"]
    assert top["whatif_flip_a"] <= 0.1, top["whatif_verdict"]
    assert top["whatif_control_flip_b"] <= 0.2, top["whatif_verdict"]
    assert top["whatif_drop_b"] >= 0.5 and top["whatif_drop_a"] <= 0.1
    assert top["whatif_acc_before_b"] >= 0.9 and top["whatif_acc_after_b"] <= 0.2
    assert top["whatif_acc_after_a"] >= 0.9
    # 32x32 images have room for the control beside the mark (measured: 0.2 % overlap)
    assert top["whatif_control_overlap"] <= 0.02
    assert top["whatif_effect"] == "B depends"
    assert top["whatif_verdict"].startswith("removing it flips B on ")
    # every cluster made of the mark: B depends on it
    mark_clusters = on_mark[on_mark >= 0.75].index
    tested = run.whatif.set_index("cluster")
    assert (tested.loc[mark_clusters, "whatif_effect"] == "B depends").all()


def test_wif002_ordinary_content_is_not_blamed_on_b(shortcut, shortcut_run) -> None:
    run = shortcut_run
    on_mark = _mark_share(run, shortcut["marks"])
    w = run.whatif.set_index("cluster")
    # the default tests the 10 largest |diff| and every significant cluster: all of them here
    assert list(run.whatif["cluster"]) == chosen_clusters(run.clusters, 10)
    assert len(w) == len(run.clusters) and set(w["whatif_effect"]) <= set(EFFECTS)
    ordinary = [c for c in w.index if on_mark[c] < 0.25]
    assert len(ordinary) >= 3
    for c in ordinary:
        assert w.loc[c, "whatif_effect"] != "B depends", w.loc[c, "whatif_verdict"]
        # removed wherever it is, ordinary content (a background of stripes) can cover most
        # of an image: then B flips as often under the same-area control (measured: 62 %
        # against 95 %, 98 % overlap) and the verdict must say it cannot tell
        if w.loc[c, "whatif_flip_b"] > 0.2:
            assert w.loc[c, "whatif_effect"] == "inconclusive", w.loc[c, "whatif_verdict"]
            assert w.loc[c, "whatif_control_flip_b"] >= w.loc[c, "whatif_flip_b"] - 0.1


def test_wif003_recorded_in_run_json_and_info(shortcut_run) -> None:
    m = shortcut_run.manifest
    info = m["whatif"]
    assert info["enabled"] and info["top"] == 10 and info["baseline"] == "black"
    assert info["removal"] == "road" and info["regions"] == "tiles"
    assert info["n_clusters"] == len(shortcut_run.whatif)
    assert info["clusters"] == list(shortcut_run.whatif["cluster"])
    assert info["n_images"] == m["summary"]["n_images"]  # every image holds a tested patch
    assert m["timings"]["whatif"] > 0  # its cost against attribution: BENCHMARKS.md
    assert m["files"]["whatif"] == "whatif.parquet"
    assert list(shortcut_run.whatif.columns) == list(COLUMNS)
    text = shortcut_run.summary()
    assert "what-if: B depends: removing it flips B on 100%" in text


def test_wif004_no_whatif_cli_and_export_columns(shortcut, shortcut_run, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _analyze(shortcut, out, "--steps", "8", "--projection", "pca", "--no-whatif")
    assert proc.returncode == 0, proc.stderr
    assert "what-if:" not in proc.stdout and "#1 concept" in proc.stdout
    run = imacs.load_run(out)
    assert run.whatif.empty and run.manifest["whatif"]["enabled"] is False
    assert run.clusters["whatif_flip_b"].isna().all()
    assert _run("info", str(out)).returncode == 0

    target = tmp_path / "c.csv"
    proc = _run("export", str(shortcut_run.path), "--clusters", str(target))
    assert proc.returncode == 0, proc.stderr
    with target.open() as f:
        rows = list(csv.DictReader(f))
    assert set(COLUMNS) <= set(rows[0])
    assert rows[0]["whatif_effect"] == "B depends" and float(rows[0]["whatif_flip_b"]) >= 0.8


def test_wif005_a_run_from_before_whatif_still_loads(shortcut_run, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(shortcut_run.path, old)
    m = json.loads((old / "run.json").read_text())
    for name in ("whatif", "whatif_images", "concepts", "concept_whatif", "concept_whatif_images"):
        (old / m["files"].pop(name)).unlink()  # what-if came before concepts
    del m["whatif"], m["timings"]["whatif"]
    m["format_version"] = 1  # runs made before this stage were format 1
    (old / "run.json").write_text(json.dumps(m))
    run = imacs.load_run(old)
    assert run.whatif.empty and list(run.whatif.columns) == list(COLUMNS)
    assert len(run.clusters) == len(shortcut_run.clusters)
    assert run.clusters["whatif_effect"].isna().all()
    assert "what-if" not in run.summary()
    run.export(clusters_csv=tmp_path / "c.csv")
    assert "whatif_verdict" in (tmp_path / "c.csv").read_text().splitlines()[0]


def test_wif006_bad_settings_are_one_line_errors(shortcut, tmp_path: Path) -> None:
    for bad in ("-1", "x", "2.5"):
        proc = _run("analyze", "--model-a", "a", "--model-b", "b", "--data", "d",
                    "--out", str(tmp_path / "o"), "--whatif-top", bad)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.count("error:") == 1 and "--whatif-top" in proc.stderr
    with pytest.raises(InputError, match="--whatif"):
        imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r", whatif="no")
    with pytest.raises(InputError, match="--whatif-top"):
        imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r", whatif_top=-2)
    proc = _run("analyze", "--model-a", "a", "--model-b", "b", "--data", "d",
                "--out", str(tmp_path / "o"), "--removal", "black")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
    assert "--removal" in proc.stderr and "road" in proc.stderr
    with pytest.raises(InputError, match="--removal"):
        imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r", removal="x")
    assert "--removal" in _run("analyze", "--help").stdout


def test_wif008_verdict_rule_is_exact_for_small_n() -> None:
    assert excess_p_value(0, 0) == 1.0
    assert excess_p_value(9, 0) == pytest.approx(2**-9)
    assert excess_p_value(5, 5) > 0.5
    # 10 clusters tested at alpha 0.05: 9 clean flips pass the Bonferroni bar, 8 do not
    assert excess_p_value(9, 0) <= 0.05 / 20 < excess_p_value(8, 0)
    c = pd.DataFrame({"cluster": [7, 3, 5], "rank": [1, 2, 3], "significant": [0, 0, 1]})
    assert chosen_clusters(c, 1) == [7, 5] and chosen_clusters(c, 0) == [5]


def test_wif009_nothing_chosen_gives_an_empty_table(shortcut_run) -> None:
    from imacs.settings import AnalysisSettings
    from imacs.whatif import chosen_clusters, what_if

    run = shortcut_run
    # --whatif-top 0 still tests every significant cluster, in rank order ...
    significant = run.clusters.loc[run.clusters["significant"]].sort_values("rank")
    assert len(significant) >= 1 and run.clusters.iloc[0]["significant"]
    assert chosen_clusters(run.clusters, 0) == list(significant["cluster"])
    assert chosen_clusters(run.clusters, 2)[:2] == list(run.clusters["cluster"][:2])
    # ... and with nothing significant nothing is chosen: the stage returns typed empties
    clusters = run.clusters.assign(significant=False)
    assert chosen_clusters(clusters, 0) == []
    s = AnalysisSettings.from_keywords(whatif_top=0, image_size=32)
    table, per_image, boxes, info = what_if(
        None,  # type: ignore[arg-type]
        [],
        run.images,
        run.patches,
        clusters,
        whatif=s.whatif,
        preprocess=s.preprocess,
        attribution=s.attribution,
        seed=s.seed,
    )
    assert table.empty and list(table.columns) == list(COLUMNS) and per_image.empty
    assert boxes.empty
    assert info["n_clusters"] == 0 and info["n_images"] == 0 and info["enabled"]


def test_wif010_fills_keep_the_rest_and_road_adds_nothing_of_what_it_hides() -> None:
    from imacs.removal import FILLS, fill, ig_baseline

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 24, 32)).astype(np.float32)
    mask = np.zeros((2, 24, 32), bool)
    mask[0, 4:12, 6:20] = True
    mask[1, ::3, ::2] = True  # scattered pixels
    keep = ~np.broadcast_to(mask[:, None], x.shape)
    for kind in FILLS:
        out = fill(x, mask, kind, base=ig_baseline(x, "black"))
        assert out.shape == x.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out[keep], x[keep])  # only removed pixels change
        assert out.min() >= 0.0 and out.max() <= 1.0
    # baseline: black; mean: the kept pixels' mean colour; blur: the blurred image
    assert (fill(x, mask, "baseline", base=ig_baseline(x, "black"))[0][:, mask[0]] == 0).all()
    mean = fill(x, mask, "mean")[0][:, mask[0]]
    kept = x[0][:, ~mask[0]].mean(1)
    np.testing.assert_allclose(mean, np.broadcast_to(kept[:, None], mean.shape), rtol=1e-5)
    blurred = fill(x, mask, "blur")[0][:, mask[0]]
    assert blurred.std() < 0.5 * x[0][:, mask[0]].std()  # the image's detail is gone
    # road: what was under the mask does not matter (no leak), the seed fixes the noise
    other = x.copy()
    other[0][:, mask[0]] = 1.0  # a white mark under the mask
    a = fill(x, mask, "road", seeds=[[1, 2], [3]])
    b = fill(other, mask, "road", seeds=[[1, 2], [3]])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fill(x, mask, "road", seeds=[[9], [3]]))
    # ... and continues a smooth image: a linear ramp comes back to within the noise
    ramp = np.broadcast_to(np.linspace(0.2, 0.8, 32, dtype=np.float32), (1, 3, 24, 32)).copy()
    got = fill(ramp, mask[:1], "road")
    assert np.abs(got - ramp).max() < 5 * 0.02 and np.abs(got - ramp).mean() < 0.01
    # the trust curves' approximate solve of the same equations: within 0.01 on average
    smooth = np.stack([ramp[0], np.clip(ramp[0] ** 2 + 0.1, 0, 1)])
    same = [[5], [6]]
    exact = fill(smooth, mask, "road", seeds=same)
    approx = fill(smooth, mask, "road", seeds=same, exact=False)
    gone = np.broadcast_to(mask[:, None], exact.shape)
    assert np.abs(exact - approx)[gone].mean() < 0.01
    np.testing.assert_array_equal(exact[~gone], approx[~gone])
    # a fully removed image gets its mean colour; nothing removed changes nothing
    whole = fill(x[:1], np.ones((1, 24, 32), bool), "road")
    np.testing.assert_allclose(
        whole[0], np.broadcast_to(x[0].mean((1, 2), keepdims=True), x[0].shape), atol=1e-6
    )
    np.testing.assert_array_equal(fill(x, np.zeros_like(mask), "road"), x)


def test_wif011_the_web_apps_baseline_is_the_engines() -> None:
    from imacs.attribution import PairedAttribution
    from imacs.removal import ig_baseline
    from imacs.settings import AttributionSettings, Preprocess

    x = np.random.default_rng(1).random((2, 3, 40, 28)).astype(np.float32)
    for kind in ("black", "gray", "blur"):
        engine = PairedAttribution(
            {}, Preprocess(), AttributionSettings(baseline=kind, device="cpu")
        )
        np.testing.assert_allclose(ig_baseline(x, kind), engine.baseline_array(x), atol=1e-5)


def test_wif007_control_regions_match_the_area_elsewhere_and_repeat() -> None:
    from imacs.whatif import control_region, tile_boxes

    tiles = tile_boxes((32, 32), 8)  # 7 x 7 tiles overlapping by half
    assert len(tiles) == 49 and (tiles[:, 2:] - tiles[:, :2] == 8).all()
    removed = np.zeros((32, 32), bool)
    removed[0:8, 0:16] = True  # two tiles' worth
    out, overlap = control_region(removed, tiles, np.random.default_rng(3))
    again, _ = control_region(removed, tiles, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)
    placed = np.zeros_like(removed)
    for x0, y0, x1, y1 in out:
        placed[y0:y1, x0:x1] = True
    assert overlap == 0 and not (placed & removed).any()
    assert placed.sum() == removed.sum() == 128  # the same area, elsewhere
    # an odd area: the last tile is the one that brings the area closest
    removed[8:12, 0:4] = True  # 144 pixels
    out, _ = control_region(removed, tiles, np.random.default_rng(0))
    placed[:] = False
    for x0, y0, x1, y1 in out:
        placed[y0:y1, x0:x1] = True
    assert abs(int(placed.sum()) - 144) <= 16
    # a frame of 3/4 of the image: the control takes the rest, then overlaps least
    ring = np.ones((32, 32), bool)
    ring[12:20, 12:20] = False
    out, overlap = control_region(ring, tiles, np.random.default_rng(0))
    placed[:] = False
    for x0, y0, x1, y1 in out:
        placed[y0:y1, x0:x1] = True
    assert placed[12:20, 12:20].all() and placed.sum() >= ring.sum()
    assert overlap == int((placed & ring).sum()) > 0


def test_wif012_a_control_that_flips_too_often_is_inconclusive() -> None:
    from imacs.whatif import effect, verdict

    assert effect({"a": False, "b": True}, {"a": True, "b": False}) == "B depends"
    assert effect({"a": False, "b": False}, {"a": True, "b": False}) == "inconclusive"
    assert effect({"a": False, "b": False}, {"a": False, "b": False}) == "neither"
    assert effect({"a": True, "b": True}, {"a": False, "b": False}) == "both"
    row = {
        "whatif_n_images": 109, "whatif_flip_b": 1.0, "whatif_flip_a": 0.72,
        "whatif_control_flip_b": 0.0, "whatif_control_flip_a": 0.72,
        "whatif_inconclusive_a": True, "whatif_inconclusive_b": False,
    }  # fmt: skip
    assert verdict(row) == (
        "removing it flips B on 100% of 109 images; random regions of the same area flip B "
        "on 0%; A: inconclusive: random regions alone flip A on 72%"
    )
    row["whatif_inconclusive_a"] = False
    assert verdict(row) == (
        "removing it flips B on 100% of 109 images, A on 72%; random regions of the same "
        "area flip B on 0%, A on 72%"
    )
    row.update(whatif_inconclusive_a=True, whatif_inconclusive_b=True)
    assert verdict(row) == (
        "B: inconclusive: random regions alone flip B on 0% of 109 images; A: inconclusive: "
        "random regions alone flip A on 72% of 109 images"
    )
