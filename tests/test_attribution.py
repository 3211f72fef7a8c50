"""Stage 1: Integrated Gradients for two models over shared batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from imacs.attribution import AttributionSettings, PairedAttribution, Preprocess
from imacs.errors import InputError
from imacs.settings import AnalysisSettings
from tests.helpers import TinyCNN


@pytest.fixture
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    a, b = TinyCNN().eval(), TinyCNN().eval()
    for m in (a, b):
        for p in m.parameters():
            p.requires_grad_(False)
    return {"a": a, "b": b}


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)


def _engine(models, **kw) -> PairedAttribution:
    pre = Preprocess(image_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return PairedAttribution(models, pre, AttributionSettings(device="cpu", **kw))


def test_att001_matches_plain_captum(models, images) -> None:
    eng = _engine(models, steps=20)
    res = eng.attribute("a", images)
    pre = eng.preprocess
    ig = IntegratedGradients(lambda x: models["a"](pre.normalize(x)))
    x = torch.from_numpy(images)
    target = models["a"](pre.normalize(x)).argmax(1)
    ref, ref_delta = ig.attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=20, return_convergence_delta=True
    )
    assert np.allclose(res.maps, ref.sum(1).numpy(), atol=1e-5)
    assert np.allclose(res.delta, ref_delta.numpy(), atol=1e-4)  # delta without extra passes
    assert (res.pred == target.numpy()).all() and (res.target == res.pred).all()
    assert np.allclose(res.probs.sum(1), 1.0, atol=1e-5)


def test_att002_completeness_improves_with_steps(models, images) -> None:
    few = np.abs(_engine(models, steps=4).attribute("b", images).delta).mean()
    many = np.abs(_engine(models, steps=128).attribute("b", images).delta).mean()
    assert many < few and many < 1e-3


def test_att003_step_batching_does_not_change_results(models, images) -> None:
    whole = _engine(models, steps=16).attribute("a", images)
    chunked = _engine(models, steps=16, internal_batch_size=5).attribute("a", images)
    assert np.allclose(whole.maps, chunked.maps, atol=1e-5)


def test_att004_torchscript_model_and_label_target(models, images) -> None:
    scripted = {"a": torch.jit.script(models["a"]), "b": models["b"]}
    eng = _engine(scripted, steps=8, target="label")
    labels = np.array([1, 0, 1, 1, 0])
    res = eng.attribute("a", images, labels)
    assert (res.target == labels).all()
    plain = _engine(models, steps=8, target="label").attribute("a", images, labels)
    assert np.allclose(res.maps, plain.maps, atol=1e-5)


@pytest.mark.parametrize("baseline", ["gray", "blur"])
def test_att005_other_baselines_keep_completeness(models, images, baseline) -> None:
    res = _engine(models, steps=128, baseline=baseline).attribute("a", images)
    assert np.abs(res.delta).max() < 5e-3


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))  # (batch,) instead of (batch, classes)


class _NaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3), float("nan"))


class _Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Flat(), r"returns \(5,\) for a batch of 5"),
        (_NaN(), "NaN or infinite logits"),
        (_Raises(), "fails on a batch of 5x3x16x16 inputs .*check --image-size"),
    ],
)
def test_att006_bad_model_outputs_are_explained(models, images, model, message) -> None:
    eng = _engine({"a": model, "b": models["b"]})
    with pytest.raises(InputError, match=message):
        eng.attribute("a", images)


def test_att007_settings_are_validated() -> None:
    # errors name the setting (for the Python API) and its flag (for the CLI)
    with pytest.raises(InputError, match=r"setting steps \(--steps\) = 1: must be at least 2"):
        AttributionSettings(steps=1)
    with pytest.raises(InputError, match=r"mean and std \(--mean, --std\) go together"):
        Preprocess(mean=(0.1, 0.1, 0.1))
    for bad, message in (
        ({"seed": -1}, r"seed \(--seed\) = -1: must be at least 0"),
        ({"mean": (0, 0, 0), "std": (float("nan"), 1, 1)}, "std .* finite"),
        ({"mean": (0, 0, 0), "std": (1, 0, 1)}, "std .* positive"),
        ({"image_size": 4}, "image_size .* sides from 8 to 4096"),
        ({"batch_size": 2.5}, "batch_size .* whole number"),
        ({"baseline": "white"}, "baseline .* black, gray, blur"),
    ):
        with pytest.raises(InputError, match=message):
            AnalysisSettings.from_keywords(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            PairedAttribution({"a": TinyCNN()}, Preprocess(), AttributionSettings(device="cuda"))


def test_att008_bf16_autocast_agrees_with_fp32(models, images) -> None:
    fp32 = _engine(models, steps=16).attribute("a", images)
    bf16 = _engine(models, steps=16, precision="bf16").attribute("a", images)
    corr = np.corrcoef(fp32.maps.ravel(), bf16.maps.ravel())[0, 1]
    assert corr > 0.95


class _ViewNet(nn.Module):
    """Flattens a conv output with .view(), which channels-last memory breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


def test_att009_memory_layout_is_chosen_per_model_without_changing_results(models, images) -> None:
    torch.manual_seed(1)
    view_net = _ViewNet().eval()
    eng = _engine({"a": torch.jit.script(models["a"]), "b": view_net}, steps=8)
    res_a = eng.attribute("a", images)
    res_b = eng.attribute("b", images)  # would raise if channels-last were forced on it
    assert eng._channels_last == {"a": True, "b": False}
    plain = IntegratedGradients(lambda x: models["a"](eng.preprocess.normalize(x)))
    x = torch.from_numpy(images)
    ref = plain.attribute(x, target=torch.from_numpy(res_a.pred), n_steps=8).sum(1).numpy()
    assert np.allclose(res_a.maps, ref, atol=1e-5)
    assert res_b.maps.shape == (5, 16, 16)
