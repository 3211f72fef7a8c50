"""Model kinds the field uses: torch.export programs, Hugging Face folders, timm names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import imacs
from imacs.errors import InputError
from imacs.models import ModelSpec, load_model
from tests import helpers


def _tiny(weights: Path) -> torch.nn.Module:
    model = helpers.TinyCNN()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def _export(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    x = torch.rand(2, 3, helpers.SIZE, helpers.SIZE)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), str(path))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imacs", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_mf001_exported_programs_give_the_same_run_as_torchscript(
    shortcut: dict, shortcut_run, tmp_path: Path
) -> None:
    files = {r: _export(_tiny(shortcut[f"{r}_weights"]), tmp_path / f"{r}.pt2") for r in "ab"}
    run = imacs.analyze(
        files["a"],
        files["b"],
        shortcut["data"],
        tmp_path / "run",
        steps=24,  # no image size: the exported programs state 32x32
        projection="pca",
        progress=False,
    )
    assert run.manifest["settings"]["preprocess"]["image_size"] == [32, 32]
    assert run.manifest["models"]["a"]["kind"] == "export"
    ref = shortcut_run
    # the same weights through the exported graph: the same predictions, maps and patches
    assert (run.images["pred_b"] == ref.images["pred_b"]).all()
    np.testing.assert_allclose(run.images["prob_a"], ref.images["prob_a"], atol=1e-4)
    for r in "ab":
        got = np.stack([run.attribution_map(r, i) for i in range(len(run.images))])
        want = np.stack([ref.attribution_map(r, i) for i in range(len(ref.images))])
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    cols = ["image_id", "x0", "y0", "x1", "y1"]
    assert (run.patches[cols].to_numpy() == ref.patches[cols].to_numpy()).all()
    assert run.clusters.iloc[0]["diff"] == pytest.approx(ref.clusters.iloc[0]["diff"], abs=1e-3)


def test_mf002_an_export_with_a_fixed_batch_is_refused_with_the_fix(
    shortcut: dict, tmp_path: Path
) -> None:
    path = _export(_tiny(shortcut["a_weights"]), tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(InputError, match=r"fixed batch size of 2.*Dim\('batch'\)"):
        load_model(ModelSpec(str(path)), "--model-a")
    broken = tmp_path / "broken.pt2"
    data = path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    res = _cli(
        "analyze", "--model-a", str(broken), "--model-b", str(path),
        "--data", str(shortcut["data"]), "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert str(broken) in res.stderr


def _hf_folder(
    path: Path, id2label: dict[int, str], seed: int, mean: float = 0.5, size: int = 32
) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    ViTForImageClassification(config).save_pretrained(str(path))
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_normalize": True,
                "image_mean": [mean] * 3,
                "image_std": [0.25] * 3,
                "size": {"height": size, "width": size},
            }
        )
    )
    return path


@pytest.mark.slow
def test_mf003_hugging_face_folders_bring_their_classes_and_preprocessing(
    shortcut: dict, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForImageClassification

    # the models' class order is NOT the folders' sorted order
    labels = {0: "vertical", 1: "horizontal"}
    a = _hf_folder(tmp_path / "vit-a", labels, seed=1, mean=0.5)
    b = _hf_folder(tmp_path / "vit-b", labels, seed=2, mean=0.4)
    res = _cli(
        "analyze", "--model-a", f"hf:{a}", "--model-b", f"hf:{b}",
        "--data", str(shortcut["data"]), "--out", str(tmp_path / "run"),
        "--steps", "8", "--projection", "pca",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = imacs.load_run(tmp_path / "run")
    assert run.classes == ["vertical", "horizontal"]
    first_vertical = run.images[run.images["image"].str.startswith("vertical/")].iloc[0]
    assert first_vertical["label"] == 0 and first_vertical["label_name"] == "vertical"
    assert run.manifest["settings"]["preprocess"]["image_size"] == [32, 32]
    assert run.manifest["models"]["b"]["normalisation"]["mean"] == [0.4] * 3
    assert run.manifest["models"]["a"]["kind"] == "hf"
    # the probabilities in the run are the model's own on its own preprocessing
    hf = AutoModelForImageClassification.from_pretrained(str(b)).eval()
    img = Image.open(shortcut["data"] / first_vertical["image"]).convert("RGB")
    x = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1).copy() / 255)[None]
    with torch.no_grad():
        want = hf(pixel_values=(x - 0.4) / 0.25).logits.softmax(-1)[0].numpy()
    got = run.probabilities("b")[int(first_vertical["image_id"])]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_mf004_hugging_face_errors_are_one_line(shortcut: dict, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    a = _hf_folder(tmp_path / "a", {0: "horizontal", 1: "vertical"}, seed=1)
    b = _hf_folder(tmp_path / "b", {0: "vertical", 1: "horizontal"}, seed=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    for model_b, expect in (
        (f"hf:{b}", "class 0 is 'horizontal' in A and 'vertical' in B"),
        (f"hf:{empty}", f"{empty}: not a Hugging Face model folder"),
    ):
        res = _cli(
            "analyze", "--model-a", f"hf:{a}", "--model-b", model_b,
            "--data", str(shortcut["data"]), "--out", str(tmp_path / "r"),
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert expect in res.stderr and res.stderr.count("\n") == 1


def test_mf005_timm_names_need_timm_and_weights(tmp_path: Path) -> None:
    try:
        import timm  # noqa: F401
    except Exception:  # timm needs torchvision, which has no CPU build here
        with pytest.raises(
            InputError, match=r"timm:resnet18: timm is not installed.*imacs\[timm\]"
        ):
            load_model(ModelSpec("timm:resnet18"), "--model-a")
        return
    with pytest.raises(InputError, match="give its weights"):
        load_model(ModelSpec("timm:resnet18"), "--model-a")
    with pytest.raises(InputError, match="no architecture"):
        load_model(ModelSpec("timm:not_a_net", str(tmp_path / "w.safetensors")), "--model-a")
