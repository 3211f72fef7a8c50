"""The dashboard's HTTP surface, without a browser: health, files, renderings, downloads."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imacs.errors import InputError
from imacs_app.catalog import RunCatalog
from imacs_app.main import create_app
from imacs_app.state import ViewState, parse_search


@pytest.fixture(scope="module")
def runs_root(shortcut_run, tmp_path_factory) -> Path:
    """A folder of two runs: the shortcut run and a copy under a nested name."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(shortcut_run.path, root / "shortcut")
    shutil.copytree(shortcut_run.path, root / "team" / "copy")
    (root / ".shortcut.imacs-tmp-1").mkdir()  # a run being written is not listed
    shutil.copy(shortcut_run.path / "run.json", root / ".shortcut.imacs-tmp-1" / "run.json")
    return root


@pytest.fixture(scope="module")
def client(runs_root):
    app = create_app(runs_root)
    assert app.server.debug is False
    return app.server.test_client()


def test_app001_healthz(client, tmp_path) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok", "runs": 2}
    empty = create_app(tmp_path).server.test_client().get("/healthz")
    assert empty.status_code == 503


def test_app002_catalog_finds_runs(runs_root, shortcut_run) -> None:
    cat = RunCatalog(runs_root)
    assert sorted(cat.run_dirs()) == ["shortcut", "team/copy"]
    single = RunCatalog(shortcut_run.path)
    assert list(single.run_dirs()) == [shortcut_run.path.name]


def test_app003_files_only_from_inside_the_run(client) -> None:
    ok = client.get("/files/shortcut/thumbs/patches/0.jpg")
    assert ok.status_code == 200 and ok.mimetype == "image/jpeg"
    assert "max-age=3600" in ok.headers["Cache-Control"] and ok.headers.get("ETag")
    again = client.get(
        "/files/shortcut/thumbs/patches/0.jpg", headers={"If-None-Match": ok.headers["ETag"]}
    )
    assert again.status_code == 304
    for bad in (
        "/files/shortcut/thumbs/../run.json",
        "/files/shortcut/thumbs/..%2Frun.json",
        "/files/shortcut/thumbs/%2e%2e/%2e%2e/shortcut/run.json",
        "/files/shortcut/thumbs/patches/../../images.parquet",
        "/files/nope/thumbs/patches/0.jpg",
        "/files/shortcut/thumbs/patches/999999.jpg",
    ):
        r = client.get(bad)
        assert r.status_code == 404 or b"imacs-run" not in r.data, bad
        assert not r.data.startswith(b"PAR1") and b'"fingerprint"' not in r.data, bad


def _salient(share: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The top 5 % of a map's pixels, at the size of a rendering."""
    top = Image.fromarray(np.uint8(share >= np.quantile(share, 0.95)) * 255)
    return np.asarray(top.resize(size, Image.Resampling.NEAREST)) > 0


def test_app004_renderings_are_cacheable_visible_pngs(client, runs_root, tmp_path) -> None:
    for kind in ("image", "a", "b", "diff"):
        r = client.get(f"/render/shortcut/3/{kind}.png")
        assert r.status_code == 200 and r.mimetype == "image/png", kind
        im = Image.open(io.BytesIO(r.data))
        assert max(im.size) >= 256  # small images are enlarged for display
    r = client.get("/render/shortcut/3/a.png")
    assert (
        client.get(
            "/render/shortcut/3/a.png", headers={"If-None-Match": r.headers["ETag"]}
        ).status_code
        == 304
    )
    assert client.get("/render/shortcut/3/evil.png").status_code == 404
    assert client.get("/render/shortcut/99999/a.png").status_code == 404

    # IG maps of real images have a few very hot pixels: here A's hottest pixel is ~14x the
    # 99th percentile of its map. The overlays must still show where each model looks.
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "r")
    maps = np.load(root / "r" / "attr_a.npy")
    m = maps[3].astype(np.float32)
    hot = np.unravel_index(np.argmax(m), m.shape)
    m *= 0.15
    m[hot] = 1.0
    maps[3] = m.astype(maps.dtype)
    np.save(root / "r" / "attr_a.npy", maps)
    view = RunCatalog(root).get("r")
    sa, sb = (np.clip(view.run.attribution_map(k, 3), 0, None) for k in ("a", "b"))
    assert np.percentile(sa[sa > 0], 99) < 0.1 * sa.max()
    sa, sb = sa / sa.sum(), sb / sb.sum()
    c = create_app(root).server.test_client()
    grey = Image.open(io.BytesIO(c.get("/render/r/3/image.png").data)).convert("L")
    grey = np.asarray(grey.convert("RGB"), dtype=float)
    for kind, share in (("a", sa), ("b", sb), ("diff", np.abs(sb - sa))):
        im = Image.open(io.BytesIO(c.get(f"/render/r/3/{kind}.png").data)).convert("RGB")
        moved = np.abs(np.asarray(im, dtype=float) - grey).max(axis=2)
        coloured = (moved[_salient(share, im.size)] > 40).mean()
        assert coloured > 0.5, (kind, coloured)  # was 0.03 (A), 0.26 (B), 0.06 (B − A)


def test_app005_downloads_honour_filters(client, shortcut_run) -> None:
    r = client.get("/download/shortcut/clusters.csv")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.data.decode())))
    assert len(rows) == len(shortcut_run.clusters) and rows[0]["rank"] == "1"
    all_patches = list(
        csv.DictReader(io.StringIO(client.get("/download/shortcut/patches.csv").data.decode()))
    )
    filt = client.get("/download/shortcut/patches.csv?class=horizontal")
    assert "filtered" in filt.headers["Content-Disposition"]
    some = list(csv.DictReader(io.StringIO(filt.data.decode())))
    assert 0 < len(some) < len(all_patches) and {r["label"] for r in some} == {"horizontal"}
    filtered_clusters = list(
        csv.DictReader(
            io.StringIO(
                client.get("/download/shortcut/clusters.csv?class=horizontal").data.decode()
            )
        )
    )
    assert sum(int(c["n_patches"]) for c in filtered_clusters) == len(some)


def test_app006_url_state_round_trip() -> None:
    s = ViewState(run="team/copy", cluster=3, image=7, classes=("a b", "c"), outcome="only_b",
                  meta=(("site", "north"),), color="diff")  # fmt: skip
    assert parse_search(s.to_search()) == s
    assert "concept=3" in s.to_search()  # the ranking and selection are concepts by default
    c = s.with_(level="cluster")
    assert parse_search(c.to_search()) == c and "cluster=3" in c.to_search()
    plain = ViewState(level="cluster")  # the cluster ranking, nothing selected
    assert plain.to_search() == "?level=cluster" and parse_search("?level=cluster") == plain
    # a link made before concepts existed opens the cluster it names
    assert parse_search("?run=r&cluster=4") == ViewState(run="r", level="cluster", cluster=4)
    junk = parse_search("?concept=x&outcome=evil&color=red&image=&level=weird")
    assert junk == ViewState()


def test_app007_web_process_never_imports_torch(runs_root) -> None:
    code = (
        "import sys; from imacs_app.main import create_app; "
        f"c = create_app({str(runs_root)!r}).server.test_client(); "
        "assert c.get('/render/shortcut/1/diff.png').status_code == 200; "
        "assert c.get('/download/shortcut/clusters.csv?class=vertical').status_code == 200; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_app008_wsgi_entry_serves_the_runs_folder(runs_root) -> None:
    code = (
        "from imacs_app.wsgi import application; c = application.test_client(); "
        "r = c.get('/healthz'); print(r.status_code, r.get_json()['runs'])"
    )
    env = {**__import__("os").environ, "IMACS_RUNS": str(runs_root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "2"]


def test_app009_basic_auth_guards_everything_but_healthz(runs_root) -> None:
    import base64

    c = create_app(runs_root, accounts={"ana": "s3cret:with:colons"}).server.test_client()

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    assert c.get("/healthz").status_code == 200
    for path in ("/", "/_dash-layout", "/files/shortcut/thumbs/patches/0.jpg",
                 "/render/shortcut/1/a.png", "/download/shortcut/clusters.csv"):  # fmt: skip
        r = c.get(path)
        assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"], path
        assert c.get(path, headers=basic("ana", "wrong")).status_code == 401
        assert c.get(path, headers=basic("bob", "s3cret:with:colons")).status_code == 401
        assert c.get(path, headers=basic("ana", "s3cret:with:colons")).status_code == 200, path


def test_app010_auth_accounts_from_environment(tmp_path) -> None:
    from imacs.errors import InputError
    from imacs_app.auth import load_accounts

    assert load_accounts({}) == {}
    assert load_accounts({"IMACS_BASIC_AUTH": "ana:pw"}) == {"ana": "pw"}
    f = tmp_path / "users"
    f.write_text("# team\nbob:hunter2\n\ncarol:x:y\n")
    assert load_accounts({"IMACS_BASIC_AUTH_FILE": str(f), "IMACS_BASIC_AUTH": "ana:pw"}) == {
        "ana": "pw", "bob": "hunter2", "carol": "x:y",
    }  # fmt: skip
    f.write_text("bob:hunter2\nnot-a-pair-topsecret\n")
    with pytest.raises(InputError, match=r"users:2: expected user:password") as err:
        load_accounts({"IMACS_BASIC_AUTH_FILE": str(f)})
    assert "topsecret" not in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(InputError, match="IMACS_BASIC_AUTH must be user:password"):
        load_accounts({"IMACS_BASIC_AUTH": "nopassword"})


def test_app011_unreadable_runs_are_set_aside_and_reported(runs_root, tmp_path) -> None:
    import json

    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "good")
    shutil.copytree(runs_root / "shortcut", root / "old")
    manifest = json.loads((root / "old" / "run.json").read_text())
    manifest["format_version"] = 0
    (root / "old" / "run.json").write_text(json.dumps(manifest))
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text('{"format": "imacs-run", "format_ver')
    cat = RunCatalog(root)
    assert list(cat.run_dirs()) == ["good"]
    problems = cat.problems()
    assert set(problems) == {"old", "broken"}
    assert (
        "run format 0 is not one this imacs reads (1 to 2); re-run imacs analyze" in problems["old"]
    )
    # asked for by name, a damaged run answers its problem, not "keeps being replaced"
    for rid in ("old", "broken"):
        with pytest.raises(InputError) as err:
            cat.get(rid)
        assert str(err.value) == problems[rid]
    assert create_app(root).server.test_client().get("/healthz").status_code == 200


def test_app012_missing_thumbnail(runs_root, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "r")
    (root / "r" / "thumbs" / "images" / "2.jpg").unlink()
    (root / "r" / "thumbs" / "patches" / "5.jpg").unlink()
    c = create_app(root).server.test_client()
    assert c.get("/files/r/thumbs/patches/5.jpg").status_code == 404
    r = c.get("/render/r/2/diff.png")  # drawn on a grey stand-in of the right shape
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (256, 256)


def test_app013_filters_reach_every_number(runs_root, tmp_path) -> None:
    import pandas as pd

    from imacs_app.reader import Filters

    # a run where B is wrong on 10 of the 40 horizontal images
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "r")
    images = pd.read_parquet(root / "r" / "images.parquet")
    wrong = images.index[images["label_name"] == "horizontal"][:10]
    images.loc[wrong, ["pred_b", "correct_b"]] = [1, False]
    images.to_parquet(root / "r" / "images.parquet")
    view = RunCatalog(root).get("r")

    everything = view.summary(Filters())
    assert everything["accuracy_b"] == 70 / 80 and everything["n_images"] == 80
    horizontal = Filters(classes=("horizontal",))
    summ = view.summary(horizontal)
    assert summ["n_images"] == 40 and summ["n_images_total"] == 80
    assert summ["accuracy_a"] == 1.0 and summ["accuracy_b"] == 30 / 40
    assert summ["agreement"] == 30 / 40
    kept = view.filtered_patches(horizontal)
    assert summ["n_patches"] == len(kept) < summ["n_patches_total"]
    assert summ["n_clusters"] == kept["cluster"].nunique() < summ["n_clusters_total"]
    nothing = view.summary(Filters(outcome="both_wrong"))
    assert nothing["n_images"] == 0 and nothing["n_patches"] == 0
    assert np.isnan(nothing["accuracy_a"])

    # the strip thumbnails come from the filtered patches only
    reps = view.representatives(horizontal)
    shown = [pid for ids in reps.values() for pid in ids]
    assert shown and set(shown) <= set(kept["patch_id"])
    assert set(reps) == set(kept["cluster"])


def test_app014_a_clusters_breakdown_shows_its_cause(marked_run) -> None:
    from imacs_app.reader import Filters

    view = RunCatalog(marked_run.path).get(None)
    top = int(marked_run.clusters.iloc[0]["cluster"])  # the red mark, read by B
    table = view.cluster_breakdown(Filters(), top)
    rows = {(r.column, r.value): r for r in table.itertuples()}
    n = marked_run.patches.query("cluster == @top")["image_id"].nunique()
    assert rows["mark", "yes"].share == 1.0 and rows["mark", "yes"].n_images == n
    assert rows["mark", "yes"].overall == 0.5  # 40 of the 80 images carry the mark
    assert rows["B predicts", "vertical"].share == 1.0
    assert rows["A predicts", "vertical"].share == 1.0
    assert list(table["column"].unique()) == ["mark", "A predicts", "B predicts", "class"]
    trait = view.cluster_traits(Filters()).loc[top]
    assert (trait["column"], trait["value"], trait["share"]) == ("mark", "yes", 1.0)
    # against the filtered images: among vertical images every one carries the mark
    only_vertical = view.cluster_breakdown(Filters(classes=("vertical",)), top)
    assert only_vertical.query("column == 'mark'")["overall"].tolist() == [1.0]
    assert top not in view.cluster_traits(Filters(classes=("vertical",))).index


def test_app015_runs_are_listed_newest_first(runs_root, tmp_path) -> None:
    import os

    root = tmp_path / "runs"
    for name, age in (("alpha", 300), ("beta", 100), ("team/gamma", 200)):
        shutil.copytree(runs_root / "shortcut", root / name)
        t = os.path.getmtime(root / name / "run.json") - age
        os.utime(root / name / "run.json", (t, t))
    cat = RunCatalog(root)
    assert list(cat.run_dirs()) == ["beta", "team/gamma", "alpha"]
    assert cat.default_run() == "beta" and cat.get(None).run_id == "beta"


def test_app016_clicks_without_customdata_still_open_the_cluster(runs_root) -> None:
    from imacs_app.components.common import clicked_cluster as _clicked_cluster

    cat = RunCatalog(runs_root)
    s = ViewState(run="shortcut", classes=("vertical",), level="cluster")
    bar = {"points": [{"curveNumber": 1, "pointIndex": 1, "x": 0.4, "y": "#2 · c5"}]}
    assert _clicked_cluster(bar, "ranking", s, cat) == 5
    kept = cat.get("shortcut").filtered_patches(s.filters)
    row = kept.iloc[7]
    x, y = round(float(row["proj_x"]), 3), round(float(row["proj_y"]), 3)
    point = {"points": [{"curveNumber": 0, "pointIndex": 7, "x": x, "y": y}]}
    assert _clicked_cluster(point, "map", s, cat) == int(row["cluster"])
    # the map was redrawn under other filters since: the point is found by its place
    other = kept[kept["cluster"] != row["cluster"]].iloc[0]
    moved = {
        "points": [{"curveNumber": 0, "pointIndex": 7, "x": other["proj_x"], "y": other["proj_y"]}]
    }
    assert _clicked_cluster(moved, "map", s, cat) == int(other["cluster"])
    typed = {"points": [{"curveNumber": 0, "pointIndex": 7, "customdata": [3]}]}
    assert _clicked_cluster(typed, "map", s, cat) == 3
    # at the concept level (the default) a map point opens its patch's concept
    k = s.with_(level="concept")
    assert _clicked_cluster(point, "map", k, cat) == int(row["concept_id"])


def test_app017_auth_fails_closed(tmp_path, runs_root) -> None:
    from imacs.errors import InputError
    from imacs_app.auth import load_accounts

    empty = tmp_path / "users"
    empty.write_text("# nobody yet\n\n")
    for env, message in (
        ({"IMACS_BASIC_AUTH": ""}, "IMACS_BASIC_AUTH is set but empty"),
        ({"IMACS_BASIC_AUTH": "  "}, "IMACS_BASIC_AUTH is set but empty"),
        ({"IMACS_BASIC_AUTH_FILE": str(empty)}, "holds no account"),
        ({"IMACS_BASIC_AUTH_FILE": ""}, "IMACS_BASIC_AUTH_FILE is set but empty"),
    ):
        with pytest.raises(InputError, match=message):
            load_accounts(env)
    # the same refusal through `imacs serve` (one line, exit 2) and the gunicorn entry
    env = {**__import__("os").environ, "IMACS_BASIC_AUTH": "", "PYTHONPATH": str(Path.cwd())}
    res = subprocess.run(
        [sys.executable, "-m", "imacs", "serve", str(runs_root), "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 2 and "IMACS_BASIC_AUTH is set but empty" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(
        [sys.executable, "-c", "import imacs_app.wsgi"],
        capture_output=True, text=True, timeout=120,
        env={**env, "IMACS_RUNS": str(runs_root)},
    )  # fmt: skip
    # 3 is gunicorn's "worker failed to boot": the master halts instead of respawning it
    assert res.returncode == 3 and res.stderr.strip().startswith("imacs: error: IMACS_BASIC_AUTH")


def test_app018_busy_port_is_a_one_line_error(runs_root) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "imacs", "serve", str(runs_root), "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr == (
        f"imacs: error: port {port} on 127.0.0.1 is in use; pass --port N or stop the other "
        "server\n"
    )


def test_app019_healthz_and_headers_reveal_nothing(client, runs_root, tmp_path) -> None:
    for app_client in (client, create_app(tmp_path).server.test_client()):
        r = app_client.get("/healthz")
        assert str(runs_root) not in r.get_data(as_text=True)
        assert str(tmp_path) not in r.get_data(as_text=True)
    for path in ("/", "/healthz", "/files/shortcut/thumbs/images/0.jpg"):
        r = client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        scripts = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        # no inline script runs unless hashed; eval stays for plotly's WebGL map
        assert "'self' 'unsafe-eval' 'sha256-" in scripts and "unsafe-inline" not in scripts


def test_app020_damaged_runs_answer_a_sentence_not_500(runs_root, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "cut")
    app_client = create_app(root).server.test_client()
    assert app_client.get("/render/cut/0/a.png").status_code == 200  # readable first
    (root / "cut" / "attr_a.npy").write_bytes(b"\x93NUMPY broken")
    (root / "cut" / "patches.parquet").write_bytes(b"PAR1 broken")
    fresh = create_app(root).server.test_client()
    for url in ("/render/cut/0/a.png", "/download/cut/patches.csv"):
        r = fresh.get(url)
        text = r.get_data(as_text=True)
        assert r.status_code == 503, (url, r.status_code)
        assert text.startswith("This run cannot be shown:") and text.count("\n") == 1
        assert "Traceback" not in text and str(root) not in text


def test_app021_csv_cells_cannot_run_as_formulas(runs_root, tmp_path) -> None:
    import pandas as pd

    from imacs.run import load_run, safe_csv

    frame = pd.DataFrame(
        {"name": ['=HYPERLINK("x")', "+1", "@SUM(A1)", "plain", "-2"], "diff": [-0.12, 1, 2, 3, 4]}
    )
    rows = list(csv.reader(io.StringIO(safe_csv(frame))))
    assert [r[0] for r in rows[1:]] == ['\'=HYPERLINK("x")', "'+1", "'@SUM(A1)", "plain", "'-2"]
    assert rows[1][1] == "-0.12"  # numbers stay numbers
    # imacs export and the dashboard download both guard: plant a formula in a meta column
    run_dir = tmp_path / "run"
    shutil.copytree(runs_root / "shortcut", run_dir)
    images = pd.read_parquet(run_dir / "images.parquet")
    images["site"] = "=cmd|' /C calc'!A0"
    images.to_parquet(run_dir / "images.parquet", index=False)
    load_run(run_dir).export(patches_csv=tmp_path / "p.csv")
    assert (
        "\n=" not in (tmp_path / "p.csv").read_text()
        and ",=" not in (tmp_path / "p.csv").read_text()
    )
    served = create_app(tmp_path).server.test_client().get("/download/run/patches.csv")
    assert served.status_code == 200 and ",=" not in served.get_data(as_text=True)


def test_app022_catalog_rescans_only_when_the_folder_changed(runs_root, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "shortcut", root / "one")
    catalog = RunCatalog(root, racy_seconds=0)  # the copies were made just now
    assert list(catalog.run_dirs()) == ["one"] and catalog.scans == 1
    for _ in range(20):  # page loads, callbacks and thumbnails: no rescan
        catalog.run_dirs()
        assert catalog.safe_file("one", "images/0.jpg") is not None
    assert catalog.scans == 1
    # a run committed two levels down, then one removed: both seen at the next call
    shutil.copytree(runs_root / "shortcut", root / "team" / ".two.tmp")
    os.rename(root / "team" / ".two.tmp", root / "team" / "two")
    assert set(catalog.run_dirs()) == {"one", "team/two"}
    shutil.rmtree(root / "one")
    assert list(catalog.run_dirs()) == ["team/two"]
    assert catalog.safe_file("one", "images/0.jpg") is None
    assert catalog.scans == 3
    # a folder changed within the racy window is listed again on every call
    fresh = RunCatalog(root, racy_seconds=3600)
    for _ in range(3):
        fresh.run_dirs()
    assert fresh.scans == 3


def test_app023_analysis_package_never_imports_the_dashboard() -> None:
    """One direction: imacs_app reads runs through imacs; imacs reaches the dashboard only
    through its entry point (imacs serve, imacs demo)."""
    import ast

    import imacs

    offenders = []
    for path in Path(imacs.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "imacs_app"]
    assert offenders == []
    from imacs.cli import _dashboard
    from imacs_app.main import serve

    assert _dashboard() is serve


def test_app024_removed_rendering_shows_exactly_what_was_removed(client, shortcut_run):
    from PIL import Image
    from scipy.ndimage import binary_dilation, binary_erosion

    from imacs.removal import fill
    from imacs.whatif import fill_seed

    top = int(shortcut_run.clusters.iloc[0]["cluster"])
    boxes = shortcut_run.whatif_boxes
    mine = boxes[(boxes["cluster"] == top) & ~boxes["control"]]
    image_id = int(mine["image_id"].iloc[0])
    shown = {}
    for kind in ("image", "removed"):
        r = client.get(f"/render/shortcut/{image_id}/{kind}.png?cluster={top}")
        assert r.status_code == 200 and r.mimetype == "image/png"
        shown[kind] = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"), np.float32)
    # the stored regions at the model's input size (32 px), as the rendering enlarges them
    removed = np.zeros((32, 32), bool)
    for b in mine[mine["image_id"] == image_id].itertuples():
        removed[b.y0 : b.y1, b.x0 : b.x1] = True
    scale = shown["image"].shape[0] // 32
    big = removed.repeat(scale, 0).repeat(scale, 1)
    inner = binary_erosion(big, iterations=2)  # off the outline drawn around it
    outside = ~binary_dilation(big, iterations=1)
    # the plain rendering outlines every patch of the image, of any cluster: not compared
    pats = shortcut_run.patches[shortcut_run.patches["image_id"] == image_id]
    for p in pats.itertuples():
        box = np.zeros_like(big)
        box[p.y0 * scale : p.y1 * scale, p.x0 * scale : p.x1 * scale] = True
        outside &= ~(binary_dilation(box, iterations=2) & ~binary_erosion(box, iterations=3))
    diff = np.abs(shown["removed"] - shown["image"]).max(2)
    assert diff[outside].max() <= 3  # the rest of the image is untouched
    # inside: the run's fill (road) of the image at the model's size, with its noise seed
    x = shown["image"][::scale, ::scale].transpose(2, 0, 1)[None] / 255.0
    seed = fill_seed(shortcut_run.settings.seed, "cluster", top, image_id, False)
    want = fill(x.astype(np.float32), removed[None], "road", seeds=[seed])[0] * 255
    want = want.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
    assert shortcut_run.settings.whatif.removal == "road"
    assert np.abs(shown["removed"] - want)[inner].mean() < 6
    # the red mark B reads is gone from the removed picture
    red = lambda im: (im[..., 0] > 180) & (im[..., 1] < 80) & (im[..., 2] < 80)  # noqa: E731
    assert red(shown["image"]).sum() >= 16 and red(shown["removed"]).sum() == 0


def test_app025_every_id_is_declared_by_the_component_that_renders_it() -> None:
    """No module retypes an id: ``id=``, Input, Output and State take constants or
    constructors from a component's ``ids``; and no two components declare one id."""
    import ast

    import imacs_app
    from imacs_app.components import COMPONENTS, common, evidence

    offenders = []
    for path in Path(imacs_app.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            named = [k.value for k in node.keywords if k.arg == "id"]
            callee = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if callee in ("Input", "Output", "State") and node.args:
                named.append(node.args[0])
            offenders += [
                f"{path.name}:{v.lineno}"
                for v in named
                if isinstance(v, ast.Dict) or (isinstance(v, ast.Constant) and v.value)
            ]
    assert offenders == []
    declared: dict[str, str] = {}
    for module in (*COMPONENTS, common, evidence):
        for name, value in vars(module.ids).items():
            if isinstance(value, staticmethod):
                value = value.__func__(*["x"] * value.__func__.__code__.co_argcount)["type"]
            if isinstance(value, str) and not name.startswith("_"):
                assert value not in declared, (value, module.__name__, declared.get(value))
                declared[value] = module.__name__
    assert len(declared) == 59  # 50 plain ids, 9 kinds of pattern-matching ids


def _output(router, target: str) -> int:
    """The index of ``target`` ("rank-level.value") among the state callback's outputs."""
    return [str(o) for o in router.outputs].index(target)


def test_app026_the_state_callback_follows_every_components_clicks(runs_root) -> None:
    from dash import no_update
    from dash.exceptions import PreventUpdate

    from imacs_app.components import COMPONENTS, cluster, common, filters, overview, versus
    from imacs_app.components.navigation import Router, ids

    router = Router(COMPONENTS, RunCatalog(runs_root))
    # the hand-written router's 16 inputs and 12 outputs, the meta filter's visibility, and
    # the query box (its text, clear and the examples; the box mirrors the query), and the
    # slice-against-slice card (its text, clear, ranking and group names; two mirrors), and
    # the patches that top a channel inside the models
    assert len(router.inputs) == 24 and len(router.outputs) == 16
    level = _output(router, f"{overview.ids.LEVEL}.value")
    out = router.route("?run=shortcut&level=cluster", overview.ids.strip(5), "n_clicks", 1)
    assert out[0] == "?run=shortcut&cluster=5"
    assert out[level] == "cluster" and out.count(no_update) == 13 and out[-1] is None
    vs = router.route("?run=shortcut", versus.ids.VERSUS, "value", "label=vertical")
    assert vs[0] == "?run=shortcut&vs=label%3Dvertical"
    picked = router.route(vs[0] + "&vsby=b", versus.ids.group(4), "n_clicks", 1)[0]
    assert picked == "?run=shortcut&concept=4&vs=label%3Dvertical&vsby=b"
    opened = "?run=shortcut&cluster=5&image=3&color=diff"
    with pytest.raises(PreventUpdate):  # a strip just rendered, not clicked
        router.route(opened, overview.ids.strip(6), "n_clicks", 0)
    assert router.route(opened, common.ids.close("image"), "n_clicks", 1)[0] == (
        "?run=shortcut&cluster=5&color=diff"
    )
    assert router.route(opened, common.ids.close("cluster"), "n_clicks", 1)[0] == (
        "?run=shortcut&level=cluster&image=3&color=diff"
    )
    concept = router.route(opened, cluster.ids.open("concept", 2), "n_clicks", 1)
    assert concept[0] == "?run=shortcut&concept=2&color=diff" and concept[level] == "concept"
    picked = {filters.ids.CLASS: ["vertical"], filters.ids.OUTCOME: "only_b", filters.ids.META: []}
    assert router.route(opened, filters.ids.OUTCOME, "value", "only_b", picked)[0] == (
        "?run=shortcut&cluster=5&class=vertical&outcome=only_b&color=diff"
    )
    # another run keeps the display choices and drops the selection, and fills its controls
    other = router.route(opened + "&class=vertical", ids.RUN_PICKER, "value", "team/copy")
    assert other[0] == "?run=team%2Fcopy&level=cluster&color=diff"
    assert other[_output(router, f"{filters.ids.CLASS}.value")] == []
    classes = other[_output(router, f"{filters.ids.CLASS}.options")]
    assert [c["value"] for c in classes] == ["horizontal", "vertical"]
    # a run that is gone: the newest is shown instead, and the notice says so
    gone = router.route("?run=nope&concept=1&measure=relative", ids.URL)
    assert gone[0].startswith("?run=") and gone[0].endswith("&measure=relative")
    notice = gone[-1].children
    assert "no run named 'nope'" in notice and "Showing the newest run" in notice


def test_app027_a_new_clickable_view_is_one_component(runs_root) -> None:
    """A tiny extra component (a button and a URL key) needs no change anywhere else: the
    page shows its button, the state callback listens to it, follows its click and keeps
    its key in the URL through other clicks and a reload."""
    from types import SimpleNamespace

    from dash import Dash, html, no_update

    from imacs_app import components
    from imacs_app.components import COMPONENTS, overview
    from imacs_app.components.navigation import ids
    from imacs_app.declare import Click, Mirror, UrlFormat, integer_key
    from imacs_app.layout import layout

    zoom = SimpleNamespace(
        URL_KEYS=(integer_key("zoom", position=95, scope="map"),),
        CLICKS=(Click("zoom-in", lambda s, hit: s.with_(zoom=2 * (s.zoom or 1))),),
        MIRRORS=(Mirror("zoom-level", "children", lambda s, view, catalog: f"×{s.zoom or 1}"),),
        layout=lambda: {"details": [html.Button("+", id="zoom-in"), html.Span(id="zoom-level")]},
    )
    page = (*COMPONENTS, zoom)
    app = Dash(__name__, suppress_callback_exceptions=True)
    app.layout = layout(page)
    router = components.register(app, RunCatalog(runs_root), page)
    assert [c.id for c in app.layout.children[-2:]] == ["zoom-in", "zoom-level"]
    state = next(c for c in app._callback_list if "url.search" in c["output"])
    assert "zoom-in.n_clicks" in [f"{i['id']}.{i['property']}" for i in state["inputs"]]
    assert "zoom-level.children" in state["output"]

    shown = _output(router, "zoom-level.children")
    once = router.route("?run=shortcut&concept=1&color=diff", "zoom-in", "n_clicks", 1)
    assert once[0] == "?run=shortcut&concept=1&color=diff&zoom=2"
    twice = router.route(once[0], "zoom-in", "n_clicks", 2)
    assert twice[0] == "?run=shortcut&concept=1&color=diff&zoom=4"
    strip = router.route(twice[0], overview.ids.strip(3), "n_clicks", 1)
    assert strip[0] == "?run=shortcut&concept=3&color=diff&zoom=4"
    reload = router.route("?run=shortcut&zoom=4", ids.URL)
    assert reload[shown] == "×4" and reload[0] is no_update  # canonical: not rewritten
    assert UrlFormat.of(page).parse(strip[0]).zoom == 4
    # its key is in the map's scope: the map's derived key changes with it, the data's not
    s = UrlFormat.of(page).parse(strip[0])
    assert s.scoped(["data", "map"]).zoom == 4 and s.scoped(["data"]).zoom is None
    # a key another component owns, or a region the page lacks, is refused at once
    clash = SimpleNamespace(URL_KEYS=(integer_key("image", position=1),), layout=dict)
    with pytest.raises(ValueError, match="same URL key"):
        UrlFormat.of((*COMPONENTS, clash))
    lost = SimpleNamespace(layout=lambda: {"sidebar": [html.Div()]})
    with pytest.raises(ValueError, match="no page region 'sidebar'"):
        layout((*COMPONENTS, lost))


def test_app028_the_dashboard_benchmark_drives_every_callback_and_a_click_uploads_little(
    tmp_path,
) -> None:
    """benchmarks/bench_dashboard.py replays each interaction through the app's own
    callback map (benchmarks/page_driver.py): on a small run every request it makes is
    answered (200, or 204 when nothing changes), every view's callback is reached, and no
    request uploads more than 50 kB (no figure goes back to the server)."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_dashboard", bench / "bench_dashboard.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        run = mod.make_run(
            tmp_path / "small", n_patches=2000, n_clusters=10, thumbs=20, current=True
        )
        results = mod.run_scenarios(create_app(run), run.name, repeats=1)
    finally:
        sys.path.remove(str(bench))
    assert set(results) == set(mod.SCENARIOS)
    reached = set()
    for name, acts in results.items():
        for act in acts:
            bad = [(c.outputs, c.status) for c in act.calls if c.status not in (200, 204)]
            assert bad == [], (name, bad)
            assert act.up < 50_000, (name, act.up)
            reached |= {c.outputs for c in act.calls if c.status == 200}
    for view in ("summary.children", "map.figure", "cluster-detail.children", "image-detail",
                 "vs-out.children", "q-out.children", "agreement.children"):  # fmt: skip
        assert any(view in key for key in reached), view
    opened = results["open the run"][0]
    assert opened.down > 10_000 and any("ranking.figure" in c.outputs for c in opened.calls)


def test_app029_a_map_above_its_limit_draws_a_sample_of_every_group_and_says_so(
    tmp_path, monkeypatch
) -> None:
    import base64
    import importlib.util

    from imacs.run import load_run
    from imacs_app import figures

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("make_large_run", bench / "make_large_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = mod.make_run(tmp_path / "many", n_patches=2000, n_clusters=10, thumbs=5, current=True)
    monkeypatch.setattr(figures, "MAP_POINTS", 500)
    monkeypatch.setattr(figures, "MAP_MIN_GROUP", 20)
    client = create_app(run).server.test_client()
    payload = {
        "output": "..map.figure...map-drawn.data..",
        "outputs": [{"id": "map", "property": "figure"}, {"id": "map-drawn", "property": "data"}],
        "inputs": [{"id": "key-map", "property": "data", "value": "?run=many&level=cluster"}],
        "changedPropIds": ["key-map.data"],
        "state": [],
    }
    r = client.post("/_dash-update-component", json=payload)
    assert r.status_code == 200
    out = r.get_json()["response"]
    fig, drawn = out["map"]["figure"], out["map-drawn"]["data"]
    traces = fig["data"][:drawn]

    def n_points(xs: dict | list) -> int:  # plotly sends numpy arrays as base64 typed arrays
        if isinstance(xs, dict):
            return len(np.frombuffer(base64.b64decode(xs["bdata"]), dtype=xs["dtype"]))
        return len(xs)

    sizes = {t["name"]: n_points(t["x"]) for t in traces}
    patches = load_run(run).patches
    assert drawn == patches["cluster"].nunique() == 10  # every group keeps its trace
    assert 480 <= sum(sizes.values()) <= 560
    for name, n in sizes.items():  # in proportion, at least 20
        n_all = int((patches["cluster"] == int(name[1:])).sum())
        assert n >= min(n_all, 20) and abs(n - 500 * n_all / 2000) <= 21, (name, n, n_all)
    notes = [a["text"] for a in fig["layout"].get("annotations", [])]
    assert any("a sample of" in t and "of 2,000 patches" in t for t in notes), notes


def _update(client, outputs: list[tuple[str, str]], inputs: list[tuple[str, str, object]],
            state: list[tuple[str, str, object]] = ()) -> tuple[int, dict]:  # fmt: skip
    """Answer one callback as the page asks for it: its outputs, inputs and state, as
    (id, property[, value])."""
    names = [f"{i}.{p}" for i, p in outputs]
    payload = {
        "output": names[0] if len(names) == 1 else ".." + "...".join(names) + "..",
        "outputs": [{"id": i, "property": p} for i, p in outputs]
        if len(outputs) > 1
        else {"id": outputs[0][0], "property": outputs[0][1]},
        "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
        "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"],
        "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
    }
    r = client.post("/_dash-update-component", json=payload)
    return r.status_code, (r.get_json() or {}).get("response", {}) if r.status_code == 200 else {}


def test_app030_inside_the_models_renders_per_concept_and_says_why_when_absent(
    client, runs_root, shortcut_run, tmp_path
) -> None:
    """The panel inside the models: the shortcut run's models are TorchScript, so each
    model's part is the manifest's sentence; a run made before the stage says how to get
    it; the run's part is drawn once opened, and not again while the run is the same."""
    from imacs_app.components import inside, navigation

    absent = shortcut_run.info.layers["absent"]
    assert set(absent) == {"a", "b"}
    view = RunCatalog(runs_root).get("shortcut").at("concept")
    got = view.inside(0)
    assert got.made and not got.looked_at and got.absent == absent
    key = navigation.ids.KEY_CLUSTER
    status, out = _update(
        client, [(inside.ids.CONCEPT, "children")], [(key, "data", "?run=shortcut&concept=0")]
    )
    assert status == 200
    text = str(out[inside.ids.CONCEPT]["children"])
    assert absent["a"] in text and absent["b"] in text and "CKA needs both" in text
    assert len(str(out)) < 20_000  # sentences, no figure

    # the run's part: nothing until opened (an even count of clicks on its summary: closed)
    def run_part(clicks: int, search: str, drawn: str | None) -> tuple[int, dict]:
        return _update(
            client,
            [(inside.ids.RUN_BODY, "children"), (inside.ids.RUN_DRAWN, "data")],
            [
                (inside.ids.RUN_SUMMARY, "n_clicks", clicks),
                (navigation.ids.KEY_DATA, "data", search),
            ],
            [(inside.ids.RUN_DRAWN, "data", drawn)],
        )

    assert run_part(0, "?run=shortcut", None)[0] == 204
    status, out = run_part(1, "?run=shortcut", None)
    assert status == 200 and absent["a"] in str(out[inside.ids.RUN_BODY]["children"])
    drawn = out[inside.ids.RUN_DRAWN]["data"]
    # the filters changed, not the run: the tables cover every image, nothing is redrawn
    assert run_part(3, "?run=shortcut&class=vertical", drawn)[0] == 204

    # a run made before the stage
    root = tmp_path / "runs"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v1", root / "old")
    old = RunCatalog(root).get("old").at("concept")
    assert not old.inside(2).made
    c = create_app(root).server.test_client()
    status, out = _update(
        c, [(inside.ids.CONCEPT, "children")], [(key, "data", "?run=old&concept=2")]
    )
    assert status == 200
    assert "made without the view inside the models" in str(out)
