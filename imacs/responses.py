"""Stage 3a: what the two models (and an optional encoder) make of each patch on its own.

Each patch is pasted alone on the run's Integrated Gradients baseline, at its own place
(the rest of the input is black, gray or the blurred image, as IG's baseline is), and goes
through both models, forward passes only. The two answers are the patch's *response*: two
class distributions. Patches the models answer alike are, to the models, the same evidence,
whatever their colour or shape: this is what :mod:`imacs.concepts` groups clusters by, and
what the ``models`` embedding clusters on.

Responses are stored as Hellinger coordinates: ``sqrt(p)`` of each model's distribution,
divided by ``sqrt(2)`` so that the two models' blocks together have unit length. Euclidean
distance between two such vectors is ``sqrt(H_A**2 + H_B**2)`` with ``H`` the Hellinger
distance of each model's answers (0 = same answers, 1 = disjoint), bounded, and not dominated
by how *sure* a model is the way log-probabilities are. A model with more than
:data:`MAX_CLASSES` classes keeps its ``MAX_CLASSES - 1`` classes with the most mass over all
patches and one "every other class" coordinate, so the vectors stay small at 1000 classes.

With an encoder (``--embedding encoder:FILE`` or ``timm:NAME``), the same pass crops each
patch from the model input, resizes it to the encoder's size and encodes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .runformat import ROLES
from .settings import AttributionSettings, Preprocess
from .stage import stage

if TYPE_CHECKING:
    from .attribution import PairedAttribution
    from .data import ImageRecord
    from .encoders import LoadedEncoder
    from .patches import PatchTable
#: most response coordinates per model (the rest of the classes share one)
MAX_CLASSES = 64
#: classes remembered per patch for a model with more than MAX_CLASSES classes
_TOP = 16


@dataclass
class PatchViews:
    """Every patch seen on its own, one row per patch (the patch table's order)."""

    responses: np.ndarray  #: (n, d) float32 Hellinger coordinates of both models' answers
    answer: dict[str, np.ndarray]  #: role -> (n,) int64: the class the model gives the patch
    answer_prob: dict[str, np.ndarray]  #: role -> (n,) float32: that class's probability
    encoded: np.ndarray | None  #: (n, e) float32 encoder vectors, when an encoder was given
    split: int  #: responses[:, :split] is A's answer, the rest B's
    seconds: float = 0.0
    #: role -> the classes given their own coordinate, for a model with more than
    #: MAX_CLASSES classes (pass it back to :func:`patch_views` to place other regions in
    #: the same coordinates); None for fewer
    kept: dict[str, np.ndarray | None] | None = None


def patch_views(
    engine: PairedAttribution,
    records: list[ImageRecord],
    table: PatchTable,
    preprocess: Preprocess,
    encoder: LoadedEncoder | None = None,
    batch_size: int = 64,
    progress: bool = False,
    kept: dict[str, np.ndarray | None] | None = None,
) -> PatchViews:
    """Run both models (and ``encoder``) on every patch alone.

    Args:
        engine (PairedAttribution): the run's models on their device, with its baseline.
        records (list[ImageRecord]): the analysed images; ``table.image`` indexes it.
        table (PatchTable): the patches (boxes in model-input pixels).
        preprocess (Preprocess): how an image becomes a model input.
        encoder (LoadedEncoder, optional): an image encoder for the patch crops.
        batch_size (int): patches per forward pass. Default: 64.
        progress (bool): show a progress bar. Default: False.
        kept (dict, optional): the classes kept per role by an earlier call (its
            ``PatchViews.kept``), so these views share its coordinates. Default: None
            (the classes with the most mass over these patches).

    Raises:
        InputError: an image changed since attribution, or the encoder fails.
    """
    import time

    from .attribute_set import _decode, _pool
    from .progress import Progress

    t0 = time.perf_counter()
    n = len(table)
    probs: dict[str, _ProbSink] = {}
    encoded: list[np.ndarray | None] = [None]
    ids, rows_of = _rows_by_image(table.image)
    block = max(8, batch_size // 4)  # images decoded at a time (~4 patches each)
    with Progress(len(ids), "patch responses", enabled=progress) as bar, _pool() as pool:
        for s in range(0, len(ids), block):
            part = ids[s : s + block]
            decoded = list(pool.map(lambda i: _decode(records[i], preprocess), part))
            for i, (arr, _size, why) in zip(part, decoded, strict=True):
                if arr is None:
                    raise InputError(
                        f"{records[i].path}: changed while imacs was running ({why}); run again"
                    )
            pixels = np.stack([d[0] for d in decoded])
            base = engine.baseline_array(pixels)
            rows = np.concatenate([rows_of(int(i)) for i in part])
            pos = {int(i): k for k, i in enumerate(part)}
            where = np.array([pos[int(i)] for i in table.image[rows]], np.int64)
            for t in range(0, len(rows), batch_size):
                sel = slice(t, t + batch_size)
                _respond(
                    engine,
                    encoder,
                    pixels,
                    base,
                    where[sel],
                    table.box[rows[sel]],
                    rows[sel],
                    probs,
                    encoded,
                    n,
                )
            bar.update(len(part))
    return _views(probs, encoded[0], kept, time.perf_counter() - t0)


def _views(
    probs: dict[str, _ProbSink],
    encoded: np.ndarray | None,
    kept: dict[str, np.ndarray | None] | None,
    seconds: float,
) -> PatchViews:
    """The views of the collected answers (``kept``: classes to keep, as for
    :func:`patch_views`)."""
    if not probs:  # no patches
        empty = {r: np.zeros(0, np.int64) for r in ROLES}
        return PatchViews(np.zeros((0, 2), np.float32), empty, {}, None, 1)
    kept = {r: probs[r].kept((kept or {}).get(r)) for r in ROLES}
    blocks = [probs[r].coordinates(kept[r]) for r in ROLES]
    responses = (np.concatenate(blocks, axis=1) / np.sqrt(2.0)).astype(np.float32)
    return PatchViews(
        responses=responses,
        answer={r: probs[r].answer for r in ROLES},
        answer_prob={r: probs[r].answer_prob for r in ROLES},
        encoded=encoded,
        split=blocks[0].shape[1],
        seconds=seconds,
        kept=kept,
    )


def _rows_by_image(image: np.ndarray) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """The images that have patches, and a function giving each one's patch rows."""
    order = np.argsort(image, kind="stable")
    ids = np.unique(image)
    starts = np.searchsorted(image[order], ids)
    ends = np.searchsorted(image[order], ids, side="right")
    span = {i: (s, e) for i, s, e in zip(ids.tolist(), starts, ends, strict=True)}
    return ids, lambda i: order[span[i][0] : span[i][1]]


def _respond(
    engine: PairedAttribution,
    encoder: LoadedEncoder | None,
    pixels: np.ndarray,
    base: np.ndarray,
    where: np.ndarray,
    boxes: np.ndarray,
    pids: np.ndarray,
    probs: dict[str, _ProbSink],
    encoded: list[np.ndarray | None],
    n: int,
) -> None:
    """One batch of patches alone through both models (and the encoder): patch ``pids[j]``
    lies in image ``where[j]`` of ``pixels`` at ``boxes[j]``."""
    alone = np.stack([_pasted(pixels, base, k, box) for k, box in zip(where, boxes, strict=True)])
    for r in ROLES:
        p = engine.probabilities_array(r, alone)
        probs.setdefault(r, _ProbSink(n, p.shape[1])).put(pids, p)
    if encoder is None:
        return
    import torch

    crops = np.stack([_crop(pixels, k, box) for k, box in zip(where, boxes, strict=True)])
    vec = encoder.encode(torch.from_numpy(crops), engine)
    if encoded[0] is None:
        encoded[0] = np.zeros((n, vec.shape[1]), np.float32)
    encoded[0][pids] = vec


class _ProbSink:
    """Collects one model's class distributions per patch, densely for few classes and as
    each patch's top classes for many."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.answer = np.zeros(n, np.int64)
        self.answer_prob = np.zeros(n, np.float32)
        if k <= MAX_CLASSES:
            self.dense: np.ndarray | None = np.zeros((n, k), np.float32)
        else:
            self.dense = None
            self.top_ids = np.zeros((n, _TOP), np.int64)
            self.top_p = np.zeros((n, _TOP), np.float32)
            self.mass = np.zeros(k, np.float64)

    def put(self, rows: np.ndarray, p: np.ndarray) -> None:
        self.answer[rows] = p.argmax(1)
        self.answer_prob[rows] = p.max(1)
        if self.dense is not None:
            self.dense[rows] = p
            return
        top = np.argpartition(-p, _TOP - 1, axis=1)[:, :_TOP]
        self.top_ids[rows] = top
        self.top_p[rows] = np.take_along_axis(p, top, 1)
        self.mass += p.sum(0)

    def kept(self, given: np.ndarray | None = None) -> np.ndarray | None:
        """The classes with a coordinate of their own: ``given``, else the
        ``MAX_CLASSES - 1`` with the most mass; None when every class has one."""
        if self.dense is not None:
            return None
        if given is not None:
            return np.asarray(given, np.int64)
        return np.argsort(-self.mass, kind="stable")[: MAX_CLASSES - 1]

    def coordinates(self, kept: np.ndarray | None = None) -> np.ndarray:
        """(n, <= MAX_CLASSES) ``sqrt(p)`` coordinates (unit length per row); ``kept``
        as :meth:`kept` returns it."""
        if self.dense is not None:
            return np.sqrt(np.clip(self.dense, 0.0, 1.0))
        if kept is None:
            kept = np.argsort(-self.mass, kind="stable")[: MAX_CLASSES - 1]
        column = np.full(self.k, -1, np.int64)
        column[kept] = np.arange(len(kept))
        n = len(self.answer)
        out = np.zeros((n, MAX_CLASSES), np.float32)
        col = column[self.top_ids]
        rows = np.repeat(np.arange(n), _TOP).reshape(n, _TOP)
        hit = col >= 0
        out[rows[hit], col[hit]] = self.top_p[hit]
        out[:, -1] = np.clip(1.0 - out[:, :-1].sum(1), 0.0, 1.0)  # every other class
        return np.sqrt(out)


def _pasted(pixels: np.ndarray, base: np.ndarray, k: int, box: np.ndarray) -> np.ndarray:
    """Image ``k``'s baseline with only the patch ``box`` (x0, y0, x1, y1) of the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    out = base[k].copy()
    out[:, y0:y1, x0:x1] = pixels[k][:, y0:y1, x0:x1]
    return out


def _crop(pixels: np.ndarray, k: int, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    return np.ascontiguousarray(pixels[k][:, y0:y1, x0:x1])


@stage(
    "responses",
    reads=("engine", "records", "patch_table", "encoder", "progress"),
    produces=("views",),
    settings=("preprocess", "attribution"),
)
def responses_stage(
    engine: PairedAttribution,
    records: list[ImageRecord],
    patch_table: PatchTable,
    encoder: LoadedEncoder | None,
    progress: bool,
    preprocess: Preprocess,
    attribution: AttributionSettings,
) -> dict[str, object]:
    """Both models (and the encoder) on each patch alone."""
    views = patch_views(
        engine,
        records,
        patch_table,
        preprocess,
        encoder,
        batch_size=max(16, 4 * attribution.batch_size),  # forward passes only
        progress=progress,
    )
    return {"views": views}
