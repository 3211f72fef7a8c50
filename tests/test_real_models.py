"""Real timm and Hugging Face models through imacs, as the README tells a user: ``imacs
analyze`` (with the timm encoder), ``info``, ``export`` and ``serve``.

timm needs torchvision, which has no build for the CPU wheel of the main environment, so
these tests run in the real-model environment (``scripts/real-env.sh``: PyTorch's default
build with its torchvision, the pairing a GPU user installs); ``scripts/test.sh`` runs them
there with ``-m real``, and the main environment skips them. Models get random or briefly
trained weights saved to files: nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from tests.helpers import run_cli

pytestmark = pytest.mark.real


def _save(model, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def timm_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two timm ResNet-18s trained briefly on the shortcut task (A on clean images, B with
    the red mark), an encoder's random weights, and the eval set with the mark."""
    import timm

    root = tmp_path_factory.mktemp("timm")
    marks = helpers.write_eval_set(root / "data", n_per_class=30)

    def build():
        return timm.create_model("resnet18", pretrained=False, num_classes=2)

    out = {"data": root / "data", "marks": marks, "root": root}
    for role, mode, seed in (("a", "clean", 0), ("b", "shortcut", 1)):
        model = helpers.train(mode, seed=seed, n=400, epochs=6, build=build)
        out[role] = _save(model, root / f"resnet18_{role}.safetensors")
    encoder = timm.create_model("resnet18", pretrained=False, num_classes=0)
    out["encoder"] = _save(encoder, root / "encoder.safetensors")
    return out


def _analyze_timm(pair: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "analyze", "--model-a", "timm:resnet18", "--weights-a", str(pair["a"]),
        "--model-b", "timm:resnet18", "--weights-b", str(pair["b"]),
        "--data", str(pair["data"]), "--out", str(out),
        "--image-size", "32", "--mean", "0,0,0", "--std", "1,1,1",  # trained on raw pixels
        "--steps", "16", "--projection", "pca", "--trust-sample", "8", *extra,
    )  # fmt: skip


def _top_on_mark(run_dir: Path, marks: dict) -> tuple[float, float, bool]:
    import imacs

    run = imacs.load_run(run_dir)
    top = run.clusters.iloc[0]
    patches = run.patch_rows()
    on = float(np.mean(helpers.holds_mark(patches[patches["cluster"] == top["cluster"]], marks)))
    return float(top["diff"]), on, bool(top["significant"])


def test_real001_timm_models_find_the_planted_shortcut_with_the_timm_encoder(
    timm_pair: dict, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    enc = ("--embedding", "timm:resnet18", "--encoder-weights", str(timm_pair["encoder"]))
    proc = _analyze_timm(timm_pair, out, *enc)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "run.json").read_text())
    assert [manifest["models"][r]["kind"] for r in "ab"] == ["timm", "timm"]
    assert manifest["models"]["b"]["name"] == "resnet18 (resnet18_b)"
    assert manifest["embedding"]["kind"] == "timm:resnet18"
    diff, on_mark, significant = _top_on_mark(out, timm_pair["marks"])
    print(f"timm resnet18: top cluster B - A {diff:+.3f}, {on_mark:.0%} on the mark")
    assert diff > 0.3 and significant and on_mark >= 0.75
    # inside the networks: timm's feature_info stages, probes, CKA and channels
    import imacs

    run = imacs.load_run(out)
    assert run.info.layers["layers"]["b"] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    ch = run.layer_channels
    assert set(ch["role"]) == {"a", "b"} and set(ch["layer"]) == {"layer3", "layer4"}
    assert len(run.layer_cka[run.layer_cka["concept"] == -1]) == 25

    info = run_cli("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "accuracy: A resnet18 (resnet18_a)" in info.stdout
    assert "maps: Integrated Gradients, 16 steps" in info.stdout
    assert "embedding timm:resnet18" in info.stdout
    concepts_csv = tmp_path / "concepts.csv"
    exported = run_cli("export", str(out), "--concepts", str(concepts_csv))
    assert exported.returncode == 0, exported.stderr
    with concepts_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and float(rows[0]["diff"]) > 0.3

    # a hook method takes a timm model: it is an eager module
    lifted = tmp_path / "deeplift"
    proc = _analyze_timm(timm_pair, lifted, "--method", "deeplift", "--no-whatif")
    assert proc.returncode == 0, proc.stderr
    diff, on_mark, significant = _top_on_mark(lifted, timm_pair["marks"])
    print(f"timm resnet18, DeepLIFT: top cluster B - A {diff:+.3f}, {on_mark:.0%} on the mark")
    assert diff > 0.3 and on_mark >= 0.75


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode("utf-8", "replace")


def test_real002_a_hugging_face_vit_against_a_timm_deit_then_served(tmp_path: Path) -> None:
    """The README's pair (``hf:`` folder against ``timm:NAME`` + weights) at the models'
    own 224 px input, through analyze, info and serve."""
    import timm
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    helpers.write_eval_set(tmp_path / "data", n_per_class=4)
    torch.manual_seed(0)
    labels = {0: "horizontal", 1: "vertical"}
    config = ViTConfig(
        image_size=224, patch_size=32, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=2, id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(str(tmp_path / "vit-a"))
    (tmp_path / "vit-a" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_normalize": True,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 224, "width": 224},
    }))  # fmt: skip
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=2)
    weights = _save(deit, tmp_path / "deit-b.safetensors")
    runs = tmp_path / "runs"
    proc = run_cli(
        "analyze", "--model-a", f"hf:{tmp_path / 'vit-a'}",
        "--model-b", "timm:deit_tiny_patch16_224", "--weights-b", str(weights),
        "--data", str(tmp_path / "data"), "--out", str(runs / "hf-vs-timm"),
        "--steps", "4", "--projection", "pca", "--trust-sample", "0", "--no-whatif",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((runs / "hf-vs-timm" / "run.json").read_text())
    assert [manifest["models"][r]["kind"] for r in "ab"] == ["hf", "timm"]
    assert manifest["settings"]["preprocess"]["image_size"] == [224, 224]  # the models' own
    assert manifest["data"]["classes"] == ["horizontal", "vertical"]
    assert manifest["summary"]["n_images"] == 8 and manifest["summary"]["n_patches"] > 0
    info = run_cli("info", str(runs / "hf-vs-timm"))
    assert info.returncode == 0 and "deit_tiny_patch16_224 (deit-b)" in info.stdout
    # inside the networks: the HF ViT's encoder blocks and timm DeiT's feature_info blocks,
    # their tokens laid on the patch grid for the channels
    layers = manifest["layers"]["layers"]
    assert len(layers["a"]) == 2 and layers["a"][-1].endswith(".1")
    assert len(layers["b"]) == 6 and layers["b"][-1] == "blocks.11"
    assert "inside A: layers" in info.stdout and "inside B: layers" in info.stdout

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imacs", "serve", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "imacs serve did not answer in 90 s"
                time.sleep(0.5)
        assert status == 200
        status, page = _get(f"http://127.0.0.1:{port}/?run=hf-vs-timm")
        assert status == 200 and "imacs" in page
        status, layout = _get(f"http://127.0.0.1:{port}/_dash-layout")
        assert status == 200 and "run-picker" in layout
    finally:
        server.terminate()
        server.wait(timeout=30)
