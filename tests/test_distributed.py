"""torchrun: several processes share the attribution and give the single-process run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import helpers

pytestmark = pytest.mark.slow


def _analyze_cmd(shortcut: dict, data: Path, out: Path) -> list[str]:
    return [
        "-m", "imacs", "analyze",
        "--model-a", str(shortcut["a"]), "--model-b", str(shortcut["b"]),
        "--data", str(data), "--out", str(out),
        "--image-size", "32", "--steps", "16", "--projection", "pca",
    ]  # fmt: skip


def _torchrun(nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc-per-node={nproc}",
    ]  # fmt: skip


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "IMACS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


def _same_run(a: Path, b: Path) -> None:
    for table in ("images", "patches", "clusters", "concepts"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / f"{table}.parquet"), pd.read_parquet(b / f"{table}.parquet")
        )
    for arr in ("attr_a", "attr_b", "probs_a", "probs_b", "embedding"):
        np.testing.assert_array_equal(np.load(a / f"{arr}.npy"), np.load(b / f"{arr}.npy"))


@pytest.fixture(scope="module")
def big_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """330 images: five chunks of 64 and a short one, so two ranks share real work."""
    root = tmp_path_factory.mktemp("dist-data")
    helpers.write_eval_set(root, n_per_class=165, seed=7)
    return root


@pytest.fixture(scope="module")
def reference(shortcut: dict, big_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist-ref") / "run"
    cmd = [sys.executable, *_analyze_cmd(shortcut, big_set, out), "--no-cache", "--quiet"]
    subprocess.run(cmd, check=True, timeout=900, env=_env(out.parent / "unused"))
    return out


def test_dst001_two_ranks_under_torchrun_give_the_single_process_run(
    shortcut: dict, big_set: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    res = subprocess.run(
        [*_torchrun(2), *_analyze_cmd(shortcut, big_set, out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(tmp_path / "cache"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # each rank attributed its share of the 6 chunks
    assert "rank 0/2: attributing 3 of 6 chunks" in res.stderr
    assert "rank 1/2: attributing 3 of 6 chunks" in res.stderr
    assert res.stdout.count("top concepts") == 1  # only rank 0 reports
    _same_run(out, reference)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_dst002_a_killed_rank_loses_only_its_unfinished_chunks(
    shortcut: dict, big_set: Path, reference: Path, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    proc = subprocess.Popen(
        [*_torchrun(2), *_analyze_cmd(shortcut, big_set, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cache),
    )
    entries = cache / "attribution"
    deadline = time.monotonic() + 600
    # three entries (one per model and chunk): at least one rank has finished a whole chunk
    while time.monotonic() < deadline and len(list(entries.rglob("*.npz"))) < 3:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, "torchrun should run two ranks"
    os.kill(max(workers), signal.SIGKILL)  # the rank started last
    proc.communicate(timeout=300)
    assert proc.returncode != 0 and not (out / "run.json").exists()
    assert len(list(entries.rglob("*.npz"))) >= 3  # finished work stays in the cache

    res = subprocess.run(
        [*_torchrun(2), *_analyze_cmd(shortcut, big_set, out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(cache),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # only what the killed run had not finished is attributed again, shared by both ranks
    shares = [
        int(re.search(rf"rank {r}/2: attributing (\d+) of 6 chunks", res.stderr).group(1))
        for r in (0, 1)
    ]
    assert sum(shares) < 6 and abs(shares[0] - shares[1]) <= 1
    _same_run(out, reference)
