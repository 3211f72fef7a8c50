"""SQL over a run (imacs.query): the views and helpers, the numbers they give, the slice the
dashboard follows, and that no query can read, write or load anything outside the run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imacs.query import EXAMPLES, QueryEngine, QueryError
from tests.helpers import run_cli

#: statements a query box must refuse, and what the refusal says
ATTACKS = {
    "SELECT * FROM read_csv('/etc/passwd')": "file system operations are disabled",
    "SELECT * FROM read_text('/etc/passwd')": "file system operations are disabled",
    "SELECT * FROM '/etc/passwd'": "does not exist",
    "COPY images TO '{out}/leak.csv'": "COPY statements are not allowed",
    "SELECT 1; COPY images TO '{out}/leak.csv'": "2 statements; write one SELECT",
    "CREATE TABLE x AS SELECT 1": "CREATE statements are not allowed",
    "DROP VIEW images": "DROP statements are not allowed",
    "ATTACH '{out}/other.db' AS other": "ATTACH statements are not allowed",
    "INSTALL httpfs": "LOAD statements are not allowed",
    "LOAD httpfs": "LOAD statements are not allowed",
    "SET enable_external_access = true": "SET statements are not allowed",
    "SELECT * FROM ATTACKS": "does not exist",  # no lookup of Python variables
}


def test_qry001_views_speak_the_runs_language_and_drill_down_finds_the_mark(
    shortcut, shortcut_run
) -> None:
    run = shortcut_run
    images = run.query("SELECT * FROM images ORDER BY image_id")
    assert len(images) == 80 and images["a_correct"].all() and images["b_correct"].all()
    assert set(images["label"]) == {"horizontal", "vertical"}
    assert (images["a_pred"] == images["label"]).all() and not images["disagree"].any()
    assert np.allclose(images["agreement"], run.images["map_spearman"], equal_nan=True)
    top = int(run.concepts.iloc[0]["concept"])  # B's mark (test_pip001)
    held = run.query(f"SELECT image FROM images_with({top})")["image"]
    carry = np.mean([shortcut["marks"][p] is not None for p in held])
    assert len(held) >= 30 and carry >= 0.9, carry
    # a composition the fixed filters cannot make: the mark's images B answers "vertical"
    # to when shown the mark alone
    sql = (
        f"SELECT DISTINCT i.image_id FROM images_with({top}) i JOIN patches p USING (image_id) "
        f"WHERE p.concept = {top} AND p.alone_b = 'vertical'"
    )
    ids = set(run.query(sql)["image_id"])
    p = run.patch_rows()
    want = set(p.loc[(p["concept"] == top) & (p["alone_b"] == "vertical"), "image_id"])
    assert ids == want and ids
    # the examples offered in the dashboard all run
    for name, example in EXAMPLES.items():
        assert isinstance(run.query(example), pd.DataFrame), name


def test_qry002_what_if_rates_on_a_slice_are_recomputed_from_the_images(shortcut_run) -> None:
    run = shortcut_run
    top = run.concepts.iloc[0]
    k = int(top["concept"])
    rates = run.query(f"SELECT * FROM flip_rates({k})").iloc[0]
    assert rates["n_images"] == top["whatif_n_images"]
    assert rates["flip_b"] == pytest.approx(top["whatif_flip_b"], abs=1e-9)
    assert rates["flip_a"] == pytest.approx(top["whatif_flip_a"], abs=1e-9)
    # on a slice: the images of one class only, against pandas on the stored tables
    sql = (
        "SELECT avg(b_flipped::DOUBLE) AS flip_b, count(*) AS n FROM whatif_images "
        f"WHERE level = 'concept' AND grp = {k} AND image_id IN "
        "(SELECT image_id FROM images WHERE label = 'vertical')"
    )
    got = run.query(sql).iloc[0]
    w = run.concept_whatif_images
    w = w[w["concept"] == k].merge(run.images[["image_id", "pred_b", "label_name"]], on="image_id")
    w = w[w["label_name"] == "vertical"]
    assert got["n"] == len(w) > 0
    assert got["flip_b"] == pytest.approx((w["pred_b_after"] != w["pred_b"]).mean())


def test_qry003_no_query_reads_writes_attaches_or_loads(shortcut_run, tmp_path) -> None:
    run_dir = shortcut_run.path
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    engine = shortcut_run.query_engine
    for sql, said in ATTACKS.items():
        with pytest.raises(QueryError) as err:
            engine.query(sql.format(out=tmp_path))
        message = str(err.value)
        assert said in message and "\n" not in message and message.startswith("query: "), sql
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing attached
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    # the views are still there after every attempt
    assert len(engine.query("SELECT * FROM images")) == 80
    # a query that runs too long is stopped, with a sentence
    slow = QueryEngine(shortcut_run, timeout=0.5)
    with pytest.raises(QueryError, match=r"query: stopped after 0.5 s; narrow it"):
        slow.query("SELECT count(*) FROM range(1000000) a, range(1000000) b")
    with pytest.raises(QueryError, match="query: empty; write one SELECT"):
        engine.query("  ;")


def test_qry004_the_command_prints_writes_and_refuses(shortcut_run, tmp_path) -> None:
    run_dir = str(shortcut_run.path)
    proc = run_cli("query", run_dir, "SELECT label, count(*) AS n FROM images GROUP BY ALL")
    assert proc.returncode == 0, proc.stderr
    assert "horizontal" in proc.stdout and "vertical" in proc.stdout and " 40" in proc.stdout
    out = tmp_path / "deep" / "slice.csv"
    proc = run_cli("query", run_dir, "SELECT * FROM patches", "--csv", str(out))
    assert proc.returncode == 0 and len(pd.read_csv(out)) == len(shortcut_run.patches)
    parquet = tmp_path / "slice.parquet"
    proc = run_cli("query", run_dir, "SELECT * FROM concepts", "--parquet", str(parquet))
    assert proc.returncode == 0 and len(pd.read_parquet(parquet)) == len(shortcut_run.concepts)
    schema = run_cli("query", run_dir, "--schema")
    assert schema.returncode == 0
    for view in ("images:", "patches:", "clusters:", "concepts:", "whatif_images:", "meta:"):
        assert view in schema.stdout
    assert "images_with(k)" in schema.stdout and "a_correct boolean" in schema.stdout
    leak = tmp_path / "leak.csv"
    proc = run_cli("query", run_dir, f"COPY images TO '{leak}'")
    _one_line_error(proc, "COPY statements are not allowed")
    assert not leak.exists()
    proc = run_cli("query", run_dir, "SELECT * FROM read_csv('/etc/passwd')")
    _one_line_error(proc, "file system operations are disabled")
    assert "root:" not in proc.stdout


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("imacs: error: query: ")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_qry005_a_query_slice_is_what_every_view_computes_on(shortcut_run, tmp_path) -> None:
    from imacs_app.catalog import RunCatalog
    from imacs_app.components.query import _result
    from imacs_app.reader import Filters
    from imacs_app.state import ViewState

    shutil.copytree(shortcut_run.path, tmp_path / "r")
    catalog = RunCatalog(tmp_path)
    view = catalog.get("r").at("cluster")
    # a slice of images: the same numbers as the class filter that selects them
    by_query = Filters(query="SELECT image_id FROM images WHERE label = 'vertical'")
    by_class = Filters(classes=("vertical",))
    # (a class filter reads the statistics the analysis stored; their float widths differ)
    pd.testing.assert_frame_equal(
        view.clusters(by_query), view.clusters(by_class), check_dtype=False
    )
    assert view.summary(by_query) == view.summary(by_class)
    # a slice of patches keeps only those patches (and their images)
    top = int(view.groups.iloc[0]["cluster"])
    only = Filters(query=f"SELECT patch_id FROM patches WHERE cluster = {top}")
    kept = view.filtered_patches(only)
    assert set(kept["cluster"]) == {top} and len(kept) == (view.patches["cluster"] == top).sum()
    assert list(view.clusters(only)["cluster"]) == [top]
    # what the box says under it: the slice, a table, or the error (and nothing is applied)
    said = str(_result(catalog, ViewState(run="r", level="cluster", query=by_query.query)))
    assert "Slice: 40 images from the query; every view below shows 40 images" in said
    table = str(
        _result(
            catalog, ViewState(run="r", query="SELECT label, count(*) FROM images GROUP BY ALL")
        )
    )
    assert "2 rows" in table and "no image_id or patch_id column, so no slice" in table
    bad = Filters(query="DROP VIEW images")
    said = str(_result(catalog, ViewState(run="r", query=bad.query)))
    assert "DROP statements are not allowed" in said and "(not applied)" in said
    assert view.image_mask(bad).all()  # an error filters nothing
    # downloads honour the query like any filter
    client = __import__("imacs_app.main", fromlist=["create_app"]).create_app(tmp_path)
    got = client.server.test_client().get(
        "/download/r/patches.csv?run=r&q=SELECT+patch_id+FROM+patches+WHERE+cluster+%3D+" + str(top)
    )
    assert got.status_code == 200
    rows = pd.read_csv(__import__("io").StringIO(got.get_data(as_text=True)))
    assert len(rows) == len(kept)


def test_qry006_engine_is_torch_free_and_fast_to_build(shortcut_run) -> None:
    proc = subprocess.run(
        [
            __import__("sys").executable, "-c",
            "import sys, imacs.run as r; run = r.load_run(sys.argv[1]); "
            "print(len(run.query('SELECT * FROM patches'))); "
            "print('torch' in sys.modules)",
            str(shortcut_run.path),
        ],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    n, torch_loaded = proc.stdout.split()
    assert int(n) == len(shortcut_run.patches) and torch_loaded == "False"


def test_qry007_column_equals_value_is_a_slice_of_images_and_cannot_escape(marked_run) -> None:
    from imacs.query import run_slice, slice_sql

    assert slice_sql("SELECT image_id FROM images") == "SELECT image_id FROM images"
    assert slice_sql("  mark = 'yes' ") == (
        "SELECT image_id FROM images WHERE CAST(\"mark\" AS VARCHAR) = 'yes'"
    )
    # a quote in the value stays inside the string: no second statement, no injection
    assert slice_sql("mark=x' OR 1=1 --").endswith("= 'x'' OR 1=1 --'")
    assert run_slice(marked_run, "mark=x' OR 1=1 --").images.size == 0
    marked = run_slice(marked_run, "mark=yes")
    want = marked_run.query("SELECT image_id FROM images WHERE mark = 'yes'")["image_id"]
    assert marked.kind == "images" and set(marked.images) == set(want) and 0 < len(want) < 80
    assert run_slice(marked_run, "").images.size == 80  # nothing: every image
    assert run_slice(marked_run, "nosuch=1").kind == "error"


def test_qry008_a_damaged_table_is_one_line_naming_the_file(shortcut_run, tmp_path) -> None:
    run_dir = tmp_path / "damaged"
    shutil.copytree(shortcut_run.path, run_dir)
    table = run_dir / "patches.parquet"
    data = bytearray(table.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = b"\0" * 200  # footer intact, pages not
    table.write_bytes(bytes(data))
    for args in (("query", "SELECT count(*) FROM patches"), ("compare-slices", "", "")):
        out = run_cli(args[0], str(run_dir), *args[1:])
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"{table}: unreadable" in out.stderr and "re-run imacs analyze" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_qry009_common_slices_are_stored_at_analysis_and_equal_the_computed_ones(
    shortcut_run, monkeypatch
) -> None:
    """Each class and each outcome's statistics are computed once by the analysis (the
    ``slice_stats`` table); the dashboard reads them for such a filter, and they are the
    numbers it would compute."""
    import imacs_app.reader as reader
    from imacs.comparison import compare_clusters
    from imacs_app.reader import Filters, RunView

    stored = shortcut_run.table("slice_stats")
    assert set(stored["slice"]) >= {"class=horizontal", "class=vertical", "outcome=both_right"}
    assert set(stored["level"]) == {"concept", "cluster"}
    for level in ("concept", "cluster"):
        computed = RunView("r", shortcut_run, level)
        for f in (Filters(classes=("vertical",)), Filters(outcome="both_right")):
            keep = computed.patch_mask(f)
            want, _ = compare_clusters(
                reader.slice_input(computed.patches, "cluster", keep),
                computed.images,
                shortcut_run.classes,
                shortcut_run.comparison_settings(),
            )
            got = computed._stored_slice(f)
            assert got is not None
            pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    # the view reads them: with the statistic unavailable, a common slice still ranks
    monkeypatch.setattr(reader, "compare_clusters", None)
    view = RunView("r", shortcut_run, "concept")
    assert len(view.clusters(Filters(classes=("horizontal",)))) > 0
    with pytest.raises(TypeError):  # anything else is computed
        view.clusters(Filters(classes=("horizontal", "vertical")))
