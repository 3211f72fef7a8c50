"""Trust in the maps: do they point at what the model actually uses?

On a seeded sample of images (:class:`TrustSettings`, ``--trust-sample``), for each model:

* **Deletion and insertion curves.** Pixels are replaced by the run's Integrated Gradients
  baseline in the order of the model's positive attribution, most attributed first
  (*deletion*), or revealed on top of the baseline in that order (*insertion*), in ``steps``
  equal steps; the curve is the model's probability of the class it originally predicted.
  The same is done in a random pixel order, the control. The area under a curve (fraction of
  pixels on x, probability on y) summarises it: good maps give a lower deletion area and a
  higher insertion area than the random order. A model whose deletion area is not below the
  random one by ``margin`` (or by two standard errors over the sample, if more) gets a
  warning: its maps are no better than chance at pointing to what it uses.
* **Infidelity** (captum's ``infidelity``, normalised so the maps' scale does not matter):
  the squared error between the attribution-weighted pixel noise and the change in the
  logit it causes; lower is better. The same maps with their pixels shuffled are the control.
* **Sensitivity** (captum's ``sensitivity_max``): the largest relative change of the map when
  the image is perturbed by uniform noise of ``sensitivity_radius``; it re-runs Integrated
  Gradients with the run's settings, so it uses a smaller sub-sample.
* **Convergence delta** over every image (computed by the attribution stage): its absolute
  value and its size relative to ``f(x) - f(baseline)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import first_line
from .settings import Preprocess, TrustSettings, WhatIfSettings
from .stage import stage

if TYPE_CHECKING:
    import torch

    from .attribute_set import SetAttribution
    from .attribution import PairedAttribution
    from .data import ImageRecord


def pick_sample(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct image indices out of ``n`` (all of them if fewer), ascending."""
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _budget(engine: PairedAttribution, pixels: int) -> int:
    """Images per forward and backward pass: on a CPU ~300k input floats, which stay in
    cache (the attribution stage's rule, BENCHMARKS.md); much more on a GPU."""
    floats = 300_000 if engine.device.type == "cpu" else 60_000_000
    return max(1, floats // (3 * pixels))


def forward_budget(engine: PairedAttribution, pixels: int) -> int:
    """Images per forward-only pass: four times :func:`_budget` (nothing is kept for a
    backward pass; on a CPU, passes of 96 images of 64x64 ran twice as fast per image as
    passes of 24, BENCHMARKS.md)."""
    return 4 * _budget(engine, pixels)


def curves(
    engine: PairedAttribution,
    role: str,
    images: np.ndarray,
    maps: np.ndarray,
    target: np.ndarray,
    steps: int,
    seed: int,
    removal: str = "baseline",
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of model ``role``, in the maps' order and at random.

    Every (image, step, curve, order) input of the model is made and run in passes of
    :func:`forward_budget` images, as Integrated Gradients runs its steps.

    Args:
        engine (PairedAttribution): the run's engine (device, baseline, preprocessing).
        role (str): the model.
        images (numpy.ndarray): (n, 3, H, W) pixels in [0, 1].
        maps (numpy.ndarray): (n, H, W) attribution maps of the model for these images.
        target (numpy.ndarray): (n,) class whose probability is followed.
        steps (int): curve steps; the curves have ``steps + 1`` points.
        seed (int): seed of the random orders (and of ``road``'s noise).
        removal (str): how removed pixels are filled (:data:`imacs.removal.FILLS`).
            Default: ``baseline``.

    Returns:
        ``deletion``, ``insertion``, ``deletion_random``, ``insertion_random``: each
        (n, steps + 1) probabilities at fractions ``0, 1/steps, ..., 1`` of the pixels.
    """
    import torch

    from .removal import MASK_FREE, fill_image

    n, _, h, w = images.shape
    ranks = _removal_ranks(maps, seed)
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64)
    images = np.ascontiguousarray(images, dtype=np.float32)
    x_all = torch.from_numpy(images).to(engine.device)
    filler = None
    if removal in MASK_FREE:
        base = engine.baseline_array(images) if removal == "baseline" else None
        filler = torch.from_numpy(fill_image(images, removal, base)).to(engine.device)
    rank_t = torch.from_numpy(ranks.reshape(2, n, 1, h, w)).to(engine.device)
    tgt = torch.as_tensor(target, dtype=torch.long, device=engine.device)
    # one job per (order, image, curve, step): the curve's pixels removed so far
    jobs = [a.ravel() for a in np.meshgrid(
        np.arange(2), np.arange(n), np.arange(2), np.arange(steps + 1), indexing="ij"
    )]  # fmt: skip
    out = np.empty(len(jobs[0]))
    per_pass = forward_budget(engine, h * w)
    for s in range(0, len(out), per_pass):
        o_, i_, c_, k_ = (a[s : s + per_pass] for a in jobs)
        o, i, c, k = (torch.from_numpy(a).to(engine.device) for a in (o_, i_, c_, counts[k_]))
        gone = rank_t[o, i] < k.view(-1, 1, 1, 1)
        gone = torch.where(c.view(-1, 1, 1, 1) == 0, gone, ~gone)  # insertion: the rest
        if filler is not None:
            x = torch.where(gone, filler[i], x_all[i])
        else:
            seeds = [[seed, *job] for job in zip(o_, i_, c_, k_, strict=True)]
            x = _filled(x_all[i], gone, removal, images[i_], seeds)
        p = engine.probabilities(role, x)
        out[s : s + per_pass] = p.gather(1, tgt[i].view(-1, 1)).squeeze(1).float().cpu().numpy()
    out = out.reshape(2, n, 2, steps + 1)
    return {
        f"{curve}{suffix}": out[o, :, c]
        for o, suffix in enumerate(("", "_random"))
        for c, curve in enumerate(("deletion", "insertion"))
    }


def _removal_ranks(maps: np.ndarray, seed: int) -> np.ndarray:
    """(2, n, H * W): when each pixel goes, in the maps' order (most positive attribution
    first; equal values, a flat region, in random order) and in a random order."""
    n = len(maps)
    rng = np.random.default_rng(seed)
    flat = np.asarray(maps, dtype=np.float32).reshape(n, -1)
    pixels = flat.shape[1]
    orders = (
        np.lexsort((rng.random((n, pixels)), -flat), axis=1),
        np.argsort(rng.random((n, pixels)), axis=1),
    )
    ranks = np.empty((2, n, pixels), np.int64)
    for o, order in enumerate(orders):
        np.put_along_axis(ranks[o], order, np.arange(pixels)[None, :], axis=1)
    return ranks


def _filled(
    x: torch.Tensor, gone: torch.Tensor, removal: str, pixels: np.ndarray, seeds: list
) -> torch.Tensor:
    """``x`` with the pixels ``gone`` filled by a fill that depends on what is removed:
    ``mean`` (the kept pixels' mean colour, on the device) or ``road`` (:mod:`imacs.removal`,
    solved approximately for the whole pass at once, on the CPU, from ``pixels``, the same
    images as numpy)."""
    import torch

    from .removal import fill

    if removal == "mean":
        keep = (~gone).float()
        count = keep.sum((2, 3), keepdim=True)
        mean = (x * keep).sum((2, 3), keepdim=True) / count.clamp(min=1.0)
        mean = torch.where(count > 0, mean, x.mean((2, 3), keepdim=True))
        return torch.where(gone, mean, x)
    out = fill(pixels, gone[:, 0].cpu().numpy(), removal, seeds=seeds, exact=False)
    return torch.from_numpy(out).to(x.device)


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under (n, steps + 1) curves over fractions 0..1 (trapezoids)."""
    steps = curve.shape[1] - 1
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * steps)


def infidelity_scores(
    engine: PairedAttribution,
    role: str,
    images: np.ndarray,
    maps: np.ndarray,
    target: np.ndarray,
    settings: TrustSettings,
) -> dict[str, np.ndarray]:
    """captum's normalised ``infidelity`` of the maps and of the same maps pixel-shuffled.

    The noise is one value per pixel shared by the colour channels, so a channel-summed map
    (what a run keeps) is the exact attribution for it: its share per channel is a third.
    """
    import torch
    from captum.metrics import infidelity

    n, _, h, w = images.shape
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(engine.device)
    tgt = torch.as_tensor(target, dtype=torch.long, device=engine.device)
    rng = np.random.default_rng(settings.seed + 1)
    shuffled = np.stack([rng.permutation(m.ravel()).reshape(h, w) for m in maps])
    forward = engine.logits_function(role)
    out = {}
    for name, m in (("infidelity", maps), ("infidelity_shuffled", shuffled)):
        attr = torch.from_numpy(np.asarray(m, np.float32) / 3.0).to(engine.device)
        attr = attr[:, None].expand(-1, 3, -1, -1)
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)

        def perturb(inputs: torch.Tensor, g: torch.Generator = gen) -> tuple:
            noise = torch.randn((inputs.shape[0], 1, *inputs.shape[2:]), generator=g)
            noise = (noise * settings.noise).to(inputs.device).expand_as(inputs)
            return noise, inputs - noise

        per_batch = max(
            n, min(n * settings.infidelity_perturbations, forward_budget(engine, h * w))
        )
        with torch.no_grad():
            score = infidelity(
                forward, perturb, x, attr, target=tgt, normalize=True,
                n_perturb_samples=settings.infidelity_perturbations,
                max_examples_per_batch=per_batch,
            )  # fmt: skip
        out[name] = score.float().cpu().numpy()
    return out


def sensitivity_scores(
    engine: PairedAttribution,
    role: str,
    images: np.ndarray,
    target: np.ndarray,
    settings: TrustSettings,
) -> np.ndarray:
    """captum's ``sensitivity_max`` of the run's attribution method, per image."""
    import torch
    from captum.metrics import sensitivity_max

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(engine.device)
    h, w = x.shape[-2:]
    tgt = torch.as_tensor(target, dtype=torch.long, device=engine.device)
    method = engine.explainer(role)
    torch.manual_seed(settings.seed)  # captum's default perturbation draws from torch

    def explain(inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> tuple:
        (x,) = inputs  # captum passes tuples and wants them back
        maps = method.attribute(
            x, baselines=engine.baseline(x), target=target,
            internal_batch_size=max(len(x), _budget(engine, h * w)),
        ).sum(dim=1)  # fmt: skip
        return (maps,)

    score = sensitivity_max(
        explain, (x,), target=tgt, perturb_radius=settings.sensitivity_radius,
        n_perturb_samples=settings.sensitivity_perturbations,
    )  # fmt: skip
    return score.float().cpu().numpy()


def delta_stats(maps: np.ndarray, delta: np.ndarray, block: int = 256) -> dict[str, float]:
    """The convergence delta over every image: absolute, and relative to ``f(x) - f(b)``
    (a map's sum is ``f(x) - f(b) + delta``), streamed over memory-mapped maps; empty for
    a method without completeness (every delta NaN)."""
    if not np.isfinite(np.asarray(delta, np.float64)).any():
        return {}
    total = np.zeros(len(maps))
    for s in range(0, len(maps), block):
        total[s : s + block] = np.asarray(maps[s : s + block], np.float64).sum(axis=(1, 2))
    delta = np.asarray(delta, np.float64)
    gap = np.abs(total - delta)
    rel = np.abs(delta) / np.maximum(gap, 1e-6)
    return {
        "median_abs": float(np.median(np.abs(delta))),
        "p90_abs": float(np.quantile(np.abs(delta), 0.9)),
        "max_abs": float(np.abs(delta).max()),
        "median_rel": float(np.median(rel)),
        "p90_rel": float(np.quantile(rel, 0.9)),
    }


def trust_report(
    engine: PairedAttribution,
    records: list[ImageRecord],
    att: SetAttribution,
    trust: TrustSettings,
    preprocess: Preprocess,
    names: dict[str, str],
    removal: str = "baseline",
) -> tuple[dict[str, Any], list[str]]:
    """The trust section of ``run.json`` and the warnings it raises.

    Args:
        engine (PairedAttribution): the run's engine.
        records (list[ImageRecord]): the analysed images, in the order of ``att``.
        att (SetAttribution): both models' maps (may be memory-mapped), predictions and
            convergence deltas for these images.
        trust (TrustSettings): the sample and the tests' settings.
        preprocess (Preprocess): how an image becomes a model input.
        names (dict): display names of the models.
        removal (str): how removed pixels are filled (:mod:`imacs.removal`). Default:
            ``baseline``.

    Returns:
        ``{"n_images": ..., "steps": ..., "fractions": [...], "a": {...}, "b": {...}}`` and a
        list of warnings.
    """
    from .imaging import load_rgb

    maps, per_role, ts = att.maps, att.per_role, trust
    out: dict[str, Any] = {"n_images": 0, "steps": ts.steps, "removal": removal}
    for r in ("a", "b"):
        out[r] = {"delta": delta_stats(maps[r], per_role[r]["delta"])}
    idx = pick_sample(len(records), ts.sample, ts.seed) if ts.sample else []
    if len(idx) == 0:
        return out, []
    images = np.stack([preprocess.to_array(load_rgb(records[i].path)) for i in idx])
    out["n_images"] = len(idx)
    out["fractions"] = np.linspace(0, 1, ts.steps + 1).round(6).tolist()
    warnings = []
    for r in ("a", "b"):
        try:
            res = _model_report(engine, r, images, maps[r], per_role[r]["pred"], idx, ts, removal)
        except Exception as exc:  # user model code on altered images: anything can come out
            first = first_line(exc)
            warnings.append(f"model {r.upper()} ({names[r]}): trust tests failed ({first})")
            out[r]["error"] = first
            continue
        res["reading"] = _reading(r, names[r], res)
        out[r] = {**res, **out[r]}
        if not res["better_than_random"] and not res["inconclusive"]:
            warnings.append(
                f"model {r.upper()} ({names[r]}): its maps are no better than a random pixel "
                f"order at finding what it uses (deletion area {res['deletion_auc']:.2f} vs "
                f"{res['deletion_auc_random']:.2f} at random, on {len(idx)} images); read its "
                "side of the clusters with caution"
            )
    return out, warnings


def _model_report(
    engine: PairedAttribution,
    r: str,
    images: np.ndarray,
    maps: np.ndarray,
    pred: np.ndarray,
    idx: np.ndarray,
    ts: TrustSettings,
    removal: str,
) -> dict[str, Any]:
    """Every sample-based test of one model (removed pixels filled by ``removal``)."""
    n_sens = min(ts.sensitivity_sample, len(idx))
    m = np.asarray(maps[idx], np.float32)
    target = pred[idx]
    cur = curves(engine, r, images, m, target, ts.steps, ts.seed, removal)
    res: dict[str, Any] = {}
    for k, v in cur.items():  # deletion, deletion_random, insertion, insertion_random
        kind, _, control = k.partition("_")
        res[f"{kind}_auc{'_random' if control else ''}"] = float(auc(v).mean())
        res[f"{k}_curve"] = v.mean(0).round(5).tolist()
    infid = infidelity_scores(engine, r, images, m, target, ts)
    res.update({k: float(v.mean()) for k, v in infid.items()})
    res["sensitivity_max"] = (
        float(sensitivity_scores(engine, r, images[:n_sens], target[:n_sens], ts).mean())
        if n_sens
        else None
    )
    res["n_sensitivity"] = n_sens
    # better by a margin that also covers the sample's noise (2 paired standard errors)
    gain = auc(cur["deletion_random"]) - auc(cur["deletion"])
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    res["margin"] = max(ts.margin, 2.0 * se)
    res["better_than_random"] = bool(float(gain.mean()) > res["margin"])
    start = float(cur["deletion"][:, 0].mean())
    drop, drop_random = start - res["deletion_auc"], start - res["deletion_auc_random"]
    res["drop_ratio"] = float(drop / drop_random) if drop_random > 0.01 else None
    res.update(degenerate_control(cur, ts.degenerate, ts.late))
    return res


def degenerate_control(
    cur: dict[str, np.ndarray], limit: float, late: float = 1.0
) -> dict[str, Any]:
    """Whether the random order can show anything. It cannot

    * when filling every pixel hardly moves the prediction (``full_drop`` below 0.1);
    * when the random order's first step (``1 / steps`` of the pixels, scattered) already
      takes the prediction ``limit`` or more of the way to the fully filled image's
      (``random_first_step``): the fill itself, not what it hides, moves the model;
    * when the random order must remove ``late`` or more of the pixels before the
      prediction has gone half that way (``random_half``): the fill rebuilds what the
      model reads from the pixels kept (a stripe texture continues into ``road``'s
      imputation), so removing pixels one by one hides nothing until almost none are left.

    A map that does not beat such a control is ``inconclusive`` rather than "no better
    than random"."""
    start = float(cur["deletion"][:, 0].mean())
    full = start - float(cur["deletion"][:, -1].mean())
    random = cur["deletion_random"].mean(0)
    first = (start - float(random[1])) / full if full > 0 else 1.0
    steps = len(random) - 1
    half = np.flatnonzero(start - random >= full / 2) if full > 0 else np.array([steps])
    random_half = float((half[0] if len(half) else steps) / steps)
    why = "still" if full < 0.1 else "first" if first >= limit else "late"
    return {
        "full_drop": full,
        "random_first_step": first,
        "random_half": random_half,
        "inconclusive": bool(full < 0.1 or first >= limit or random_half >= late),
        "inconclusive_why": why,
    }


def _reading(role: str, name: str, res: dict[str, Any]) -> str:
    """One line a user understands."""
    who = f"{role.upper()}'s maps ({name})"
    areas = (
        f"deletion area {res['deletion_auc']:.2f} vs {res['deletion_auc_random']:.2f} random, "
        f"insertion {res['insertion_auc']:.2f} vs {res['insertion_auc_random']:.2f}"
    )
    if not res["better_than_random"] and res.get("inconclusive"):
        steps = len(res["deletion_curve"]) - 1
        reason = res.get("inconclusive_why", "still" if res["full_drop"] < 0.1 else "first")
        if reason == "still":
            why = f"filling every pixel moves the prediction by only {res['full_drop']:.2f}"
        elif reason == "late":
            why = (
                f"the model keeps its answer until {res['random_half']:.0%} of the pixels are "
                "filled in a random order (the fill rebuilds what it reads from the pixels "
                "kept; --removal baseline tests it with black)"
            )
        else:
            why = (
                f"removing {1 / steps:.0%} of the pixels at random already takes the "
                f"prediction {res['random_first_step']:.0%} of the way to the filled image's"
            )
        return f"{who}: inconclusive: {why}, so the random order is no control ({areas})"
    if not res["better_than_random"]:
        return f"{who}: no better than a random pixel order ({areas})"
    ratio = res["drop_ratio"]
    if ratio is not None:
        return (
            f"{who}: deleting their top pixels first lowers the prediction {ratio:.1f}x as "
            f"much as a random order ({areas})"
        )
    return f"{who}: better than a random pixel order ({areas})"


@stage(
    "trust",
    reads=("engine", "records", "att", "names", "warnings"),
    produces=("trust", "warnings"),
    settings=("trust", "preprocess", "whatif"),
)
def trust_stage(
    engine: PairedAttribution,
    records: list[ImageRecord],
    att: SetAttribution,
    names: dict[str, str],
    warnings: list[str],
    trust: TrustSettings,
    preprocess: Preprocess,
    whatif: WhatIfSettings,
) -> dict[str, object]:
    """Each model's maps tested against a random pixel order (the manifest's ``trust``),
    removed pixels filled as what-if removal fills them (``--removal``)."""
    report, more = trust_report(engine, records, att, trust, preprocess, names, whatif.removal)
    return {"trust": report, "warnings": [*warnings, *more]}
