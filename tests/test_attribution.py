"""Stage 1: Integrated Gradients for two models over shared batches."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam
from torch import nn

from imacs import methods
from imacs.attribution import AttributionSettings, PairedAttribution, Preprocess
from imacs.errors import InputError
from imacs.models import ModelSpec, load_model
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


class _InputTimesGradient:
    """A method as a test would add one: captum's InputXGradient (no completeness)."""

    name = "ixg"
    title = "Input x Gradient"
    needs_hooks = False
    completeness = False
    calls: ClassVar[list[dict]] = []

    def __init__(self, forward_func, model, settings) -> None:
        self.forward_func = forward_func

    def attribute(self, inputs, baselines, target, internal_batch_size=None):
        self.calls.append({"target": target.tolist(), "internal_batch_size": internal_batch_size})
        x = inputs.detach().clone().requires_grad_()
        return InputXGradient(self.forward_func).attribute(x, target=target)


class _GradCam:
    """A hook-based method: captum's LayerGradCam on TinyCNN's last conv, upsampled."""

    name = "gradcam"
    title = "Grad-CAM"
    needs_hooks = True
    completeness = False

    def __init__(self, forward_func, model, settings) -> None:
        self.cam = LayerGradCam(forward_func, model.features[4])

    def attribute(self, inputs, baselines, target, internal_batch_size=None):
        cam = self.cam.attribute(inputs, target=target)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), "bilinear")


def test_att010_a_registered_method_is_used_by_the_engine(models, images, monkeypatch) -> None:
    with pytest.raises(InputError, match="attribution method 'ixg': unknown; choose one of ig"):
        PairedAttribution(models, Preprocess(), AttributionSettings(device="cpu"), method="ixg")
    monkeypatch.setattr(methods, "METHODS", (*methods.METHODS, _InputTimesGradient))
    pre = Preprocess(image_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    eng = PairedAttribution(models, pre, AttributionSettings(device="cpu"), method="ixg")
    res = eng.attribute("b", images)
    x = torch.from_numpy(images)
    target = models["b"](pre.normalize(x)).argmax(1)
    ixg = InputXGradient(lambda t: models["b"](pre.normalize(t)))
    ref = ixg.attribute(x.clone().requires_grad_(), target=target).detach()
    assert np.allclose(res.maps, ref.sum(1).numpy(), atol=1e-6)
    assert (res.pred == target.numpy()).all()
    assert np.isnan(res.delta).all()  # no completeness: no convergence delta to report
    assert _InputTimesGradient.calls[-1]["target"] == target.tolist()
    assert _InputTimesGradient.calls[-1]["internal_batch_size"] >= len(images)
    # Integrated Gradients is still the default, with its completeness
    assert np.abs(_engine(models, steps=128).attribute("b", images).delta).max() < 5e-3


def test_att011_a_hook_method_needs_an_eager_model(models, images, monkeypatch, tmp_path) -> None:
    x = torch.from_numpy(images)
    program = tmp_path / "a.pt2"  # exported before the engine's layout probe touches it
    dim = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(models["a"], (x,), dynamic_shapes=dim), str(program))
    monkeypatch.setattr(methods, "METHODS", (*methods.METHODS, _GradCam))
    pre = Preprocess(image_size=(16, 16))
    settings = AttributionSettings(device="cpu")
    res = PairedAttribution(models, pre, settings, method="gradcam").attribute("a", images)
    cam = LayerGradCam(models["a"], models["a"].features[4])
    want = LayerAttribution.interpolate(
        cam.attribute(x, target=torch.from_numpy(res.pred)), (16, 16), "bilinear"
    )
    assert np.allclose(res.maps, want[:, 0].detach().numpy(), atol=1e-6)
    for a, eager in (
        (torch.jit.script(models["a"]), None),
        (load_model(ModelSpec(str(program))).module, None),
        (models["a"], {"a": False, "b": True}),  # as LoadedModel.eager says
    ):
        with pytest.raises(InputError) as err:
            PairedAttribution(
                {"a": a, "b": models["b"]}, pre, settings, method="gradcam", eager=eager
            )
        message = str(err.value)
        assert message.startswith("model A is a TorchScript or torch.export program")
        assert "Grad-CAM attributes through layer hooks" in message and "\n" not in message
    # Integrated Gradients takes the same TorchScript model
    scripted = PairedAttribution({"a": torch.jit.script(models["a"])}, pre, settings)
    assert scripted.attribute("a", images).maps.shape == (5, 16, 16)


def test_att012_every_method_is_offered_and_named(models, images) -> None:
    from imacs.settings import METHOD_TITLES

    assert {m.name: m.title for m in methods.METHODS} == METHOD_TITLES
    for name in METHOD_TITLES:
        res = _engine(models, algorithm=name, steps=6).attribute("a", images)
        assert res.maps.shape == (5, 16, 16) and np.isfinite(res.maps).all()
        assert np.abs(res.maps).sum() > 0, name
        # a convergence delta only where the method's maps add up to f(x) - f(baseline)
        assert np.isfinite(res.delta).all() == methods.find_method(name).completeness
    with pytest.raises(InputError, match=r"\(--method\) = 'lime': choose one of ig, gradient-shap"):
        AnalysisSettings.from_keywords(method="lime")


class _AvgCNN(nn.Module):
    """TinyCNN with average pooling: every nonlinearity a ReLU module DeepLIFT knows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_att013_each_method_computes_what_it_says(models, images) -> None:
    x = torch.from_numpy(images)
    pre = Preprocess(image_size=(16, 16))
    # Saliency: the absolute gradient of the target logit, summed over colours
    sal = _engine(models, algorithm="saliency")
    res = sal.attribute("b", images)
    xg = x.clone().requires_grad_()
    out = models["b"](sal.preprocess.normalize(xg))
    out[torch.arange(5), torch.from_numpy(res.pred)].sum().backward()
    assert np.allclose(res.maps, xg.grad.abs().sum(1).numpy(), atol=1e-6)
    # DeepLIFT: its maps add up to f(x) - f(black) on a network of ReLU modules
    lift = _engine({"a": _AvgCNN().eval()}, algorithm="deeplift").attribute("a", images)
    assert np.abs(lift.delta).max() < 1e-4
    # GradientSHAP: seeded per image, so an image's map does not depend on its batch
    shap = _engine(models, algorithm="gradient-shap", steps=8)
    together = shap.attribute("a", images).maps
    alone = np.concatenate([shap.attribute("a", images[i : i + 1]).maps for i in range(5)])
    assert np.allclose(together, alone, atol=1e-6)
    # ... nor on the pass size the memory budget (or the out-of-memory halving) chose
    small = _engine(models, algorithm="gradient-shap", steps=8, internal_batch_size=3)
    assert np.allclose(small.attribute("a", images).maps, together, atol=1e-6)
    # ... and the draws do change with the samples: 8 samples are not 64
    more = _engine(models, algorithm="gradient-shap", steps=64).attribute("a", images).maps
    assert not np.allclose(more, together, atol=1e-4)
    assert np.corrcoef(more.ravel(), together.ravel())[0, 1] > 0.5
    # Occlusion: a model that only sees the top-left 4x4 pixels gives nothing elsewhere
    corner = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with torch.no_grad():
        corner[1].weight.zero_()
        w = torch.zeros(3, 16, 16)
        w[:, :4, :4] = 1.0
        corner[1].weight[0] = w.flatten()
        corner[1].weight[1] = -w.flatten()
    occ = PairedAttribution({"a": corner}, pre, AttributionSettings(device="cpu",
                            algorithm="occlusion")).attribute("a", images)  # fmt: skip
    side, stride = methods.occlusion.window(16, 16)
    reach = 4 + side - stride  # windows that overlap the corner also cover this far
    assert np.abs(occ.maps[:, reach:, :]).max() == 0 and np.abs(occ.maps[:, :, reach:]).max() == 0
    assert np.abs(occ.maps[:, :4, :4]).min() > 0
