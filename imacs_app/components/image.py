"""An image's detail: both models' predictions, the image with its patches outlined, A's and
B's attribution overlays on one shared scale with colour bars, B − A, and its patches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from dash import ALL, Dash, Input, Output, html

from ..catalog import RunCatalog
from ..declare import Click, Opens, UrlFormat, integer_key
from ..reader import RunView
from ..render import DIVERGING_CSS, INFERNO_CSS, overlay_scale
from . import common, navigation
from .common import aspect, close_button, colorbar, files_url, guarded, render_url, view_of


class ids:
    """The ids the image detail renders (Dash's namespace convention for a component's ids)."""

    DETAIL = "image-detail"

    @staticmethod
    def pick_cluster(cluster: Any) -> dict:
        """One of the image's patches, which opens its group (``ALL``: every one)."""
        return {"type": "pick-cluster", "cluster": cluster}


#: ``image=N`` opens image N; only this detail depends on it
URL_KEYS = (integer_key("image", position=40, scope="image"),)
CLICKS = (
    Click(
        ids.pick_cluster(ALL), lambda s, hit: s.with_(cluster=int(hit.id["cluster"]), image=None)
    ),
    Click(common.ids.close("image"), lambda s, hit: s.with_(image=None)),
)
OPENS = (Opens(ids.DETAIL, "image"),)


def layout() -> dict[str, list]:
    """The detail, below the cluster's."""
    return {"details": [section()]}


def section() -> html.Section:
    return html.Section(id=ids.DETAIL, className="card detail")


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Render the selected image."""

    @app.callback(Output(ids.DETAIL, "children"), Input(navigation.ids.KEY_IMAGE, "data"))
    @guarded(1)
    def image_view(key):
        s = fmt.parse(key)
        if s.image is None:
            return html.P(
                "Click a patch to see its image with both models' attribution.", className="hint"
            )
        view = view_of(catalog, s)
        if s.image not in view.images.index:
            return [close_button("image"), html.P(f"Image {s.image} is not in this run.")]
        row = view.images.loc[s.image]
        names, classes = view.run.names, view.run.classes
        pa, pb = view.run.probabilities("a")[s.image], view.run.probabilities("b")[s.image]
        patches = view.patches[view.patches["image_id"] == s.image]

        def pred(role: str, probs: np.ndarray) -> html.Div:
            k = int(row[f"pred_{role}"])
            ok = bool(row[f"correct_{role}"])
            top = np.argsort(-probs)[:3]
            return html.Div(
                className=f"pred model-{role}",
                children=[
                    html.B(f"{role.upper()}: {names[role]}"),
                    html.Span(f" predicts {classes[k]} ({probs[k]:.1%}) ", className="pred-class"),
                    html.Span("✓ right" if ok else "✗ wrong", className="ok" if ok else "bad"),
                    html.Div(
                        " · ".join(f"{classes[int(i)]} {probs[int(i)]:.1%}" for i in top),
                        className="probs",
                    ),
                ],
            )

        return [
            close_button("image"),
            html.H2(f"Image {s.image}: {row['image']}"),
            html.P(
                f"label {row['label_name']} · {int(row['width'])}×{int(row['height'])} px",
                className="lead",
            ),
            html.Div(className="preds", children=[pred("a", pa), pred("b", pb)]),
            html.P(
                "Overlays: each model's share of its positive attribution per pixel, as a "
                "multiple of the image's average pixel. A and B share one colour scale; "
                "scales end at the 99th percentile of the image's values, brighter pixels "
                "are clipped.",
                className="hint",
            ),
            _panels(view, s.image),
            html.H3("Its patches"),
            _patches(view, patches),
        ]


def _panels(view: RunView, image: int) -> html.Div:
    """The image with its patches outlined, A's and B's overlays on one shared scale and
    B − A, each with its colour bar."""
    names = view.run.names
    panels = [
        ("image", "image, patches outlined"),
        ("a", f"A: {names['a']}"),
        ("b", f"B: {names['b']}"),
        ("diff", "B − A (red: B more, blue: A more)"),
    ]
    scale = overlay_scale(view, image)
    top, lim = scale.share_vs_average, scale.diff_vs_average
    bars = {
        "a": colorbar(INFERNO_CSS, ["0", f"{top / 2:.3g}×", f"≥ {top:.3g}×"]),
        "b": colorbar(INFERNO_CSS, ["0", f"{top / 2:.3g}×", f"≥ {top:.3g}×"]),
        "diff": colorbar(DIVERGING_CSS, [f"≤ −{lim:.3g}×", "0", f"≥ +{lim:.3g}×"]),
    }
    return html.Div(
        className="panels",
        children=[
            html.Figure(
                [
                    html.Img(
                        src=render_url(view, image, kind),
                        alt=label,
                        className=f"panel-{kind}",
                        style=aspect(view, image),
                    ),
                    html.Figcaption(label),
                    bars.get(kind),
                ]
            )
            for kind, label in panels
        ],
    )


def _patches(view: RunView, patches: pd.DataFrame) -> html.Div:
    """The image's patches, each of which opens its group."""
    return html.Div(
        className="image-patches",
        children=[
            html.Button(
                id=ids.pick_cluster(int(p.cluster)),
                n_clicks=0,
                className="patch",
                children=[
                    html.Img(
                        src=files_url(view, f"patches/{int(p.patch_id)}.jpg"),
                        alt=f"patch {int(p.patch_id)}",
                    ),
                    html.Span(
                        f"{view.unit} {int(p.cluster)} · A {p.attr_a:.2f} · B {p.attr_b:.2f}",
                        className="patch-caption",
                    ),
                ],
            )
            for p in patches.itertuples()
        ],
    )
