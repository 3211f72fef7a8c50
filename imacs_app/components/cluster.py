"""A cluster's detail: its numbers with their interval, what its images have in common
(meta-annotations, each model's prediction, the class), share histograms and the gallery
of its patches in context."""

from __future__ import annotations

import pandas as pd
from dash import Dash, Input, Output, dcc, html

from .. import figures
from ..catalog import RunCatalog
from ..state import parse_search
from .common import aspect, close_button, files_url, guarded, render_url, view_of
from .evidence import whatif_panel
from .overview import trait

#: patches shown in a cluster's gallery
GALLERY = 24
#: values shown per column in a cluster's breakdown
BREAKDOWN_VALUES = 3


def section() -> html.Section:
    return html.Section(id="cluster-detail", className="card detail")


def register(app: Dash, catalog: RunCatalog) -> None:
    """Render the selected cluster."""

    @app.callback(Output("cluster-detail", "children"), Input("key-cluster", "data"))
    @guarded(1)
    def cluster_view(key):
        s = parse_search(key)
        if s.cluster is None:
            return html.P(
                "Pick a cluster in the ranking or the map to see its patches.", className="hint"
            )
        view = view_of(catalog, s)
        p = view.filtered_patches(s.filters)
        p = p[p["cluster"] == s.cluster]
        if p.empty:
            return [
                close_button("cluster"),
                html.P(f"Cluster {s.cluster} has no patches under these filters."),
            ]
        names = view.run.names
        clusters = view.clusters(s.filters)
        row = clusters[clusters["cluster"] == s.cluster].iloc[0]
        img = view.images.loc[p["image_id"].unique()]
        n = len(img)
        disagree = int((img["pred_a"] != img["pred_b"]).sum())
        only_a = int((img["outcome"] == "only_a").sum())
        only_b = int((img["outcome"] == "only_b").sum())
        sign = 1 if row["diff"] >= 0 else -1
        gallery = (
            p.assign(_k=sign * p["diff"])
            .sort_values(["_k", "patch_id"], ascending=[False, True])
            .head(GALLERY)
        )
        shown = f"all {len(p)}" if len(gallery) == len(p) else f"showing {len(gallery)} of {len(p)}"
        breakdown = view.cluster_breakdown(s.filters, s.cluster)
        traits = view.cluster_traits(s.filters)
        return [
            close_button("cluster"),
            html.H2(f"Cluster {s.cluster} · rank {int(row['rank'])}"),
            html.P(
                className="lead",
                children=[
                    f"{len(p)} patches in {n} images. Mean share of attribution: ",
                    html.Span(f"A {row['attr_a']:.3f}", className="model-a"),
                    ", ",
                    html.Span(f"B {row['attr_b']:.3f}", className="model-b"),
                    f"; B − A = {row['diff']:+.3f} (95% interval {row['diff_lo']:+.3f} "
                    f"to {row['diff_hi']:+.3f}).",
                ],
            ),
            html.P(
                f"The models' predictions differ on {disagree} of these {n} images "
                f"({disagree / n:.0%}); "
                f"only A is right on {only_a}, only B on {only_b}.",
                id="cluster-disagreement",
            ),
            _breakdown(
                breakdown,
                traits.loc[s.cluster] if s.cluster in traits.index else None,
                n,
                "all images passing the filters" if s.filters.active else "all images",
            ),
            whatif_panel(view, row, p, s.cluster),
            html.Div(
                className="two",
                children=[
                    dcc.Graph(
                        figure=figures.share_histogram(p, names),
                        config={"displayModeBar": False},
                        style={"height": f"{figures.DETAIL_HEIGHT}px"},  # no jump when drawn
                    ),
                    dcc.Graph(
                        figure=figures.class_mix(p),
                        config={"displayModeBar": False},
                        style={"height": f"{figures.DETAIL_HEIGHT}px"},
                    ),
                ],
            ),
            html.H3(
                f"Patches in context ({shown}, strongest {'B' if sign > 0 else 'A'} "
                "reliance first)",
                id="gallery-title",
            ),
            html.Div(
                className="gallery",
                children=[
                    html.Button(
                        id={"type": "pick-image", "image": int(r.image_id)},
                        className="patch",
                        n_clicks=0,
                        title=f"image {int(r.image_id)}: A {r.attr_a:.2f}, B {r.attr_b:.2f}",
                        children=[
                            html.Img(
                                src=files_url(view, f"patches/{int(r.patch_id)}.jpg"),
                                alt=f"patch {int(r.patch_id)}",
                            ),
                            html.Img(
                                src=render_url(view, int(r.image_id), "context", int(r.patch_id)),
                                className="context",
                                alt=f"image {int(r.image_id)}",
                                style=aspect(view, int(r.image_id)),
                            ),
                            html.Span(
                                f"A {r.attr_a:.2f} · B {r.attr_b:.2f}", className="patch-caption"
                            ),
                        ],
                    )
                    for r in gallery.itertuples()
                ],
            ),
        ]


def _breakdown(table: pd.DataFrame, top: pd.Series | None, n_images: int, among: str) -> html.Div:
    """What a cluster's images have in common: per column (meta-annotations, each model's
    prediction, the class), its most common values, against their share among ``among``."""
    lead = (
        f"Its images stand out by {trait(top['column'], top['value'])}: "
        f"{top['share']:.0%} of them, against {top['overall']:.0%} of {among}."
        if top is not None
        else "Nothing sets its images apart from the rest."
    )
    rows = []
    for column, group in table.groupby("column", sort=False):
        for i, r in enumerate(group.head(BREAKDOWN_VALUES).itertuples()):
            strong = top is not None and column == top["column"] and r.value == top["value"]
            rows.append(
                html.Tr(
                    className="stands-out" if strong else None,
                    children=[
                        html.Td(column if i == 0 else "", className="col"),
                        html.Td(r.value),
                        html.Td(
                            className="share",
                            children=[
                                html.Span(
                                    className="share-bar",
                                    style={"width": f"{80 * r.share:.0f}px"},
                                ),
                                html.Span(f"{r.share:.0%}"),
                            ],
                        ),
                        html.Td(f"{r.overall:.0%}", className="overall"),
                    ],
                )
            )
    return html.Div(
        id="cluster-breakdown",
        children=[
            html.H3("What its images have in common"),
            html.P(lead, className="lead"),
            html.Table(
                className="breakdown",
                children=[
                    html.Thead(
                        html.Tr(
                            [
                                html.Th(""),
                                html.Th(""),
                                html.Th(f"of its {n_images} images"),
                                html.Th(f"of {among}"),
                            ]
                        )
                    ),
                    html.Tbody(rows),
                ],
            ),
        ],
    )
