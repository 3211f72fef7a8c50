"""Evidence for a cluster's claim: what the what-if stage measured when the cluster's
patches were filled with the IG baseline and both models ran again, against the same
number of random boxes (see :mod:`imacs.whatif`). Runs made without it show nothing."""

from __future__ import annotations

import math

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
EFFECT_CLASS = {"B depends": "pos", "A depends": "neg", "both": "both", "neither": "neither"}


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


def _rate(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.0%}"


def _num(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):+.3f}"


def whatif_panel(view: RunView, row: pd.Series, patches: pd.DataFrame, cluster: int) -> html.Div:
    """The cluster detail's what-if section: the verdict, a table per model (removal vs
    random boxes) and a few images before and after removal."""
    if not _tested(row):
        return html.Div(
            id=ids.WHATIF,
            children=html.P(
                f"What-if removal was not run for this {view.unit} (it runs for the top "
                f"{view.unit}s by |B − A| and every significant one; see --whatif-top).",
                className="hint",
            ),
        )
    names = view.run.names
    rows = []
    for r in ("a", "b"):
        rows.append(
            html.Tr(
                className=f"model-{r}",
                children=[
                    html.Td(f"{r.upper()}: {names[r]}"),
                    html.Td(_rate(row.get(f"whatif_flip_{r}")), className="flip"),
                    html.Td(_rate(row.get(f"whatif_control_flip_{r}")), className="control"),
                    html.Td(_num(-float(row.get(f"whatif_drop_{r}", float("nan"))))),
                    html.Td(
                        f"{_rate(row.get(f'whatif_acc_before_{r}'))} → "
                        f"{_rate(row.get(f'whatif_acc_after_{r}'))}"
                    ),
                ],
            )
        )
    tested = view.whatif_images
    after = tested[tested["cluster"] == cluster].set_index("image_id")
    images = [i for i in dict.fromkeys(patches["image_id"].astype(int)) if i in after.index]
    images = images[:PAIRS] or list(dict.fromkeys(patches["image_id"].astype(int)))[:PAIRS]
    pairs = [
        html.Figure(
            className="pair",
            children=[
                html.Img(src=render_url(view, i, "image"), alt=f"image {i}"),
                html.Img(
                    src=render_url(view, i, "removed") + f"?cluster={cluster}&level={view.level}",
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
        for i in images
    ]
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
                                html.Th("with random boxes"),
                                html.Th("change of its predicted class's probability"),
                                html.Th("accuracy before → after"),
                            ]
                        )
                    ),
                    html.Tbody(rows),
                ],
            ),
            html.P(
                f"Left: the image; right: the same image with this {view.unit}'s patches filled "
                "with the IG baseline, as both models were shown it; under each, both "
                "models' predictions before → after. Computed on all images of the run, "
                "whatever the filters.",
                className="hint",
            ),
            html.Div(className="pairs", children=pairs),
        ],
    )


def _class(view: RunView, k: int) -> str:
    classes = view.run.classes
    return classes[k] if 0 <= k < len(classes) else str(k)
