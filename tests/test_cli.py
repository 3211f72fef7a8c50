"""The imacs command, run as a user runs it (a real subprocess of the console script)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import analyze_cli as _analyze
from tests.helpers import run_cli as _run


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("imacs: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_cli001_analyze_export_info_end_to_end(shortcut, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _analyze(
        shortcut, out, "--name-a", "clean", "--name-b", "shortcut", "--clusters", "6", "--no-cache"
    )
    assert proc.returncode == 0, proc.stderr
    assert "top concepts" in proc.stdout and "#1 concept" in proc.stdout
    assert "run written to" in proc.stderr
    # after the first chunk of 64 images, what the other 16 will take (short: no advice)
    estimate = [ln for ln in proc.stderr.splitlines() if ln.startswith("imacs: attribution: about")]
    assert len(estimate) == 1 and "more for the 16 images left" in estimate[0], proc.stderr
    assert "both models, on cpu)" in estimate[0] and "shorten" not in estimate[0]
    assert (out / "run.json").is_file()

    patches_csv, clusters_csv = tmp_path / "p.csv", tmp_path / "exports" / "c.csv"
    concepts_csv = tmp_path / "k.csv"
    proc = _run(
        "export", str(out), "--patches", str(patches_csv), "--clusters", str(clusters_csv),
        "--concepts", str(concepts_csv),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with patches_csv.open() as f:
        rows = list(csv.DictReader(f))
    need = {"image", "label", "x0", "y0", "x1", "y1", "cluster", "concept", "attr_a", "attr_b"}
    need |= {"alone_a", "alone_b"}
    assert need <= set(rows[0])
    assert {r["label"] for r in rows} == {"horizontal", "vertical"}
    assert all((shortcut["data"] / r["image"]).is_file() for r in rows)
    with clusters_csv.open() as f:
        clusters = list(csv.DictReader(f))
    need = {"cluster", "rank", "n_patches", "n_images", "attr_a", "attr_b", "diff"}
    assert need <= set(clusters[0]) and len(clusters) == 6
    assert [int(c["rank"]) for c in clusters] == list(range(1, 7))
    for c in clusters:
        assert float(c["diff"]) == pytest.approx(float(c["attr_b"]) - float(c["attr_a"]), abs=1e-9)
    assert sum(int(c["n_patches"]) for c in clusters) == len(rows)
    # every cluster is in exactly one concept, and the concepts hold every patch
    with concepts_csv.open() as f:
        concepts = list(csv.DictReader(f))
    members = sorted(int(c) for k in concepts for c in k["clusters"].split())
    assert members == list(range(6))
    assert sum(int(k["n_patches"]) for k in concepts) == len(rows)
    of_cluster = {int(c["cluster"]): int(c["concept"]) for c in clusters}
    assert all(of_cluster[int(r["cluster"])] == int(r["concept"]) for r in rows)
    assert {r["alone_b"] for r in rows} <= {"horizontal", "vertical"}

    proc = _run("info", str(out))
    assert proc.returncode == 0 and "accuracy: A clean 1.000  B shortcut 1.000" in proc.stdout


def test_cli002_bad_model_file(shortcut, tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a model")
    proc = _run("analyze", "--model-a", str(bogus), "--model-b", str(shortcut["b"]),
                "--data", str(shortcut["data"]), "--out", str(tmp_path / "r"))  # fmt: skip
    _assert_one_line_error(proc, str(bogus), "not a TorchScript model file", "torch.jit.script")
    assert not (tmp_path / "r").exists()


def test_cli003_empty_data_folder(shortcut, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run("analyze", "--model-a", str(shortcut["a"]), "--model-b", str(shortcut["b"]),
                "--data", str(empty), "--out", str(tmp_path / "r"))  # fmt: skip
    _assert_one_line_error(proc, str(empty), "no class subfolders", "--labels-csv")


def test_cli004_mismatched_classes(shortcut, tmp_path: Path) -> None:
    three = "tests.helpers:make_tiny_cnn_3"
    proc = _run("analyze", "--model-a", str(shortcut["a"]), "--model-b", three,
                "--data", str(shortcut["data"]), "--out", str(tmp_path / "r"), "--image-size", "32",
                cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    _assert_one_line_error(proc, "model A outputs 2 classes and model B 3")


def test_cli005_output_holds_a_different_run(shortcut, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert _analyze(shortcut, out, "--projection", "pca", "-q").returncode == 0
    swapped = {**shortcut, "a": shortcut["b"], "b": shortcut["a"]}
    proc = _analyze(swapped, out, "--projection", "pca")
    _assert_one_line_error(proc, str(out), "already holds a different run", "--overwrite")


def test_cli006_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = _run("analyze", "--model-a", "x.pt")
    assert proc.returncode == 2 and "required" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("analyze", "--model-a", "a", "--model-b", "b", "--data", ".", "--out", "o",
                "--image-size", "big")  # fmt: skip
    assert proc.returncode == 2 and "use N or HxW" in proc.stderr
    proc = _run("export", str(tmp_path))
    _assert_one_line_error(proc, "--patches")
    proc = _run("export", str(tmp_path), "--clusters", str(tmp_path / "c.csv"))
    _assert_one_line_error(proc, str(tmp_path.resolve()), "not an imacs run")


def test_cli007_corrupt_run_table(shortcut, shortcut_run, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    shutil.copytree(shortcut_run.path, broken)
    data = (broken / "clusters.parquet").read_bytes()
    (broken / "clusters.parquet").write_bytes(data[: len(data) // 2])
    proc = _run("export", str(broken), "--clusters", str(tmp_path / "c.csv"))
    _assert_one_line_error(proc, "clusters.parquet", "unreadable", "re-run imacs analyze")


def test_cli008_bad_names_and_numbers_through_the_cli(shortcut, tmp_path: Path) -> None:
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shortcut["data"], data)
    shutil.copy(
        data / "vertical" / "000.png", os.path.join(os.fsencode(data / "vertical"), b"\xff.png")
    )
    common = ("--model-a", str(shortcut["a"]), "--model-b", str(shortcut["b"]), "--data", str(data))
    for flag, value, message in (
        ("--seed", "-1", "argument --seed: '-1': must be at least 0"),
        ("--std", "nan,1,1", "argument --std: 'nan,1,1': every value must be a finite number"),
        ("--steps", "0", "argument --steps: '0': must be at least 2"),
    ):
        proc = _run("analyze", *common, "--out", str(tmp_path / "x"), flag, value)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
    out = tmp_path / "run"
    proc = _run("analyze", *common, "--out", str(out), "--image-size", "32", "--steps", "8",
                "--projection", "pca", "--no-cache")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # stderr is not a terminal here (as in a log file): plain progress lines, no bars
    assert "attribution, model B (model_b): 160/160 maps (100 %)" in proc.stderr
    assert "\r" not in proc.stderr
    skipped = json.loads((out / "run.json").read_text())["skipped"]
    assert skipped == [
        {"path": "vertical/\\xff.png", "reason": "file name is not valid UTF-8; rename the file"}
    ]


def test_cli009_a_wrong_class_order_is_flagged(shortcut, tmp_path: Path) -> None:
    import json

    classes = tmp_path / "classes.txt"
    classes.write_text("vertical\nhorizontal\n")  # reversed: the models say 0 = horizontal
    out = tmp_path / "run"
    proc = _run("analyze", "--model-a", str(shortcut["a"]), "--model-b", str(shortcut["b"]),
                "--data", str(shortcut["data"]), "--classes", str(classes), "--out", str(out),
                "--image-size", "32", "--steps", "8", "--projection", "pca",
                "--no-cache")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads((out / "run.json").read_text())["warnings"]
    order = [w for w in warnings if "classes in another order" in w]  # (trust may add its own)
    assert [w[:26] for w in order] == [
        "model A (model_a) is right",
        "model B (model_b) is right",
    ]
    assert "right on 0% of the images" in order[0]
    assert "would be right on 100% with its classes in another order" in order[0]
    assert "warning: model A" in proc.stderr and "warning: model A" in proc.stdout  # info too
    # stderr is a pipe: plain progress lines that name the stage and the model, never twice
    done = "attribution, model B (model_b): 160/160 maps (100 %)"
    assert proc.stderr.count(done) == 1, proc.stderr


def test_cli010_help_explains_every_option() -> None:
    """Every analyze option is listed once, in a named section, with a sentence of help
    (a setting declared in two places, like --seed, shows its documented declaration)."""
    import re

    proc = _run("analyze", "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "\nsettings:" not in text  # no section of undocumented leftovers
    flags = re.findall(r"^  (--[a-z][a-z-]+)", text, flags=re.M)
    assert len(flags) == len(set(flags))
    assert "--seed N              seed: same inputs and seed give the same run" in text
    for flag in ("--embedding", "--encoder-weights", "--encoder-size", "--concept-distance"):
        assert flag in flags
    assert "(default None)" not in text


def test_cli030_plain_progress_lines_name_the_model_and_come_once() -> None:
    import io

    from imacs.progress import Progress

    out = io.StringIO()  # not a terminal: plain lines
    with Progress(8, "attribution", unit="maps", stream=out, interval=0.0) as bar:
        for role in "AB":
            bar.label(f"attribution, model {role} (m{role})")
            bar.update(2)
            bar.update(2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("attribution, model A (mA): 2/8 maps (25 %)")
    assert "left" in lines[0]
    assert lines[-1].startswith("attribution, model B (mB): 8/8 maps (100 %)")
    assert len(lines) == 4  # one per update; the last is not repeated at close


def test_cli032_a_long_run_is_told_how_to_shorten_it() -> None:
    from imacs.attribute_set import estimate_line
    from imacs.settings import AttributionSettings

    line = estimate_line(2.0, 1000, "cpu", AttributionSettings(steps=50))
    assert line.startswith("attribution: about 33 min more for the 1000 images left (2 s per")
    assert "--steps 16 (about 32% of the time)" in line and "a GPU (--device cuda)" in line
    on_gpu = estimate_line(2.0, 1000, "cuda", AttributionSettings(algorithm="saliency"))
    assert "--steps" not in on_gpu and "GPU" not in on_gpu and "a --labels-csv" in on_gpu
    assert estimate_line(0.05, 100, "cpu", AttributionSettings()).endswith("on cpu)")


def test_cli031_a_hook_method_on_torchscript_is_refused_before_any_work(
    shortcut, tmp_path: Path
) -> None:
    proc = _analyze(shortcut, tmp_path / "r", "--method", "deeplift")
    _assert_one_line_error(
        proc, f"model A ({shortcut['a']}) is a TorchScript or torch.export program",
        "DeepLIFT attributes through layer hooks", "--method ig",
    )  # fmt: skip
    assert not (tmp_path / "r").exists()
    proc = _run("analyze", "--help")
    assert "--method ig|gradient-shap|deeplift|saliency|occlusion" in proc.stdout
    assert "DeepLIFT (eager models only)" in " ".join(proc.stdout.split())
