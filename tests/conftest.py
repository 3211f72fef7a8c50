from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import helpers

#: fixtures that train models or compute runs: a test that uses one is marked ``slow``, so
#: ``pytest -m "not slow"`` is the fast lane for development (CI runs everything)
HEAVY_FIXTURES = frozenset(
    {"shortcut", "shortcut_run", "marked_run", "looks", "looks_run", "demo", "demo_cache"}
)


def _have_timm() -> bool:
    try:
        import timm  # noqa: F401  (needs torchvision: only the real-model environment has it)
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    real_ok = None
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("real") is not None:
            real_ok = _have_timm() if real_ok is None else real_ok
            if not real_ok and os.environ.get("IMACS_REQUIRE_REAL") != "1":
                item.add_marker(
                    pytest.mark.skip(reason="runs in scripts/real-env.sh's environment")
                )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own attribution cache, never the user's."""
    cache = tmp_path / "imacs-cache"
    monkeypatch.setenv("IMACS_CACHE_DIR", str(cache))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(".cache/numba").absolute()))
    return cache


@pytest.fixture(scope="session")
def shortcut(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two trained tiny models with a planted shortcut, and an eval set with the mark.

    Returns a dict with ``a``, ``b`` (TorchScript files), ``a_weights``, ``b_weights``
    (safetensors), ``data`` (ImageFolder) and ``marks`` ({relpath: box or None}).
    """
    root = tmp_path_factory.mktemp("shortcut")
    models = helpers.save_models(root / "models")
    marks = helpers.write_eval_set(root / "data", n_per_class=40)
    (root / "marks.json").write_text(json.dumps(marks))
    return {**models, "data": root / "data", "marks": marks, "root": root}


@pytest.fixture(scope="session")
def shortcut_run(shortcut: dict, tmp_path_factory: pytest.TempPathFactory):
    """One analysis of the shortcut set (PCA projection: fast), shared by read-only tests."""
    import imacs

    out = tmp_path_factory.mktemp("runs") / "shortcut"
    return imacs.analyze(
        shortcut["a"],
        shortcut["b"],
        shortcut["data"],
        out,
        image_size=32,
        steps=24,
        projection="pca",
        progress=False,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def demo(demo_cache: Path):
    """The demo run (bundled sample data and models), computed once per session."""
    from imacs.demo import demo_run

    return demo_run(demo_cache, progress=False)


@pytest.fixture(scope="session")
def marked_run(shortcut: dict, tmp_path_factory: pytest.TempPathFactory):
    """The shortcut set analysed with a labels CSV whose meta-annotation column ``mark``
    says whether the image carries the red mark (``yes``/``no``)."""
    import imacs

    root = tmp_path_factory.mktemp("marked")
    rows = ["path,label,mark"] + [
        f"{rel},{rel.split('/')[0]},{'yes' if box else 'no'}"
        for rel, box in sorted(shortcut["marks"].items())
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return imacs.analyze(
        shortcut["a"],
        shortcut["b"],
        shortcut["data"],
        root / "runs" / "marked",
        labels_csv=root / "labels.csv",
        image_size=32,
        steps=24,
        projection="pca",
        progress=False,
        cache_dir=tmp_path_factory.mktemp("marked-cache"),
    )


@pytest.fixture(scope="session")
def looks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Model B's shortcut for ``vertical`` in three looks (red square, yellow disc, magenta
    bar); model A's for ``horizontal`` is a blue cross (:func:`helpers.write_looks_set`)."""
    root = tmp_path_factory.mktemp("looks")
    return helpers.write_looks_set(root / "data", root / "models")


@pytest.fixture(scope="session")
def looks_run(looks: dict, tmp_path_factory: pytest.TempPathFactory):
    """The three-looks set analysed with the default embedding."""
    import imacs

    return imacs.analyze(
        looks["a"],
        looks["b"],
        looks["data"],
        tmp_path_factory.mktemp("runs") / "looks",
        image_size=32,
        steps=24,
        projection="pca",
        progress=False,
        cache_dir=tmp_path_factory.mktemp("looks-cache"),
    )


@pytest.fixture(scope="session")
def kind_set(tmp_path_factory: pytest.TempPathFactory):
    """``kind_set(kind)``: the shortcut set of ``kind`` (:data:`helpers.KINDS`) and its two
    models, trained on first use and kept for the session."""
    made: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in made:
            root = tmp_path_factory.mktemp(f"kind-{kind}")
            made[kind] = helpers.write_kind_set(root / "data", root / "models", kind)
        return made[kind]

    return get


@pytest.fixture(scope="session")
def kind_run(kind_set, tmp_path_factory: pytest.TempPathFactory):
    """``kind_run(kind, identical=False)``: that set analysed (48 px, PCA map, no trust
    tests), on first use; with ``identical`` model A against itself."""
    import imacs

    made: dict[tuple[str, bool], object] = {}

    def get(kind: str, identical: bool = False):
        if (kind, identical) not in made:
            s = kind_set(kind)
            made[kind, identical] = imacs.analyze(
                s["a"], s["a"] if identical else s["b"], s["data"],
                tmp_path_factory.mktemp("runs") / f"{kind}{'-same' if identical else ''}",
                image_size=helpers.KIND_SIZE, steps=24, projection="pca", trust_sample=0,
                progress=False, cache_dir=tmp_path_factory.mktemp(f"cache-{kind}"),
            )  # fmt: skip
        return made[kind, identical]

    return get


#: the shortcut sets of every kind train models too
HEAVY_FIXTURES = HEAVY_FIXTURES | {"kind_set", "kind_run"}
