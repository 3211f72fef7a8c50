"""Renderings of one image: the image with its patches outlined, each model's attribution
overlay (one robust colour scale shared by A and B) and B − A, as PNG bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from imacs.removal import fill, ig_baseline
from imacs.whatif import fill_seed

from .reader import RunView

_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_DIVERGING = np.array(
    [
        [33, 102, 172],
        [103, 169, 207],
        [209, 229, 240],
        [247, 247, 247],
        [253, 219, 199],
        [239, 138, 98],
        [178, 24, 43],
    ],
    dtype=np.float64,
)


def _lut(anchors: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(anchors) - 1)
    w = (t - lo)[..., None]
    return anchors[lo] * (1 - w) + anchors[hi] * w


def _share(view: RunView, role: str, image_id: int) -> np.ndarray:
    m = np.clip(view.run.attribution_map(role, image_id), 0, None)
    total = m.sum()
    return m / total if total > 0 else m


#: overlays are scaled to this percentile of the image's values, and clipped above it
OVERLAY_PERCENTILE = 99.0


@dataclass(frozen=True)
class OverlayScale:
    """The colour scales of one image's overlays, in share of a model's positive
    attribution per map pixel.

    ``share`` tops the A and B overlays (one scale for both models: the 99th percentile of
    both maps' values), ``diff`` bounds the B − A overlay (the 99th percentile of its
    absolute values); values beyond are clipped. ``pixels`` is the map's size, so a uniform
    map's share is ``1 / pixels``.
    """

    share: float
    diff: float
    pixels: int

    @property
    def share_vs_average(self) -> float:
        """``share`` as a multiple of the share of an average pixel."""
        return self.share * self.pixels

    @property
    def diff_vs_average(self) -> float:
        return self.diff * self.pixels


def _robust_top(values: np.ndarray) -> float:
    """The percentile scale of ``values`` (>= 0); their maximum if that is 0, else 1."""
    top = float(np.percentile(values, OVERLAY_PERCENTILE)) if values.size else 0.0
    if top <= 0:
        top = float(values.max()) if values.size else 0.0
    return top if top > 0 else 1.0


def overlay_scale(view: RunView, image_id: int) -> OverlayScale:
    """The colour scales :func:`render_png` uses for this image's A, B and B − A overlays."""
    if image_id not in view.images.index:
        raise KeyError(image_id)
    return _scale_of(_share(view, "a", image_id), _share(view, "b", image_id))


def _scale_of(sa: np.ndarray, sb: np.ndarray) -> OverlayScale:
    return OverlayScale(
        share=_robust_top(np.concatenate([sa.ravel(), sb.ravel()])),
        diff=_robust_top(np.abs(sb - sa).ravel()),
        pixels=int(sa.size),
    )


#: colour stops of the A/B overlays and of the B − A overlay, for colour bars on the page
INFERNO_CSS = tuple(f"rgb({r},{g},{b})" for r, g, b in _INFERNO.astype(int).tolist())
DIVERGING_CSS = tuple(f"rgb({r},{g},{b})" for r, g, b in _DIVERGING.astype(int).tolist())


#: renderings are at least this many pixels on their longest side
RENDER_SIDE = 256


def _base_image(view: RunView, image_id: int) -> Image.Image:
    path = view.run.image_thumbnail(image_id)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (FileNotFoundError, OSError):  # a missing thumbnail: grey stand-in, same shape
        row = view.images.loc[image_id]
        w, h = int(row["width"]), int(row["height"])
        scale = RENDER_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return Image.new("RGB", size, (200, 200, 200))
    factor = max(1, RENDER_SIDE // max(im.size))
    if factor > 1:  # small images: enlarge with crisp pixels so outlines stay thin
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    return im


def _outline(view: RunView, im: Image.Image, image_id: int, highlight: int | None = None) -> None:
    row = view.images.loc[image_id]
    sx, sy = im.width / float(row["width"]), im.height / float(row["height"])
    draw = ImageDraw.Draw(im)
    patches = view.patches[view.patches["image_id"] == image_id]
    for p in patches.itertuples():
        box = (
            p.x0 * sx,
            p.y0 * sy,
            max(p.x0 * sx + 1, p.x1 * sx - 1),
            max(p.y0 * sy + 1, p.y1 * sy - 1),
        )
        strong = highlight is None or p.patch_id == highlight
        draw.rectangle(
            box, outline=(255, 220, 0) if strong else (255, 255, 255), width=2 if strong else 1
        )


def _removed(view: RunView, im: Image.Image, image_id: int, cluster: int | None) -> Image.Image:
    """The image as the what-if stage showed it to both models with ``cluster`` (a concept
    at the concept level) removed: the stored regions filled with the run's fill
    (:func:`imacs.removal.fill`, same noise seed), at the model's input size, enlarged to
    ``im``'s size, the removed region outlined. Runs made before regions were stored
    removed the cluster's patch boxes, filled with the IG baseline: drawn as such."""
    run = view.run
    table = run.concept_whatif_boxes if view.level == "concept" else run.whatif_boxes
    key = "concept" if view.level == "concept" else "cluster"
    rows = table[(table[key] == cluster) & (table["image_id"] == image_id) & ~table["control"]]
    settings = run.settings
    h, w = settings.preprocess.input_size
    if rows.empty:  # an older run: the cluster's patch boxes, in model-input pixels
        p = view.patches
        rows = p[(p["image_id"] == image_id) & (p["cluster"] == cluster)].rename(
            columns={f"in_{k}": k for k in ("x0", "y0", "x1", "y1")}
        )
    kind = str(run.info.whatif.get("removal", "baseline"))  # older runs: the IG baseline
    mask = np.zeros((1, h, w), bool)
    for r in rows.itertuples():
        mask[0, int(r.y0) : int(r.y1), int(r.x0) : int(r.x1)] = True
    x = np.asarray(im.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0
    x = x.transpose(2, 0, 1)[None]
    base = ig_baseline(x, settings.attribution.baseline) if kind == "baseline" else None
    seed = fill_seed(settings.seed, view.level, int(cluster or 0), image_id, False)
    filled = fill(x, mask, kind, base=base, seeds=[seed])[0]
    out = Image.fromarray(np.uint8(np.clip(filled.transpose(1, 2, 0), 0, 1) * 255 + 0.5))
    out = out.resize(im.size, Image.Resampling.NEAREST)
    big = np.asarray(Image.fromarray(mask[0]).resize(im.size, Image.Resampling.NEAREST))
    edge = big & ~_eroded(big)
    pixels = np.asarray(out).copy()
    pixels[edge] = (255, 220, 0)
    return Image.fromarray(pixels)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """``mask`` shrunk by one pixel (4-neighbours; the image's border counts as outside)."""
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def render_png(
    view: RunView,
    image_id: int,
    kind: str,
    patch_id: int | None = None,
    cluster: int | None = None,
) -> bytes:
    """A PNG of an image: ``image`` (patches outlined), ``a``/``b`` (each model's share of
    attribution, on one shared scale), ``diff`` (B minus A), ``context`` (one patch
    outlined) or ``removed`` (the regions of ``cluster`` what-if removal took out, filled
    as it filled them: what the models were shown).

    The overlays' scales are robust (:func:`overlay_scale`): the single hottest pixel does
    not wash out the rest of the map.
    """
    if image_id not in view.images.index:
        raise KeyError(image_id)
    base = _base_image(view, image_id)
    if kind in ("image", "context"):
        im = base.copy()
        _outline(view, im, image_id, highlight=patch_id if kind == "context" else None)
    elif kind == "removed":
        im = _removed(view, base.copy(), image_id, cluster)
    else:
        sa, sb = _share(view, "a", image_id), _share(view, "b", image_id)
        scale = _scale_of(sa, sb)
        if kind == "diff":
            t = np.clip((sb - sa) / scale.diff, -1.0, 1.0)
            rgb = _lut(_DIVERGING, t * 0.5 + 0.5)
            alpha = np.sqrt(np.abs(t))
        elif kind in ("a", "b"):
            t = np.clip((sa if kind == "a" else sb) / scale.share, 0.0, 1.0)
            rgb = _lut(_INFERNO, t)
            alpha = np.sqrt(t)
        else:
            raise KeyError(kind)
        heat = Image.fromarray(np.uint8(rgb)).resize(base.size, Image.Resampling.BILINEAR)
        mask = Image.fromarray(np.uint8(np.clip(alpha * 0.85, 0, 1) * 255)).resize(
            base.size, Image.Resampling.BILINEAR
        )
        grey = base.convert("L").convert("RGB")
        im = Image.composite(heat, grey, mask)
        _outline(view, im, image_id)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()
