"""The analysis: two models + an evaluation set -> a run directory.

Stages run in one direction: attribution -> patches -> embedding -> clustering ->
comparison -> run directory. Each stage is a plain function or estimator in its own module;
this module wires them together, caches attribution, times every stage and writes the run.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .attribution import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AttributionSettings,
    BatchResult,
    PairedAttribution,
    Preprocess,
)
from .cache import StageCache, default_cache_dir, stable_hash
from .clustering import PatchClusterer
from .comparison import ComparisonSettings, compare_clusters
from .data import Dataset, ImageRecord, load_dataset
from .embedding import PatchEmbedder
from .errors import ImageDecodeError, InputError, ModelFailure, disk_error
from .imaging import load_rgb
from .models import (
    LoadedModel,
    ModelSpec,
    load_model,
    model_class_names,
    model_preprocess,
)
from .patches import PatchSettings, PatchTable, extract_patches, to_original_pixels
from .run import Run
from .store import (
    FORMAT,
    FORMAT_VERSION,
    check_destination,
    commit,
    is_current,
    staging,
    write_array,
    write_table,
)

#: images per attribution cache entry (and per progress step)
CHUNK = 64
#: side of the pixels each patch is resized to for the embedding
EMBED_SIZE = 32
PATCH_THUMB = 96
IMAGE_THUMB = 256
ROLES = ("a", "b")


@dataclass(frozen=True)
class AnalysisSettings:
    """Every setting of an analysis; the defaults are the CLI's defaults."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    patches: PatchSettings = field(default_factory=PatchSettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    n_clusters: int | None = None
    projection: str = "umap"
    embedding_dims: int = 32
    seed: int = 0
    strict: bool = False

    def result_fields(self) -> dict[str, object]:
        """Settings that change the run's content (not batch sizes, device or strictness)."""
        d = asdict(self)
        for k in ("batch_size", "internal_batch_size", "device"):
            d["attribution"].pop(k)
        d.pop("strict")
        return d


@dataclass
class _ImageResults:
    ok: np.ndarray  # (n,) bool: decoded
    reason: list[str]  # skip reason per record ("" when ok)
    size: np.ndarray  # (n, 2) original width, height
    per_role: dict[str, dict[str, np.ndarray]]  # role -> maps/probs/pred/target/delta


def analyze(
    model_a: str | Path,
    model_b: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    weights_a: str | Path | None = None,
    weights_b: str | Path | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
    labels_csv: str | Path | None = None,
    classes: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    mean: tuple[float, float, float] | str | None = None,
    std: tuple[float, float, float] | str | None = None,
    steps: int = 50,
    baseline: str = "black",
    target: str = "pred",
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "fp32",
    clusters: int | None = None,
    projection: str = "umap",
    patch_size: int | None = None,
    patches_per_image: int = 4,
    seed: int = 0,
    strict: bool = False,
    overwrite: bool = False,
    rebuild: bool = False,
    cache_dir: str | Path | bool | None = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Compare where two image classifiers look, and write a run directory.

    Args:
        model_a (str or Path): model A: a TorchScript or torch.export (``.pt2``) file,
            ``package.module:factory``, ``timm:NAME`` (with ``weights_a``) or ``hf:DIR``.
        model_b (str or Path): model B, likewise.
        data (str or Path): evaluation images: an ImageFolder tree, or a folder of images
            listed by ``labels_csv``.
        out (str or Path): the run directory to write.
        weights_a (str or Path, optional): weights for a factory or timm model A.
            Default: None.
        weights_b (str or Path, optional): weights for a factory model B. Default: None.
        name_a (str, optional): display name of model A. Default: from its file name.
        name_b (str, optional): display name of model B. Default: from its file name.
        labels_csv (str or Path, optional): CSV with ``path,label`` and meta columns.
        classes (str or Path, optional): file of class names in output order. Default: a
            Hugging Face model's ``id2label`` when the data's class names are among them.
        image_size (int or tuple[int, int], optional): model input size, square or
            (height, width). Default: the size a timm, Hugging Face or torch.export model
            states, else 224.
        mean (tuple or "imagenet", optional): normalisation mean for both models.
            Default: None (none, or each timm / Hugging Face model's own).
        std (tuple or "imagenet", optional): normalisation std. Default: None.
        steps (int): Integrated Gradients steps. Default: 50.
        baseline (str): ``black``, ``gray`` or ``blur``. Default: ``black``.
        target (str): ``pred`` (each model's prediction) or ``label``. Default: ``pred``.
        batch_size (int): images per attribution batch. Default: 16.
        device (str): ``auto``, ``cpu``, ``cuda`` or ``cuda:i``. Default: ``auto``.
        precision (str): ``fp32`` or ``bf16`` (autocast, for GPUs). Default: ``fp32``.
        clusters (int, optional): number of clusters. Default: None (about sqrt(patches)/2).
        projection (str): ``umap`` or ``pca`` for the 2-D map. Default: ``umap``.
        patch_size (int, optional): patch side in model-input pixels. Default: a quarter of
            the input side.
        patches_per_image (int): most patches per image. Default: 4.
        seed (int): seed for clustering, projection and bootstrap. Default: 0.
        strict (bool): stop at the first unreadable image instead of skipping it.
        overwrite (bool): replace a different run already in ``out``. Default: False.
        rebuild (bool): recompute even when ``out`` already holds this very run (otherwise
            it is reused). Cached attribution is still used. Default: False.
        cache_dir (str, Path, bool or None): attribution cache; True for the default
            folder (``$IMACS_CACHE_DIR`` or ``~/.cache/imacs``), None/False for none.
        progress (bool): show progress bars. Default: True.
        log (callable, optional): receives one-line status messages.

    Returns:
        Run: the finished run, read back from ``out``.

    Raises:
        InputError: bad input (the message names the file and the fix).
    """

    def _norm(v: object, default: tuple[float, float, float]) -> tuple[float, float, float] | None:
        if v is None:
            return None
        if isinstance(v, str):
            if v.lower() == "imagenet":
                return default
            raise InputError(f"{v!r}: give three numbers or 'imagenet'")
        vals = tuple(float(x) for x in v)  # type: ignore[union-attr]
        if len(vals) != 3:
            raise InputError(f"{v!r}: give three numbers, one per colour channel")
        return vals  # type: ignore[return-value]

    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if size is not None:
        size = tuple(size)  # type: ignore[assignment]
    settings = AnalysisSettings(
        preprocess=Preprocess(
            image_size=size,  # type: ignore[arg-type]
            mean=_norm(mean, IMAGENET_MEAN),
            std=_norm(std, IMAGENET_STD),
        ),
        attribution=AttributionSettings(
            steps=steps,
            baseline=baseline,
            target=target,
            batch_size=batch_size,
            device=device,
            precision=precision,
        ),
        patches=PatchSettings(patch_size=patch_size, per_image=patches_per_image),
        comparison=ComparisonSettings(seed=seed),
        n_clusters=clusters,
        projection=projection,
        seed=seed,
        strict=strict,
    )
    if cache_dir is True:
        cache_root: Path | None = default_cache_dir()
    elif cache_dir in (None, False):
        cache_root = None
    else:
        cache_root = Path(cache_dir)  # type: ignore[arg-type]
    return run_analysis(
        ModelSpec(str(model_a), str(weights_a) if weights_a else None, name_a),
        ModelSpec(str(model_b), str(weights_b) if weights_b else None, name_b),
        data,
        Path(out),
        settings,
        labels_csv=labels_csv,
        classes_file=classes,
        overwrite=overwrite,
        rebuild=rebuild,
        cache=StageCache(cache_root),
        progress=progress,
        log=log,
    )


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)


def run_analysis(
    spec_a: ModelSpec,
    spec_b: ModelSpec,
    data: str | Path,
    out: Path,
    settings: AnalysisSettings,
    *,
    labels_csv: str | Path | None = None,
    classes_file: str | Path | None = None,
    overwrite: bool = False,
    rebuild: bool = False,
    cache: StageCache | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Run:
    """:func:`analyze` with its settings already gathered in :class:`AnalysisSettings`."""
    say = log or (lambda _msg: None)
    cache = cache or StageCache(None)
    timer = _Timer()
    out = Path(out).expanduser().absolute()

    with timer.stage("load"):
        models = {
            "a": load_model(spec_a, "--model-a"),
            "b": load_model(spec_b, "--model-b"),
        }
        settings = replace(settings, preprocess=model_preprocess(settings.preprocess, models))
        dataset = load_dataset(
            data,
            labels_csv=labels_csv,
            classes_file=classes_file,
            model_classes=None if classes_file else model_class_names(models),
        )
    names = {r: m.name for r, m in models.items()}
    if names["a"] == names["b"]:
        names = {"a": f"{names['a']} (A)", "b": f"{names['b']} (B)"}
    fingerprint = stable_hash(
        FORMAT_VERSION,
        models["a"].sha256,
        models["b"].sha256,
        names,
        dataset.fingerprint(),
        settings.result_fields(),
    )
    check_destination(out, fingerprint, overwrite)
    if not rebuild and is_current(out, fingerprint):
        say(f"{out} is up to date (same models, data and settings); reusing it")
        return Run(out)
    if dataset.missing and settings.strict:
        rel, why = dataset.missing[0]
        raise InputError(f"{dataset.root / rel}: {why} (listed in {dataset.labels_csv}); --strict")
    say(f"{len(dataset)} images, {len(dataset.classes)} classes in {dataset.root}")

    engine = PairedAttribution(
        {r: m.module for r, m in models.items()},
        settings.preprocess,
        settings.attribution,
        names={r: f"model {r.upper()} ({m.spec.source})" for r, m in models.items()},
    )
    with timer.stage("attribution"):
        results = _attribute_all(dataset, models, engine, settings, cache, progress, say)

    skipped = [
        {"path": dataset.records[i].relpath, "reason": results.reason[i]}
        for i in np.flatnonzero(~results.ok)
    ] + [{"path": rel, "reason": why} for rel, why in dataset.missing]
    if settings.strict and not results.ok.all():  # also for failures recorded in the cache
        i = int(np.flatnonzero(~results.ok)[0])
        raise InputError(
            f"{dataset.records[i].path}: {results.reason[i]}; remove or replace it (--strict)"
        )
    valid = np.flatnonzero(results.ok)
    if len(valid) == 0:
        raise InputError(
            f"{dataset.root}: none of its {len(dataset)} images could be analysed "
            f"(first: {skipped[0]['path']}: {skipped[0]['reason']})"
        )
    if skipped:
        say(
            f"skipped {len(skipped)} input(s) (unreadable, or a model failed on them); see run.json"
        )
    records = [dataset.records[i] for i in valid]
    per_role = {r: {k: v[valid] for k, v in results.per_role[r].items()} for r in ROLES}
    sizes = results.size[valid]

    with timer.stage("patches"):
        table = extract_patches(per_role["a"]["maps"], per_role["b"]["maps"], settings.patches)
        box_orig = to_original_pixels(table.box, settings.preprocess.image_size, sizes[table.image])
    say(f"{len(table)} salient patches")

    with staging(out) as tmp:
        with timer.stage("thumbnails"):
            pixels = _thumbnails_and_pixels(records, table, box_orig, tmp, progress)
        with timer.stage("embedding"):
            embedder = PatchEmbedder(
                n_components=settings.embedding_dims, random_state=settings.seed
            )
            emb = (
                embedder.fit_transform(pixels)
                if len(pixels) >= 2
                else np.zeros((len(pixels), 1), np.float32)
            )
        with timer.stage("clustering"):
            clusterer = PatchClusterer(
                n_clusters=settings.n_clusters,
                projection=settings.projection,
                random_state=settings.seed,
            ).fit(emb)
        with timer.stage("comparison"):
            images_df = _images_table(records, dataset, valid, sizes, per_role)
            patches_df = _patches_table(table, box_orig, clusterer)
            clusters_df, by_class_df = compare_clusters(
                patches_df, images_df.set_index("image_id"), dataset.classes, settings.comparison
            )
        with timer.stage("write"):
            files = {
                "images": write_table(tmp, "images", images_df),
                "patches": write_table(tmp, "patches", patches_df),
                "clusters": write_table(tmp, "clusters", clusters_df),
                "cluster_classes": write_table(tmp, "cluster_classes", by_class_df),
                "embedding": write_array(tmp, "embedding", emb),
            }
            for r in ROLES:
                maps = per_role[r]["maps"]
                scale = images_df[f"attr_scale_{r}"].to_numpy(np.float32)[:, None, None]
                norm = np.where(scale > 0, maps / np.where(scale > 0, scale, 1), 0)
                files[f"attr_{r}"] = write_array(tmp, f"attr_{r}", norm.astype(np.float16))
                files[f"probs_{r}"] = write_array(tmp, f"probs_{r}", per_role[r]["probs"])
        manifest = _manifest(
            fingerprint=fingerprint,
            models=models,
            names=names,
            dataset=dataset,
            settings=settings,
            device=str(engine.device),
            timings=timer.timings,
            skipped=skipped,
            images_df=images_df,
            clusters_df=clusters_df,
            n_patches=len(patches_df),
            n_clusters=clusterer.n_clusters_,
            files=files,
        )
        commit(tmp, out, manifest)
    say(f"run written to {out}")
    return Run(out)


def _chunk_key(model: LoadedModel, settings: AnalysisSettings, recs: list[ImageRecord]) -> str:
    return stable_hash(
        "attribution",
        FORMAT_VERSION,
        model.sha256,
        asdict(settings.preprocess),
        settings.attribution.cache_fields(),
        [r.fingerprint() for r in recs],
    )


def _decode(rec: ImageRecord, pre: Preprocess) -> tuple[np.ndarray | None, tuple[int, int], str]:
    try:
        im = load_rgb(rec.path)
    except ImageDecodeError as exc:
        return None, (0, 0), str(exc)
    return pre.to_array(im), im.size, ""


def _attribute_all(
    dataset: Dataset,
    models: dict[str, LoadedModel],
    engine: PairedAttribution,
    settings: AnalysisSettings,
    cache: StageCache,
    progress: bool,
    say: Callable[[str], None],
) -> _ImageResults:
    recs = dataset.records
    n = len(recs)
    chunks = [list(range(s, min(s + CHUNK, n))) for s in range(0, n, CHUNK)]
    keys = [
        {r: _chunk_key(models[r], settings, [recs[i] for i in idx]) for r in ROLES}
        for idx in chunks
    ]
    h, w = settings.preprocess.image_size
    ok = np.zeros(n, dtype=bool)
    reason = [""] * n
    size = np.zeros((n, 2), dtype=np.int64)
    per_role: dict[str, dict[str, np.ndarray]] = {r: {} for r in ROLES}
    checked = False
    cached_chunks = sum(all(cache.has("attribution", k[r]) for r in ROLES) for k in keys)
    if cached_chunks:
        say(f"attribution: {cached_chunks} of {len(chunks)} chunks found in the cache")

    workers = max(2, min(8, os.cpu_count() or 2))
    bar = tqdm(total=n, desc="attribution", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imacs-decode") as pool:

        def submit(ci: int) -> list[Future] | None:
            if all(cache.has("attribution", keys[ci][r]) for r in ROLES):
                return None
            return [pool.submit(_decode, recs[i], settings.preprocess) for i in chunks[ci]]

        pending = submit(0) if chunks else None
        for ci, idx in enumerate(chunks):
            decoded = pending
            pending = submit(ci + 1) if ci + 1 < len(chunks) else None  # prefetch
            got = {r: cache.get("attribution", keys[ci][r]) for r in ROLES}
            if any(v is None for v in got.values()):
                if decoded is None:
                    decoded = [pool.submit(_decode, recs[i], settings.preprocess) for i in idx]
                arrays, sizes, reasons = zip(*(f.result() for f in decoded), strict=True)
                if settings.strict:
                    for i, why in zip(idx, reasons, strict=True):
                        if why:
                            raise InputError(
                                f"{recs[i].path}: {why}; remove or replace it (--strict)"
                            )
                good = [j for j, a in enumerate(arrays) if a is not None]
                if not checked and good:
                    checked = _check_classes(dataset, engine, [arrays[j] for j in good])
                batch = (
                    np.stack([arrays[j] for j in good])
                    if good
                    else np.zeros((0, 3, h, w), np.float32)
                )
                labels = np.array([recs[idx[j]].label for j in good], dtype=np.int64)
                for r in ROLES:
                    if got[r] is not None:
                        continue
                    res, failed = _attribute_chunk(
                        engine, r, batch, labels, settings.attribution.batch_size
                    )
                    if settings.strict and failed:
                        j, why = next(iter(failed.items()))
                        raise InputError(f"{recs[idx[good[j]]].path}: {why} (--strict)")
                    entry = _pack_chunk(res, len(idx), good, failed, sizes, reasons, (h, w))
                    cache.put("attribution", keys[ci][r], entry)
                    got[r] = entry
            first, second = got["a"], got["b"]
            assert first is not None and second is not None
            sel = np.asarray(idx)
            ok[sel] = first["ok"] & second["ok"]  # an image either model failed on is skipped
            size[sel] = first["size"]
            for j, i in enumerate(idx):
                reason[i] = str(first["reason"][j]) or str(second["reason"][j])
            for r in ROLES:
                entry = got[r]
                assert entry is not None
                for k in ("maps", "probs", "pred", "target", "delta"):
                    per_role[r].setdefault(k, [])  # type: ignore[arg-type]
                    per_role[r][k].append(entry[k])  # type: ignore[attr-defined]
            bar.update(len(idx))
    bar.close()

    out: dict[str, dict[str, np.ndarray]] = {}
    for r in ROLES:
        parts: dict[str, list[np.ndarray]] = per_role[r]  # type: ignore[assignment]
        # a chunk with no readable image does not know the class count: widen its zeros
        n_classes = max(p.shape[1] for p in parts["probs"])
        parts["probs"] = [
            p if p.shape[1] == n_classes else np.zeros((len(p), n_classes), np.float32)
            for p in parts["probs"]
        ]
        out[r] = {k: np.concatenate(v) for k, v in parts.items()}
    if not checked and ok.any():  # all from the cache: check what the cache recorded
        _check_class_counts(dataset, {r: out[r]["probs"].shape[1] for r in ROLES})
    return _ImageResults(ok=ok, reason=reason, size=size, per_role=out)


def _attribute_chunk(
    engine: PairedAttribution, role: str, batch: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[BatchResult | None, dict[int, str]]:
    """Attribute ``batch`` in batches of ``batch_size``; a batch the model fails on is retried
    image by image. Returns the result (zeros for failed images) and {index: reason}."""
    if len(batch) == 0:
        return None, {}
    parts: list[tuple[int, BatchResult]] = []
    failed: dict[int, str] = {}
    for s in range(0, len(batch), batch_size):
        xb, lb = batch[s : s + batch_size], labels[s : s + batch_size]
        try:
            parts.append((s, engine.attribute(role, xb, lb)))
        except ModelFailure:
            for j in range(len(xb)):
                try:
                    parts.append((s + j, engine.attribute(role, xb[j : j + 1], lb[j : j + 1])))
                except ModelFailure as exc:
                    failed[s + j] = str(exc).replace("a batch of 1x", "")
    if not parts:
        return None, failed
    template = parts[0][1]
    out = {
        k: np.zeros((len(batch), *getattr(template, k).shape[1:]), getattr(template, k).dtype)
        for k in BatchResult.__dataclass_fields__
    }
    for start, part in parts:
        for k in out:
            out[k][start : start + len(part.pred)] = getattr(part, k)
    return BatchResult(**out), failed


def _pack_chunk(
    res: BatchResult | None,
    n: int,
    good: list[int],
    failed: dict[int, str],
    sizes: tuple[tuple[int, int], ...],
    reasons: tuple[str, ...],
    hw: tuple[int, int],
) -> dict[str, np.ndarray]:
    """A cache entry for one chunk: rows for every record, zeros where decoding or the
    model failed (``ok`` False, ``reason`` says why)."""
    ok = np.zeros(n, dtype=bool)
    ok[good] = True
    reasons = list(reasons)
    for j, why in failed.items():
        ok[good[j]] = False
        reasons[good[j]] = why
    n_classes = res.probs.shape[1] if res is not None else 1
    entry = {
        "ok": ok,
        "size": np.asarray(sizes, dtype=np.int64).reshape(n, 2),
        "reason": np.asarray(reasons, dtype=str),
        "maps": np.zeros((n, *hw), np.float32),
        "probs": np.zeros((n, n_classes), np.float32),
        "pred": np.zeros(n, np.int64),
        "target": np.zeros(n, np.int64),
        "delta": np.zeros(n, np.float32),
    }
    if res is not None:
        for k in ("maps", "probs", "pred", "target", "delta"):
            entry[k][good] = getattr(res, k)
    return entry


def _check_classes(dataset: Dataset, engine: PairedAttribution, probes: list[np.ndarray]) -> bool:
    """Check class counts on the first image both models can run on; False if none."""
    for probe in probes[:8]:
        try:
            counts = {r: engine.num_classes(r, probe[None]) for r in ROLES}
        except ModelFailure:
            continue
        _check_class_counts(dataset, counts)
        return True
    return False


def _check_class_counts(dataset: Dataset, counts: dict[str, int]) -> None:
    ca, cb = counts["a"], counts["b"]
    if ca != cb:
        raise InputError(
            f"model A outputs {ca} classes and model B {cb}; both must classify the same "
            "classes in the same order"
        )
    where = dataset.labels_csv or dataset.root
    if dataset.classes_inferred and len(dataset.classes) < ca:
        dataset.classes.extend(str(i) for i in range(len(dataset.classes), ca))
    if len(dataset.classes) != ca:
        raise InputError(
            f"{where}: the data has {len(dataset.classes)} classes but the models output {ca}; "
            f"pass --classes FILE with the models' {ca} class names in output order"
        )


def _thumbnails_and_pixels(
    records: list[ImageRecord], table: PatchTable, box_orig: np.ndarray, tmp: Path, progress: bool
) -> np.ndarray:
    """Write image and patch thumbnails; return (patches, 32, 32, 3) uint8 embedding pixels."""
    (tmp / "thumbs" / "images").mkdir(parents=True)
    (tmp / "thumbs" / "patches").mkdir(parents=True)
    pixels = np.zeros((len(table), EMBED_SIZE, EMBED_SIZE, 3), dtype=np.uint8)
    order = np.argsort(table.image, kind="stable")
    bounds = np.searchsorted(table.image[order], np.arange(len(records) + 1))

    def work(image_id: int) -> None:
        rec = records[image_id]
        try:
            im = load_rgb(rec.path)
        except ImageDecodeError as exc:
            raise InputError(
                f"{rec.path}: changed while imacs was running ({exc}); run again"
            ) from None
        thumb = im.copy()
        thumb.thumbnail((IMAGE_THUMB, IMAGE_THUMB), Image.Resampling.LANCZOS)
        _save_jpeg(thumb, tmp / "thumbs" / "images" / f"{image_id}.jpg")
        for pid in order[bounds[image_id] : bounds[image_id + 1]]:
            x0, y0, x1, y1 = (int(v) for v in box_orig[pid])
            crop = im.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
            pixels[pid] = np.asarray(
                crop.resize((EMBED_SIZE, EMBED_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8
            )
            _save_jpeg(
                crop.resize((PATCH_THUMB, PATCH_THUMB), Image.Resampling.LANCZOS),
                tmp / "thumbs" / "patches" / f"{pid}.jpg",
            )

    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imacs-thumbs") as pool:
        futures = [pool.submit(work, i) for i in range(len(records))]
        for f in tqdm(futures, desc="thumbnails", unit="img", disable=not progress, leave=False):
            f.result()
    return pixels


def _save_jpeg(im: Image.Image, path: Path) -> None:
    try:
        im.save(path, "JPEG", quality=85)
    except OSError as exc:
        raise disk_error(exc, path) from None


def _images_table(
    records: list[ImageRecord],
    dataset: Dataset,
    valid: np.ndarray,
    sizes: np.ndarray,
    per_role: dict[str, dict[str, np.ndarray]],
) -> pd.DataFrame:
    labels = np.array([r.label for r in records], dtype=np.int64)
    df = pd.DataFrame(
        {
            "image_id": np.arange(len(records), dtype=np.int64),
            "image": [r.relpath for r in records],
            "label": labels,
            "label_name": [dataset.classes[i] for i in labels],
            "width": sizes[:, 0],
            "height": sizes[:, 1],
        }
    )
    for r in ROLES:
        pr = per_role[r]
        df[f"pred_{r}"] = pr["pred"]
        df[f"prob_{r}"] = pr["probs"][np.arange(len(records)), pr["pred"]]
        df[f"correct_{r}"] = pr["pred"] == labels
        df[f"target_{r}"] = pr["target"]
        df[f"delta_{r}"] = pr["delta"]
        df[f"attr_scale_{r}"] = np.abs(pr["maps"]).reshape(len(records), -1).max(axis=1)
    if not dataset.meta.empty:
        meta = dataset.meta.iloc[valid].reset_index(drop=True)
        for c in meta.columns:
            df[c] = meta[c].to_numpy()
    return df


def _patches_table(
    table: PatchTable, box_orig: np.ndarray, clusterer: PatchClusterer
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patch_id": np.arange(len(table), dtype=np.int64),
            "image_id": table.image,
            "x0": box_orig[:, 0],
            "y0": box_orig[:, 1],
            "x1": box_orig[:, 2],
            "y1": box_orig[:, 3],
            "in_x0": table.box[:, 0],
            "in_y0": table.box[:, 1],
            "in_x1": table.box[:, 2],
            "in_y1": table.box[:, 3],
            "attr_a": table.attr_a,
            "attr_b": table.attr_b,
            "diff": table.attr_b - table.attr_a,
            "saliency": table.saliency,
            "cluster": clusterer.labels_.astype(np.int64),
            "proj_x": clusterer.projection_[:, 0],
            "proj_y": clusterer.projection_[:, 1],
        }
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "imacs": __version__}
    for dist in (
        "torch",
        "captum",
        "numpy",
        "scikit-learn",
        "umap-learn",
        "pandas",
        "pyarrow",
        "pillow",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _manifest(
    *,
    fingerprint: str,
    models: dict[str, LoadedModel],
    names: dict[str, str],
    dataset: Dataset,
    settings: AnalysisSettings,
    device: str,
    timings: dict[str, float],
    skipped: list[dict[str, str]],
    images_df: pd.DataFrame,
    clusters_df: pd.DataFrame,
    n_patches: int,
    n_clusters: int,
    files: dict[str, str],
) -> dict[str, object]:
    top = clusters_df.iloc[0]
    model_info = {}
    for r in ROLES:
        info = models[r].describe()
        info["name"] = names[r]
        info["num_classes"] = len(dataset.classes)
        model_info[r] = info
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("imacs") else None,
        "models": model_info,
        "data": {
            "root": str(dataset.root),
            "labels_csv": str(dataset.labels_csv) if dataset.labels_csv else None,
            "classes": dataset.classes,
            "meta_columns": [str(c) for c in dataset.meta.columns],
            "n_listed": len(dataset.records) + len(dataset.missing),
            "fingerprint": dataset.fingerprint(),
        },
        "settings": asdict(settings),
        "device": device,
        "versions": _versions(),
        "timings": timings,
        "skipped": skipped,
        "summary": {
            "n_images": len(images_df),
            "n_skipped": len(skipped),
            "n_patches": n_patches,
            "n_clusters": n_clusters,
            "accuracy_a": float(images_df["correct_a"].mean()),
            "accuracy_b": float(images_df["correct_b"].mean()),
            "agreement": float((images_df["pred_a"] == images_df["pred_b"]).mean()),
            "median_abs_delta_a": float(images_df["delta_a"].abs().median()),
            "median_abs_delta_b": float(images_df["delta_b"].abs().median()),
            "top_cluster": {
                "cluster": int(top["cluster"]),
                "diff": float(top["diff"]),
                "diff_lo": float(top["diff_lo"]),
                "diff_hi": float(top["diff_hi"]),
                "n_patches": int(top["n_patches"]),
                "top_class": str(top["top_class"]),
            },
        },
        "files": files,
    }
