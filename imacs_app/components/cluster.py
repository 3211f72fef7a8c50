"""A concept's or cluster's detail: its numbers with their interval, what the models answer
to its patches alone, a concept's clusters (or a cluster's concept), what its images have in
common (meta-annotations, each model's prediction, the class), share histograms and the
gallery of its patches in context."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import ALL, Dash, Input, Output, dcc, html

from .. import figures
from ..catalog import RunCatalog
from ..declare import Click, Opens, Query, UrlFormat, UrlKey, ViewState, first, integer
from ..reader import Filters, RunView
from . import common, navigation
from .common import aspect, close_button, files_url, guarded, render_url, view_of
from .evidence import whatif_panel
from .overview import alone_line, trait

#: patches shown in a cluster's gallery
GALLERY = 24
#: values shown per column in a cluster's breakdown
BREAKDOWN_VALUES = 3


class ids:
    """The ids the detail renders (Dash's namespace convention for a component's ids)."""

    DETAIL = "cluster-detail"
    DISAGREEMENT = "cluster-disagreement"
    ALONE = "cluster-alone"
    MEMBERS = "concept-members"
    BREAKDOWN = "cluster-breakdown"
    GALLERY_TITLE = "gallery-title"

    @staticmethod
    def pick_image(image: Any) -> dict:
        """A gallery patch, which opens its image (``ALL``: every one)."""
        return {"type": "pick-image", "image": image}

    @staticmethod
    def open(level: Any, group: Any) -> dict:
        """A concept's cluster, or a cluster's concept, which opens it at its level."""
        return {"type": "open", "level": level, "id": group}


def _read_level(q: Query) -> str:
    if "concept" in q:
        return "concept"
    return "cluster" if "cluster" in q or first(q, "level") == "cluster" else "concept"


def _read_selected(q: Query) -> int | None:
    return integer(q, "concept") if "concept" in q else integer(q, "cluster")


def _write_level(s: ViewState) -> list[tuple[str, str]]:
    """``level=cluster`` only when nothing is selected (a selection names its level)."""
    return [("level", s.level)] if s.level != "concept" and s.cluster is None else []


#: The selection: ``concept=N`` opens concept N, ``cluster=N`` cluster N at the cluster
#: level (so links made before concepts existed still open the cluster they named); the
#: ranking shows concepts unless the URL says ``level=cluster``. ``state.cluster`` is the
#: selected group at ``state.level``; the level is a display choice, kept across runs.
URL_KEYS = (
    UrlKey("level", "concept", _read_level, _write_level, ("level",), per_run=False, position=20),
    UrlKey(
        "cluster",
        None,
        read=_read_selected,
        write=lambda s: [] if s.cluster is None else [(s.level, str(s.cluster))],
        names=("concept", "cluster"),
        scope="cluster",
        position=30,
    ),
)
CLICKS = (
    Click(ids.pick_image(ALL), lambda s, hit: s.with_(image=int(hit.id["image"]))),
    Click(
        ids.open(ALL, ALL),
        lambda s, hit: s.with_(level=hit.id["level"], cluster=int(hit.id["id"]), image=None),
    ),
    Click(common.ids.close("cluster"), lambda s, hit: s.with_(cluster=None)),
)
OPENS = (Opens(ids.DETAIL, "cluster"),)


def layout() -> dict[str, list]:
    """The detail, first below the ranking and the map."""
    return {"details": [section()]}


def section() -> html.Section:
    return html.Section(id=ids.DETAIL, className="card detail")


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Render the selected cluster."""

    @app.callback(Output(ids.DETAIL, "children"), Input(navigation.ids.KEY_CLUSTER, "data"))
    @guarded(1)
    def cluster_view(key):
        s = fmt.parse(key)
        view = view_of(catalog, s)
        unit = view.unit
        if s.cluster is None:
            return html.P(
                f"Pick a {unit} in the ranking or the map to see its patches.", className="hint"
            )
        p = view.filtered_patches(s.filters)
        p = p[p["cluster"] == s.cluster]
        if p.empty:
            return [
                close_button("cluster"),
                html.P(f"{unit.title()} {s.cluster} has no patches under these filters."),
            ]
        clusters = view.clusters(s.filters)
        row = clusters[clusters["cluster"] == s.cluster].iloc[0]
        img = view.images.loc[p["image_id"].unique()]
        breakdown = view.cluster_breakdown(s.filters, s.cluster)
        traits = view.cluster_traits(s.filters)
        return [
            close_button("cluster"),
            *_numbers(unit, s.cluster, row, p, img, view.run.bar),
            _relatives(view, p, s.filters),
            _breakdown(
                breakdown,
                traits.loc[s.cluster] if s.cluster in traits.index else None,
                len(img),
                "all images passing the filters" if s.filters.active else "all images",
            ),
            whatif_panel(view, row, p, s.cluster, view.representatives(s.filters)),
            _charts(p, view.run.names),
            *_gallery(view, p, row),
        ]


def _numbers(
    unit: str, group: int, row: pd.Series, p: pd.DataFrame, img: pd.DataFrame, bar: float
) -> list:
    """The group's title, its shares with their interval, how often the models disagree
    on its images, and what they answer to its patches alone."""
    n = len(img)
    disagree = int((img["pred_a"] != img["pred_b"]).sum())
    only_a = int((img["outcome"] == "only_a").sum())
    only_b = int((img["outcome"] == "only_b").sum())
    return [
        html.H2(f"{unit.title()} {group} · rank {int(row['rank'])}"),
        html.P(
            className="lead",
            children=[
                f"{len(p)} patches in {n} images. Mean share of attribution: ",
                html.Span(f"A {row['attr_a']:.3f}", className="model-a"),
                ", ",
                html.Span(f"B {row['attr_b']:.3f}", className="model-b"),
                f"; B − A = {row['diff']:+.3f} (95% interval {row['diff_lo']:+.3f} "
                f"to {row['diff_hi']:+.3f}){_against_bar(row, bar)}.",
            ],
        ),
        html.P(
            f"The models' predictions differ on {disagree} of these {n} images "
            f"({disagree / n:.0%}); "
            f"only A is right on {only_a}, only B on {only_b}.",
            id=ids.DISAGREEMENT,
        ),
        html.P(alone_line(row, long=True), id=ids.ALONE),
    ]


def _charts(p: pd.DataFrame, names: dict[str, str]) -> html.Div:
    """Share histograms and the class mix of the group's patches."""
    return html.Div(
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
    )


def _gallery(view: RunView, p: pd.DataFrame, row: pd.Series) -> list:
    """The group's patches in context, the strongest reliance of the model that relies on
    the group more first; each opens its image."""
    sign = 1 if row["diff"] >= 0 else -1
    gallery = (
        p.assign(_k=sign * p["diff"])
        .sort_values(["_k", "patch_id"], ascending=[False, True])
        .head(GALLERY)
    )
    shown = f"all {len(p)}" if len(gallery) == len(p) else f"showing {len(gallery)} of {len(p)}"
    return [
        html.H3(
            f"Patches in context ({shown}, strongest {'B' if sign > 0 else 'A'} reliance first)",
            id=ids.GALLERY_TITLE,
        ),
        html.Div(
            className="gallery",
            children=[
                html.Button(
                    id=ids.pick_image(int(r.image_id)),
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


def _relatives(view: RunView, patches: pd.DataFrame, f: Filters) -> html.Div:
    """A concept's clusters, each one click away; or the concept a cluster belongs to."""
    if view.level == "concept":
        clusters = view.at("cluster").clusters(f).set_index("cluster")
        reps = view.at("cluster").representatives(f)
        members = sorted(
            patches["cluster_id"].unique().astype(int),
            key=lambda c: -abs(float(clusters.loc[c, "diff"])) if c in clusters.index else 0,
        )
        items = []
        for c in members:
            if c not in clusters.index:
                continue
            r = clusters.loc[c]
            items.append(
                html.Button(
                    id=ids.open("cluster", int(c)),
                    className="member",
                    n_clicks=0,
                    children=[
                        html.Span(f"cluster {c}", className="strip-title"),
                        html.Span(
                            f"B − A {r['diff']:+.3f}", className="pos" if r["diff"] >= 0 else "neg"
                        ),
                        html.Span(f"{int(r['n_patches'])} patches"),
                        html.Div(
                            className="thumbs",
                            children=[
                                html.Img(src=files_url(view, f"patches/{pid}.jpg"), alt="")
                                for pid in reps.get(int(c), [])[:6]
                            ],
                        ),
                    ],
                )
            )
        return html.Div(
            id=ids.MEMBERS,
            children=[
                html.H3(f"Its {len(items)} cluster{'s' if len(items) != 1 else ''}"),
                html.P(
                    "Clusters of patches that look different but that the models answer "
                    "alike; open one to see it on its own.",
                    className="hint",
                ),
                html.Div(className="members", children=items),
            ],
        )
    concepts = patches["concept_id"].unique().astype(int)
    if len(concepts) != 1:
        return html.Div(id=ids.MEMBERS)
    k = int(concepts[0])
    table = view.at("concept").groups.set_index("cluster")  # concepts, keyed "cluster"
    members = str(table.loc[k, "clusters"]).split() if k in table.index else []
    this = str(int(patches["cluster_id"].iloc[0]))
    others = [c for c in members if c != this]
    return html.Div(
        id=ids.MEMBERS,
        children=html.P(
            [
                "Part of ",
                html.Button(
                    f"concept {k}",
                    id=ids.open("concept", k),
                    className="link",
                    n_clicks=0,
                ),
                f" (with cluster{'s' if len(others) != 1 else ''} {', '.join(others)})"
                if others
                else " (its only cluster)",
            ]
        ),
    )


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
        id=ids.BREAKDOWN,
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


def _against_bar(row: pd.Series, bar: float) -> str:
    """What the interval says against the run's bar (``--min-effect`` or a reference
    pair's): significant, real but within it, or not shown to differ."""

    def flag(name: str) -> bool:
        v = row.get(name)
        return v is not None and not pd.isna(v) and bool(v)

    if flag("significant"):
        return f": significant, beyond ±{bar:.3f}"
    if flag("within_bar"):
        return f": a real difference, but within ±{bar:.3f}, no larger than the bar"
    return ": not shown to differ"
