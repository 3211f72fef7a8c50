"""A hosted server reads one consistent run, and never a file outside a run (issue 21).

Two synthetic runs of the real format (``benchmarks/make_large_run.py``) are swapped under a
live app the way ``imacs analyze`` replaces a run (a staged folder committed by renames),
while threads ask for what the dashboard asks for; every answer must come whole from one
run or the other.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from imacs.run import Run
from imacs.store import commit
from imacs_app.catalog import RunCatalog
from imacs_app.main import create_app
from imacs_app.reader import Filters

ROOT = Path(__file__).resolve().parents[1]


def _make_run(out: Path, n_patches: int, seed: int) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_large_run", ROOT / "benchmarks" / "make_large_run.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_run(out, n_patches=n_patches, n_clusters=12, seed=seed, thumbs=30)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[int, Path]:
    """Run X (2,000 patches in 500 images) and run Y (3,200 patches in 800 images)."""
    src = tmp_path_factory.mktemp("sources")
    return {2000: _make_run(src / "x", 2000, 0), 3200: _make_run(src / "y", 3200, 1)}


def _swap_in(source: Path, out: Path) -> None:
    """Replace ``out`` by a copy of ``source`` as ``imacs analyze`` does (stage, commit)."""
    tmp = out.parent / f".{out.name}.imacs-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("run.json"))
    commit(tmp, out, json.loads((source / "run.json").read_text()))


def test_srv001_a_run_swapped_under_a_live_server_is_never_mixed(two_runs, tmp_path) -> None:
    root = tmp_path / "served"
    root.mkdir()
    out = root / "run"
    _swap_in(two_runs[2000], out)
    app = create_app(root)
    catalog = RunCatalog(root)
    stop = threading.Event()
    errors: list[str] = []
    seen: dict[str, set[int]] = {"download": set(), "view": set(), "render": set()}

    def swapper() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            _swap_in(two_runs[3200 if k % 2 else 2000], out)
            time.sleep(0.2)  # five runs a second: far more than any team makes

    def downloads() -> None:
        client = app.server.test_client()
        while not stop.is_set():
            r = client.get("/download/run/patches.csv")
            if r.status_code != 200:
                errors.append(f"download {r.status_code}: {r.data[:200]!r}")
                continue
            rows = list(csv.DictReader(io.StringIO(r.data.decode())))
            n = len(rows)
            # every patch's image is one of the same run's images: a label for each
            n_images = n // 4
            if n not in two_runs or any(
                not row["label"] or int(row["image_id"]) >= n_images for row in rows
            ):
                errors.append(f"download mixed: {n} rows")
            seen["download"].add(n)

    def views() -> None:
        while not stop.is_set():
            try:
                view = catalog.get("run")
                reps = view.at("concept").representatives(Filters())  # patches + embedding
                summary = view.summary(Filters())
                n = int(summary["n_patches_total"])
                if n not in two_runs or n != len(view.patches) or len(view.run.embedding) != n:
                    errors.append(f"view mixed: {n}")
                if any(p >= n for ids in reps.values() for p in ids):
                    errors.append("representatives of another run")
                seen["view"].add(n)
            except Exception as exc:
                errors.append(f"view {type(exc).__name__}: {exc}")

    def renders() -> None:
        client = app.server.test_client()
        while not stop.is_set():
            r = client.get("/render/run/3/image.png")
            if r.status_code != 200 or not r.data.startswith(b"\x89PNG"):
                errors.append(f"render {r.status_code}: {r.data[:200]!r}")
            seen["render"].add(r.status_code)

    threads = [threading.Thread(target=f) for f in (swapper, downloads, views, views, renders)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(60)
    assert errors == [], sorted({e[:300] for e in errors})
    # both runs were answered, each whole
    assert seen["download"] == {2000, 3200} and seen["view"] == {2000, 3200}, seen


def test_srv002_a_page_of_a_replaced_run_gets_no_files_of_the_new_one(two_runs, tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    out = root / "run"
    _swap_in(two_runs[2000], out)
    client = create_app(root).server.test_client()
    old = Run(out).token
    assert client.get(f"/files/run/thumbs/patches/0.jpg?v={old}").status_code == 200
    assert client.get(f"/render/run/0/image.png?v={old}").status_code == 200
    _swap_in(two_runs[3200], out)
    new = Run(out).token
    assert new != old
    assert client.get(f"/files/run/thumbs/patches/0.jpg?v={old}").status_code == 404
    assert client.get(f"/render/run/0/image.png?v={old}").status_code == 404
    assert client.get(f"/files/run/thumbs/patches/0.jpg?v={new}").status_code == 200
    assert client.get(f"/render/run/0/image.png?v={new}").status_code == 200


def test_srv003_nothing_outside_a_run_is_read_or_served(two_runs, tmp_path) -> None:
    root = tmp_path / "served"
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(two_runs[2000] / "clusters.parquet", secret / "x.parquet")
    shutil.copytree(two_runs[2000] / "thumbs", secret / "thumbs")
    # a manifest whose clusters file lies outside the run
    shutil.copytree(two_runs[2000], root / "escape")
    m = json.loads((root / "escape" / "run.json").read_text())
    m["files"]["clusters"] = "../../secret/x.parquet"
    (root / "escape" / "run.json").write_text(json.dumps(m))
    # a run whose clusters file is a link to a file outside it
    shutil.copytree(two_runs[2000], root / "linked")
    (root / "linked" / "clusters.parquet").unlink()
    (root / "linked" / "clusters.parquet").symlink_to(secret / "x.parquet")
    # a run whose thumbs folder is a link to a folder outside it
    shutil.copytree(two_runs[2000], root / "thumblink", ignore=shutil.ignore_patterns("thumbs"))
    (root / "thumblink" / "thumbs").symlink_to(secret / "thumbs")
    shutil.copytree(two_runs[2000], root / "fine")

    with pytest.raises(Exception, match="is not a path inside the run"):
        Run(root / "escape")
    with pytest.raises(Exception, match="leads outside the run"):
        Run(root / "linked").clusters  # noqa: B018
    catalog = RunCatalog(root)
    assert "escape" in catalog.problems() and "escape" not in catalog.run_dirs()
    client = create_app(root).server.test_client()
    for url in (
        "/download/escape/clusters.csv",
        "/download/linked/clusters.csv",
        "/files/thumblink/thumbs/patches/0.jpg",
        "/render/thumblink/0/image.png",  # drawn from the thumbnail: refused, not drawn
    ):
        r = client.get(url)
        assert r.status_code in (404, 503), url
        assert not r.data.startswith(b"PAR1") and b"cluster,rank" not in r.data, url
        assert not r.data.startswith(b"\xff\xd8") and not r.data.startswith(b"\x89PNG"), url
    # a NUL byte in a path: a plain 404, no traceback
    for url in ("/files/fine/thumbs/patches/0.jpg%00.png", "/files/fine%00/thumbs/a.jpg"):
        assert client.get(url).status_code == 404, url
    assert client.get("/files/fine/thumbs/patches/0.jpg").status_code == 200
    assert client.get("/download/fine/clusters.csv").status_code == 200
