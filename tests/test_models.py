"""Loading models: TorchScript, factory + weights, and refusing what is not safe."""

from __future__ import annotations

import os
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from imacs import formats
from imacs.errors import InputError, first_line
from imacs.formats.common import Loaded, freeze
from imacs.models import ModelSpec, file_sha256, load_model
from imacs.runner import is_eager
from tests.helpers import TinyCNN


@pytest.fixture
def tiny(tmp_path: Path) -> TinyCNN:
    torch.manual_seed(3)
    return TinyCNN().eval()


def test_mod001_torchscript_loads_frozen_in_eval(tmp_path: Path, tiny: TinyCNN) -> None:
    path = tmp_path / "m.pt"
    torch.jit.script(tiny).save(str(path))
    m = load_model(ModelSpec(str(path)))
    assert m.kind == "torchscript" and m.name == "m" and len(m.sha256) == 64
    assert not m.module.training
    assert not any(p.requires_grad for p in m.module.parameters())
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(m.module(x), tiny(x))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_mod002_factory_with_weights(tmp_path: Path, tiny: TinyCNN, fmt: str) -> None:
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tiny.state_dict(), str(path))
    else:
        torch.save({"state_dict": tiny.state_dict()}, path)  # Lightning-style nesting
    m = load_model(ModelSpec("tests.helpers:make_tiny_cnn", str(path), name="tiny"))
    assert m.kind == "factory" and m.name == "tiny"
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(m.module(x), tiny(x))


def test_mod003_text_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"model\.pt: not a TorchScript model file"):
        load_model(ModelSpec(str(path)))


class _Boom:
    def __reduce__(self):  # would create a file if unpickled
        return (os.mkdir, ("/tmp/imacs-pwned-by-pickle",))


def test_mod004_code_running_pickle_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/imacs-pwned-by-pickle")
    if marker.exists():
        marker.rmdir()
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(InputError, match="raw pickle"):
        load_model(ModelSpec(str(raw)))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"w": _Boom()}, zipped)
    with pytest.raises(InputError, match="refused, this pickle holds objects"):
        load_model(ModelSpec("tests.helpers:make_tiny_cnn", str(zipped)))
    assert not marker.exists()


def test_mod005_torch_save_of_a_module_gets_a_hint(tmp_path: Path, tiny: TinyCNN) -> None:
    """A whole pickled model and a state dict get different fixes: the state dict can be a
    factory's weights, the whole model cannot (it would be refused as code)."""
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(InputError, match=r"a whole pickled model .* never unpickles code") as e:
        load_model(ModelSpec(str(path)), "--model-b")
    assert "model.state_dict()" in str(e.value) and "--model-b" in str(e.value)
    weights = tmp_path / "weights.pt"
    torch.save(tiny.state_dict(), weights)
    with pytest.raises(InputError, match=r"checkpoint of weights, not TorchScript; pass --model-b"):
        load_model(ModelSpec(str(weights)), "--model-b")
    # the fix it gives for the weights works
    m = load_model(ModelSpec("tests.helpers:make_tiny_cnn", str(weights)), "--model-b")
    assert m.kind == "factory"
    # telling them apart never runs the pickle's code
    marker = Path("/tmp/imacs-pwned-by-pickle")
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Boom()}, evil)
    with pytest.raises(InputError, match="a whole pickled model"):
        load_model(ModelSpec(str(evil)))
    assert not marker.exists()


def test_mod006_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(2)}, path)
    with pytest.raises(InputError, match=r"weights do not fit .*missing"):
        load_model(ModelSpec("tests.helpers:make_tiny_cnn", str(path)))


def test_mod007_unimportable_factory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cannot import module 'no_such_pkg\.mod'"):
        load_model(ModelSpec("no_such_pkg.mod:make"))
    with pytest.raises(InputError, match="model file not found"):
        load_model(ModelSpec(str(tmp_path / "absent.pt")))


def _npz_format() -> types.SimpleNamespace:
    """A format as a test would add one: TinyCNN weights in a ``.tinynpz`` archive."""

    def load(source: str, weights: str | None, flag: str) -> Loaded:
        with np.load(source) as arrays:
            state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        model = TinyCNN()
        model.load_state_dict(state)
        return Loaded(module=freeze(model), sha256=file_sha256(source))

    return types.SimpleNamespace(
        name="tinynpz",
        eager=True,
        recognises=lambda source: source.endswith(".tinynpz"),
        load=load,
        describe=lambda source, weights: {"name": Path(source).stem, "source": source},
    )


def test_mod008_a_registered_format_is_recognised_and_loaded(
    tmp_path: Path, tiny: TinyCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "net.tinynpz"
    with open(path, "wb") as f:
        np.savez(f, **{k: v.numpy() for k, v in tiny.state_dict().items()})
    with pytest.raises(InputError, match=r"net\.tinynpz: cannot load as TorchScript"):
        load_model(ModelSpec(str(path)))  # unknown until registered: TorchScript's error
    monkeypatch.setattr(formats, "FORMATS", (_npz_format(), *formats.FORMATS))
    m = load_model(ModelSpec(str(path)))
    assert m.kind == "tinynpz" and m.name == "net" and m.sha256 == file_sha256(path)
    assert m.describe() == {
        "name": "net",
        "kind": "tinynpz",
        "eager": True,
        "source": str(path),
        "sha256": file_sha256(path),
    }
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(m.module(x), tiny(x))
    assert not m.module.training and not any(p.requires_grad for p in m.module.parameters())
    # the formats after it still load what they recognise
    scripted = tmp_path / "m.pt"
    torch.jit.script(tiny).save(str(scripted))
    assert load_model(ModelSpec(str(scripted))).kind == "torchscript"


def test_mod009_eager_tells_modules_from_programs(tmp_path: Path, tiny: TinyCNN) -> None:
    scripted = tmp_path / "m.pt"
    torch.jit.script(tiny).save(str(scripted))
    program = tmp_path / "m.pt2"
    x = torch.rand(2, 3, 16, 16)
    shapes = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(tiny, (x,), dynamic_shapes=shapes), str(program))
    loaded = {
        "factory": load_model(ModelSpec("tests.helpers:make_tiny_cnn")),
        "torchscript": load_model(ModelSpec(str(scripted))),
        "export": load_model(ModelSpec(str(program))),
    }
    assert {k: m.eager for k, m in loaded.items()} == {
        "factory": True,
        "torchscript": False,
        "export": False,
    }
    for kind, m in loaded.items():
        assert m.kind == kind and m.describe()["eager"] is m.eager
        assert is_eager(m.module) is m.eager  # the engine tells the same from the module
    assert is_eager(torch.fx.symbolic_trace(tiny))  # an fx graph that calls its layers
    # a layer hook fires on the factory's module only
    seen: list[tuple] = []
    layer = loaded["factory"].module.features[0]
    layer.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    loaded["factory"].module(x)
    assert seen == [(2, 16, 16, 16)]


def test_mod010_first_line_of_an_error() -> None:
    long = RuntimeError("shapes cannot be multiplied (2x8 and 4x2)\n  File model.py, line 9\n")
    assert first_line(long) == "shapes cannot be multiplied (2x8 and 4x2)"
    assert first_line(RuntimeError("\n  x" * 3 + "y" * 300)) == "x"
    assert first_line(ValueError("z" * 300)) == "z" * 160
    assert first_line(ValueError("z" * 300), 200) == "z" * 200
    assert first_line(KeyError()) == "KeyError"


def test_mod030_default_names_tell_models_apart(tmp_path) -> None:
    """A model's default display name says which one it is: the weights' stem for a factory
    (two trainings of one factory differ by it), the module and function without weights,
    the architecture and the weights for timm, the file's stem for a file."""
    from imacs.models import ModelSpec

    def name(source: str, weights: str | None = None) -> str:
        return ModelSpec(source, weights).display_name

    assert name("tests.helpers:make_tiny_cnn", "runs/finetuned-v2.safetensors") == "finetuned-v2"
    assert name("tests.helpers:make_tiny_cnn") == "helpers.make_tiny_cnn"
    assert name("timm:resnet18", "w/baseline.pth") == "resnet18 (baseline)"
    assert name("timm:resnet18") == "resnet18"
    assert name("models/clean_seed1.pt") == "clean_seed1"
    assert ModelSpec("tests.helpers:make_tiny_cnn", None, "mine").display_name == "mine"
