"""Inside the networks (:mod:`imacs.layers`): layer probes, CKA, the channels that carry a
concept and their ablation check, on planted shortcuts of every kind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import imacs
from imacs.layers import (
    decided_at,
    default_layers,
    ladder,
    linear_cka,
    probe_predictions,
)
from tests import helpers

FACTORY = "tests.helpers:make_tiny_cnn"


def _eager_run(
    s: dict, out: Path, cache: Path, settings: imacs.AnalysisSettings | None = None, *,
    b: str = "b", **extra: object,
) -> imacs.Run:  # fmt: skip
    """The set ``s`` analysed with both models as eager modules (the factory + weights)."""
    return imacs.analyze(
        FACTORY, FACTORY, s["data"], out, settings, weights_a=s["a_weights"],
        weights_b=s[f"{b}_weights"],
        image_size=helpers.KIND_SIZE if "present" in s else 32, steps=16, projection="pca",
        trust_sample=0, whatif=False, progress=False, cache_dir=cache, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def looks_eager(looks: dict, tmp_path_factory: pytest.TempPathFactory) -> imacs.Run:
    root = tmp_path_factory.mktemp("looks-eager")
    return _eager_run(looks, root / "run", root / "cache")


def test_lay001_linear_cka_is_one_for_the_same_representation_and_low_for_unrelated() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # rotation and scale
    assert linear_cka(x, rng.normal(size=(200, 12))) < 0.15
    wide = rng.normal(size=(20, 50))  # fewer examples than features: the Gram form
    assert linear_cka(wide, wide @ np.linalg.qr(rng.normal(size=(50, 50)))[0]) == pytest.approx(1)
    # few examples of many features: plain linear CKA gives unrelated ones ~0.97; debiased ~0
    few = [rng.normal(size=(20, 500)) for _ in range(2)]
    assert abs(linear_cka(*few)) < 0.2
    assert np.isnan(linear_cka(np.ones((10, 3)), x[:10]))
    assert ladder(3, 48) == [3, 6, 12, 24]
    assert ladder(3, 4) == [2]
    assert ladder(3, 2048)[-1] == 256


def test_lay002_probes_are_cross_fitted_so_noise_scores_at_chance() -> None:
    """A probe scored on the images it was fitted on would 'agree' with random answers
    (200 images, 150 features); cross-fitted it is at chance."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 150))
    answer = rng.integers(0, 2, 200)
    agree = (probe_predictions(features, answer, 5, 0) == answer).mean()
    assert 0.35 < agree < 0.65
    answer = (features[:, 0] > 0).astype(int)  # a readable answer is found (150 dimensions
    assert (probe_predictions(features, answer, 5, 0) == answer).mean() > 0.7  # 160 images)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class _ResNetLike(nn.Module):
    """Top-level stem and stages, as torchvision's ResNet: the stages are picked."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.layer1, self.layer2, self.layer3 = _Block(8, 8), _Block(8, 16), _Block(16, 16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def test_lay003_default_layers_are_each_models_stages() -> None:
    from imacs.sample_data.landcover import small_cnn

    probe = torch.zeros(1, 3, 32, 32)

    def found(m: nn.Module) -> list[str]:
        return default_layers(m.eval(), probe, m)

    # a Sequential: each block's activation, not its convolution nor the 1x1 pooled map
    assert found(small_cnn()) == ["1", "3", "5", "7"]
    # a top-level Sequential of features and a head: its children
    assert found(helpers.TinyCNN()) == ["features.1", "features.3", "features.5"]
    # top-level stages; the stem's convolution and norm are followed by elementwise modules
    assert found(_ResNetLike()) == ["relu", "layer1", "layer2", "layer3"]
    # timm's feature_info names the stages
    timm_like = _ResNetLike()
    timm_like.feature_info = [{"module": "layer1"}, {"module": "layer3"}]  # type: ignore[assignment]
    assert found(timm_like) == ["layer1", "layer3"]


def test_lay003b_a_hugging_face_vit_gives_its_encoder_blocks_and_a_token_grid() -> None:
    transformers = pytest.importorskip("transformers")
    from imacs.formats.hf import LogitsOnly
    from imacs.layers import as_map, user_root

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=32, num_labels=2,
    )  # fmt: skip
    model = LogitsOnly(transformers.ViTForImageClassification(config)).eval()
    names = default_layers(model, torch.zeros(1, 3, 32, 32), model)
    blocks = next(n for n, m in model.model.named_modules() if isinstance(m, nn.ModuleList))
    assert names == [f"{blocks}.{i}" for i in range(3)]  # vit.layers, or vit.encoder.layer
    assert user_root(model)[0] == "model."
    grid = as_map(torch.zeros(2, 17, 16))  # a class token and 4 x 4 patches
    assert grid is not None and tuple(grid.shape) == (2, 16, 4, 4)


def _shortcut_concept(run: imacs.Run) -> int:
    """B's shortcut: the top concept by rank whose B - A share is positive."""
    c = run.concepts
    return int(c[c["diff"] > 0].sort_values("rank")["concept"].iloc[0])


def _check_claims(run: imacs.Run, what: str) -> dict[str, float]:
    """The view's claims on a run where B reads a planted shortcut: B decides the
    shortcut's images no later than the others, and zeroing the shortcut concept's top
    channels of B's last layer flips B on at least half its images and >= 5x as often as
    as many random channels."""
    concept = _shortcut_concept(run)
    ag, ch = run.layer_agreement, run.layer_channels
    assert not ag.empty and not ch.empty, what
    decided = run.settings.layers.decided
    on = decided_at(ag, "b", concept, "agree", decided)
    off = decided_at(ag, "b", concept, "agree_without", decided)
    assert on is not None and off is not None and on <= off, (what, on, off)
    mine = ch[(ch["role"] == "b") & (ch["concept"] == concept)]
    last = mine[mine["depth"] == mine["depth"].max()].iloc[0]
    flip, random = float(last["flip_top_k"]), float(last["flip_random_k"])
    print(
        f"{what}: B decides its shortcut at depth {on} (others {off}); zeroing its top "
        f"{int(last['n_zeroed'])} channels of {last['layer']} flips {flip:.0%}, as many "
        f"random ones {random:.0%}"
    )
    assert flip >= 0.5 and flip >= 5 * random, (what, flip, random)
    # the channels a row lists are the ones the first step zeroed; the ladder doubles them
    width = run.layer_agreement.set_index(["role", "layer"])["channels"].groupby(level=[0, 1])
    for (role, layer, _), g in ch.groupby(["role", "layer", "concept"]):
        steps = ladder(len(g), int(width.first()[role, layer]))
        assert steps[0] == len(g) and int(g["n_zeroed"].iloc[0]) in steps, (what, layer)
    return {"flip": flip, "random": random}


def test_lay004_on_the_three_looks_set_b_s_shortcut_channels_are_causal(
    looks_eager: imacs.Run,
) -> None:
    _check_claims(looks_eager, "three looks")
    # the tables say which layers, and every top concept has its sentence in `imacs info`
    assert looks_eager.info.layers["layers"]["b"] == ["features.1", "features.3", "features.5"]
    info = looks_eager.summary()
    assert info.count("        inside: B decides it at depth") == len(
        looks_eager.concepts.head(looks_eager.settings.layers.top)
    )
    assert "CKA of A's and B's last layers" in info
    # each channel comes with the run's patches that activate it most
    ch = looks_eager.layer_channels
    ids = set(looks_eager.patches["patch_id"])
    for row in ch.itertuples():
        shown = [int(p) for p in row.top_patches.split(",")]
        assert len(shown) == looks_eager.settings.layers.top_patches and set(shown) <= ids


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_lay005_every_kind_of_shortcut_is_carried_by_channels_b_needs(
    kind: str, kind_set, tmp_path: Path
) -> None:
    """A mark, a frame, a background and a texture: each time, zeroing the channels that
    carry B's shortcut concept flips B, and random channels do not."""
    s = kind_set(kind)
    # B's shortcut concept need not rank first (on the background set a concept A relies on
    # more does): the top 3 are looked at
    run = _eager_run(s, tmp_path / "run", tmp_path / "cache", layers_top=3)
    _check_claims(run, kind)


def test_lay006_identical_models_have_cka_one_on_the_diagonal(kind_set, tmp_path: Path) -> None:
    s = kind_set("mark")
    run = _eager_run(s, tmp_path / "run", tmp_path / "cache", b="a", layers_top=1)
    cka = run.layer_cka
    every = cka[cka["concept"] == -1]
    diagonal = every[every["depth_a"] == every["depth_b"]]
    assert len(diagonal) == 3
    np.testing.assert_allclose(diagonal["cka"], 1.0, atol=1e-6)
    assert (every.loc[every["depth_a"] != every["depth_b"], "cka"] < 0.999).all()


def test_lay007_a_torchscript_model_says_why_its_part_is_absent(looks_run: imacs.Run) -> None:
    """The fixture's models are TorchScript: no tables, a sentence in the manifest and in
    ``imacs info`` saying how to get the view."""
    assert looks_run.layer_agreement.empty and looks_run.layer_channels.empty
    absent = looks_run.info.layers["absent"]
    assert set(absent) == {"a", "b"}
    assert "model B is a TorchScript model, whose layers take no hooks" in absent["b"]
    assert "inside: model A is a TorchScript model" in looks_run.summary()


def test_lay008_layer_names_are_checked_before_any_work(looks: dict, tmp_path: Path) -> None:
    weights = ("--weights-a", str(looks["a_weights"]), "--weights-b", str(looks["b_weights"]))
    base = (
        "analyze", "--model-a", FACTORY, "--model-b", FACTORY, *weights,
        "--data", str(looks["data"]), "--out", str(tmp_path / "run"), "--image-size", "32",
    )  # fmt: skip
    proc = helpers.run_cli(*base, "--layers-b", "features.3,nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "--layers-b nope: the model has no layer 'nope'" in line and "features" in line
    ts = helpers.run_cli(
        "analyze", "--model-a", str(looks["a"]), "--model-b", str(looks["b"]),
        "--data", str(looks["data"]), "--out", str(tmp_path / "ts"), "--layers-a", "features.1",
    )  # fmt: skip
    assert ts.returncode == 2 and "--layers-a: model A is a TorchScript model" in ts.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "ts").exists()


def test_lay009_chosen_layers_are_used_on_a_sample_of_the_images(
    looks: dict, tmp_path: Path
) -> None:
    base = imacs.AnalysisSettings()
    sampled = replace(base, layers=replace(base.layers, sample=50))
    run = _eager_run(
        looks, tmp_path / "run", tmp_path / "cache", sampled, layers_top=1,
        layers_a="features.3,features.5", layers_b=["features.5"],
    )  # fmt: skip
    assert len(run.images) == 120 and run.info.layers["n_images"] == 50
    ag = run.layer_agreement
    assert (ag.loc[ag["concept"] == -1, "n_images"] == 50).all()
    assert list(ag.loc[ag["role"] == "a", "layer"].unique()) == [
        "features.3",
        "features.5",
        "output",
    ]
    assert list(ag.loc[ag["role"] == "b", "layer"].unique()) == ["features.5", "output"]
    assert set(run.layer_cka["layer_b"]) == {"features.5"}


def test_lay010_too_few_images_bad_values_and_no_layers_say_so_instead_of_a_number() -> None:
    """A concept on 3 images gets no agreement (not 0 % or 100 % of 3), a run of fewer than
    10 images no probes, a layer's inf or NaN does not stop the stage, and with --no-layers
    a TorchScript model is not reported as the reason."""
    import pandas as pd

    from imacs.layers import _agreement_rows, decided_words, layers_stage, pooled
    from imacs.settings import LayerSettings

    agree = {"l1": np.ones(40, bool)}
    few = np.zeros(40, bool)
    few[:3] = True
    ag = pd.DataFrame(_agreement_rows("b", ["l1"], {"l1": 8}, agree, {7: few}, 40))
    mine = ag[ag["concept"] == 7]
    assert mine["agree"].isna().all() and (mine["agree_without"] == 1.0).all()
    assert decided_words(ag, "b", 7, "agree", 0.9) == "too few images to say (3)"
    assert decided_words(ag, "b", 7, "agree_without", 0.9) == "depth 1 (l1)"
    assert probe_predictions(np.zeros((5, 4)), np.arange(5) % 2, 5, 0) is None
    bad = torch.tensor([[[[1.0, float("nan")], [float("inf"), 2.0]]]])
    assert np.isfinite(pooled(bad)).all()
    torchscript = type("M", (), {"eager": False})()
    out = layers_stage.fn(
        engine=None, models={"a": torchscript, "b": torchscript}, records=[],
        images=pd.DataFrame({"image_id": [0]}), patches=pd.DataFrame({"image_id": [0]}),
        concepts=pd.DataFrame({"concept": [0], "rank": [1]}), say=print,
        layers=LayerSettings(enabled=False), preprocess=None, attribution=None, seed=0,
    )  # fmt: skip
    assert out["layers_info"]["absent"] == {} and out["layers_info"]["enabled"] is False
    assert all(out[n].empty for n in ("layer_agreement", "layer_cka", "layer_channels"))
