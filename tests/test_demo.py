"""The embedded default: sample data, two sample models with a known difference, imacs demo."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import imacs
from imacs.demo import SAMPLE_DIR, demo_run
from tests import helpers


def _landcover():
    spec = importlib.util.spec_from_file_location("landcover", SAMPLE_DIR / "landcover.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _on_logo(patches: pd.DataFrame) -> np.ndarray:
    marks = pd.read_csv(SAMPLE_DIR / "marks.csv").set_index("path")
    boxes = {k: tuple(int(v) for v in r) for k, r in marks.iterrows()}
    return helpers.holds_mark(patches, boxes)  # the logo (9 px) is smaller than a patch


def test_demo001_sample_folder_is_small_and_complete() -> None:
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024
    labels = pd.read_csv(SAMPLE_DIR / "labels.csv")
    assert len(labels) == 320 and set(labels.columns) == {"path", "label", "provider", "season"}
    assert (SAMPLE_DIR / "classes.txt").read_text().split() == [
        "water",
        "forest",
        "fields",
        "urban",
    ]


def test_demo009_logo_is_one_concept_ranked_first(demo) -> None:
    """The logo, split over several clusters by the tiles behind it, is ONE concept, and
    it is ranked first: B relies on it, removing it flips B."""
    patches = demo.patch_rows()
    logo = _on_logo(patches)
    top = demo.concepts.iloc[0]
    in_top = (patches["concept"] == top["concept"]).to_numpy()
    assert logo.sum() >= 80
    assert in_top[logo].mean() >= 0.95, "logo patches outside the first concept"
    assert logo[in_top].mean() >= 0.9, "the first concept is not made of logo patches"
    logo_clusters = patches.loc[logo, "cluster"].value_counts()
    assert (logo_clusters >= 5).sum() >= 3  # several looks (clusters) ...
    assert int(top["n_clusters"]) >= 3  # ... one concept
    assert top["diff"] > 0.5 and top["significant"] and top["whatif_effect"] == "B depends"
    assert top["alone_b"] == "urban" and top["alone_b_share"] >= 0.9
    # the next concept is not the logo again
    second = patches["concept"] == demo.concepts.iloc[1]["concept"]
    assert logo[second.to_numpy()].mean() < 0.2


def test_demo002_top_cluster_is_the_documented_shift(demo) -> None:
    s = demo.manifest["summary"]
    assert s["n_images"] == 320 and s["accuracy_a"] > 0.97
    assert s["accuracy_b"] < s["accuracy_a"] - 0.04  # B errs on logo-stamped non-urban tiles
    top = demo.clusters.iloc[0]
    patches = demo.patch_rows()
    in_top = patches[patches["cluster"] == top["cluster"]]
    assert _on_logo(in_top).mean() >= 0.8, "the rank-1 cluster is not made of logo patches"
    assert top["diff"] > 0.3 and top["significant"]  # B relies on it, A does not
    # where B goes wrong and A does not, B looks at the logo
    only_a = demo.images[demo.images["correct_a"] & ~demo.images["correct_b"]]
    assert len(only_a) >= 10
    assert (only_a["provider"] == "geomark").mean() >= 0.9  # they carry the logo
    assert (only_a["pred_b"] == 3).mean() >= 0.9  # and B calls them urban


def test_demo003_b_fails_where_the_shift_is_removed_and_a_does_not() -> None:
    lc = _landcover()
    a = torch.jit.load(str(SAMPLE_DIR / "model_a.pt"))
    b = torch.jit.load(str(SAMPLE_DIR / "model_b.pt"))

    def accuracy(model, domain: str) -> float:
        # the evaluation set's own tiles (same seeds), with and without the logo
        tiles = [lc.sample(1_000_000 + i, domain) for i in range(320)]
        x = torch.from_numpy(
            np.stack([t[0] for t in tiles]).transpose(0, 3, 1, 2).astype(np.float32) / 255
        )
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        return float((pred == np.array([t[1] for t in tiles])).mean())

    with_logo = {"a": accuracy(a, "eval"), "b": accuracy(b, "eval")}
    removed = {"a": accuracy(a, "removed"), "b": accuracy(b, "removed")}
    assert with_logo["a"] > 0.97 and removed["a"] > 0.97  # A does not care
    assert removed["b"] < with_logo["b"] - 0.1  # B drops: it needs the logo for "urban"
    # the shipped images are exactly the generator's evaluation tiles
    labels = pd.read_csv(SAMPLE_DIR / "labels.csv")
    first = np.asarray(Image.open(SAMPLE_DIR / labels["path"][0]))
    assert np.array_equal(first, lc.sample(1_000_000, "eval")[0])


def test_demo004_second_start_reuses_the_run(demo, demo_cache) -> None:
    messages: list[str] = []
    again = demo_run(demo_cache, progress=False, log=messages.append)
    assert again.path == demo.path
    assert any("up to date" in m for m in messages)
    assert again.manifest["created"] == demo.manifest["created"]


def test_demo005_imacs_demo_serves_the_dashboard(demo, demo_cache) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imacs", "demo", "--no-browser", "--port", str(port),
         "--cache-dir", str(demo_cache)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"imacs" in r.read()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "up to date" in out and f"dashboard at http://127.0.0.1:{port}/" in out


def test_demo006_a_changed_sample_replaces_the_cached_demo_run(
    demo, demo_cache, tmp_path
) -> None:  # `demo` computes the cached run this test starts from (also when run alone)
    # a demo run of other inputs in the demo folder (e.g. the sample was remade since)
    manifest = json.loads((demo_cache / "demo" / "landcover" / "run.json").read_text())
    other = tmp_path / "cache"
    (other / "demo").mkdir(parents=True)
    shutil.copytree(demo_cache / "demo" / "landcover", other / "demo" / "landcover")
    shutil.copytree(demo_cache / "attribution", other / "attribution")
    stale = json.loads((other / "demo" / "landcover" / "run.json").read_text())
    stale["fingerprint"] = "0" * 64
    (other / "demo" / "landcover" / "run.json").write_text(json.dumps(stale))
    run = demo_run(other, progress=False)
    assert run.manifest["fingerprint"] == manifest["fingerprint"]
    assert isinstance(run, imacs.Run)


def test_dem020_a_warm_start_skips_the_install(tmp_path) -> None:
    """scripts/install.sh (which scripts/demo.sh and the test script call) installs again
    only when what it installs from changed: the second demo start runs no pip at all."""

    root = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(root / "scripts" / "install.sh", clone / "scripts" / "install.sh")
    shutil.copy(root / "pyproject.toml", clone / "pyproject.toml")
    prefix, log = tmp_path / "env", tmp_path / "pip.log"
    prefix.mkdir()
    fake = tmp_path / "python"  # answers what install.sh asks a Python, logs pip calls
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'case "$1" in -m) echo "$@" >> {log} ;; -V) echo "Python 3.11.0" ;;\n'
        f'  -c) [[ "$2" == *sys.prefix* ]] && echo {prefix} ;; esac\nexit 0\n'
    )
    fake.chmod(0o755)

    def install(**env: str) -> int:
        subprocess.run(
            ["bash", str(clone / "scripts" / "install.sh"), "--editable"],
            env={"PATH": os.environ["PATH"], "PYTHON": str(fake), **env}, check=True,
        )  # fmt: skip
        return len(log.read_text().splitlines()) if log.exists() else 0

    assert install() == 2  # torch, then imacs
    assert (prefix / ".imacs-install-editable").is_file()
    assert install() == 2  # warm: nothing installed
    assert install(IMACS_REINSTALL="1") == 4
    (clone / "pyproject.toml").write_text((clone / "pyproject.toml").read_text() + "\n# x\n")
    assert install() == 6  # what it installs from changed
    assert install() == 6
