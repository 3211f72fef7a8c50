"""Loading models: TorchScript, factory + weights, and refusing what is not safe."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from imacs.errors import InputError
from imacs.models import ModelSpec, load_model
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
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(InputError, match=r"torch\.save checkpoint, not TorchScript"):
        load_model(ModelSpec(str(path)), "--model-b")


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
