"""Where do the two models look most differently? The distribution of the per-image map
agreement and a gallery of the images where it is lowest, under the page's filters (runs made
before map agreement was computed show a sentence instead)."""

from __future__ import annotations

from typing import Any

from dash import ALL, Dash, Input, Output, dcc, html

from .. import figures
from ..catalog import RunCatalog
from ..declare import Click, UrlFormat
from . import navigation
from .common import NO_MATCH, aspect, guarded, render_url, view_of

#: images in the disagreement gallery
SHOWN = 12


class ids:
    """The ids the section renders (Dash's namespace convention for a component's ids)."""

    AGREEMENT = "agreement"
    GALLERY = "disagreement-gallery"

    @staticmethod
    def image(image: Any) -> dict:
        """A gallery image, which opens the image (``ALL``: every one)."""
        return {"type": "agree-image", "image": image}


CLICKS = (Click(ids.image(ALL), lambda s, hit: s.with_(image=int(hit.id["image"]))),)


def layout() -> dict[str, list]:
    """The section, last among the details."""
    return {"details": [section()]}


def section() -> html.Section:
    return html.Section(
        className="card",
        children=[
            html.H2("Where do the models look most differently?"),
            html.Div(id=ids.AGREEMENT),
        ],
    )


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Fill the section from the filtered images."""

    @app.callback(Output(ids.AGREEMENT, "children"), Input(navigation.ids.KEY_DATA, "data"))
    @guarded(1)
    def agreement_view(key):
        s = fmt.parse(key)
        view = view_of(catalog, s)
        img = view.images
        if "map_spearman" not in img.columns:
            return html.P(
                "This run has no per-image map agreement (made before imacs computed it).",
                className="hint",
            )
        img = img[view.image_mask(s.filters)]
        if img.empty:
            return html.P(NO_MATCH, className="hint")
        low = (  # ties by image id (the index)
            img.sort_index().sort_values("map_spearman", kind="stable", na_position="last")
        ).head(SHOWN)
        names = view.run.names
        return [
            html.P(
                f"Each image's Spearman correlation between {names['a']}'s and {names['b']}'s "
                "maps: near 1 they rank the same pixels high, near 0 they look at unrelated "
                f"places. The {len(low)} lowest of {len(img)} images, lowest first; click one "
                "to see both maps.",
                className="hint",
            ),
            dcc.Graph(
                figure=figures.agreement_histogram(img["map_spearman"]),
                config={"displayModeBar": False},
                style={"height": f"{figures.DETAIL_HEIGHT}px"},
            ),
            html.Div(
                className="agree-gallery",  # not .gallery: that is a cluster's
                id=ids.GALLERY,
                children=[
                    html.Button(
                        id=ids.image(int(i)),
                        className="patch",
                        n_clicks=0,
                        title=f"image {int(i)}: {r['image']}",
                        children=[
                            html.Img(
                                src=render_url(view, int(i), "diff"),
                                className="context",
                                alt=f"image {int(i)}",
                                style=aspect(view, int(i)),
                            ),
                            html.Span(
                                f"ρ {r['map_spearman']:+.2f} · IoU {r['map_iou_top10']:.2f}",
                                className="patch-caption",
                            ),
                        ],
                    )
                    for i, r in low.iterrows()
                ],
            ),
        ]
