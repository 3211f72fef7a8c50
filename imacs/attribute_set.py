"""Attribution over a whole evaluation set, in cached chunks.

The set is cut into chunks of :data:`CHUNK` images. Each chunk's result for each model is a
cache entry keyed on the model's identity, the images and every setting that changes the
numbers, so a killed run resumes, A-vs-B then A-vs-C recomputes only C, and several
processes (``torchrun``) can each fill their share of the chunks. Images are decoded once for
both models, in threads, one chunk ahead. Maps stream into memory-mapped arrays on disk, so
the set's maps are held once, not copied per stage.

A model that raises on a batch is retried image by image, so only the images it fails on
are skipped; a device that runs out of memory gets the batch again in halves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .attribution import BatchResult, DeviceOutOfMemory, PairedAttribution, Preprocess
from .cache import StageCache, stable_hash
from .data import Dataset, ImageRecord
from .errors import ImageDecodeError, InputError, ModelFailure, disk_error, reserve_space
from .imaging import load_rgb
from .models import LoadedModel
from .progress import Progress
from .runformat import FORMAT_VERSION, ROLES
from .settings import AttributionSettings
from .stage import stage

#: images per attribution cache entry (and per progress step)
CHUNK = 64
_SMALL = ("probs", "pred", "target", "delta")


@dataclass
class SetAttribution:
    """Attribution of both models over a set, one row per image.

    ``maps[role]`` are (n, H, W) float32 arrays memory-mapped from a scratch folder.
    """

    ok: np.ndarray  #: (n,) bool: decoded, and both models ran on it
    reason: list[str]  #: why an image was skipped ("" when ok)
    size: np.ndarray  #: (n, 2) original width, height
    maps: dict[str, np.ndarray]
    per_role: dict[str, dict[str, np.ndarray]]  #: role -> probs/pred/target/delta
    classes: list[str]  #: the data's classes, widened to the models' count if inferred

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (ascending), compacting the maps in place without a copy."""
        for r in ROLES:
            mm = self.maps[r]
            for j, i in enumerate(rows):
                if i != j:
                    mm[j] = mm[i]
            self.maps[r] = mm[: len(rows)]
            self.per_role[r] = {k: v[rows] for k, v in self.per_role[r].items()}
        self.size = self.size[rows]
        self.ok = self.ok[rows]
        self.reason = [self.reason[i] for i in rows]


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of a set and their cache keys per model."""

    chunks: list[list[int]]
    keys: list[dict[str, str]]

    def cached(self, cache: StageCache, ci: int) -> bool:
        return all(cache.has("attribution", self.keys[ci][r]) for r in ROLES)


def plan_chunks(
    dataset: Dataset,
    models: dict[str, LoadedModel],
    preprocess: Preprocess,
    attribution: AttributionSettings,
) -> ChunkPlan:
    """Cut the set into chunks and key each one per model."""
    recs = dataset.records
    n = len(recs)
    chunks = [list(range(s, min(s + CHUNK, n))) for s in range(0, n, CHUNK)]
    keys = [
        {r: chunk_key(models[r], preprocess, attribution, [recs[i] for i in idx]) for r in ROLES}
        for idx in chunks
    ]
    return ChunkPlan(chunks, keys)


def chunk_key(
    model: LoadedModel,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    recs: list[ImageRecord],
) -> str:
    return stable_hash(
        "attribution",
        FORMAT_VERSION,
        model.sha256,
        asdict(preprocess),
        attribution.cache_fields(),
        [r.fingerprint() for r in recs],
    )


def _decode(rec: ImageRecord, pre: Preprocess) -> tuple[np.ndarray | None, tuple[int, int], str]:
    try:
        im = load_rgb(rec.path)
    except ImageDecodeError as exc:
        return None, (0, 0), str(exc)
    return pre.to_array(im), im.size, ""


class _Runner:
    """Computes or fetches chunk entries; decoding runs one chunk ahead in threads."""

    def __init__(
        self,
        dataset: Dataset,
        engine: PairedAttribution,
        cache: StageCache,
        plan: ChunkPlan,
        preprocess: Preprocess,
        attribution: AttributionSettings,
        strict: bool,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.dataset, self.engine, self.strict = dataset, engine, strict
        self.say = say or (lambda _msg: None)
        self.preprocess, self.attribution = preprocess, attribution
        self.cache, self.plan = cache, plan
        self.classes: list[str] | None = None  # set once the class counts are checked
        #: called with (role, images) when a model's chunk is done (computed or cached)
        self.step: Callable[[str, int], None] = lambda _role, _n: None

    def entries(
        self, ids: list[int], pool: ThreadPoolExecutor
    ) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
        recs, pre = self.dataset.records, self.preprocess

        def submit(ci: int) -> list[Future] | None:
            if self.plan.cached(self.cache, ci):
                return None
            return [pool.submit(_decode, recs[i], pre) for i in self.plan.chunks[ci]]

        pending = submit(ids[0]) if ids else None
        for pos, ci in enumerate(ids):
            decoded = pending
            pending = submit(ids[pos + 1]) if pos + 1 < len(ids) else None  # prefetch
            got = {r: self._cached(ci, r) for r in ROLES}
            for r in ROLES:
                if got[r] is not None:
                    self.step(r, len(self.plan.chunks[ci]))
            if any(v is None for v in got.values()):
                if decoded is None:
                    decoded = [pool.submit(_decode, recs[i], pre) for i in self.plan.chunks[ci]]
                self._compute(ci, [f.result() for f in decoded], got)
            yield ci, got  # type: ignore[misc]

    def _cached(self, ci: int, role: str) -> dict[str, np.ndarray] | None:
        """Chunk ``ci``'s cache entry for ``role``, or None: missing, damaged, or with
        arrays that do not fit the chunk (discarded, with one warning, and recomputed)."""
        key = self.plan.keys[ci][role]
        entry = self.cache.get("attribution", key)
        if entry is None:
            return None
        wrong = entry_mismatch(entry, len(self.plan.chunks[ci]), self.preprocess.input_size)
        if wrong is None:
            return entry
        path = self.cache.discard("attribution", key)
        self.say(
            f"attribution cache: {path} does not fit its chunk ({wrong}); discarded, "
            f"recomputing model {role.upper()} on those {len(self.plan.chunks[ci])} images"
        )
        return None

    def _compute(
        self,
        ci: int,
        decoded: list[tuple[np.ndarray | None, tuple[int, int], str]],
        got: dict[str, dict[str, np.ndarray] | None],
    ) -> None:
        recs, idx, strict = self.dataset.records, self.plan.chunks[ci], self.strict
        arrays, sizes, reasons = zip(*decoded, strict=True)
        if strict:
            for i, why in zip(idx, reasons, strict=True):
                if why:
                    raise InputError(f"{recs[i].path}: {why}; remove or replace it (--strict)")
        good = [j for j, a in enumerate(arrays) if a is not None]
        if self.classes is None and good:
            self.classes = check_classes(self.dataset, self.engine, [arrays[j] for j in good])
        h, w = self.preprocess.input_size
        batch = np.stack([arrays[j] for j in good]) if good else np.zeros((0, 3, h, w), np.float32)
        labels = np.array([recs[idx[j]].label for j in good], dtype=np.int64)
        for r in ROLES:
            if got[r] is not None:
                continue
            res, failed = attribute_batch(
                self.engine, r, batch, labels, self.attribution.batch_size
            )
            if strict and failed:
                j, why = next(iter(failed.items()))
                raise InputError(f"{recs[idx[good[j]]].path}: {why} (--strict)")
            entry = _pack_chunk(res, len(idx), good, failed, sizes, reasons, (h, w))
            self.cache.put("attribution", self.plan.keys[ci][r], entry)
            got[r] = entry
            self.step(r, len(idx))


def _pool() -> ThreadPoolExecutor:
    workers = max(2, min(8, os.cpu_count() or 2))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imacs-decode")


def fill_cache(
    dataset: Dataset,
    engine: PairedAttribution,
    cache: StageCache,
    plan: ChunkPlan,
    ids: Iterable[int],
    progress: Progress,
    *,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    strict: bool = False,
) -> None:
    """Compute the chunks ``ids`` that the cache lacks, keeping nothing in memory (one
    ``torchrun`` rank's share of the work)."""
    todo = [ci for ci in ids if not plan.cached(cache, ci)]
    runner = _Runner(dataset, engine, cache, plan, preprocess, attribution, strict)
    with _pool() as pool:
        for ci, _ in runner.entries(todo, pool):
            progress.update(len(plan.chunks[ci]))


def attribute_set(
    dataset: Dataset,
    engine: PairedAttribution,
    cache: StageCache,
    plan: ChunkPlan,
    scratch: Path,
    progress: Progress,
    say: Callable[[str], None],
    *,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    strict: bool = False,
    names: dict[str, str] | None = None,
) -> SetAttribution:
    """Attribution of both models over the whole set (from the cache where it has it).

    Args:
        scratch (Path): an existing folder for the memory-mapped maps; the caller removes it.
        progress (Progress): counts each model's maps (``2 * len(dataset)`` in all).
        names (dict, optional): per model, what follows "model A" in progress lines.
    """
    n = len(dataset.records)
    h, w = preprocess.input_size
    cached = sum(plan.cached(cache, ci) for ci in range(len(plan.chunks)))
    if cached:
        say(f"attribution: {cached} of {len(plan.chunks)} chunks found in the cache")
    ok = np.zeros(n, dtype=bool)
    reason = [""] * n
    size = np.zeros((n, 2), dtype=np.int64)
    maps = {r: scratch_array(scratch / f"maps_{r}.npy", (n, h, w)) for r in ROLES}
    small: dict[str, dict[str, list[np.ndarray]]] = {r: {k: [] for k in _SMALL} for r in ROLES}
    runner = _Runner(dataset, engine, cache, plan, preprocess, attribution, strict, say)

    def step(role: str, n: int) -> None:  # a line per model: which one is being computed
        progress.label(f"attribution, model {role.upper()}{(names or {}).get(role, '')}")
        progress.update(n)

    runner.step = step
    todo = [ci for ci in range(len(plan.chunks)) if not plan.cached(cache, ci)]
    t0 = time.perf_counter()
    with _pool() as pool:
        for ci, got in runner.entries(list(range(len(plan.chunks))), pool):
            if todo and ci == todo[0] and len(todo) > 1:  # the first chunk computed now
                per_image = (time.perf_counter() - t0) / len(plan.chunks[ci])
                left = sum(len(plan.chunks[c]) for c in todo[1:])
                say(estimate_line(per_image, left, engine.device.type, attribution))
            idx = plan.chunks[ci]
            sel = np.asarray(idx)
            first, second = got["a"], got["b"]
            ok[sel] = first["ok"] & second["ok"]  # an image either model failed on is skipped
            size[sel] = first["size"]
            for j, i in enumerate(idx):
                reason[i] = str(first["reason"][j]) or str(second["reason"][j])
            for r in ROLES:
                maps[r][idx[0] : idx[-1] + 1] = got[r]["maps"]
                for k in _SMALL:
                    small[r][k].append(got[r][k])
    per_role: dict[str, dict[str, np.ndarray]] = {}
    for r in ROLES:
        parts = small[r]
        # a chunk with no readable image does not know the class count: widen its zeros
        n_classes = max(p.shape[1] for p in parts["probs"])
        parts["probs"] = [
            p if p.shape[1] == n_classes else np.zeros((len(p), n_classes), np.float32)
            for p in parts["probs"]
        ]
        per_role[r] = {k: np.concatenate(v) for k, v in parts.items()}
    classes = runner.classes
    if classes is None and ok.any():  # all from the cache: check what the cache recorded
        classes = check_class_counts(dataset, {r: per_role[r]["probs"].shape[1] for r in ROLES})
    return SetAttribution(
        ok=ok,
        reason=reason,
        size=size,
        maps=maps,
        per_role=per_role,
        classes=classes or list(dataset.classes),
    )


#: an estimate above this many seconds comes with ways to make the run shorter
LONG_RUN = 600


def estimate_line(
    per_image: float, images_left: int, device: str, attribution: AttributionSettings
) -> str:
    """What the first computed chunk says about the rest: ``attribution: about 12 min
    more for the 940 images left (0.8 s per image, both models, on cpu)``, with ways to
    shorten a long run."""
    left = per_image * images_left
    when = f"{left / 60:.0f} min" if left >= 90 else f"{max(left, 1):.0f} s"
    text = (
        f"attribution: about {when} more for the {images_left} images left "
        f"({per_image:.2g} s per image, both models, on {device})"
    )
    if left < LONG_RUN:
        return text
    ways = []
    if attribution.algorithm in ("ig", "gradient-shap") and attribution.steps > 16:
        ways.append(f"--steps 16 (about {16 / attribution.steps:.0%} of the time)")
    ways.append("fewer images (a --labels-csv listing a sample)")
    if device == "cpu":
        ways.append("a GPU (--device cuda)")
    return f"{text}; to shorten it: {', '.join(ways)}"


def scratch_array(path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A memory-mapped ``.npy`` array at ``path``, its disk space reserved up front.

    The file of a memory map is sparse: without the reservation a full disk shows up as a
    crash (SIGBUS) when a page is first written, after the work that filled it. A full or
    read-only disk is an :class:`InputError` naming the first folder above ``path`` that is
    not hidden: the folder the run is written to, whose hidden temporary folder holds the
    scratch folder.
    """
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        reserve_space(path)
    except OSError as exc:
        folder = next((p for p in path.parents if not p.name.startswith(".")), path.parent)
        raise disk_error(exc, folder) from None
    return arr


def attribute_batch(
    engine: PairedAttribution, role: str, batch: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[BatchResult | None, dict[int, str]]:
    """Attribute ``batch`` in batches of ``batch_size``.

    A batch the model fails on is retried image by image; a batch the device has no memory
    for is retried in halves (and later batches stay at the smaller size). Returns the result
    (zeros for failed images) and {index: reason}.
    """
    if len(batch) == 0:
        return None, {}
    parts: list[tuple[int, BatchResult]] = []
    failed: dict[int, str] = {}
    s = 0
    while s < len(batch):
        xb, lb = batch[s : s + batch_size], labels[s : s + batch_size]
        try:
            parts.append((s, engine.attribute(role, xb, lb)))
        except DeviceOutOfMemory as exc:
            if not engine.shrink_passes() and batch_size == 1:
                raise InputError(
                    f"{exc}; even one image per pass does not fit: use --precision bf16, a "
                    "smaller --image-size, or --device cpu"
                ) from None
            batch_size = max(1, batch_size // 2)
            continue
        except ModelFailure:
            for j in range(len(xb)):
                try:
                    parts.append((s + j, engine.attribute(role, xb[j : j + 1], lb[j : j + 1])))
                except ModelFailure as exc:
                    failed[s + j] = str(exc).replace("a batch of 1x", "")
        s += len(xb)
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


def entry_mismatch(entry: dict[str, np.ndarray], n: int, hw: tuple[int, int]) -> str | None:
    """What makes a chunk's cache entry unfit for a chunk of ``n`` images of ``hw`` pixels
    (arrays missing or of other shapes, as :func:`_pack_chunk` makes them), or None."""
    expected = {
        "ok": (n,), "size": (n, 2), "reason": (n,), "maps": (n, *hw),
        "probs": (n, None), "pred": (n,), "target": (n,), "delta": (n,),
    }  # fmt: skip
    for name, shape in expected.items():
        arr = entry.get(name)
        if arr is None:
            return f"no {name!r} array"
        if arr.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
        ):
            want = "x".join("k" if d is None else str(d) for d in shape)
            return f"{name!r} is {'x'.join(map(str, arr.shape)) or 'a scalar'}, not {want}"
    if entry["ok"].any() and entry["probs"].shape[1] < 2:
        return "'probs' has fewer than 2 classes"
    return None


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
        for k in ("maps", *_SMALL):
            entry[k][good] = getattr(res, k)
    return entry


def check_classes(
    dataset: Dataset, engine: PairedAttribution, probes: list[np.ndarray]
) -> list[str] | None:
    """Check class counts on the first image both models can run on; None if none runs."""
    for probe in probes[:8]:
        try:
            counts = {r: engine.num_classes(r, probe[None]) for r in ROLES}
        except ModelFailure:
            continue
        return check_class_counts(dataset, counts)
    return None


def check_class_counts(dataset: Dataset, counts: dict[str, int]) -> list[str]:
    """The data's class names, checked against the models' output count (names made up
    from integer labels are widened to it)."""
    ca, cb = counts["a"], counts["b"]
    if ca != cb:
        raise InputError(
            f"model A outputs {ca} classes and model B {cb}; both must classify the same "
            "classes in the same order"
        )
    where = dataset.labels_csv or dataset.root
    classes = list(dataset.classes)
    if dataset.classes_inferred and len(classes) < ca:
        classes.extend(str(i) for i in range(len(classes), ca))
    if len(classes) != ca:
        raise InputError(
            f"{where}: the data has {len(classes)} classes but the models output {ca}; "
            f"pass --classes FILE with the models' {ca} class names in output order"
        )
    return classes


@stage(
    "attribution",
    reads=("dataset", "engine", "plan", "cache", "scratch", "progress", "say", "names"),
    produces=("att", "dataset", "records", "valid", "skipped", "classes"),
    settings=("preprocess", "attribution", "strict"),
)
def attribution_stage(
    dataset: Dataset,
    engine: PairedAttribution,
    plan: ChunkPlan,
    cache: StageCache,
    scratch: Path,
    progress: bool,
    say: Callable[[str], None],
    names: dict[str, str],
    preprocess: Preprocess,
    attribution: AttributionSettings,
    strict: bool,
) -> dict[str, object]:
    """Both models' maps over the set; the images that could be analysed, and the skipped
    ones with their reasons. Progress counts each model's maps (2 per image) and names the
    model being computed."""
    with Progress(2 * len(dataset), "attribution", unit="maps", enabled=progress) as bar:
        att = attribute_set(
            dataset, engine, cache, plan, scratch, bar, say,
            preprocess=preprocess, attribution=attribution, strict=strict,
            names={r: f" ({n})" for r, n in names.items()},
        )  # fmt: skip
    dataset = replace(dataset, classes=att.classes)
    skipped = [
        {"path": dataset.records[i].relpath, "reason": att.reason[i]}
        for i in np.flatnonzero(~att.ok)
    ] + [{"path": rel, "reason": why} for rel, why in dataset.missing]
    if strict and not att.ok.all():  # also for failures recorded in the cache
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
            f"skipped {len(skipped)} input(s) (unreadable, or a model failed on them); see run.json"
        )
    att.keep(valid)
    return {
        "att": att,
        "dataset": dataset,
        "records": [dataset.records[i] for i in valid],
        "valid": valid,
        "skipped": skipped,
        "classes": dataset.classes,
    }
