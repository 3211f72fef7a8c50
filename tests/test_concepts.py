"""Concepts: clusters grouped by how the two models answer them (imacs.concepts), and the
embeddings a user can choose (imacs.embedding, imacs.encoders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import imacs
from imacs.concepts import ConceptSettings, group_clusters
from imacs.errors import InputError
from tests import helpers


def _kinds(run, looks: dict) -> pd.DataFrame:
    """The patch rows with ``mark``: which mark the patch holds (a look, the cross, none)."""
    p = run.patch_rows()
    on = helpers.holds_mark(p, looks["boxes"])
    p["mark"] = [
        looks["looks"][img] if hit else "none" for img, hit in zip(p["image"], on, strict=True)
    ]
    return p


def _check_three_looks_one_concept(run, looks: dict) -> None:
    p = _kinds(run, looks)
    concepts = run.concepts
    top = concepts.iloc[0]
    in_top = p[p["concept"] == top["concept"]]
    b_looks = p[p["mark"].isin(["red square", "yellow disc", "magenta bar"])]
    assert len(b_looks) >= 50
    # ONE concept, ranked first, holds B's shortcut in all three looks ...
    assert top["rank"] == 1 and top["diff"] > 0.3 and top["significant"]
    assert (b_looks["concept"] == top["concept"]).mean() >= 0.9
    for look in ("red square", "yellow disc", "magenta bar"):
        assert (in_top["mark"] == look).sum() >= 10, look
    assert in_top["mark"].isin(["red square", "yellow disc", "magenta bar"]).mean() >= 0.9
    assert top["whatif_effect"] == "B depends"
    assert top["alone_b"] == "vertical" and top["alone_b_share"] >= 0.9
    # ... and A's shortcut is its own concept, with the opposite sign
    cross = p[p["mark"] == "blue cross"]
    a_concept = cross["concept"].value_counts().index[0]
    # most of the cross's patches (it is larger than a patch: some hold only an arm of it)
    assert (cross["concept"] == a_concept).mean() >= 0.7
    assert (cross["concept"] == top["concept"]).mean() <= 0.05
    row = concepts.set_index("concept").loc[a_concept]
    assert a_concept != top["concept"]
    assert row["diff"] < -0.3 and row["significant"] and row["rank"] == 2
    assert row["whatif_effect"] == "A depends"


def test_con001_three_looks_are_one_concept_ranked_first(looks, looks_run) -> None:
    _check_three_looks_one_concept(looks_run, looks)
    # the handcrafted embedding sees three looks: the grouping did the work
    p = _kinds(looks_run, looks)
    b_looks = p[p["mark"].isin(["red square", "yellow disc", "magenta bar"])]
    by_look = b_looks.groupby("mark")["cluster"].agg(lambda s: s.value_counts().index[0])
    assert by_look.nunique() == 3, by_look
    top = looks_run.concepts.iloc[0]
    assert int(top["n_clusters"]) >= 3
    assert {int(c) for c in top["clusters"].split()} >= set(by_look)
    # the run directory says what it did
    m = looks_run.manifest
    assert m["embedding"]["kind"] == "handcrafted" and m["embedding"]["concept_distance"] == 0.15
    assert m["summary"]["n_concepts"] == len(looks_run.concepts) < m["summary"]["n_clusters"]
    assert m["whatif"]["concepts"]["n_clusters"] >= 2  # the concepts' own what-if test


def test_con002_models_embedding_puts_the_looks_together(looks, tmp_path: Path) -> None:
    run = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=24,
        projection="pca", progress=False, embedding="models",
    )  # fmt: skip
    _check_three_looks_one_concept(run, looks)
    p = _kinds(run, looks)
    b_looks = p[p["mark"].isin(["red square", "yellow disc", "magenta bar"])]
    # clustered on the models' answers, the three looks already share one cluster
    assert b_looks["cluster"].value_counts(normalize=True).iloc[0] >= 0.8
    assert run.manifest["embedding"]["kind"] == "models"


def test_con003_distance_zero_keeps_every_cluster_its_own_concept(looks, tmp_path) -> None:
    run = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=24,
        projection="pca", progress=False, concept_distance=0.0, whatif=False,
    )  # fmt: skip
    c, k = run.clusters, run.concepts
    assert len(k) == len(c) and (k["n_clusters"] == 1).all()
    assert (c["cluster"] == c["concept"]).all()  # ids agree: both ordered by size
    merged = k.merge(c, left_on="concept", right_on="cluster", suffixes=("", "_c"))
    for col in ("rank", "n_patches", "diff", "diff_lo", "diff_hi", "p_value"):
        np.testing.assert_allclose(merged[col], merged[f"{col}_c"], atol=1e-12)


def test_con004_same_seed_same_concepts(looks, looks_run, tmp_path: Path) -> None:
    again = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "again", image_size=32, steps=24,
        projection="pca", progress=False,
    )  # fmt: skip
    pd.testing.assert_frame_equal(again.concepts, looks_run.concepts)
    assert (again.patches["concept"] == looks_run.patches["concept"]).all()


def test_con005_opposite_claims_never_merge() -> None:
    clusters = pd.DataFrame(
        {
            "cluster": [0, 1, 2, 3],
            "n_patches": [40, 30, 20, 10],
            "diff_lo": [0.2, -0.5, 0.1, -0.1],  # 0: B relies more, 1: A, 2: B, 3: neither
            "diff_hi": [0.4, -0.3, 0.3, 0.1],
        }
    )
    d = np.full((4, 4), 0.05)  # every pair answered alike
    np.fill_diagonal(d, 0.0)
    concept = group_clusters(d, clusters, ConceptSettings(distance=0.15))
    assert concept[0] == concept[2]  # same claim, same answers: one concept
    assert concept[0] != concept[1]  # opposite significant claims stay apart
    assert concept[3] in (concept[0], concept[1])  # a neutral cluster may join either
    far = np.where(d > 0, 0.5, 0.0)
    assert len(set(group_clusters(far, clusters, ConceptSettings()))) == 4


def test_con006_run_without_concepts_reads_as_one_concept_per_cluster(looks_run, tmp_path):
    """A run made before concepts existed (no concepts files): every cluster is its own
    concept, and nothing fails."""
    old = tmp_path / "old"
    shutil.copytree(looks_run.path, old)
    m = json.loads((old / "run.json").read_text())
    for name in ("concepts", "concept_whatif", "concept_whatif_images"):
        (old / m["files"].pop(name)).unlink()
    m.pop("embedding")
    m["format_version"] = 1  # runs made before this stage were format 1
    m["summary"].pop("n_concepts")
    (old / "run.json").write_text(json.dumps(m))
    patches = pd.read_parquet(old / m["files"]["patches"]).drop(columns="concept")
    patches.to_parquet(old / m["files"]["patches"])
    run = imacs.load_run(old)
    assert (run.patches["concept"] == run.patches["cluster"]).all()
    k = run.concepts
    assert list(k["concept"]) == list(run.clusters["cluster"]) and (k["n_clusters"] == 1).all()
    assert "top concepts" in run.summary()
    run.export(concepts_csv=tmp_path / "k.csv")
    assert len(pd.read_csv(tmp_path / "k.csv")) == len(run.clusters)


class _Encoder(nn.Module):
    """A tiny random-weight image encoder: (n, 3, S, S) -> (n, 12) (or a feature map)."""

    def __init__(self, feature_map: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 5, stride=2)
        self.feature_map = feature_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return y if self.feature_map else y.mean(dim=(2, 3))


def test_con007_encoder_embedding(looks, tmp_path: Path) -> None:
    enc = tmp_path / "encoder.pt"
    torch.jit.script(_Encoder()).save(str(enc))
    run = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=24,
        projection="pca", progress=False, embedding=f"encoder:{enc}", encoder_size=40,
        whatif=False,
    )  # fmt: skip
    info = run.manifest["embedding"]
    assert info["kind"] == f"encoder:{enc}"
    assert info["encoder"]["size"] == [40, 40] and len(info["encoder"]["sha256"]) == 64
    assert run.embedding.shape == (len(run.patches), 12)
    # the encoder's vectors are L2-normalised before PCA: rows have comparable length
    emb = np.asarray(run.embedding) + 0  # centred, so not unit length; still bounded
    assert np.abs(emb).max() <= 2.0 + 1e-6
    # a feature-map encoder is averaged over space; a different encoder is a different run
    torch.jit.script(_Encoder(feature_map=True)).save(str(enc))
    again = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=24,
        projection="pca", progress=False, embedding=f"encoder:{enc}", whatif=False,
        overwrite=True,
    )  # fmt: skip
    assert again.manifest["fingerprint"] != run.manifest["fingerprint"]
    assert again.manifest["embedding"]["encoder"]["size"] == [224, 224]


class _BadEncoder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:1]  # one row for the whole batch


@pytest.mark.parametrize(
    "embedding, extra, needle",
    [
        ("encoder:{missing}", {}, "encoder file not found"),
        ("encoder:{bad}", {}, "the encoder returns (1,"),
        ("encoder:{notmodel}", {}, "not a TorchScript model file"),
        ("handcrafted", {"encoder_weights": "w.safetensors"}, "--encoder-weights goes with"),
        ("texture", {}, "choose one of handcrafted, models"),
        ("timm:resnet18", {}, "imacs[timm]"),
    ],
)
def test_con008_encoder_errors_are_one_line(looks, tmp_path, embedding, extra, needle) -> None:
    torch.jit.script(_BadEncoder()).save(str(tmp_path / "bad.pt"))
    (tmp_path / "notmodel.pt").write_text("hello")
    spec = embedding.format(
        missing=tmp_path / "nope.pt", bad=tmp_path / "bad.pt", notmodel=tmp_path / "notmodel.pt"
    )
    with pytest.raises(InputError) as err:
        imacs.analyze(
            looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=4,
            projection="pca", progress=False, embedding=spec, **extra,
        )  # fmt: skip
    assert needle in str(err.value) and "\n" not in str(err.value)
    if "bad" in spec:  # the attribution it had done is kept in the cache for the next try
        cached = list((tmp_path / "imacs-cache").rglob("*"))
        assert any(p.is_file() for p in cached)


class _FakeTimmNet(nn.Module):
    """Stands in for a timm model: a ``head`` classifier (Identity when num_classes=0) and
    a ``pretrained_cfg`` as timm's models carry one."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {
            "classifier": "head",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "input_size": (3, 48, 48),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch):
    """timm's API as imacs uses it (is_model, list_models, create_model), without timm:
    timm imports torchvision, which has no build for this CPU torch. Checks imacs' side of
    the contract: the head is dropped, weights load, normalisation and size come from the
    model's configuration, and nothing is fetched."""
    import sys
    import types

    calls: list[dict] = []

    def create_model(name: str, pretrained: bool = False, num_classes: int = 1000):
        import os

        calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes})
        calls[-1]["offline"] = os.environ.get("HF_HUB_OFFLINE")
        if pretrained:  # the user's cache holds nothing (and HF_HUB_OFFLINE is set)
            raise RuntimeError("offline and not in the cache")
        return _FakeTimmNet(num_classes)

    fake = types.ModuleType("timm")
    fake.is_model = lambda name: name == "tiny_fake"
    fake.list_models = lambda pattern: ["tiny_fake"]
    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    return calls


def test_con009_timm_encoder_from_a_classifier_checkpoint(fake_timm, looks, tmp_path) -> None:
    from safetensors.torch import save_file

    from imacs.encoders import load_encoder

    weights = tmp_path / "tiny.safetensors"
    trained = _FakeTimmNet(num_classes=5)  # a classifier checkpoint: head weights included
    with torch.no_grad():
        trained.conv.weight.mul_(3.0)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    enc = load_encoder("timm:tiny_fake", str(weights), None)
    assert fake_timm[-1]["pretrained"] is False and fake_timm[-1]["num_classes"] == 0
    assert enc.size == (48, 48) and enc.source == "timm:tiny_fake"
    inner = enc.module.model  # wrapped to normalise as the configuration says
    assert torch.equal(inner.conv.weight, trained.conv.weight)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        expected = inner((x - 0.5) / 0.25)
    from imacs.attribution import PairedAttribution
    from imacs.settings import AttributionSettings, Preprocess

    engine = PairedAttribution({}, Preprocess(), AttributionSettings(device="cpu"))
    np.testing.assert_allclose(enc.encode(x, engine), expected.numpy(), rtol=1e-5, atol=1e-6)
    # the whole pipeline, with --encoder-weights
    run = imacs.analyze(
        looks["a"], looks["b"], looks["data"], tmp_path / "run", image_size=32, steps=4,
        projection="pca", progress=False, embedding="timm:tiny_fake",
        encoder_weights=weights, whatif=False, trust_sample=0,
    )  # fmt: skip
    assert run.manifest["embedding"]["encoder"]["size"] == [48, 48]
    assert run.embedding.shape == (len(run.patches), 8)


def test_con010_timm_encoder_errors_say_how_to_give_weights(fake_timm) -> None:
    from imacs.encoders import load_encoder

    with pytest.raises(InputError, match="give --encoder-weights FILE") as err:
        load_encoder("timm:tiny_fake", None, None)
    assert "downloads nothing" in str(err.value)
    assert fake_timm[-1]["pretrained"] is True  # tried the local cache only: offline
    assert fake_timm[-1]["offline"] == "1"
    with pytest.raises(InputError, match="timm has no architecture 'nope'"):
        load_encoder("timm:nope", None, None)
    with pytest.raises(InputError, match="goes with --embedding timm:NAME"):
        load_encoder("encoder:x.pt", "w.safetensors", None)


def test_con011_a_concepts_strip_shows_every_look(looks_run) -> None:
    """The ranking's strip of a concept takes turns between its clusters, so a reader sees
    the red square, the yellow disc and the magenta bar side by side."""
    from imacs_app.catalog import RunCatalog
    from imacs_app.reader import Filters

    view = RunCatalog(looks_run.path.parent).get(looks_run.path.name).at("concept")
    top = looks_run.concepts.iloc[0]
    members = {int(c) for c in top["clusters"].split()}
    strip = view.representatives(Filters())[int(top["concept"])]
    of_patch = looks_run.patches.set_index("patch_id")["cluster"]
    first = [int(of_patch[p]) for p in strip[: len(members)]]
    assert set(first) == members  # one patch of each look first
    assert view.at("cluster").representatives(Filters())[first[0]][0] == strip[0]


def test_con020_answers_that_say_nothing_make_no_concepts() -> None:
    """A answers "square" to every patch alone (its answers carry no information), B's
    answers tell its three clusters apart. Clusters 0 and 1, which A relies on more (-0.19
    and -0.09), were compared by A's answers alone and merged; now they stay apart, the
    mixed pairs are compared by B's answers only, and the run says why."""
    from imacs.concepts import answer_distances, flat_answers, flat_warnings

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    a = np.tile([1.0, 0.0], (60, 1))  # sqrt(p) of A's answer: always class 0
    b_answer = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])[labels]  # 0 | 1 = 2
    responses = np.hstack([a, np.sqrt(b_answer + 1e-9)]) / np.sqrt(2.0)
    clusters = pd.DataFrame(
        {
            "cluster": [0, 1, 2],
            "n_patches": [20, 20, 20],
            "attr_a": [0.3, 0.2, 0.1],
            "attr_b": [0.11, 0.11, 0.1],
            "diff_lo": [-0.25, -0.14, -0.05],
            "diff_hi": [-0.13, -0.04, 0.05],
        }
    )
    patches = pd.DataFrame(
        {"cluster": labels, "alone_a": 0, "alone_b": b_answer.argmax(1) + rng.integers(0, 1, 60)}
    )
    assert flat_answers(patches) == {"a": 1.0}
    before = answer_distances(responses, 2, labels, clusters)
    assert before[0, 1] < 0.05  # A's flat answers call them alike
    d = answer_distances(responses, 2, labels, clusters, {"a"})
    assert d[0, 1] == pytest.approx(1.0)  # only A could compare them: kept apart
    assert d[1, 2] < 0.05 and d[0, 2] > 0.9  # by B's answers
    concept = group_clusters(d, clusters, ConceptSettings())
    assert concept[0] != concept[1] and concept[1] == concept[2]
    (said,) = flat_warnings({"a": 1.0}, patches, ["square", "round"], {"a": "ma", "b": "mb"})
    assert said.startswith("model A (ma) answers square to 100% of the patches shown alone")
    assert said.endswith("so concepts rest on B's answers alone")
    # both flat: every cluster is its own concept
    both = answer_distances(responses[:, [0, 1, 0, 1]], 2, labels, clusters, {"a", "b"})
    assert len(set(group_clusters(both, clusters, ConceptSettings()))) == 3
