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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .attribution import PairedAttribution
    from .data import ImageRecord
    from .encoders import LoadedEncoder
    from .patches import PatchTable
    from .settings import Preprocess

ROLES = ("a", "b")
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

    import torch

    from .attribute_set import _decode, _pool
    from .progress import Progress

    t0 = time.perf_counter()
    n = len(table)
    probs: dict[str, _ProbSink] = {}
    encoded: np.ndarray | None = None
    order = np.argsort(table.image, kind="stable")
    ids = np.unique(table.image)
    sorted_images = table.image[order]
    start_of = dict(zip(ids.tolist(), np.searchsorted(sorted_images, ids).tolist(), strict=True))
    end_of = dict(
        zip(ids.tolist(), np.searchsorted(sorted_images, ids, side="right").tolist(), strict=True)
    )
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
            rows = np.concatenate([order[start_of[int(i)] : end_of[int(i)]] for i in part])
            where = {int(i): k for k, i in enumerate(part)}
            for t in range(0, len(rows), batch_size):
                pids = rows[t : t + batch_size]
                alone = np.stack(
                    [_pasted(pixels, base, where[int(table.image[p])], table.box[p]) for p in pids]
                )
                for r in ROLES:
                    p = engine.probabilities_array(r, alone)
                    probs.setdefault(r, _ProbSink(n, p.shape[1])).put(pids, p)
                if encoder is not None:
                    crops = torch.from_numpy(
                        np.stack(
                            [_crop(pixels, where[int(table.image[p])], table.box[p]) for p in pids]
                        )
                    )
                    vec = encoder.encode(crops, engine)
                    if encoded is None:
                        encoded = np.zeros((n, vec.shape[1]), np.float32)
                    encoded[pids] = vec
            bar.update(len(part))
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
        seconds=time.perf_counter() - t0,
        kept=kept,
    )


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
