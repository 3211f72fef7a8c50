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
    control_boxes,
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
    assert top["whatif_control_overlap"] == 0.0  # 32x32 images have room for the control
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
        assert w.loc[c, "whatif_flip_b"] <= 0.2


def test_wif003_recorded_in_run_json_and_info(shortcut_run) -> None:
    m = shortcut_run.manifest
    info = m["whatif"]
    assert info["enabled"] and info["top"] == 10 and info["baseline"] == "black"
    assert info["n_clusters"] == len(shortcut_run.whatif)
    assert info["clusters"] == list(shortcut_run.whatif["cluster"])
    assert info["n_images"] == m["summary"]["n_images"]  # every image holds a tested patch
    assert 0 < m["timings"]["whatif"] < m["timings"]["attribution"]
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


def test_wif007_control_boxes_avoid_the_cluster_and_repeat() -> None:
    boxes = np.array([[0, 0, 8, 8], [16, 8, 24, 16]])
    out, clashes = control_boxes(boxes, (32, 32), np.random.default_rng(3))
    again, _ = control_boxes(boxes, (32, 32), np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)
    assert clashes == 0
    assert ((out[:, 2:] - out[:, :2]) == 8).all()
    taken = np.zeros((32, 32), bool)
    for x0, y0, x1, y1 in boxes:
        taken[y0:y1, x0:x1] = True
    for x0, y0, x1, y1 in out:
        assert min(x0, y0) >= 0 and max(x1, y1) <= 32
        assert not taken[y0:y1, x0:x1].any()
        taken[y0:y1, x0:x1] = True  # and off each other
    # an image with no room left: the least-overlapping place, counted as a clash
    full = np.array([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]])
    _, clashes = control_boxes(full, (32, 32), np.random.default_rng(0))
    assert clashes == 4


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
    from imacs.whatif import what_if

    run = shortcut_run
    clusters = run.clusters.assign(significant=False)
    s = AnalysisSettings.from_keywords(whatif_top=0, image_size=32)
    table, per_image, info = what_if(
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
    assert info["n_clusters"] == 0 and info["n_images"] == 0 and info["enabled"]
