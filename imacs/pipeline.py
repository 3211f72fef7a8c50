"""The analysis: two models + an evaluation set -> a run directory.

Stages run in one direction, and :func:`run_analysis` reads top to bottom as them:
load -> attribution -> patches -> thumbnails -> patch responses -> embedding -> clustering ->
comparison -> concepts -> trust -> what-if removal -> run directory. Each stage lives in its
own module; this one wires them together, times them and commits the run.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .agreement import map_agreement
from .attribute_set import attribute_set, fill_cache, plan_chunks
from .attribution import PairedAttribution
from .cache import StageCache, default_cache_dir, stable_hash
from .clustering import PatchClusterer
from .comparison import compare_clusters
from .concepts import group_into_concepts
from .data import load_dataset
from .distributed import Ranks, from_environment
from .embedding import fit_embedding
from .encoders import load_encoder
from .errors import InputError
from .models import ModelSpec, load_model, model_class_names, model_preprocess
from .patches import extract_patches, to_original_pixels
from .progress import Progress, StageTimer
from .removal import DEFAULT as REMOVAL_DEFAULT
from .responses import patch_views
from .run import Run
from .settings import AnalysisSettings
from .store import (
    FORMAT_VERSION,
    check_destination,
    commit,
    is_current,
    staging,
)
from .tables import (
    class_order_warnings,
    images_table,
    manifest,
    patches_table,
    write_run_files,
)
from .thumbnails import thumbnails_and_pixels
from .trust import trust_report
from .whatif import region_space, what_if

__all__ = ["AnalysisSettings", "analyze", "run_analysis"]


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
    trust_sample: int = 64,
    whatif: bool = True,
    whatif_top: int = 10,
    removal: str = REMOVAL_DEFAULT,
    embedding: str = "handcrafted",
    encoder_weights: str | Path | None = None,
    encoder_size: int | None = None,
    concept_distance: float = 0.15,
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
        seed (int): seed for clustering, projection, bootstrap and what-if boxes. Default: 0.
        trust_sample (int): images on which each model's maps are tested against a random
            pixel order (:mod:`imacs.trust`); 0 turns the tests off. Default: 64.
        whatif (bool): re-run both models with the top clusters' patches removed (and with
            random boxes as a control); see :mod:`imacs.whatif`. Default: True.
        whatif_top (int): clusters to test: the ``whatif_top`` largest ``|diff|``, plus every
            significant one (and as many concepts). Default: 10.
        removal (str): how removed pixels are filled in what-if removal, the trust curves
            and the dashboard's pictures: ``baseline`` (the IG baseline), ``blur``, ``mean``
            or ``road`` (imputation from the neighbours); see :mod:`imacs.removal`.
            Default: ``road``.
        embedding (str): the space patches are clustered in: ``handcrafted`` (colour and
            texture statistics), ``models`` (both models' answers to each patch alone),
            ``encoder:FILE`` (a TorchScript or ``.pt2`` image encoder) or ``timm:NAME``
            (with ``encoder_weights``); see :mod:`imacs.embedding`. Default:
            ``handcrafted``.
        encoder_weights (str or Path, optional): weights of a ``timm:NAME`` encoder.
        encoder_size (int, optional): side the crops are resized to for an encoder.
            Default: the encoder's own, else 224.
        concept_distance (float): clusters the models answer alike (Hellinger distance of
            their mean answers to the patches alone below this, 0..1) form one concept; 0 =
            none grouped (see :mod:`imacs.concepts`). Default: 0.15.
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

    settings = AnalysisSettings.from_keywords(
        image_size=image_size, mean=mean, std=std, strict=strict, steps=steps,
        baseline=baseline, target=target, batch_size=batch_size, device=device,
        precision=precision, clusters=clusters, projection=projection, patch_size=patch_size,
        patches_per_image=patches_per_image, seed=seed, trust_sample=trust_sample,
        whatif=whatif, whatif_top=whatif_top, removal=removal, embedding=embedding,
        encoder_weights=None if encoder_weights is None else str(encoder_weights),
        encoder_size=encoder_size, concept_distance=concept_distance,
    )  # fmt: skip
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
    """:func:`analyze` with its settings already gathered in :class:`AnalysisSettings`.

    Under ``torchrun`` every process calls this; they share the attribution (see
    :mod:`imacs.distributed`), rank 0 writes the run and every rank returns it.
    """
    cache = cache or StageCache(None)
    ranks = from_environment(settings.attribution.device)
    if ranks is None:
        return _analysis(
            spec_a, spec_b, data, out, settings, labels_csv, classes_file, overwrite, rebuild,
            cache, progress, log, None,
        )  # fmt: skip
    if not cache.enabled:
        raise InputError(
            "torchrun: ranks hand their attribution over through the cache; give a cache "
            "folder every rank can reach (--cache-dir, or IMACS_CACHE_DIR)"
        )
    device = ranks.device(settings.attribution.device)
    settings = replace(settings, attribution=replace(settings.attribution, device=device))
    try:
        return _analysis(
            spec_a, spec_b, data, out, settings, labels_csv, classes_file, overwrite, rebuild,
            cache, progress and ranks.leader, log if ranks.leader else None, ranks,
        )  # fmt: skip
    finally:
        ranks.close()


def _analysis(
    spec_a: ModelSpec,
    spec_b: ModelSpec,
    data: str | Path,
    out: Path,
    settings: AnalysisSettings,
    labels_csv: str | Path | None,
    classes_file: str | Path | None,
    overwrite: bool,
    rebuild: bool,
    cache: StageCache,
    progress: bool,
    log: Callable[[str], None] | None,
    ranks: Ranks | None,
) -> Run:
    say = log or (lambda _msg: None)
    timer = StageTimer()
    out = Path(out).expanduser().absolute()

    with timer.stage("load"):
        models = {
            "a": load_model(spec_a, "--model-a"),
            "b": load_model(spec_b, "--model-b"),
        }
        emb_settings = settings.embedding
        encoder = load_encoder(
            emb_settings.kind, emb_settings.encoder_weights, emb_settings.encoder_size
        )
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
        encoder.sha256 if encoder else None,
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
        where = f" (listed in {dataset.labels_csv})" if dataset.labels_csv else ""
        raise InputError(f"{dataset.root / rel}: {why}{where}; --strict")
    say(f"{len(dataset)} images, {len(dataset.classes)} classes in {dataset.root}")

    engine = PairedAttribution(
        {r: m.module for r, m in models.items()},
        settings.preprocess,
        settings.attribution,
        names={r: f"model {r.upper()} ({m.spec.source})" for r, m in models.items()},
    )
    plan = plan_chunks(dataset, models, settings)
    if ranks is not None:
        with timer.stage("attribution"):
            todo = [ci for ci in range(len(plan.chunks)) if not plan.cached(cache, ci)]
            mine = ranks.share(todo)
            print(
                f"imacs: rank {ranks.rank}/{ranks.world}: attributing {len(mine)} of "
                f"{len(plan.chunks)} chunks on {engine.device}",
                file=sys.stderr,
                flush=True,
            )
            n_mine = sum(len(plan.chunks[ci]) for ci in mine)
            with Progress(n_mine, f"attribution (rank {ranks.rank})", enabled=progress) as bar:
                fill_cache(dataset, engine, settings, cache, plan, mine, bar)
            ranks.barrier()  # every chunk is in the cache now
        if not ranks.leader:
            ranks.barrier()  # rank 0 writes the run
            return Run(out)
    with staging(out) as tmp:
        scratch = tmp / ".scratch"  # memory-mapped maps; removed before the commit
        scratch.mkdir()
        with timer.stage("attribution"):
            bar = Progress(len(dataset), "attribution", enabled=progress)
            with bar:
                att = attribute_set(dataset, engine, settings, cache, plan, scratch, bar, say)
        dataset = replace(dataset, classes=att.classes)

        skipped = [
            {"path": dataset.records[i].relpath, "reason": att.reason[i]}
            for i in np.flatnonzero(~att.ok)
        ] + [{"path": rel, "reason": why} for rel, why in dataset.missing]
        if settings.strict and not att.ok.all():  # also for failures recorded in the cache
            i = int(np.flatnonzero(~att.ok)[0])
            raise InputError(
                f"{dataset.records[i].path}: {att.reason[i]}; remove or replace it (--strict)"
            )
        valid = np.flatnonzero(att.ok)
        if len(valid) == 0:
            raise InputError(
                f"{dataset.root}: none of its {len(dataset)} images could be analysed "
                f"(first: {skipped[0]['path']}: {skipped[0]['reason']})"
            )
        if skipped:
            say(
                f"skipped {len(skipped)} input(s) (unreadable, or a model failed on them); "
                "see run.json"
            )
        records = [dataset.records[i] for i in valid]
        att.keep(valid)

        with timer.stage("patches"):
            table = extract_patches(att.maps["a"], att.maps["b"], settings.patches)
            input_size = settings.preprocess.image_size or (0, 0)
            box_orig = to_original_pixels(table.box, input_size, att.size[table.image])
        say(f"{len(table)} salient patches")

        with timer.stage("thumbnails"):
            pixels = thumbnails_and_pixels(records, table, box_orig, tmp, progress)
        with timer.stage("responses"):  # both models (and the encoder) on each patch alone
            views = patch_views(
                engine,
                records,
                table,
                settings.preprocess,
                encoder,
                batch_size=max(16, 4 * settings.attribution.batch_size),
                progress=progress,
            )
        with timer.stage("embedding"):
            emb, fitted = fit_embedding(settings.embedding, pixels, views, settings.seed)
        with timer.stage("clustering"):
            clusterer = PatchClusterer(
                n_clusters=settings.n_clusters,
                projection=settings.projection,
                random_state=settings.seed,
            ).fit(emb)
        with timer.stage("comparison"):
            images_df = images_table(records, dataset, valid, att)
        with timer.stage("agreement"):
            images_df = images_df.assign(**map_agreement(att.maps["a"], att.maps["b"]))
        with timer.stage("comparison"):
            warnings = class_order_warnings(images_df, len(dataset.classes), names)
            for w in warnings:
                say(f"warning: {w}")
            patches_df = patches_table(table, box_orig, clusterer, views)
            clusters_df, by_class_df = compare_clusters(
                patches_df, images_df.set_index("image_id"), dataset.classes, settings.comparison
            )
        with timer.stage("concepts"):
            patches_df, clusters_df, concepts_df = group_into_concepts(
                views, patches_df, clusters_df, images_df.set_index("image_id"),
                dataset.classes, settings,
            )  # fmt: skip
        with timer.stage("trust"):
            trust, trust_warnings = trust_report(engine, records, att, settings, names)
        warnings += trust_warnings
        with timer.stage("whatif"):  # forward passes with the top clusters' content removed
            space = None
            if fitted is not None:  # every tile of an image placed among the clusters
                space = region_space(
                    engine, records, fitted, emb, clusterer.labels_,
                    clusterer.cluster_centers_, settings, views, encoder,
                )  # fmt: skip
            whatif_df, whatif_images, whatif_boxes, whatif_info = what_if(
                engine, records, images_df, patches_df, clusters_df, settings, progress, say,
                space=space,
            )  # fmt: skip
            members = {
                int(c): sorted(int(x) for x in g["cluster"])
                for c, g in clusters_df.groupby("concept")
            }
            concept_whatif, concept_images, concept_boxes, concept_whatif_info = what_if(
                engine,
                records,
                images_df,
                patches_df.assign(cluster=patches_df["concept"]),
                concepts_df.rename(columns={"concept": "cluster"}),
                settings,
                progress,
                say,
                space=space,
                members=members,
                level="concept",
            )
        with timer.stage("write"):
            tables = {
                "images": images_df,
                "patches": patches_df,
                "clusters": clusters_df,
                "cluster_classes": by_class_df,
                "whatif": whatif_df,
                "whatif_images": whatif_images,
                "whatif_boxes": whatif_boxes,
                "concepts": concepts_df,
                "concept_whatif": concept_whatif.rename(columns={"cluster": "concept"}),
                "concept_whatif_images": concept_images.rename(columns={"cluster": "concept"}),
                "concept_whatif_boxes": concept_boxes.rename(columns={"cluster": "concept"}),
            }
            files = write_run_files(tmp, tables, emb, att)
        att.maps.clear()
        shutil.rmtree(scratch)
        run_manifest = manifest(
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
            concepts_df=concepts_df,
            embedding_info={
                "kind": settings.embedding.kind,
                "dims": int(emb.shape[1]),
                "encoder": encoder.describe() if encoder else None,
                "response_dims": int(views.responses.shape[1]),
                "concept_distance": settings.concepts.distance,
            },
            files=files,
            warnings=warnings,
            trust=trust,
            whatif={**whatif_info, "concepts": concept_whatif_info},
        )
        commit(tmp, out, run_manifest)
    say(f"run written to {out}")
    if ranks is not None:
        ranks.barrier()
    return Run(out)
