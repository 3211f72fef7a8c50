"""The run format's owner: typed tables and manifest, and runs of an older format opened
through upgrade() (a run committed as written by the last format-1 release)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import imacs
from imacs.errors import InputError
from imacs.runformat import FORMAT_VERSION, TABLES, Manifest, empty, upgrade

OLD = Path(__file__).parent / "fixtures" / "run_v1"


def test_fmt001_a_format_1_run_opens_with_the_numbers_it_was_written_with() -> None:
    run = imacs.load_run(OLD)
    assert run.manifest["format_version"] == FORMAT_VERSION == 2
    assert json.loads((OLD / "run.json").read_text())["format_version"] == 1  # untouched
    # format 1 kept the clustering settings at the top: now they are the clustering part
    assert run.settings.clustering.projection == "pca" and run.settings.trust.sample == 8
    top = run.concepts.iloc[0]
    assert (int(top["concept"]), int(top["rank"]), int(top["n_clusters"])) == (2, 1, 1)
    assert round(float(top["diff"]), 3) == 0.819 and top["whatif_effect"] == "B depends"
    assert float(top["whatif_flip_b"]) == 1.0 and float(top["whatif_flip_a"]) == 0.0
    assert run.concept_whatif.columns[0] == "concept"
    assert set(run.patches["concept"]) == set(run.concepts["concept"])
    assert "#1 concept 2: diff +0.819 [+0.785, +0.853] significant" in run.summary()
    for name in TABLES:  # every table carries the columns this version declares
        assert set(TABLES[name]) <= set(run.table(name).columns), name


def _strip(run_dir: Path, drop: tuple[str, ...], settings_edit=None) -> None:
    m = json.loads((run_dir / "run.json").read_text())
    for name in drop:
        (run_dir / m["files"].pop(name)).unlink()
    if settings_edit:
        settings_edit(m)
    (run_dir / "run.json").write_text(json.dumps(m))


def test_fmt002_a_run_made_before_concepts_and_what_if_gets_them_derived(tmp_path) -> None:
    """Format-1 runs made before the concepts and what-if stages: every cluster is its own
    concept, the what-if tables are empty, patches get ``concept`` = ``cluster``."""
    old = tmp_path / "old"
    shutil.copytree(OLD, old)
    _strip(old, ("concepts", "concept_whatif", "concept_whatif_images", "whatif", "whatif_images"))
    p = pd.read_parquet(old / "patches.parquet").drop(columns="concept")
    p.to_parquet(old / "patches.parquet")
    run = imacs.load_run(old)
    assert list(run.concepts["concept"]) == list(run.clusters["cluster"])
    assert (run.concepts["n_clusters"] == 1).all() and run.whatif.empty
    assert run.concepts["whatif_effect"].isna().all()
    assert (run.patches["concept"] == run.patches["cluster"]).all()
    assert list(run.whatif.columns) == list(empty("whatif").columns)


def test_fmt003_a_newer_or_foreign_manifest_is_a_one_line_error(tmp_path) -> None:
    new = tmp_path / "new"
    shutil.copytree(OLD, new)
    m = json.loads((new / "run.json").read_text())
    (new / "run.json").write_text(json.dumps({**m, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(InputError, match=r"newer than this imacs reads.*upgrade imacs"):
        imacs.load_run(new)
    (new / "run.json").write_text(json.dumps({**m, "format": "other"}))
    with pytest.raises(InputError, match="not an imacs run manifest"):
        imacs.load_run(new)


def test_fmt004_the_typed_manifest_round_trips(shortcut_run) -> None:
    m = shortcut_run.manifest
    typed = Manifest.from_dict(m)
    assert typed.to_dict() == m and typed.names == shortcut_run.names
    assert upgrade(m) == m  # an up-to-date manifest is left as it is
    assert shortcut_run.info.timings.keys() >= {"attribution", "whatif", "write"}
    assert shortcut_run.settings.attribution.steps == 24


def test_fmt010_info_names_what_was_skipped_and_when_the_run_was_made(tmp_path) -> None:
    import json
    import shutil

    import imacs

    run_dir = tmp_path / "old"
    shutil.copytree(OLD, run_dir)
    m = json.loads((run_dir / "run.json").read_text())
    m["skipped"] = [{"path": f"cat/{i}.png", "reason": "not an image"} for i in range(7)]
    m["summary"]["n_skipped"] = 7
    m["created"] = "2026-11-02T08:15:00+00:00"
    (run_dir / "run.json").write_text(json.dumps(m))
    text = imacs.load_run(run_dir).summary()
    assert "(7 skipped)" in text and "    skipped cat/0.png: not an image" in text
    assert "cat/4.png" in text and "cat/5.png" not in text
    assert "... and 2 more (run.json lists them all)" in text
    assert "computed 2026-11-02 08:15 UTC in " in text
    # an old run that knows no bar says what its "significant" meant
    assert "significant: the difference is not 0" in text
