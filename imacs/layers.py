"""Stage: inside the networks. Where along each model's depth a concept is decided, where
A and B part ways, and which filters carry a concept.

For a few layers of each model (:func:`default_layers`: timm's ``feature_info``, a Hugging
Face model's encoder blocks, otherwise the top-level children whose output is a spatial map;
``--layers-a/--layers-b NAME,...`` to choose), every analysed image's activations (at most
``sample``, 5,000 by default: a seeded sample of a larger set) are pooled (mean and max over
the positions of a map, or the tokens of a transformer) and:

* **Layer-specific predictions.** A linear probe per layer (logistic regression on the
  standardised pooled activations), *cross-fitted*: the images are split in ``folds`` and
  each fold is scored by a probe fitted on the others, so no image is scored by a probe that
  saw it. The probe predicts the model's *own* final answer; its agreement with that answer,
  per layer, is how far the model has decided by that depth. The model's output is the last
  depth (agreement 1 by definition). Per top concept the agreement is split between the
  images that hold a patch of the concept and the others: the concept is *decided at* the
  first depth where the probe agrees on at least ``decided`` (90 %) of them
  (:func:`decided_at`).
* **Where A and B part ways.** Linear CKA (Kornblith et al., 2019) between every layer of A
  and every layer of B, on the pooled activations of all images and of each top concept's
  images (:func:`linear_cka`).
* **Which filters carry a concept.** For each top concept and each model's last two layers,
  captum's layer attribution (``LayerGradientXActivation`` for the model's predicted class)
  summed inside the concept's patch boxes, mapped onto the layer's grid; the ``channels``
  (3) channels with the largest sum, each with the ``top_patches`` patches of the run that
  activate it most (mean activation inside the patch's box). The causal check, as the
  what-if's: zeroing the top channels on the concept's images flips the model's answer on
  ``flip_top`` of them, zeroing as many random other channels of the same layer on
  ``flip_random`` (mean over ``draws`` random sets).

A TorchScript or exported model takes no layer hooks: its part is absent, and the manifest's
``layers`` section says why and how to get it (:data:`ABSENT`).

This module imports no torch at import time (the run reader and the dashboard import its
table helpers); the stage does the forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .runformat import LAYER_TABLES, ROLES, empty
from .settings import AttributionSettings, LayerSettings, Preprocess
from .stage import stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .attribution import PairedAttribution
    from .data import ImageRecord
    from .models import LoadedModel

#: at most this many layers per model by default (evenly spaced, the last kept)
MAX_LAYERS = 6
#: a concept's CKA and agreement split need at least this many images on each side
MIN_IMAGES = 10
#: a probe reads at most this many dimensions of a layer (a PCA fitted on its training folds)
PROBE_DIMS = 256
#: the name of the last depth: the model's own answer
OUTPUT = "output"
#: modules that keep a map's shape and do not end a block (a block ends before the next
#: module that is not one of these)
ELEMENTWISE = frozenset(
    {
        *("ReLU", "ReLU6", "GELU", "SiLU", "LeakyReLU", "ELU", "Hardswish", "Hardsigmoid"),
        *("Sigmoid", "Tanh", "Mish", "PReLU", "Dropout", "Dropout2d", "Identity"),
        *("BatchNorm2d", "GroupNorm", "LayerNorm", "LayerNorm2d", "InstanceNorm2d"),
    }
)
#: why a model's part is absent, and how to get it (``{R}``: A or B, ``{kind}``: its format)
#: how :data:`ABSENT` names a model format that takes no hooks
_FORMAT_WORDS = {"torchscript": "TorchScript", "export": "torch.export"}
ABSENT = (
    "model {R} is a {kind} model, whose layers take no hooks: give it as an eager module "
    "(package.module:factory with --weights-{r} FILE.safetensors, timm:NAME or hf:DIR) to "
    "see inside it"
)


# --- torch-free: reading the tables ---------------------------------------------------


def decided_at(agreement: pd.DataFrame, role: str, concept: int, column: str, threshold: float):
    """The first depth (1-based) at which the probe of model ``role`` agrees with the final
    answer on at least ``threshold`` of the images (``column``: ``agree`` for the concept's
    images, or all images with concept -1; ``agree_without`` for the others), or None."""
    t = agreement[(agreement["role"] == role) & (agreement["concept"] == concept)]
    t = t.sort_values("depth")
    hit = t[t[column].to_numpy(float) >= threshold - 1e-12]
    return None if hit.empty else int(hit["depth"].iloc[0])


def decided_words(
    agreement: pd.DataFrame, role: str, concept: int, column: str, threshold: float
) -> str:
    """Where model ``role`` decides ``concept`` (:func:`decided_at`) in words, ``depth 2
    (layer2)``, or why it cannot be said: ``no depth`` (its probes never agree that often)
    or ``too few images to say (4)`` (under :data:`MIN_IMAGES`, the agreement is not
    computed)."""
    t = agreement[(agreement["role"] == role) & (agreement["concept"] == concept)]
    if len(t) and t[column].isna().all():
        n = int(t["n_images" if column == "agree" else "n_without"].iloc[0])
        return f"too few images to say ({n})"
    return depth_name(agreement, role, decided_at(agreement, role, concept, column, threshold))


def depth_name(agreement: pd.DataFrame, role: str, depth: int | None) -> str:
    """``depth 2 (layer2)``: a depth of model ``role`` in words (a module named by a number,
    as in a ``Sequential``, is ``module 3``)."""
    if depth is None:
        return "no depth"
    rows = agreement[(agreement["role"] == role) & (agreement["depth"] == depth)]
    layer = str(rows["layer"].iloc[0]) if len(rows) else "?"
    if layer == OUTPUT:
        return f"depth {depth} (its output)"
    return f"depth {depth} ({'module ' if layer.isdigit() else ''}{layer})"


def ablation_sentence(rows: pd.DataFrame) -> str:
    """The ablation check of one (concept, model, layer) in words, from its channel rows:
    ``zeroing its top 3 channels of layer4 (12, 7, 30) flips 0% of 60 images, 3 random
    ones 0%; its top 6 flip 60%, 6 random 0%``."""
    row = rows.iloc[0]
    layer = str(row["layer"])
    text = (
        f"zeroing its top {len(rows)} channel{'s' if len(rows) != 1 else ''} of "
        f"{'module ' if layer.isdigit() else ''}{layer} "
        f"({', '.join(str(int(c)) for c in rows['channel'])}) flips {row['flip_top']:.0%} of "
        f"{int(row['n_ablated'])} images, {len(rows)} random ones {row['flip_random']:.0%}"
    )
    k = int(row["n_zeroed"]) if pd.notna(row["n_zeroed"]) else len(rows)
    if k != len(rows):
        text += f"; its top {k} flip {row['flip_top_k']:.0%}, {k} random {row['flip_random_k']:.0%}"
    return text


def concept_sentence(
    agreement: pd.DataFrame, channels: pd.DataFrame, concept: int, threshold: float
) -> str:
    """One line per concept: where each model decides it, against the other images, and the
    ablation check of its channels in the model's last layer looked at
    (:func:`ablation_sentence`)."""
    parts = []
    for r in ("b", "a"):
        t = agreement[(agreement["role"] == r) & (agreement["concept"] == concept)]
        if t.empty:
            continue
        on = decided_words(agreement, r, concept, "agree", threshold)
        off = decided_words(agreement, r, concept, "agree_without", threshold)
        text = f"{r.upper()} decides it at {on} on its images, at {off} elsewhere"
        ch = channels[(channels["role"] == r) & (channels["concept"] == concept)]
        if len(ch):
            text += "; " + ablation_sentence(ch[ch["depth"] == ch["depth"].max()])
        parts.append(text)
    return "; ".join(parts)


def _hsic(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimator of HSIC with linear kernels (Song et al., 2012), of two
    representations of the same n >= 4 examples: the Gram matrices' diagonals left out, so
    that with few examples and many features unrelated representations score about 0. In
    the Gram form or the feature form, whichever is smaller."""
    n = len(x)
    if n <= min(x.shape[1], y.shape[1]):
        k, lm = x @ x.T, y @ y.T
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(lm, 0.0)
        cross = float((k * lm).sum())
        k_sum, l_sum, k_row, l_row = float(k.sum()), float(lm.sum()), k.sum(1), lm.sum(1)
    else:
        d, e = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        cross = float(np.square(x.T @ y).sum()) - float(d @ e)
        sx, sy = x.sum(0), y.sum(0)
        k_sum, l_sum = float(sx @ sx) - float(d.sum()), float(sy @ sy) - float(e.sum())
        k_row, l_row = x @ sx - d, y @ sy - e
    both = k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k_row @ l_row)
    return (cross + both) / (n * (n - 3))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA (Kornblith et al., 2019, with Song et al.'s unbiased HSIC, as in
    Nguyen et al., 2021) of two representations of the same n examples, (n, p) and (n, q):
    1 for representations equal up to rotation and scale, about 0 for unrelated ones even
    with far more features than examples (plain linear CKA drifts towards 1 there: 0.99 on
    10 unrelated examples of 1,024 features); NaN when one is constant or n < 4."""
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0)
    if len(x) < 4:
        return float("nan")
    den = _hsic(x, x) * _hsic(y, y)
    return _hsic(x, y) / math.sqrt(den) if den > 0 else float("nan")


# --- finding the layers -----------------------------------------------------------------


def user_root(module: nn.Module) -> tuple[str, nn.Module]:
    """The user's model inside imacs's wrappers (normalisation, logits-only), and its path:
    layer names are given relative to it."""
    prefix, m = "", module
    while type(m).__module__.startswith("imacs.") and hasattr(m, "model"):
        prefix, m = f"{prefix}model.", m.model
    return prefix, m


def _spaced(names: list[str], at_most: int = MAX_LAYERS) -> list[str]:
    if len(names) <= at_most:
        return names
    keep = np.unique(np.round(np.linspace(0, len(names) - 1, at_most)).astype(int))
    return [names[i] for i in keep]


def _first(out: Any) -> Any:
    """A module's output tensor (the first of a tuple or a model output)."""
    if isinstance(out, tuple | list):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


def _shapes(module: nn.Module, names: list[str], probe: Tensor, forward: Callable) -> dict:
    """The output shape of each named submodule on ``probe``."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    mods = dict(module.named_modules())
    hooks = [
        mods[n].register_forward_hook(
            lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(_first(out).shape))
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            forward(probe)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def default_layers(module: nn.Module, probe: Tensor, forward: Callable) -> list[str]:
    """A few layers of ``module``, named relative to the user's model (:func:`user_root`):
    timm's ``feature_info`` modules; a Hugging Face model's encoder blocks (its outermost
    ``ModuleList`` of more than one block); otherwise the top-level children (or those of its
    top-level ``Sequential`` containers) whose output is a spatial map of more than one
    position and whose next sibling is not elementwise (so a block's last activation, not
    its convolution); at most :data:`MAX_LAYERS`, evenly spaced."""
    from torch import nn

    prefix, root = user_root(module)
    info = getattr(root, "feature_info", None)
    if isinstance(info, list | tuple) and info and all(isinstance(d, dict) for d in info):
        return _spaced([str(d["module"]) for d in info if "module" in d])
    if type(root).__module__.startswith("transformers"):
        lists = [  # the outermost list of blocks (the encoder's stages or layers)
            (n.count("."), -len(m), n)
            for n, m in root.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) > 1
        ]
        if lists:
            _, _, name = min(lists)
            return _spaced([f"{name}.{i}" for i in range(len(root.get_submodule(name)))])
    for flatten in (False, True):
        kids: list[tuple[str, nn.Module]] = []
        for n, m in root.named_children():
            if flatten and isinstance(m, nn.Sequential):
                kids += [(f"{n}.{k}", c) for k, c in m.named_children()]
            else:
                kids.append((n, m))
        shapes = _shapes(module, [prefix + n for n, _ in kids], probe, forward)
        picked = []
        for i, (n, _) in enumerate(kids):
            s = shapes.get(prefix + n, ())
            nxt = type(kids[i + 1][1]).__name__ if i + 1 < len(kids) else ""
            if len(s) == 4 and s[2] * s[3] > 1 and nxt not in ELEMENTWISE:
                picked.append(n)
        if len(picked) >= 2 or flatten:
            return _spaced(picked)
    return []


def resolve(module: nn.Module, names: Iterable[str], flag: str) -> dict[str, nn.Module]:
    """``{name: submodule}`` of the user's model; an unknown name is an error naming the
    flag and a few of the model's layers."""
    from .errors import InputError

    _, root = user_root(module)
    mods = dict(root.named_modules())
    out = {}
    for n in names:
        if n not in mods or n == "":
            known = [k for k in mods if k and "." not in k][:12]
            raise InputError(
                f"{flag} {n}: the model has no layer {n!r}; give names of its modules, "
                f"e.g. {', '.join(known)}"
            )
        out[n] = mods[n]
    return out


def check_names(models: dict[str, LoadedModel], settings: LayerSettings) -> None:
    """Before any work: the layers named with ``--layers-a/--layers-b`` exist, in a model
    that takes hooks."""
    from .errors import InputError

    for r in ROLES:
        names = getattr(settings, f"layers_{r}")
        if not names or not settings.enabled:
            continue
        if not models[r].eager:
            raise InputError(
                f"--layers-{r}: "
                + ABSENT.format(
                    R=r.upper(),
                    r=r,
                    kind=_FORMAT_WORDS.get(models[r].spec.format.name, models[r].spec.format.name),
                )
            )
        resolve(models[r].module, names, f"--layers-{r}")


# --- activations ----------------------------------------------------------------------


def pooled(t: Tensor) -> np.ndarray:
    """(n, 2c) float32: a layer's output pooled per image, mean and max over its positions
    (a map's pixels, a transformer's tokens)."""
    t = _first(t).float()
    if t.ndim == 4:
        flat = t.flatten(2)
        out = np.concatenate([flat.mean(2).cpu().numpy(), flat.amax(2).cpu().numpy()], 1)
    elif t.ndim == 3:
        out = np.concatenate([t.mean(1).cpu().numpy(), t.amax(1).cpu().numpy()], 1)
    else:
        out = t.reshape(len(t), -1).cpu().numpy()
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # a layer's inf or NaN


def as_map(t: Tensor) -> Tensor | None:
    """(n, c, h, w): a layer's output as a map of channels, a transformer's tokens laid on
    their square grid (a leading class token dropped); None when it has no grid."""
    t = _first(t)
    if t.ndim == 4:
        return t
    if t.ndim == 3:
        n, tokens, d = t.shape
        for skip in (0, 1):
            g = math.isqrt(tokens - skip)
            if g * g == tokens - skip and g > 1:
                return t[:, skip:].transpose(1, 2).reshape(n, d, g, g)
    return None


def grid_box(box: np.ndarray, hw: tuple[int, int], grid: tuple[int, int]) -> tuple[int, ...]:
    """A box (x0, y0, x1, y1 in model-input pixels) on a (h, w) grid, at least one cell."""
    x0, y0, x1, y1 = (float(v) for v in box)
    gx0 = min(grid[1] - 1, int(x0 * grid[1] / hw[1]))
    gy0 = min(grid[0] - 1, int(y0 * grid[0] / hw[0]))
    gx1 = max(gx0 + 1, math.ceil(x1 * grid[1] / hw[1]))
    gy1 = max(gy0 + 1, math.ceil(y1 * grid[0] / hw[0]))
    return gx0, gy0, gx1, gy1


def _batches(
    records: list[ImageRecord], ids: np.ndarray, preprocess: Preprocess, size: int
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(ids, (n, 3, H, W) pixels) of the images that decode, ``size`` at a time."""
    from .attribute_set import _decode, _pool

    with _pool() as pool:
        for s in range(0, len(ids), size):
            part = ids[s : s + size]
            decoded = list(pool.map(lambda i: _decode(records[int(i)], preprocess)[0], part))
            ok = [k for k, d in enumerate(decoded) if d is not None]
            if ok:
                yield part[ok], np.stack([decoded[k] for k in ok])


# --- the stage's parts ----------------------------------------------------------------


class _Model:
    """One eager model's layers, the forward passes the stage makes of it, and its results."""

    def __init__(self, engine: PairedAttribution, role: str, names: list[str]) -> None:
        self.engine, self.role = engine, role
        self.forward = engine.logits_function(role)
        self.names = names
        self.modules = resolve(engine.models[role], names, f"--layers-{role}")
        self.last = names[-2:]

    def tensor(self, x: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(x).to(self.engine.device)

    def activations(self, x: np.ndarray, names: list[str]) -> list[Tensor]:
        """Each named layer's output on the batch (captum's ``LayerActivation``)."""
        import torch
        from captum.attr import LayerActivation

        with torch.no_grad():
            out = LayerActivation(self.forward, [self.modules[n] for n in names]).attribute(
                self.tensor(x)
            )
        return list(out) if isinstance(out, list) else [out]

    def gradient_x_activation(self, x: np.ndarray, target: np.ndarray) -> list[Tensor]:
        """The last two layers' attribution of the predicted class's margin over the next
        class (captum's ``LayerGradientXActivation``): what moves the decision, not what
        raises every logit alike, and without the softmax's saturation."""
        import torch
        from captum.attr import LayerGradientXActivation

        def margin(x: Tensor) -> Tensor:
            z = self.forward(x)
            top2 = z.topk(min(2, z.shape[1]), 1).values
            other = torch.where(z >= top2[:, :1], top2[:, -1:], top2[:, :1])
            return z - other  # each class's logit minus the largest other one

        lga = LayerGradientXActivation(margin, [self.modules[n] for n in self.last])
        out = lga.attribute(self.tensor(x), target=torch.from_numpy(target).to(self.engine.device))
        return [_first(o).detach() for o in (out if isinstance(out, list) else [out])]

    def predictions_without(
        self, x: np.ndarray, layer: str, zeroed: list[np.ndarray], width: int
    ) -> np.ndarray:
        """(variants, n): the predicted classes of the images ``x`` with each variant's
        channels of ``layer`` (of ``width``) zeroed, every variant in one forward pass."""
        import torch

        v, n = len(zeroed), len(x)
        keep = torch.ones(v, width)
        for i, ch in enumerate(zeroed):
            keep[i, torch.as_tensor(ch, dtype=torch.long)] = 0
        keep = keep.repeat_interleave(n, 0).to(self.engine.device)

        def zero(_m: nn.Module, _i: Any, out: Any) -> Any:
            t = _first(out)
            if t.ndim == 3:  # a transformer's tokens: channels are the last axis
                t = t * keep[:, None, :].to(t.dtype)
            else:
                t = t * keep.view(*keep.shape, *([1] * (t.ndim - 2))).to(t.dtype)
            return (t, *out[1:]) if isinstance(out, tuple) else t

        hook = self.modules[layer].register_forward_hook(zero)
        try:
            with torch.no_grad():
                xs = self.tensor(x).repeat(v, *([1] * (x.ndim - 1)))
                return self.forward(xs).argmax(1).cpu().numpy().reshape(v, n)
        finally:
            hook.remove()


def _concept_boxes(patches: pd.DataFrame, top: list[int]) -> dict[int, dict[int, np.ndarray]]:
    """image -> concept -> (k, 4) boxes in model-input pixels, for the top concepts."""
    p = patches[patches["concept"].isin(top)]
    boxes = p[["in_x0", "in_y0", "in_x1", "in_y1"]].to_numpy(np.int64)
    out: dict[int, dict[int, np.ndarray]] = {}
    for (img, c), rows in p.groupby(["image_id", "concept"]).indices.items():
        out.setdefault(int(img), {})[int(c)] = boxes[rows]
    return out


def _first_pass(
    m: _Model,
    records: list[ImageRecord],
    ids: np.ndarray,
    pred: np.ndarray,
    boxes: dict[int, dict[int, np.ndarray]],
    preprocess: Preprocess,
    batch: int,
) -> tuple[dict[str, np.ndarray], dict[tuple[int, str], np.ndarray], np.ndarray]:
    """Pooled activations of every layer (n, f) for the images ``ids``, each top concept's
    box-restricted channel attribution summed over its images per last layer, and which
    images decoded."""
    hw = preprocess.input_size
    feats: dict[str, list[np.ndarray]] = {n: [] for n in m.names}
    scores: dict[tuple[int, str], np.ndarray] = {}
    done = []
    for part, x in _batches(records, ids, preprocess, batch):
        done.append(part)
        for n, t in zip(m.names, m.activations(x, m.names), strict=True):
            feats[n].append(pooled(t))
        for n, a in zip(m.last, m.gradient_x_activation(x, pred[part]), strict=True):
            amap = as_map(a)
            if amap is None:
                continue
            arr = np.nan_to_num(amap.float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
            for k, img in enumerate(part.tolist()):
                for c, bx in boxes.get(img, {}).items():
                    mask = np.zeros(arr.shape[2:], bool)
                    for b in bx:
                        gx0, gy0, gx1, gy1 = grid_box(b, hw, arr.shape[2:])
                        mask[gy0:gy1, gx0:gx1] = True
                    s = arr[k][:, mask].sum(1)
                    scores[c, n] = scores.get((c, n), 0) + s
    decoded = np.concatenate(done) if done else np.zeros(0, np.int64)
    return {n: np.concatenate(f) for n, f in feats.items() if f}, scores, decoded


def probe_predictions(
    features: np.ndarray, answer: np.ndarray, folds: int, seed: int
) -> np.ndarray | None:
    """Cross-fitted linear probe: each image's class as predicted by a logistic regression
    fitted on the other folds' images (standardised features, reduced by a PCA fitted on
    the same folds to :data:`PROBE_DIMS` when wider), never on its own. None under
    :data:`MIN_IMAGES` images (a probe says nothing there)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(answer) < MIN_IMAGES:
        return None
    out = np.empty(len(answer), answer.dtype)
    k = max(2, min(folds, len(answer)))
    for train, test in KFold(k, shuffle=True, random_state=seed).split(features):
        classes = np.unique(answer[train])
        if len(classes) == 1:
            out[test] = classes[0]
            continue
        steps: list = [StandardScaler()]
        dims = min(PROBE_DIMS, len(train) - 1)
        if features.shape[1] > dims:  # thousands of features: the fit's cost, not its answer
            steps.append(PCA(dims, svd_solver="randomized", random_state=seed))
        probe = make_pipeline(*steps, LogisticRegression(C=1.0, max_iter=300))
        out[test] = probe.fit(features[train], answer[train]).predict(features[test])
    return out


def _agreement_rows(
    role: str,
    names: list[str],
    channels: dict[str, int],
    agree: dict[str, np.ndarray | None],
    holds: dict[int, np.ndarray],
    n_images: int,
) -> list[dict[str, object]]:
    """Rows of ``layer_agreement`` for one model: all images (concept -1) and each top
    concept's images against the others, at every depth (the output last). Without probes
    (``agree`` None: too few images), every agreement is missing."""
    rows = []
    layers = [*names, OUTPUT]
    for d, n in enumerate(layers, start=1):
        probed = agree[n] if n != OUTPUT else np.ones(n_images, bool)
        ok = probed if probed is not None and n_images >= MIN_IMAGES else np.full(n_images, np.nan)
        base = {"role": role, "depth": d, "layer": n, "channels": channels.get(n, 0)}
        rows.append(
            {**base, "concept": -1, "agree": float(ok.mean()), "n_images": len(ok),
             "agree_without": float("nan"), "n_without": 0}
        )  # fmt: skip
        for c, has in holds.items():  # a share of fewer than MIN_IMAGES images is not kept
            on, off = int(has.sum()), int((~has).sum())
            rows.append(
                {**base, "concept": c, "n_images": on, "n_without": off,
                 "agree": float(ok[has].mean()) if on >= MIN_IMAGES else np.nan,
                 "agree_without": float(ok[~has].mean()) if off >= MIN_IMAGES else np.nan}
            )  # fmt: skip
    return rows


def _cka_rows(
    feats: dict[str, dict[str, np.ndarray]], holds: dict[int, np.ndarray]
) -> list[dict[str, object]]:
    """Rows of ``layer_cka``: every layer of A against every layer of B, on all images and
    on each top concept's images (when it has :data:`MIN_IMAGES`)."""
    rows = []
    scopes = {-1: np.ones(len(next(iter(feats["a"].values()))), bool), **holds}
    for c, has in scopes.items():
        if has.sum() < MIN_IMAGES:
            continue
        for da, (na, fa) in enumerate(feats["a"].items(), start=1):
            for db, (nb, fb) in enumerate(feats["b"].items(), start=1):
                rows.append(
                    {"concept": c, "layer_a": na, "layer_b": nb, "depth_a": da,
                     "depth_b": db, "cka": linear_cka(fa[has], fb[has]),
                     "n_images": int(has.sum())}
                )  # fmt: skip
    return rows


def ladder(first: int, width: int, most: int = 256) -> list[int]:
    """How many top channels the ablation zeroes in turn: ``first``, then doubling, up to
    half the layer's ``width`` (at most ``most``)."""
    top = max(1, min(width // 2, most))
    out = [min(first, top)]
    while out[-1] < top:
        out.append(min(2 * out[-1], top))
    return out


def _flips(
    m: _Model,
    layer: str,
    batches: list[tuple[np.ndarray, np.ndarray]],
    zeroed: list[np.ndarray],
    width: int,
) -> np.ndarray:
    """(variants,): on how many of the images each variant (channels to zero) changes the
    predicted class, against the same pass with nothing zeroed (so that a near tie that
    rounds differently in a larger batch, as on a GPU, is not counted as a flip); the
    variants of a few images at a time share a forward pass."""
    out = np.zeros(len(zeroed), np.int64)
    variants = [np.zeros(0, np.int64), *zeroed]
    for part, x in batches:
        step = max(1, len(part) // len(variants))
        for s in range(0, len(part), step):
            after = m.predictions_without(x[s : s + step], layer, variants, width)
            out += (after[1:] != after[0][None]).sum(1)
    return out


def _ablation(
    m: _Model,
    layer: str,
    batches: list[tuple[np.ndarray, np.ndarray]],
    order: np.ndarray,
    first: int,
    settings: LayerSettings,
    rng: np.random.Generator,
) -> dict[str, object]:
    """The causal check of a concept's channels in one layer: zero its top ``first``
    channels (those its rows list), and as many random other ones (``draws`` sets); then,
    if that flips fewer than half the images, twice as many and so on (:func:`ladder`)
    until it flips half or half the layer is zeroed."""
    n = sum(len(p) for p, _ in batches)
    out: dict[str, object] = {"n_ablated": n}
    for k in ladder(first, len(order)):
        top = order[:k]
        others = np.setdiff1d(np.arange(len(order)), top)
        draws = [rng.choice(others, k, replace=False) for _ in range(settings.draws)]
        flips = _flips(m, layer, batches, [top, *draws], len(order)) / max(1, n)
        flip, flip_random = float(flips[0]), float(flips[1:].mean())
        if "flip_top" not in out:
            out |= {"flip_top": flip, "flip_random": flip_random}
        out |= {"n_zeroed": k, "flip_top_k": flip, "flip_random_k": flip_random}
        if flip >= 0.5:
            break
    return out


def _channel_rows(
    m: _Model,
    records: list[ImageRecord],
    scores: dict[tuple[int, str], np.ndarray],
    members: dict[int, np.ndarray],
    settings: LayerSettings,
    preprocess: Preprocess,
    batch: int,
    seed: int,
) -> list[dict[str, object]]:
    """Rows of ``layer_channels``: each top concept's top channels in the last two layers
    (those with positive attribution in its boxes), with the ablation check on (a seeded
    sample of) the concept's images."""
    rng = np.random.default_rng(seed)
    rows = []
    for (c, n), s in sorted(scores.items()):
        imgs = members[c]
        if len(imgs) > settings.ablation_images:
            imgs = np.sort(rng.choice(imgs, settings.ablation_images, replace=False))
        # the channels listed are the ones the first ablation step zeroes: at most half
        k = min(settings.channels, max(1, len(s) // 2), int((s > 0).sum()))
        if k < 1 or len(imgs) == 0:
            continue  # no channel carries any of it here
        order = np.argsort(-s, kind="stable")
        batches = list(_batches(records, imgs, preprocess, batch))
        check = _ablation(m, n, batches, order, k, settings, rng)
        positive = float(s[s > 0].sum())
        for rank, ch in enumerate(order[:k], start=1):
            rows.append(
                {"concept": c, "role": m.role, "layer": n, "depth": m.names.index(n) + 1,
                 "rank": rank, "channel": int(ch), "score": float(s[ch] / len(members[c])),
                 "share": float(s[ch] / positive), **check, "top_patches": ""}
            )  # fmt: skip
    return rows


def _top_patches(
    m: _Model,
    records: list[ImageRecord],
    patches: pd.DataFrame,
    rows: list[dict[str, object]],
    preprocess: Preprocess,
    batch: int,
    how_many: int,
) -> None:
    """Fill each channel row's ``top_patches``: the patches of the run whose box the
    channel activates most (mean activation inside the box), as comma-separated ids."""
    chosen = {n: sorted({int(r["channel"]) for r in rows if r["layer"] == n}) for n in m.last}
    chosen = {n: c for n, c in chosen.items() if c}
    if not chosen or patches.empty:
        return
    hw = preprocess.input_size
    by_image = patches.groupby("image_id").indices
    boxes = patches[["in_x0", "in_y0", "in_x1", "in_y1"]].to_numpy(np.int64)
    pid = patches["patch_id"].to_numpy()
    act = {n: np.full((len(patches), len(c)), -np.inf, np.float32) for n, c in chosen.items()}
    ids = np.asarray(sorted(by_image), np.int64)
    names = list(chosen)
    for part, x in _batches(records, ids, preprocess, batch):
        for n, t in zip(names, m.activations(x, names), strict=True):
            amap = as_map(t)
            if amap is None:
                continue
            arr = amap[:, chosen[n]].float().cpu().numpy()
            for k, img in enumerate(part.tolist()):
                for row in by_image[img]:
                    gx0, gy0, gx1, gy1 = grid_box(boxes[row], hw, arr.shape[2:])
                    act[n][row] = arr[k][:, gy0:gy1, gx0:gx1].mean((1, 2))
    for r in rows:
        col = chosen[str(r["layer"])].index(int(r["channel"]))  # type: ignore[call-overload]
        best = np.argsort(-act[str(r["layer"])][:, col], kind="stable")[:how_many]
        r["top_patches"] = ",".join(str(int(pid[b])) for b in best)


def _info(
    settings: LayerSettings, layers: dict[str, list[str]], absent: dict[str, str]
) -> dict[str, object]:
    return {
        "layers": layers,
        "absent": absent,
        "decided": settings.decided,
        "folds": settings.folds,
        "channels": settings.channels,
        "draws": settings.draws,
        "top": settings.top,
        "pooling": "mean and max over each map's positions (a transformer's tokens)",
    }


class _Inside:
    """What the stage found inside one model."""

    def __init__(self, names: list[str], done: np.ndarray, feats: dict[str, np.ndarray]) -> None:
        self.names, self.done, self.feats = names, done, feats
        self.agreement: list[dict[str, object]] = []
        self.channels: list[dict[str, object]] = []


def _inside(
    engine: PairedAttribution,
    role: str,
    names: list[str],
    records: list[ImageRecord],
    images: pd.DataFrame,
    patches: pd.DataFrame,
    top: list[int],
    settings: LayerSettings,
    preprocess: Preprocess,
    batch: int,
    seed: int,
) -> _Inside:
    """Probes, agreement rows and channel rows of one eager model."""
    m = _Model(engine, role, names)
    ids = images["image_id"].to_numpy(np.int64)
    pred = images.set_index("image_id")[f"pred_{role}"].reindex(np.arange(ids.max() + 1))
    pred = pred.fillna(-1).to_numpy(np.int64)
    members = {c: np.unique(patches.loc[patches["concept"] == c, "image_id"]) for c in top}
    boxes = _concept_boxes(patches, top)
    feats, scores, done = _first_pass(m, records, ids, pred, boxes, preprocess, batch)
    found = _Inside(names, done, feats)
    answer = pred[done]
    probed = {n: probe_predictions(feats[n], answer, settings.folds, seed) for n in names}
    agree = {n: None if p is None else p == answer for n, p in probed.items()}
    holds = {c: np.isin(done, members[c]) for c in top}
    width = {n: int(feats[n].shape[1] // 2) for n in names}
    found.agreement = _agreement_rows(role, names, width, agree, holds, len(done))
    rows = _channel_rows(m, records, scores, members, settings, preprocess, batch, seed)
    _top_patches(m, records, patches, rows, preprocess, batch, settings.top_patches)
    found.channels = rows
    return found


def _names(engine: PairedAttribution, role: str, settings: LayerSettings) -> list[str]:
    """The layers the user named for ``role``, or :func:`default_layers`."""
    import torch

    chosen = list(getattr(settings, f"layers_{role}"))
    if chosen:
        return chosen
    h, w = engine.preprocess.input_size
    probe = torch.zeros(1, 3, h, w, device=engine.device)
    return default_layers(engine.models[role], probe, engine.logits_function(role))


def _cka_table(inside: dict[str, _Inside], patches: pd.DataFrame, top: list[int]) -> pd.DataFrame:
    """``layer_cka`` on the images both models' passes decoded."""
    common = np.intersect1d(inside["a"].done, inside["b"].done)
    pick = {
        r: {n: v[np.isin(inside[r].done, common)] for n, v in inside[r].feats.items()}
        for r in ROLES
    }
    members = {c: np.unique(patches.loc[patches["concept"] == c, "image_id"]) for c in top}
    rows = _cka_rows(pick, {c: np.isin(common, members[c]) for c in top})
    return pd.DataFrame(rows) if rows else empty("layer_cka")


@stage(
    "layers",
    reads=("engine", "models", "records", "images", "patches", "concepts", "say"),
    produces=("layer_agreement", "layer_cka", "layer_channels", "layers_info"),
    settings=("layers", "preprocess", "attribution", "seed"),
)
def layers_stage(
    engine: PairedAttribution,
    models: dict[str, LoadedModel],
    records: list[ImageRecord],
    images: pd.DataFrame,
    patches: pd.DataFrame,
    concepts: pd.DataFrame,
    say: Callable[[str], None],
    layers: LayerSettings,
    preprocess: Preprocess,
    attribution: AttributionSettings,
    seed: int,
) -> dict[str, object]:
    """Layer probes, CKA and the channels that carry each top concept (module docstring)."""
    absent = {
        r: ABSENT.format(
            R=r.upper(),
            r=r,
            kind=_FORMAT_WORDS.get(models[r].spec.format.name, models[r].spec.format.name),
        )
        for r in ROLES
        if layers.enabled and not models[r].eager  # --no-layers says so, not this
    }
    out: dict[str, object] = {n: empty(n) for n in LAYER_TABLES}
    top = [int(c) for c in concepts.sort_values("rank")["concept"].head(layers.top)]
    if len(images) > layers.sample:  # a seeded sample bounds the passes and the memory
        images = images.sample(layers.sample, random_state=seed).sort_values("image_id")
        patches = patches[patches["image_id"].isin(images["image_id"])]
    inside: dict[str, _Inside] = {}
    for r in ROLES if layers.enabled and not images.empty else ():
        if r in absent:
            continue
        names = _names(engine, r, layers)
        if not names:
            absent[r] = (
                f"model {r.upper()}: no layer with a spatial map was found; name its layers "
                f"with --layers-{r} NAME,..."
            )
            continue
        say(f"inside model {r.upper()}: layers {', '.join(names)}")
        inside[r] = _inside(
            engine, r, names, records, images, patches, top, layers, preprocess,
            max(8, 2 * attribution.batch_size), seed,
        )  # fmt: skip
    for name, part in (("layer_agreement", "agreement"), ("layer_channels", "channels")):
        rows = [row for i in inside.values() for row in getattr(i, part)]
        if rows:
            out[name] = pd.DataFrame(rows)
    if len(inside) == 2:
        out["layer_cka"] = _cka_table(inside, patches, top)
    found = {r: i.names for r, i in inside.items()}
    out["layers_info"] = _info(layers, found, absent) | {
        "enabled": layers.enabled,
        "n_images": len(images),
    }
    return out


__all__ = [
    "ABSENT",
    "OUTPUT",
    "ablation_sentence",
    "as_map",
    "check_names",
    "concept_sentence",
    "decided_at",
    "decided_words",
    "default_layers",
    "depth_name",
    "ladder",
    "layers_stage",
    "linear_cka",
    "pooled",
    "probe_predictions",
    "resolve",
    "user_root",
]
