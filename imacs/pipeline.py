"""The analysis: two models + an evaluation set -> a run directory.

The analysis is :data:`STAGES`, run in order on a *board* (names -> values) that starts
with what :func:`_start` loads (:data:`START`): each stage reads the names it declares and
adds the names it produces (:mod:`imacs.stage`), and is timed once under its name. What the
stages made is then written as the run format says (:mod:`imacs.writer`) and the run is
committed atomically (:mod:`imacs.store`).

Adding a stage: write it as a function decorated with :func:`imacs.stage.stage` in its own
module, and add one line to :data:`STAGES`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .agreement import agreement_stage
from .attribute_set import attribution_stage, fill_cache, plan_chunks
from .attribution import PairedAttribution
from .cache import StageCache, stable_hash
from .clustering import clustering_stage
from .concepts import concepts_stage
from .data import load_dataset
from .distributed import Ranks, from_environment
from .embedding import embedding_stage
from .encoders import load_encoder
from .errors import InputError
from .layers import check_names, layers_stage
from .models import ModelSpec, load_model, model_class_names, model_preprocess
from .patches import patches_stage
from .progress import Progress, StageTimer
from .responses import responses_stage
from .run import Run
from .runformat import FORMAT_VERSION
from .settings import AnalysisSettings
from .slices import slices_stage
from .stage import Stage, check_order
from .store import check_destination, check_writable, commit, is_current, staging
from .tables import comparison_stage, images_stage
from .thumbnails import thumbnails_stage
from .trust import trust_stage
from .whatif import whatif_stage
from .writer import build_manifest, write_run_files

__all__ = ["STAGES", "START", "reference_bar", "reference_dir", "run_analysis"]

#: the analysis, in order
STAGES: tuple[Stage, ...] = (
    attribution_stage,
    patches_stage,
    thumbnails_stage,
    responses_stage,
    embedding_stage,
    clustering_stage,
    images_stage,
    agreement_stage,
    comparison_stage,
    concepts_stage,
    slices_stage,
    trust_stage,
    whatif_stage,
    layers_stage,
)

#: what the board holds before the first stage (see :func:`_start` and :func:`_stages`)
START = (
    *("models", "names", "encoder", "dataset", "engine", "plan", "cache"),
    *("scratch", "run_dir", "progress", "say"),
)

check_order(STAGES, START)


@dataclass
class _Job:
    """What an analysis is asked to do, beside its settings."""

    spec_a: ModelSpec
    spec_b: ModelSpec
    data: str | Path
    out: Path
    labels_csv: str | Path | None
    classes_file: str | Path | None
    overwrite: bool
    rebuild: bool
    cache: StageCache
    progress: bool
    say: Callable[[str], None]


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
    reference: tuple[ModelSpec, ModelSpec] | None = None,
) -> Run:
    """:func:`imacs.analyze` with its settings already gathered in :class:`AnalysisSettings`.

    Under ``torchrun`` every process calls this; they share the attribution (see
    :mod:`imacs.distributed`), rank 0 writes the run and every rank returns it. A
    ``reference`` pair is analysed first, with the same data and settings, into
    ``OUT-reference`` (:func:`reference_dir`); what it surely differs by becomes the
    comparison's ``reference_bar`` (:func:`reference_bar`).
    """
    cache = cache or StageCache(None)
    out = Path(out).expanduser().absolute()
    _check_folders(out, cache)
    if reference is not None:
        say = log or (lambda _msg: None)
        say(f"reference pair first, into {reference_dir(out)}")
        ref = run_analysis(
            *reference, data, reference_dir(out), settings, labels_csv=labels_csv,
            classes_file=classes_file, overwrite=True, rebuild=rebuild, cache=cache,
            progress=progress, log=log,
        )  # fmt: skip
        bar, concept = reference_bar(ref)
        say(
            f"reference pair ({ref.names['a']} vs {ref.names['b']}) surely differs by up to "
            f"{bar:.3f} (concept {concept}): a difference of A and B must clear "
            f"{max(bar, settings.comparison.min_effect):.3f} to be significant"
        )
        comparison = replace(settings.comparison, reference_bar=round(bar, 6))
        settings = replace(settings, comparison=comparison)
    ranks = from_environment(settings.attribution.device)

    def job(leader: bool) -> _Job:
        say = (log or (lambda _msg: None)) if leader else (lambda _msg: None)
        return _Job(
            spec_a, spec_b, data, out, labels_csv, classes_file, overwrite, rebuild, cache,
            progress and leader, say,
        )  # fmt: skip

    if ranks is None:
        return _analysis(job(True), settings, None)
    if not cache.enabled:
        raise InputError(
            "torchrun: ranks hand their attribution over through the cache; give a cache "
            "folder every rank can reach (--cache-dir, or IMACS_CACHE_DIR)"
        )
    device = ranks.device(settings.attribution.device)
    settings = replace(settings, attribution=replace(settings.attribution, device=device))
    try:
        return _analysis(job(ranks.leader), settings, ranks)
    finally:
        ranks.close()


def reference_dir(out: Path) -> Path:
    """Where the reference pair's run of ``out`` is written: beside it, ``OUT-reference``."""
    return out.parent / f"{out.name}-reference"


def reference_bar(ref: Run) -> tuple[float, int | None]:
    """The largest difference the reference pair surely makes, and its concept: over the
    reference run's concepts, the largest distance of a simultaneous interval from 0 (a
    concept whose interval holds 0 counts 0). Retraining alone moves shares this much."""
    c = ref.concepts
    if c.empty:
        return 0.0, None
    away = (c["diff_lo"].clip(lower=0) + (-c["diff_hi"]).clip(lower=0)).to_numpy()
    k = int(away.argmax())
    return float(away[k]), int(c["concept"].iloc[k])


def _check_folders(out: Path, cache: StageCache) -> None:
    """Check, before any work, that the run's folder, the attribution cache and numba's
    cache (``NUMBA_CACHE_DIR``, when set) can be written: a container run as another user
    (``docker run -u``) would otherwise fail at the first write, minutes in."""
    check_writable(
        out.parent,
        "the folder of --out",
        f"choose an --out in a folder you can write to (or make {out.parent} writable)",
    )
    if cache.root is not None:
        check_writable(
            cache.root,
            "the attribution cache folder",
            "give a folder you can write to with --cache-dir DIR or IMACS_CACHE_DIR, "
            "or pass --no-cache",
        )
    numba = os.environ.get("NUMBA_CACHE_DIR")
    if numba:
        check_writable(
            Path(numba).expanduser().absolute(),
            "numba's cache folder (NUMBA_CACHE_DIR)",
            "set NUMBA_CACHE_DIR to a folder you can write to",
        )


def _analysis(job: _Job, settings: AnalysisSettings, ranks: Ranks | None) -> Run:
    timer = StageTimer()
    with timer.stage("load"):
        board, settings, fingerprint = _start(job, settings)
    check_destination(job.out, fingerprint, job.overwrite)
    if not job.rebuild and is_current(job.out, fingerprint):
        job.say(
            f"{job.out} is up to date (same models, data and settings): nothing was computed "
            "now; --rebuild recomputes it"
        )
        return Run(job.out)
    dataset = board["dataset"]
    if dataset.missing and settings.strict:
        rel, why = dataset.missing[0]
        where = f" (listed in {dataset.labels_csv})" if dataset.labels_csv else ""
        raise InputError(f"{dataset.root / rel}: {why}{where}; --strict")
    job.say(f"{len(dataset)} images, {len(dataset.classes)} classes in {dataset.root}")
    if ranks is not None:
        with timer.stage("attribution_ranks"):
            _share_attribution(board, settings, ranks, job.progress)
        if not ranks.leader:
            ranks.barrier()  # rank 0 writes the run
            return Run(job.out)
    with staging(job.out) as tmp:
        scratch = tmp / ".scratch"  # memory-mapped maps; removed before the commit
        scratch.mkdir()
        board |= {"scratch": scratch, "run_dir": tmp}
        _stages(board, settings, timer)
        with timer.stage("write"):
            files = write_run_files(tmp, board)
        board["att"].maps.clear()
        shutil.rmtree(scratch)
        manifest = build_manifest(board, settings, fingerprint, timer.timings, files)
        commit(tmp, job.out, manifest.to_dict())
    job.say(f"run written to {job.out}")
    if ranks is not None:
        ranks.barrier()
    return Run(job.out)


def _stages(board: dict[str, Any], settings: AnalysisSettings, timer: StageTimer) -> None:
    """Run every stage of :data:`STAGES` on ``board``, each timed once."""
    for s in STAGES:
        with timer.stage(s.name):
            board |= s(board, settings)


def _start(job: _Job, settings: AnalysisSettings) -> tuple[dict[str, Any], AnalysisSettings, str]:
    """Load the models, the encoder and the data set; the board the stages start from, the
    settings completed by what the models state, and the run's fingerprint."""
    models = {"a": load_model(job.spec_a, "--model-a"), "b": load_model(job.spec_b, "--model-b")}
    check_names(models, settings.layers)
    emb = settings.embedding
    encoder = load_encoder(emb.kind, emb.encoder_weights, emb.encoder_size)
    settings = replace(settings, preprocess=model_preprocess(settings.preprocess, models))
    dataset = load_dataset(
        job.data,
        labels_csv=job.labels_csv,
        classes_file=job.classes_file,
        model_classes=None if job.classes_file else model_class_names(models),
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
    engine = PairedAttribution(
        {r: m.module for r, m in models.items()},
        settings.preprocess,
        settings.attribution,
        names={r: f"model {r.upper()} ({m.spec.source})" for r, m in models.items()},
        eager={r: m.eager for r, m in models.items()},
    )
    board = {
        "models": models,
        "names": names,
        "encoder": encoder,
        "dataset": dataset,
        "engine": engine,
        "plan": plan_chunks(dataset, models, settings.preprocess, settings.attribution),
        "cache": job.cache,
        "progress": job.progress,
        "say": job.say,
    }
    return board, settings, fingerprint


def _share_attribution(
    board: dict[str, Any], settings: AnalysisSettings, ranks: Ranks, progress: bool
) -> None:
    """Under ``torchrun``: this rank's share of the attribution chunks, into the cache."""
    plan, cache, engine = board["plan"], board["cache"], board["engine"]
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
        fill_cache(
            board["dataset"], engine, cache, plan, mine, bar,
            preprocess=settings.preprocess, attribution=settings.attribution,
            strict=settings.strict,
        )  # fmt: skip
    ranks.barrier()  # every chunk is in the cache now
