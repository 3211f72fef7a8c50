"""Evidence for a cluster's claim: what the what-if stage measured when the cluster's
content was removed wherever it is in the image and both models ran again, against random
regions of the same area (see :mod:`imacs.whatif`). A model whose random regions alone flip
it too often is inconclusive, and its part is greyed out. Runs made without it show
nothing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from dash import html

from ..reader import RunView
from .common import render_url


class ids:
    """The ids the what-if panel renders (Dash's namespace convention for a component's ids)."""

    WHATIF = "whatif"


#: images shown before and after removal
PAIRS = 4
#: CSS class of each verdict
EFFECT_CLASS = {
    "B depends": "pos",
    "A depends": "neg",
    "both": "both",
    "neither": "neither",
    "inconclusive": "inconclusive",
}
#: how each ``--removal`` fill is named on the page
FILL_TEXT = {
    "baseline": "the IG baseline",
    "blur": "a blur of the image",
    "mean": "the image's mean colour",
    "road": "an imputation from the pixels around them (ROAD)",
}


def _tested(row: pd.Series) -> bool:
    verdict = row.get("whatif_verdict")
    return isinstance(verdict, str) and bool(verdict)


def verdict_line(row: pd.Series) -> html.Span | None:
    """The what-if verdict for a ranking strip, or None when the cluster was not tested."""
    if not _tested(row):
        return None
    effect = str(row.get("whatif_effect", ""))
    return html.Span(
        f"what-if: {effect} — {row['whatif_verdict']}",
        className=f"verdict {EFFECT_CLASS.get(effect, '')}",
    )


def _unsure(row: pd.Series, r: str) -> bool:
    """Whether model ``r``'s part of the verdict is inconclusive (False for older runs)."""
    value = row.get(f"whatif_inconclusive_{r}")
    return isinstance(value, bool | np.bool_) and bool(value)


def _rate(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.0%}"


def _num(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):+.3f}"


def _model_row(row: pd.Series, r: str, name: str) -> html.Tr:
    """One model's line of the what-if table; greyed when its part is inconclusive."""
    unsure = _unsure(row, r)
    return html.Tr(
        className=f"model-{r}" + (" inconclusive" if unsure else ""),
        title=(
            f"inconclusive: random regions alone flip {r.upper()} on "
            f"{_rate(row.get(f'whatif_control_flip_{r}'))} of the images"
            if unsure
            else None
        ),
        children=[
            html.Td(f"{r.upper()}: {name}" + (" (inconclusive)" if unsure else "")),
            html.Td(_rate(row.get(f"whatif_flip_{r}")), className="flip"),
            html.Td(_rate(row.get(f"whatif_control_flip_{r}")), className="control"),
            html.Td(_num(-float(row.get(f"whatif_drop_{r}", float("nan"))))),
            html.Td(
                f"{_rate(row.get(f'whatif_acc_before_{r}'))} → "
                f"{_rate(row.get(f'whatif_acc_after_{r}'))}"
            ),
        ],
    )


def whatif_panel(
    view: RunView,
    row: pd.Series,
    patches: pd.DataFrame,
    cluster: int,
    typical: dict[int, list[int]] | None = None,
) -> html.Div:
    """The cluster detail's what-if section: the verdict, a table per model (removal vs
    random regions of the same area) and a few images before and after removal: the
    images of its most typical patches first (``typical``: patch ids nearest the centre,
    :meth:`RunView.representatives`), not the first images by id."""
    if not _tested(row):
        return html.Div(
            id=ids.WHATIF,
            children=html.P(
                f"What-if removal was not run for this {view.unit} (it runs for the top "
                f"{view.unit}s by |B − A| and every significant one; see --whatif-top).",
                className="hint",
            ),
        )
    rows = [_model_row(row, r, view.run.names[r]) for r in ("a", "b")]
    tested = view.whatif_images
    after = tested[tested["cluster"] == cluster].set_index("image_id")
    images = _examples(patches, (typical or {}).get(cluster, []), after.index)
    pairs = [_pair(view, i, cluster, after) for i in images]
    effect = str(row.get("whatif_effect", ""))
    return html.Div(
        id=ids.WHATIF,
        children=[
            html.H3("What if this content were removed?"),
            html.P(
                [
                    html.B(effect, className=EFFECT_CLASS.get(effect, "")),
                    f": {row['whatif_verdict']}.",
                ],
                className="lead",
            ),
            html.Table(
                className="whatif",
                children=[
                    html.Thead(
                        html.Tr(
                            [
                                html.Th(f"{int(row['whatif_n_images'])} images"),
                                html.Th("prediction flips"),
                                html.Th("with random regions of the same area"),
                                html.Th("change of its predicted class's probability"),
                                html.Th("accuracy before → after"),
                            ]
                        )
                    ),
                    html.Tbody(rows),
                ],
            ),
            html.P(_pairs_hint(view, row), className="hint"),
            html.Div(className="pairs", children=pairs),
        ],
    )


def _pair(view: RunView, i: int, cluster: int, after: pd.DataFrame) -> html.Figure:
    """Image ``i`` before and after the group's removal, with both models' answers."""
    return html.Figure(
        className="pair",
        children=[
            html.Img(src=render_url(view, i, "image"), alt=f"image {i}"),
            html.Img(
                src=render_url(view, i, "removed") + f"&cluster={cluster}&level={view.level}",
                alt=f"image {i} with {view.unit} {cluster} removed",
                className="removed",
            ),
            html.Figcaption(
                [f"image {i}"]
                + [
                    html.Div(
                        f"{r.upper()}: {_class(view, int(view.images.loc[i, f'pred_{r}']))}"
                        + (
                            f" → {_class(view, int(after.loc[i, f'pred_{r}_after']))}"
                            if i in after.index
                            else ""
                        ),
                        className=f"model-{r}",
                    )
                    for r in ("a", "b")
                ]
            ),
        ],
    )


def _examples(patches: pd.DataFrame, typical: list[int], tested: pd.Index) -> list[int]:
    """Up to :data:`PAIRS` images to show before and after removal: those of the most
    typical patches first, then the rest; tested ones only, if any were."""
    image_of = dict(
        zip(patches["patch_id"].astype(int), patches["image_id"].astype(int), strict=True)
    )
    first = [image_of[p] for p in typical if p in image_of]
    order = list(dict.fromkeys([*first, *patches["image_id"].astype(int)]))
    images = [i for i in order if i in tested]
    return images[:PAIRS] or order[:PAIRS]


def _pairs_hint(view: RunView, row: pd.Series) -> str:
    """What the before/after pictures show: what was removed, and how it was filled."""
    settings = view.run.info.whatif or {}
    fill = FILL_TEXT.get(str(settings.get("removal", "baseline")), "the IG baseline")
    limit = float(settings.get("inconclusive", 0.25))
    removed = (
        f"content removed wherever it is (outlined: {_area(row)})"
        if settings.get("regions") == "tiles"
        else "patches removed (outlined)"
    )
    return (
        f"Left: the image; right: the same image with this {view.unit}'s {removed}, filled "
        f"with {fill}, as both models were shown it; under each, both models' predictions "
        f"before → after. A model whose random regions alone flip it on more than {limit:.0%} "
        "of the images gets no verdict (inconclusive, greyed). Computed on all images of the "
        "run, whatever the filters."
    )


def _area(row: pd.Series) -> str:
    area = row.get("whatif_area")
    if area is None or (isinstance(area, float) and math.isnan(area)):
        return "its patches"
    return f"{float(area):.0%} of each image on average"


def _class(view: RunView, k: int) -> str:
    classes = view.run.classes
    return classes[k] if 0 <= k < len(classes) else str(k)
