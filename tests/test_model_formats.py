"""Model kinds the field uses: torch.export programs, Hugging Face folders, timm names."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import imacs
from imacs.errors import InputError
from imacs.models import ModelSpec, load_model, model_preprocess
from imacs.settings import Preprocess
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


class _TimmNet(nn.Module):
    """Shaped like a timm classifier: a ``num_classes`` attribute and an ``fc`` head
    (Identity when ``num_classes`` is 0), as timm's ResNet has."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_chans, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


#: a pretrained_cfg as timm's PretrainedCfg.to_dict() gives it (input_size is C, H, W)
_TIMM_CFG = {
    "architecture": "tiny_fake",
    "num_classes": 1000,
    "input_size": (3, 40, 40),
    "mean": (0.5, 0.4, 0.3),
    "std": (0.2, 0.25, 0.3),
    "classifier": "fc",
}


@pytest.fixture
def stand_in_timm(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A ``timm`` module in ``sys.modules`` with timm's signatures (timm needs torchvision,
    which has no build for this CPU torch): ``is_model`` and ``list_models`` (fnmatch
    filter) from timm/models/_registry.py; ``create_model`` from timm/models/_factory.py,
    which builds as ``build_model_with_cfg`` does: ``num_classes`` defaults to the
    pretrained_cfg's, the model gets ``pretrained_cfg`` (and its ``default_cfg`` alias) as a
    dict. Returns the create_model calls; a pretrained=True call fails (no network)."""
    calls: list[dict] = []
    registry = {"tiny_fake": _TimmNet}

    def is_model(model_name: str) -> bool:
        return model_name.split(".", 1)[0] in registry

    def list_models(
        filter: str = "",
        module: str = "",
        pretrained: bool = False,
        exclude_filters: str = "",
        name_matches_cfg: bool = False,
        include_tags: bool | None = None,
    ) -> list[str]:
        return sorted(n for n in registry if not filter or fnmatch.fnmatch(n, filter))

    def create_model(
        model_name: str,
        pretrained: bool = False,
        pretrained_cfg: dict | None = None,
        pretrained_cfg_overlay: dict | None = None,
        checkpoint_path: str = "",
        scriptable: bool | None = None,
        exportable: bool | None = None,
        no_jit: bool | None = None,
        **kwargs,
    ) -> nn.Module:
        calls.append({"name": model_name, "pretrained": pretrained, **kwargs})
        arch = model_name.split(".", 1)[0]
        if arch not in registry:
            raise RuntimeError(f"Unknown model ({arch})")
        if pretrained:
            raise RuntimeError("the stand-in downloads nothing")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        cfg = dict(_TIMM_CFG)
        kwargs.setdefault("num_classes", cfg["num_classes"])
        model = registry[arch](**kwargs)
        model.pretrained_cfg = cfg
        model.default_cfg = model.pretrained_cfg
        return model

    fake = types.ModuleType("timm")
    fake.is_model, fake.list_models, fake.create_model = is_model, list_models, create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    return calls


def test_mf005_timm_models_load_with_their_weights_head_and_configuration(
    stand_in_timm: list[dict], tmp_path: Path
) -> None:
    torch.manual_seed(4)
    trained = _TimmNet(num_classes=3)  # fine-tuned: 3 classes, not timm's 1000
    weights = tmp_path / "tiny.safetensors"
    save_file(trained.state_dict(), str(weights))
    m = load_model(ModelSpec("timm:tiny_fake", str(weights)), "--model-a")
    assert all(not c["pretrained"] for c in stand_in_timm)  # nothing downloaded
    assert stand_in_timm[-1]["num_classes"] == 3  # the head sized from the weights
    assert torch.equal(m.module.fc.weight, trained.fc.weight)  # weights applied, head kept
    x = torch.rand(4, 3, 40, 40)
    with torch.no_grad():
        np.testing.assert_allclose(m.module(x).numpy(), trained(x).numpy(), atol=1e-6)
    assert not m.module.training and not any(p.requires_grad for p in m.module.parameters())
    assert m.defaults.image_size == (40, 40)
    assert m.defaults.mean == (0.5, 0.4, 0.3) and m.defaults.std == (0.2, 0.25, 0.3)
    assert m.kind == "timm" and m.eager and m.name == "tiny_fake (tiny)"  # weights' stem
    file_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert m.sha256 == hashlib.sha256(f"timm:tiny_fake:{file_hash}".encode()).hexdigest()
    assert m.describe()["weights"] == str(weights.resolve())
    # no size or normalisation given: the model's own configuration is used
    pre = model_preprocess(Preprocess(), {"a": m})
    assert pre.image_size == (40, 40)
    assert m.describe()["normalisation"]["mean"] == [0.5, 0.4, 0.3]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    with torch.no_grad():
        want = trained((x - mean[:, None, None]) / std[:, None, None])
        np.testing.assert_allclose(m.module(x).numpy(), want.numpy(), atol=1e-5)


def test_mf006_timm_names_need_weights_and_a_known_architecture(
    stand_in_timm: list[dict], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="timm:tiny_fake: give its weights"):
        load_model(ModelSpec("timm:tiny_fake"), "--model-a")
    absent = str(tmp_path / "w.safetensors")  # the name is checked before the file is read
    with pytest.raises(InputError, match=r"no architecture 'not_a_net'$"):
        load_model(ModelSpec("timm:not_a_net", absent), "--model-a")
    with pytest.raises(InputError, match=r"no architecture 'tiny' \(close: tiny_fake\)"):
        load_model(ModelSpec("timm:tiny", absent), "--model-a")
    wrong = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(8, 3, 3, 3)}, str(wrong))
    with pytest.raises(InputError, match=r"weights do not fit .* \(missing conv\.bias, fc\.b"):
        load_model(ModelSpec("timm:tiny_fake", str(wrong)), "--model-a")
    assert stand_in_timm and all(not c["pretrained"] for c in stand_in_timm)


def test_mf007_timm_not_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(InputError, match=r"timm:resnet18: timm is not installed.*imacs\[timm\]"):
        load_model(ModelSpec("timm:resnet18"), "--model-a")


def test_mf020_a_fixed_size_export_given_another_size_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    """A .pt2 exported at a static 32x32 states that size and takes no other: asking for
    48 px would run the whole attribution and then fail; it is refused at load."""
    path = _export(helpers.TinyCNN().eval(), tmp_path / "fixed32.pt2")
    model = load_model(ModelSpec(str(path)), "--model-a")
    assert model.defaults.image_size == (32, 32) and model.defaults.fixed_size
    other = load_model(ModelSpec(str(path)), "--model-b")
    models = {"a": model, "b": other}
    with pytest.raises(InputError, match=r"takes only 32x32 images .* --image-size 32x32"):
        model_preprocess(Preprocess(image_size=(48, 48)), models)
    assert model_preprocess(Preprocess(image_size=(32, 32)), models).image_size == (32, 32)
    assert model_preprocess(Preprocess(), models).image_size == (32, 32)
