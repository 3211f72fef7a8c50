"""What used to end in a traceback or differ between runs: container start-up, a factory
that raises, a full disk at the first memory-mapped file, a damaged cache entry, an
unreadable class folder, and runs made from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import imacs
from tests import helpers

#: two untrained factory models (no training: these tests stay in the fast lane)
A, B = "tests.helpers:make_tiny_cnn", "tests.helpers:make_tiny_cnn_other"
#: a small analysis: 32 px, few steps, no trust tests or what-if removal
SMALL = {
    "image_size": 32,
    "steps": 8,
    "projection": "pca",
    "trust_sample": 0,
    "whatif": False,
    "progress": False,
}


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """24 images of 32 px in two class folders."""
    helpers.write_eval_set(tmp_path / "data", n_per_class=12)
    return tmp_path / "data"


def _run_files(run: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix in (".parquet", ".npy")
    }


def test_rob001_a_run_made_from_the_cache_is_byte_identical(small_set, tmp_path) -> None:
    """The second run takes every attribution chunk from the cache, so its first forward
    pass is a patch response, not a probe: the responses must still come out of the same
    memory layout (they differed in a few ``alone_*_prob`` values)."""
    cache = tmp_path / "cache"
    fresh = imacs.analyze(A, B, small_set, tmp_path / "fresh", cache_dir=cache, **SMALL)
    again = imacs.analyze(A, B, small_set, tmp_path / "again", cache_dir=cache, **SMALL)
    assert fresh.manifest["fingerprint"] == again.manifest["fingerprint"]
    first, second = _run_files(fresh.path), _run_files(again.path)
    assert "patches.parquet" in first and first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``imacs ARGS`` in this process: its exit status and stderr."""
    from imacs.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def _analyze_args(data: Path, out: Path, a: str = A, b: str = B) -> list[str]:
    return ["analyze", "--model-a", a, "--model-b", b, "--data", str(data), "--out", str(out),
            "--image-size", "32", "--steps", "8", "-q"]  # fmt: skip


def test_rob002_a_factory_that_raises_is_a_one_line_error(
    small_set, tmp_path, capsys, monkeypatch
) -> None:
    code, err = _cli(capsys, *_analyze_args(small_set, tmp_path / "r", a="json:dumps"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(
        "imacs: error: --model-a json:dumps: the factory dumps() raised TypeError"
    )
    assert "takes no arguments and returns a torch.nn.Module" in err
    # a module that raises while it is imported
    (tmp_path / "broken_factory.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = _cli(capsys, *_analyze_args(small_set, tmp_path / "r", b="broken_factory:make"))
    assert code == 2 and "Traceback" not in err
    assert (
        "--model-b broken_factory:make: importing module 'broken_factory' raised RuntimeError"
        in err
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["open_memmap", "reserve"])
def test_rob003_a_full_disk_at_the_first_memory_map_is_a_one_line_error(
    small_set, tmp_path, capsys, monkeypatch, where
) -> None:
    """Whether creating the memory-mapped maps fails, or reserving their space (what
    keeps a full disk from crashing the process when a page is written later)."""
    import errno
    import os

    import numpy as np

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "open_memmap":
        monkeypatch.setattr(np.lib.format, "open_memmap", full)
    else:
        monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    runs = tmp_path / "runs"
    code, err = _cli(capsys, *_analyze_args(small_set, runs / "r"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"imacs: error: {runs}: no space left on the device; free some space")
    assert not (runs / "r").exists() and list(runs.iterdir()) == []  # no temporary left


def test_rob004_a_cache_entry_of_the_wrong_shape_is_discarded_and_recomputed(
    small_set, tmp_path
) -> None:
    import numpy as np

    cache = tmp_path / "cache"
    first = imacs.analyze(A, B, small_set, tmp_path / "first", cache_dir=cache, **SMALL)
    entries = sorted((cache / "attribution").rglob("*.npz"))
    assert len(entries) == 2  # one chunk, two models
    damaged = {}
    for path, damage in zip(entries, ("pixels", "rows"), strict=True):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "pixels":  # maps of another image size
            arrays["maps"] = arrays["maps"][:, :16, :16]
        else:  # rows of a shorter chunk
            arrays = {k: v[:-3] for k, v in arrays.items()}
        np.savez(path, **arrays)
        damaged[path] = path.read_bytes()
    said: list[str] = []
    again = imacs.analyze(
        A, B, small_set, tmp_path / "again", cache_dir=cache, log=said.append, **SMALL
    )
    warnings = [m for m in said if "does not fit its chunk" in m]
    assert len(warnings) == 2 and all("discarded, recomputing model" in m for m in warnings)
    assert any("'maps' is 24x16x16, not 24x32x32" in m for m in warnings)
    assert any("'ok' is 21, not 24" in m for m in warnings)
    for path, old in damaged.items():  # recomputed and stored again
        assert path.is_file() and path.read_bytes() != old
    one, two = _run_files(first.path), _run_files(again.path)
    assert [name for name in one if one[name] != two[name]] == []


def test_rob005_unwritable_folders_are_refused_before_any_work(
    small_set, tmp_path, capsys, monkeypatch
) -> None:
    """``docker run -u`` with the image's cache: refused at once, naming the folder and the
    fix, not after the first chunk's minutes of attribution."""
    import errno
    import tempfile

    import imacs.pipeline

    def no_work(*args, **kw):
        raise AssertionError("work started before the folders were checked")

    monkeypatch.setattr(imacs.pipeline, "load_model", no_work)
    # a cache folder that cannot be made (a file is in the way: fails for root too)
    (tmp_path / "file").write_text("")
    args = _analyze_args(small_set, tmp_path / "runs" / "r")
    code, err = _cli(capsys, *args, "--cache-dir", str(tmp_path / "file" / "cache"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"imacs: error: {tmp_path / 'file' / 'cache'}: the attribution cache folder is not "
        "writable (Not a directory); give a folder you can write to with --cache-dir DIR or "
        "IMACS_CACHE_DIR, or pass --no-cache"
    )
    # a folder the user may not write to (simulated: the tests may run as root)
    mkstemp = tempfile.mkstemp
    denied: set[Path] = set()

    def refuse(*a, dir=None, **kw):
        if Path(dir) in denied:
            raise PermissionError(errno.EACCES, "Permission denied")
        return mkstemp(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    image_cache = tmp_path / "opt" / "imacs" / "cache"
    monkeypatch.setenv("IMACS_CACHE_DIR", str(image_cache))
    denied.add(image_cache)
    code, err = _cli(capsys, *args)
    assert code == 2 and err.startswith(
        f"imacs: error: {image_cache}: the attribution cache folder is not writable "
        "(Permission denied)"
    )
    denied.add(tmp_path / "runs")
    code, err = _cli(capsys, *args, "--no-cache")
    assert code == 2 and err.startswith(
        f"imacs: error: {tmp_path / 'runs'}: the folder of --out is not writable "
        "(Permission denied); choose an --out in a folder you can write to"
    )
    denied.clear()
    numba = tmp_path / "numba"
    denied.add(numba)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(numba))
    code, err = _cli(capsys, *args, "--no-cache")
    assert code == 2 and err.startswith(
        f"imacs: error: {numba}: numba's cache folder (NUMBA_CACHE_DIR) is not writable"
    )
