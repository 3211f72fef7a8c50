"""The whole analysis on tiny data: the planted shortcut, the run contract, bad input."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imacs
from imacs.attribution import PairedAttribution
from imacs.errors import InputError
from imacs.models import file_sha256
from tests.helpers import holds_mark

FAST = {"image_size": 32, "steps": 12, "projection": "pca", "progress": False}


def test_pip001_planted_shortcut_is_the_top_cluster(shortcut, shortcut_run) -> None:
    run = shortcut_run
    top = run.clusters.iloc[0]
    assert top["rank"] == 1
    assert top["diff"] > 0.3 and top["significant"]  # B relies on it, A does not
    patches = run.patch_rows()
    in_top = patches[patches["cluster"] == top["cluster"]]
    on_mark = np.mean(holds_mark(in_top, shortcut["marks"]))
    assert on_mark >= 0.75, f"only {on_mark:.0%} of the rank-1 cluster lies on the mark"
    assert top["top_class"] == "vertical"
    # and nearly every mark patch of the run lies in a cluster B relies on far more than A
    # (k-means may split the mark by where it sits inside the patch)
    all_mark = patches[holds_mark(patches, shortcut["marks"])]
    strong = set(run.clusters.loc[run.clusters["diff"] > 0.3, "cluster"])
    assert all_mark["cluster"].isin(strong).mean() >= 0.9


def test_pip002_manifest_records_the_run(shortcut, shortcut_run) -> None:
    m = shortcut_run.manifest
    assert m["models"]["a"]["sha256"] == file_sha256(shortcut["a"])
    assert m["models"]["b"]["sha256"] == file_sha256(shortcut["b"])
    assert m["models"]["a"]["name"] == "model_a" and m["models"]["a"]["kind"] == "torchscript"
    assert m["settings"]["attribution"]["steps"] == 24
    assert m["settings"]["preprocess"]["image_size"] == [32, 32]
    assert {"torch", "captum", "scikit-learn", "umap-learn", "numpy"} <= set(m["versions"])
    # each stage timed once, in the order it ran, and each took measurable time
    from imacs.pipeline import STAGES

    assert list(m["timings"]) == ["load", *(s.name for s in STAGES), "write"]
    assert all(v > 0 for v in m["timings"].values()), m["timings"]
    s = m["summary"]
    assert s["accuracy_a"] == 1.0 and s["accuracy_b"] == 1.0 and s["agreement"] == 1.0
    assert s["n_images"] == 80 and s["n_skipped"] == 0 and m["skipped"] == []
    assert s["n_clusters"] == len(shortcut_run.clusters)
    assert s["top_cluster"]["cluster"] == int(shortcut_run.clusters.iloc[0]["cluster"])
    assert m["data"]["classes"] == ["horizontal", "vertical"]
    for name in m["files"].values():
        assert (shortcut_run.path / name).is_file()
    n_patches = len(shortcut_run.patches)
    assert len(list((shortcut_run.path / "thumbs" / "patches").iterdir())) == n_patches
    assert shortcut_run.embedding.shape[0] == n_patches


def test_pip003_tables_are_consistent(shortcut_run) -> None:
    run = shortcut_run
    p, img, c = run.patches, run.images, run.clusters
    assert (p["x1"] > p["x0"]).all() and (p["x1"] <= 32).all() and (p["y1"] <= 32).all()
    assert p["attr_a"].between(0, 1).all() and p["attr_b"].between(0, 1).all()
    assert np.allclose(p["diff"], p["attr_b"] - p["attr_a"])
    assert c["n_patches"].sum() == len(p)
    assert sorted(c["rank"]) == list(range(1, len(c) + 1))
    assert (c["diff"].abs().diff().dropna() <= 1e-12).all()  # rank 1 = largest |diff|
    # the stored map restores the attribution; completeness holds within the delta
    amap = run.attribution_map("b", 0)
    assert amap.shape == (32, 32) and np.abs(amap).max() == pytest.approx(
        img["attr_scale_b"][0], rel=1e-3
    )
    assert run.probabilities("a").shape == (80, 2)
    with Image.open(run.patch_thumbnail(0)) as t:
        assert t.size == (96, 96)


def test_pip004_same_inputs_and_seed_give_the_same_run(shortcut, shortcut_run, tmp_path) -> None:
    again = imacs.analyze(
        shortcut["a"],
        shortcut["b"],
        shortcut["data"],
        tmp_path / "r",
        **{**FAST, "steps": 24},
        cache_dir=None,
    )
    for name in ("images", "patches", "clusters", "cluster_classes"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(shortcut_run, name))
    assert again.manifest["fingerprint"] == shortcut_run.manifest["fingerprint"]


def test_pip005_cache_reuses_attribution_per_model(shortcut, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r1", cache_dir=cache, **FAST
    )
    calls: list[str] = []
    original = PairedAttribution.attribute

    def counting(self, role, *args, **kw):
        calls.append(role)
        return original(self, role, *args, **kw)

    monkeypatch.setattr(PairedAttribution, "attribute", counting)
    imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r2", cache_dir=cache, **FAST
    )
    assert calls == []  # everything came from the cache
    # B compared with a different model: only the new model is computed
    imacs.analyze(
        shortcut["a"], shortcut["a"], shortcut["data"], tmp_path / "r3", cache_dir=cache, **FAST
    )
    assert calls == []  # A vs A: both sides are A, already cached
    other = tmp_path / "other.pt"
    shutil.copy(shortcut["b"], other)
    with open(other, "ab") as f:
        f.write(b"\0")  # a different file hash; zip readers ignore trailing bytes
    imacs.analyze(shortcut["a"], other, shortcut["data"], tmp_path / "r4", cache_dir=cache, **FAST)
    assert set(calls) == {"b"}


def test_pip006_interrupted_run_resumes_and_equals_a_clean_run(
    shortcut, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    original = PairedAttribution.attribute
    calls = {"n": 0}

    def crashing(self, role, *args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:  # dies in the middle of the second chunk
            raise KeyboardInterrupt
        return original(self, role, *args, **kw)

    monkeypatch.setattr(PairedAttribution, "attribute", crashing)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        imacs.analyze(
            shortcut["a"],
            shortcut["b"],
            shortcut["data"],
            out,
            cache_dir=cache,
            batch_size=40,
            **FAST,
        )
    assert not out.exists() and not list(tmp_path.glob(".run.imacs-tmp-*"))
    monkeypatch.setattr(PairedAttribution, "attribute", original)
    resumed = imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], out, cache_dir=cache, **FAST
    )
    clean = imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "clean", cache_dir=None, **FAST
    )
    pd.testing.assert_frame_equal(resumed.clusters, clean.clusters)
    pd.testing.assert_frame_equal(resumed.patches, clean.patches)


def _copy_data(shortcut, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(shortcut["data"], data)
    return data


def test_pip007_corrupt_images_are_skipped_and_listed(shortcut, tmp_path) -> None:
    data = _copy_data(shortcut, tmp_path)
    (data / "vertical" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "horizontal" / "text.jpg").write_text("hello")
    run = imacs.analyze(shortcut["a"], shortcut["b"], data, tmp_path / "r", **FAST)
    assert run.manifest["summary"]["n_skipped"] == 2
    assert {s["path"] for s in run.manifest["skipped"]} == {
        "vertical/broken.png",
        "horizontal/text.jpg",
    }
    assert len(run.images) == 80 and "vertical/broken.png" not in set(run.images["image"])
    with pytest.raises(InputError, match=r"(broken\.png|text\.jpg): .*--strict"):
        imacs.analyze(shortcut["a"], shortcut["b"], data, tmp_path / "strict", strict=True, **FAST)
    assert not (tmp_path / "strict").exists()


def test_pip013_a_chunk_of_only_unreadable_images(shortcut, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("imacs.attribute_set.CHUNK", 4)
    data = _copy_data(shortcut, tmp_path)
    for i in range(4):  # the whole first chunk
        (data / "horizontal" / f"{i:03d}.png").write_bytes(b"garbage")
    run = imacs.analyze(shortcut["a"], shortcut["b"], data, tmp_path / "r", **FAST)
    assert run.manifest["summary"]["n_skipped"] == 4 and len(run.images) == 76
    assert run.probabilities("a").shape == (76, 2)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_pip014_a_model_failing_on_some_images_skips_only_those(shortcut, tmp_path, mode) -> None:
    data = _copy_data(shortcut, tmp_path)
    poisoned = ["horizontal/003.png", "vertical/010.png"]
    for rel in poisoned:
        img = np.asarray(Image.open(data / rel)).copy()
        img[0, 0] = (255, 0, 0)
        Image.fromarray(img).save(data / rel)
    run = imacs.analyze(
        shortcut["a"], f"tests.helpers:make_flaky_{mode}", data, tmp_path / "r",
        weights_b=shortcut["b_weights"], **FAST,
    )  # fmt: skip
    skipped = {s["path"]: s["reason"] for s in run.manifest["skipped"]}
    assert set(skipped) == set(poisoned)
    why = "illegal memory access" if mode == "raise" else "NaN or infinite"
    assert all("model B" in r and why in r for r in skipped.values())
    assert len(run.images) == 78 and not set(poisoned) & set(run.images["image"])
    with pytest.raises(InputError, match=r"003\.png: model B"):
        imacs.analyze(shortcut["a"], f"tests.helpers:make_flaky_{mode}", data, tmp_path / "s",
                      weights_b=shortcut["b_weights"], strict=True, **FAST)  # fmt: skip


def test_pip015_a_model_failing_on_every_image_is_an_error(shortcut, tmp_path) -> None:
    data = _copy_data(shortcut, tmp_path)
    for p in data.rglob("*.png"):
        img = np.asarray(Image.open(p)).copy()
        img[0, 0] = (255, 0, 0)
        Image.fromarray(img).save(p)
    with pytest.raises(InputError, match=r"none of its 80 images could be analysed .*model B"):
        imacs.analyze(shortcut["a"], "tests.helpers:make_flaky_raise", data, tmp_path / "r",
                      weights_b=shortcut["b_weights"], **FAST)  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_pip008_output_folder_rules(shortcut, shortcut_run, tmp_path) -> None:
    out = tmp_path / "r"
    imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], out, **FAST)
    with pytest.raises(InputError, match=r"already holds a different run; .*--overwrite"):
        imacs.analyze(shortcut["b"], shortcut["a"], shortcut["data"], out, **FAST)
    assert imacs.load_run(out).names == {"a": "model_a", "b": "model_b"}  # untouched
    swapped = imacs.analyze(
        shortcut["b"], shortcut["a"], shortcut["data"], out, overwrite=True, **FAST
    )
    assert swapped.names == {"a": "model_b", "b": "model_a"}
    imacs.analyze(shortcut["b"], shortcut["a"], shortcut["data"], out, **FAST)  # same run: fine
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds no imacs run"):
        imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], other, overwrite=True, **FAST)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imacs-cache", "mine", "r"]
    assert not list(tmp_path.glob(".*imacs-*"))


@pytest.mark.parametrize("new_is_complete", [True, False])
def test_pip017_a_kill_between_the_commit_renames_is_repaired(
    shortcut, tmp_path, new_is_complete
) -> None:
    out = tmp_path / "r"
    first = imacs.analyze(shortcut["a"], shortcut["b"], shortcut["data"], out, **FAST)
    fingerprint = first.manifest["fingerprint"]
    # a second analysis (other models) killed right after moving the old run aside
    script = (
        "import os, pathlib, sys\n"
        "import imacs\n"
        "real = pathlib.Path.rename\n"
        "def rename(self, target):\n"
        "    real(self, target)\n"
        "    if '.imacs-old-' in str(target):\n"
        "        os._exit(9)  # killed between the two renames\n"
        "pathlib.Path.rename = rename\n"
        f"imacs.analyze({str(shortcut['b'])!r}, {str(shortcut['a'])!r}, "
        f"{str(shortcut['data'])!r}, {str(out)!r}, overwrite=True, **{FAST!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert not out.exists() and list(tmp_path.glob(".r.imacs-old-*"))
    if not new_is_complete:  # killed before the new run was whole: the old one comes back
        for tmp in tmp_path.glob(".r.imacs-tmp-*"):
            (tmp / "run.json").unlink()
    said: list[str] = []
    # the next analysis repairs the swap first: the finished new run is moved into place
    # (and is then up to date), else the old one is put back; nothing is left over
    models = (shortcut["b"], shortcut["a"]) if new_is_complete else (shortcut["a"], shortcut["b"])
    run = imacs.analyze(*models, shortcut["data"], out, log=said.append, **FAST)
    assert any("up to date" in m for m in said), said
    assert not list(tmp_path.glob(".r.imacs-*"))
    if not new_is_complete:
        assert run.manifest["fingerprint"] == fingerprint


def test_pip009_csv_meta_columns_reach_the_tables(shortcut, tmp_path) -> None:
    rows = ["path,label,site,cloud"]
    for i, rel in enumerate(sorted(shortcut["marks"])):
        rows.append(f"{rel},{rel.split('/')[0]},{'north' if i % 2 else 'south'},{i / 100}")
    rows.append("vertical/ghost.png,vertical,north,0.5")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    run = imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r", labels_csv=csv, **FAST
    )
    assert run.manifest["data"]["meta_columns"] == ["site", "cloud"]
    assert set(run.images["site"]) == {"north", "south"}
    assert run.images["cloud"].dtype.kind == "f"
    assert {"site", "cloud"} <= set(run.patch_rows().columns)
    assert run.manifest["skipped"] == [{"path": "vertical/ghost.png", "reason": "file not found"}]


def test_pip010_factory_models_give_the_same_run(shortcut, shortcut_run, tmp_path) -> None:
    run = imacs.analyze(
        "tests.helpers:make_tiny_cnn",
        "tests.helpers:make_tiny_cnn",
        shortcut["data"],
        tmp_path / "r",
        weights_a=shortcut["a_weights"],
        weights_b=shortcut["b_weights"],
        name_a="clean",
        name_b="shortcut",
        **{**FAST, "steps": 24},
    )
    assert run.names == {"a": "clean", "b": "shortcut"}
    assert run.manifest["models"]["a"]["kind"] == "factory"
    assert np.allclose(run.patches["attr_b"], shortcut_run.patches["attr_b"], atol=1e-4)
    assert (run.patches["cluster"] == shortcut_run.patches["cluster"]).all()


def test_pip011_class_count_mismatches_are_explained(shortcut, tmp_path) -> None:
    with pytest.raises(InputError, match="model A outputs 2 classes and model B 3"):
        imacs.analyze(
            shortcut["a"], "tests.helpers:make_tiny_cnn_3", shortcut["data"], tmp_path / "r", **FAST
        )
    data = _copy_data(shortcut, tmp_path)
    (data / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(data / "zebra" / "z.png")
    with pytest.raises(
        InputError, match="the data has 3 classes but the models output 2; pass --classes"
    ):
        imacs.analyze(shortcut["a"], shortcut["b"], data, tmp_path / "r", **FAST)
    assert not (tmp_path / "r").exists()


def test_pip012_full_disk_keeps_finished_work(shortcut, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imacs.store.np.save", full)
    with pytest.raises(InputError, match="no space left on the device; free some space"):
        imacs.analyze(
            shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "r", cache_dir=cache, **FAST
        )
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.imacs-tmp-*"))
    assert len(list(cache.rglob("*.npz"))) == 4  # 2 chunks x 2 models survive for the retry
    monkeypatch.undo()
    assert json.loads(
        (
            imacs.analyze(
                shortcut["a"],
                shortcut["b"],
                shortcut["data"],
                tmp_path / "r",
                cache_dir=cache,
                **FAST,
            ).path
            / "run.json"
        ).read_text()
    )


@pytest.mark.slow
def test_pip016_sigkill_mid_run_then_rerun_resumes_and_equals_a_clean_run(
    shortcut, tmp_path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests import helpers

    data = tmp_path / "data"
    helpers.write_eval_set(data, n_per_class=100, seed=3)  # 200 images: 4 chunks of 64
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = [sys.executable, "-m", "imacs", "analyze", "--model-a", str(shortcut["a"]),
            "--model-b", str(shortcut["b"]), "--data", str(data), "--out", str(out),
            "--image-size", "32", "--steps", "150", "--projection", "pca",
            "--cache-dir", str(cache)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(cache.rglob("*.npz"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.rglob("*.npz")))
    assert 2 <= done < 8 and not (out / "run.json").exists()

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"attribution: {done // 2} of 4 chunks found in the cache" in again.stderr
    assert not list(tmp_path.glob(".run.imacs-tmp-*"))  # the killed run's leftovers are gone

    clean = imacs.analyze(shortcut["a"], shortcut["b"], data, tmp_path / "clean", image_size=32,
                          steps=150, projection="pca", cache_dir=None, progress=False)  # fmt: skip
    resumed = imacs.load_run(out)
    for name in ("images", "patches", "clusters", "cluster_classes"):
        pd.testing.assert_frame_equal(getattr(resumed, name), getattr(clean, name))


def test_pip018_progress_lines_in_a_log_file_say_rate_and_time_left() -> None:
    import io

    from imacs.progress import Progress

    log = io.StringIO()  # not a terminal
    with Progress(300, "attribution", stream=log, interval=0.0) as bar:
        for _ in range(3):
            bar.update(100)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("attribution: 100/300 images (33 %), ")
    assert lines[0].endswith(" s left") and "/s" in lines[0]
    assert lines[-1].startswith("attribution: 300/300 images (100 %)")
    quiet = io.StringIO()
    with Progress(300, "attribution", stream=quiet, interval=3600) as bar:
        bar.update(100)  # within the interval: no line until the end
        assert quiet.getvalue() == ""
    assert quiet.getvalue().count("\n") == 1


def test_pip030_answers_that_say_nothing_or_a_wrong_class_order_are_flagged() -> None:
    """Constant answers (a random-weight model) and a class order two swaps away from the
    labels, above chance, are both warned about; an honest, imperfect model is not."""
    import numpy as np
    import pandas as pd

    from imacs.tables import class_order_warnings

    rng = np.random.default_rng(0)
    classes = [f"c{k}" for k in range(10)]
    labels = np.repeat(np.arange(10), 20)
    swapped = labels.copy()  # right on 8 of 10 classes; c1 and c2 read as each other
    swapped[labels == 1], swapped[labels == 2] = 2, 1
    noisy = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, 10, len(labels)))
    names = {"a": "ma", "b": "mb"}

    def warn(a: np.ndarray, b: np.ndarray) -> list[str]:
        images = pd.DataFrame({"label": labels, "pred_a": a, "pred_b": b})
        return class_order_warnings(images, 10, names, classes)

    assert warn(labels, noisy) == []  # 100 % and ~73 %: nothing to say
    (const,) = warn(np.full(len(labels), 3), labels)
    assert const.startswith("model A (ma) answers c3 to 200 of the 200 images")
    (order,) = warn(labels, swapped)
    assert order.startswith("model B (mb) is right on 80% of the images (above chance, 10%)")
    assert "would be right on 100%" in order and "reading c1 as c2, c2 as c1" in order


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient-shap", "deeplift", "saliency", "occlusion"])
def test_pip031_every_attribution_method_puts_the_planted_shortcut_first(
    method, shortcut, shortcut_run, tmp_path
) -> None:
    """Each method's maps through the whole analysis: the mark still ranks first (eager
    factory models, so DeepLIFT's hooks can take them)."""
    run = imacs.analyze(
        "tests.helpers:make_tiny_cnn", "tests.helpers:make_tiny_cnn", shortcut["data"],
        tmp_path / "r", weights_a=shortcut["a_weights"], weights_b=shortcut["b_weights"],
        method=method, trust_sample=0, **{**FAST, "steps": 24},
    )  # fmt: skip
    top = run.clusters.iloc[0]
    patches = run.patch_rows()
    on_mark = np.mean(holds_mark(patches[patches["cluster"] == top["cluster"]], shortcut["marks"]))
    print(method, f"diff {top['diff']:+.3f}", f"on mark {on_mark:.0%}")
    assert top["diff"] > 0.3 and top["significant"] and on_mark >= 0.75
    assert run.concepts.iloc[0]["diff"] > 0.3
    # the method is part of what the run is: recorded, named, and a different fingerprint
    assert run.manifest["settings"]["attribution"]["algorithm"] == method
    assert run.manifest["fingerprint"] != shortcut_run.manifest["fingerprint"]
    title = {"gradient-shap": "GradientSHAP, 24 samples", "deeplift": "DeepLIFT"}
    assert f"  maps: {title.get(method, method.capitalize())}\n" in run.summary()
    from imacs_app.catalog import RunCatalog
    from imacs_app.components.overview import _summary
    from imacs_app.reader import Filters

    page = str(_summary(RunCatalog(tmp_path).get("r"), Filters()))  # the overview's lines
    assert f"{title.get(method, method.capitalize())}, black baseline" in page
    delta = run.trust["b"]["delta"]
    assert ("median_rel" in delta) == (method == "deeplift")  # completeness: DeepLIFT only
