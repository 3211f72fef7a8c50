"""Plotly figures. Pure functions from tables to figures; no data access here."""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pandas as pd
import plotly.graph_objects as go

COLOUR_A = "#3b6fb6"
COLOUR_B = "#d1603d"
PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#1f77b4",
    "#aec7e8",
    "#ff7f0e",
    "#ffbb78",
    "#2ca02c",
    "#98df8a",
    "#d62728",
    "#ff9896",
    "#9467bd",
    "#c5b0d5",
    "#8c564b",
    "#c49c94",
    "#e377c2",
    "#f7b6d2",
    "#7f7f7f",
    "#c7c7c7",
    "#bcbd22",
    "#dbdb8d",
    "#17becf",
    "#9edae5",
]


def _layout(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        plot_bgcolor="white",
        paper_bgcolor="white",
        font={"size": 12},
        legend={"orientation": "h", "y": -0.02, "yanchor": "top", "x": 0},
    )
    return fig


@lru_cache(maxsize=16)
def _ranking_frame(relative: bool, bar: float) -> str:
    """The ranking's two panels (layout only, as JSON): plotly's subplots and template
    resolved once per (view, bar), so that a ranking is then built as plain data."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.03,
        subplot_titles=(
            "relative reliance (share among the image's patches)"
            if relative
            else "mean share of attribution",
            "B − A (95% interval)" + (f"; grey: within ±{bar:.2f}" if bar and not relative else ""),
        ),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(gridcolor="#eee", zerolinecolor="#999")
    fig.update_layout(barmode="group", bargap=0.25, clickmode="event")
    _layout(fig, 260)  # the height is the ranking's own
    # the legend under the tick labels, not over them
    fig.update_layout(margin={"b": 50}, legend={"yref": "container", "y": 0, "yanchor": "bottom"})
    return json.dumps(fig.to_plotly_json()["layout"])


def ranking(
    clusters: pd.DataFrame,
    names: dict[str, str],
    selected: int | None,
    relative: bool = False,
    bar: float = 0.0,
) -> dict:
    """Paired bars of A's and B's mean share per cluster, and B - A with its interval; with
    ``relative``, the shares renormalised over each image's patches (``*_rel`` columns), in
    the order given (the caller ranks them), numbered from 1. A grey band shows ``±bar``,
    the difference an interval must clear to be significant (not in the relative view,
    which has no bar of its own).

    A plain figure dict (plotly's validation of every property cost more than the data
    work on a large run): ``data`` (A's bars, B's bars, the B − A bars) and ``layout``."""
    sfx = "_rel" if relative else ""
    a, b, d = f"attr_a{sfx}", f"attr_b{sfx}", f"diff{sfx}"
    if relative:
        c = clusters
        ranks = range(1, len(c) + 1)
    else:
        c = clusters.sort_values("rank")
        ranks = c["rank"]
    labels = [f"#{r} · c{k}" for r, k in zip(ranks, c["cluster"], strict=True)]
    # plain lists: plotly sends numpy arrays as typed arrays, which click events may omit
    custom = [int(k) for k in c["cluster"]]
    bars = [
        {
            "type": "bar",
            "y": labels,
            "x": _floats(c[col]),
            "name": f"{role.upper()}: {names[role]}",
            "orientation": "h",
            "marker": {"color": colour},
            "customdata": custom,
            "xaxis": "x",
            "yaxis": "y",
        }
        for role, col, colour in (("a", a, COLOUR_A), ("b", b, COLOUR_B))
    ]
    layout = json.loads(_ranking_frame(bool(relative), float(bar)))
    band = [] if relative or not bar else [bar_band(bar)]
    layout["shapes"] = [*band, *ranking_marks(custom, selected)]
    layout["height"] = max(260, 26 * len(c) + 90)
    return {"data": [*bars, _diff_bars(c, d, labels, custom)], "layout": layout}


def _floats(values: pd.Series | np.ndarray) -> list:
    """Plain floats for a figure dict (a missing value is None: a gap)."""
    arr = np.asarray(values, dtype=np.float64)
    return [None if math.isnan(v) else v for v in arr.tolist()]


def _diff_bars(c: pd.DataFrame, d: str, labels: list[str], custom: list[int]) -> dict:
    """The B − A panel's bars (column ``d``) with their intervals (``d_lo``, ``d_hi``)."""
    return {
        "type": "bar",
        "y": labels,
        "x": _floats(c[d]),
        "orientation": "h",
        "marker": {"color": np.where(c[d] >= 0, COLOUR_B, COLOUR_A).tolist()},
        "showlegend": False,
        "customdata": custom,
        "name": "B − A",
        "error_x": {
            "type": "data",
            "symmetric": False,
            "array": _floats(c[f"{d}_hi"] - c[d]),
            "arrayminus": _floats(c[d] - c[f"{d}_lo"]),
            "color": "#444",
            "thickness": 1,
        },
        "xaxis": "x2",
        "yaxis": "y2",
    }


def bar_band(bar: float) -> dict:
    """The ranking's grey band from ``-bar`` to ``bar`` on the B − A panel (its shape is
    named ``bar``, so highlighting a row keeps it)."""
    return {
        "type": "rect",
        "name": "bar",
        "xref": "x2",
        "yref": "paper",
        "x0": -bar,
        "x1": bar,
        "y0": 0,
        "y1": 1,
        "fillcolor": "rgba(120, 120, 120, 0.15)",
        "line": {"width": 0},
        "layer": "below",
    }


def ranking_marks(order: list[int], selected: int | None) -> list[dict]:
    """The shapes that mark ``selected`` in a ranking whose rows hold the clusters ``order``
    (top row first): a band across both panels. Empty when nothing is selected."""
    if selected is None or selected not in order:
        return []
    i = order.index(selected)
    return [
        {
            "type": "rect",
            "xref": "paper",
            "yref": "y",
            "x0": 0,
            "x1": 1,
            "y0": i - 0.5,
            "y1": i + 0.5,
            "fillcolor": "rgba(255, 200, 0, 0.35)",
            "line": {"width": 1.5, "color": "#d49b00"},
            "layer": "below",
        }
    ]


def map_groups(patches: pd.DataFrame, colour: str, order: list[int] | None = None) -> list:
    """The group each point trace of :func:`embedding_map` holds, in trace order: one
    trace per group present (ranked as ``order`` says, then by id) when coloured by group,
    a single trace of every point (``None``) when coloured by B − A. The outline of the
    selected group is the trace after these."""
    if colour == "diff":
        return [None]
    present = set(patches["cluster"].unique().tolist())
    ranked = [g for g in (order or []) if g in present]
    return ranked + sorted(present - set(ranked))


#: the most points the map draws; above it, a sample of every group (see :func:`map_sample`)
MAP_POINTS = 100_000
#: a group's points in a sampled map: at least this many (or all it has)
MAP_MIN_GROUP = 200


def map_sample(patches: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """At most about ``limit`` (default :data:`MAP_POINTS`) of ``patches`` for the map: all
    of them if they fit, else each group's share drawn at random in proportion to its size
    (at least :data:`MAP_MIN_GROUP` points, or all it has, so a small group stays in
    view), the same draw every time, in the table's order."""
    limit = MAP_POINTS if limit is None else limit
    if len(patches) <= limit:
        return patches
    rng = np.random.default_rng(0)
    codes, _ = pd.factorize(patches["cluster"], sort=True)
    keep = np.zeros(len(patches), dtype=bool)
    for g, n_g in enumerate(np.bincount(codes)):
        rows = np.flatnonzero(codes == g)
        k = min(n_g, max(MAP_MIN_GROUP, round(limit * n_g / len(patches))))
        keep[rng.choice(rows, size=k, replace=False)] = True
    return patches[keep]


def embedding_map(
    patches: pd.DataFrame,
    colour: str,
    n_clusters: int,
    unit: str = "cluster",
    order: list[int] | None = None,
    total: int | None = None,
) -> go.Figure:
    """WebGL scatter of every patch's 2-D projection (stays responsive at 100k+ points),
    coloured by its group (``patches["cluster"]``: a cluster or a concept, ``unit``) or by
    B − A.

    Coloured by group, each group is a trace of its own colour with a legend entry, in
    ranking order (``order``): a click on the entry hides the group, a double click shows
    it alone. ``n_clusters`` is kept for callers; the colour of group ``g`` is
    ``PALETTE[g % len(PALETTE)]``, whatever the filter leaves. ``total``: how many patches
    ``patches`` is a sample of (:func:`map_sample`), said above the map."""
    fig = go.Figure()
    x = patches["proj_x"].to_numpy().round(3)
    y = patches["proj_y"].to_numpy().round(3)
    cl = patches["cluster"].to_numpy()
    groups = map_groups(patches, colour, order)
    if colour == "diff":
        d = patches["diff"].to_numpy().round(3)
        lim = float(np.abs(d).max()) if len(d) else 1.0
        marker = {
            "color": d,
            "colorscale": "RdBu",
            "reversescale": True,
            "cmin": -lim,
            "cmax": lim,
            "size": 4,
            "colorbar": {"title": "B − A", "thickness": 10},
        }
        # a click is read by its point index (components/common.py): a typed array is
        # left out of click events, and a list of 100k is slow to build
        fig.add_trace(
            go.Scattergl(
                x=x, y=y, mode="markers", marker=marker, customdata=cl, showlegend=False,
                hovertemplate=f"{unit} %{{customdata}}<extra></extra>", name="patches",
            )
        )  # fmt: skip
    for g in groups if colour != "diff" else []:
        keep = cl == g
        fig.add_trace(
            go.Scattergl(
                x=x[keep], y=y[keep], mode="markers", name=f"c{g}",
                marker={"color": PALETTE[int(g) % len(PALETTE)], "size": 4},
                hovertemplate=f"{unit} c{g}<extra></extra>",
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scattergl(
            x=[],
            y=[],
            mode="markers",
            hoverinfo="skip",
            name="selected",
            showlegend=False,
            marker={"size": 7, "color": "rgba(0,0,0,0)", "line": {"width": 1.5, "color": "#111"}},
        )
    )
    _map_layout(fig, colour, unit, len(groups))
    if total is not None and total > len(patches):
        _sample_note(fig, len(patches), total, unit)
    return fig


def _map_layout(fig: go.Figure, colour: str, unit: str, n_groups: int) -> None:
    """The map's axes, size and legend."""
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)  # no fixed aspect: the points use the whole card
    fig.update_layout(dragmode="pan", uirevision="map")
    _layout(fig, 460)
    fig.update_layout(
        height=None,  # fills its card (the graph's CSS height)
        autosize=True,
        showlegend=colour != "diff",
        legend={
            "title": {"text": unit},
            "orientation": "v",
            "x": 1.0,
            "xanchor": "left",
            "y": 1.0,
            "yanchor": "top",
            "itemsizing": "constant",
            "font": {"size": 10 if n_groups <= 20 else 8},
        },
    )


def _sample_note(fig: go.Figure, shown: int, total: int, unit: str) -> None:
    """Say above the map that it draws a sample (:func:`map_sample`)."""
    fig.add_annotation(
        text=f"a sample of {shown:,} of {total:,} patches, every {unit} in proportion; the "
        f"selected {unit}'s outline shows all its points",
        showarrow=False, x=0, y=1.0, xref="paper", yref="paper", xanchor="left",
        yanchor="bottom", font={"size": 11, "color": "#6b7280"}, name="sample-note",
    )  # fmt: skip


#: height of the cluster detail's figures, in pixels
DETAIL_HEIGHT = 240


def share_histogram(p: pd.DataFrame, names: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    bins = {"start": 0, "end": 1, "size": 0.05}
    fig.add_histogram(
        x=p["attr_a"], name=f"A: {names['a']}", marker_color=COLOUR_A, opacity=0.65, xbins=bins
    )
    fig.add_histogram(
        x=p["attr_b"], name=f"B: {names['b']}", marker_color=COLOUR_B, opacity=0.65, xbins=bins
    )
    fig.update_layout(barmode="overlay", title={"text": "share of attribution per patch", "x": 0})
    fig.update_xaxes(range=[0, 1], gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee", title="patches")
    return _layout(fig, DETAIL_HEIGHT)


def class_mix(p: pd.DataFrame) -> go.Figure:
    counts = p["label_name"].value_counts()
    fig = go.Figure(go.Bar(x=counts.index.astype(str), y=counts.to_numpy(), marker_color="#777"))
    fig.update_layout(title={"text": "classes of the patches' images", "x": 0})
    fig.update_yaxes(gridcolor="#eee", title="patches")
    return _layout(fig, DETAIL_HEIGHT)


def empty(message: str, height: int = 300) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(
        text=message,
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font={"size": 15, "color": "#6b7280"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height)


def agreement_histogram(spearman: pd.Series) -> go.Figure:
    """The distribution of the per-image rank correlation of A's and B's maps."""
    fig = go.Figure(
        go.Histogram(
            x=spearman.dropna(), xbins={"start": -1, "end": 1, "size": 0.05}, marker_color="#777"
        )
    )
    fig.update_layout(title={"text": "map agreement per image (Spearman; 1 = same order)", "x": 0})
    fig.update_xaxes(range=[-1, 1], gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee", title="images")
    return _layout(fig, DETAIL_HEIGHT)


#: the height of a layer-agreement curve (:func:`layer_curves`)
LAYER_HEIGHT = 230


def _depth_axis(fig: go.Figure, agreement: pd.DataFrame) -> None:
    """x: one tick per depth, named by its layer (``A's · B's`` where the models differ;
    a module named by a number, as in a ``Sequential``, is ``module 3``)."""
    ticks: dict[int, str] = {}
    for depth, rows in agreement.groupby("depth", sort=True):
        names = dict.fromkeys(
            _layer_label(n) for n in rows.sort_values("role")["layer"].astype(str)
        )
        ticks[int(depth)] = " · ".join(names)
    fig.update_xaxes(
        tickvals=list(ticks), ticktext=list(ticks.values()), title="depth", gridcolor="#eee"
    )


def _agreement_axis(fig: go.Figure, values: pd.Series, threshold: float) -> None:
    """y: agreement as a percentage, from a little below the lowest value (or the
    threshold) to 100%, with the threshold as a dotted line."""
    low = float(np.nanmin([*values.to_numpy(float), threshold]))
    fig.update_yaxes(
        range=[max(0.0, low - 0.06), 1.03], tickformat=".0%", gridcolor="#eee", title="agreement"
    )
    fig.add_hline(
        y=threshold,
        line={"dash": "dot", "color": "#999", "width": 1},
        annotation_text=f"decided: {threshold:.0%}",
        annotation_position="bottom right",
        annotation_font={"size": 10, "color": "#6b7280"},
    )


def _curve(
    fig: go.Figure,
    rows: pd.DataFrame,
    column: str,
    name: str,
    colour: str,
    decided: int | None,
    dash: str = "solid",
    width: int = 2,
) -> None:
    """One line of probe agreement over depth, with a star at the depth that decides."""
    rows = rows[rows[column].notna()]
    if rows.empty:
        return
    n = "n_images" if column == "agree" else "n_without"
    fig.add_scatter(
        x=rows["depth"].tolist(),
        y=rows[column].tolist(),
        name=name,
        mode="lines+markers",
        line={"color": colour, "dash": dash, "width": width},
        marker={"size": 6},
        customdata=list(zip(rows["layer"].astype(str), rows[n].astype(int), strict=True)),
        hovertemplate="depth %{x} (%{customdata[0]}): %{y:.1%} of %{customdata[1]} images"
        "<extra>" + name + "</extra>",
    )
    hit = rows[rows["depth"] == decided]
    if len(hit):
        fig.add_scatter(
            x=[decided],
            y=[float(hit[column].iloc[0])],
            mode="markers",
            marker={"symbol": "star", "size": 15, "color": colour, "line": {"color": "white"}},
            name=f"decided at depth {decided}",
            showlegend=False,
            hovertemplate=f"{name}: decided at depth {decided}<extra></extra>",
        )


def layer_curves(
    rows: pd.DataFrame,
    colour: str,
    on: int | None,
    off: int | None,
    threshold: float,
) -> go.Figure:
    """One model's probe agreement with its final answer over its depth, on a concept's
    images (``agree``) and on the others (``agree_without``, dashed), from the rows of
    ``layer_agreement`` of one model and concept; stars mark the depths that decide
    (``on``, ``off``: :func:`imacs.layers.decided_at`), a dotted line where the concept's
    images are decided."""
    fig = go.Figure()
    _curve(fig, rows, "agree", "its images", colour, on)
    _curve(fig, rows, "agree_without", "other images", "#9ca3af", off, dash="dash")
    if on is not None:
        fig.add_vline(x=on, line={"dash": "dot", "color": colour, "width": 1})
    _depth_axis(fig, rows)
    _agreement_axis(fig, pd.concat([rows["agree"], rows["agree_without"]]), threshold)
    fig.update_layout(title={"text": "probe agrees with its answer", "x": 0})
    return _legend_top(_layout(fig, LAYER_HEIGHT))


def run_layer_curves(
    rows: pd.DataFrame,
    names: dict[str, str],
    decided: dict[str, int | None],
    threshold: float,
) -> go.Figure:
    """Both models' probe agreement with their final answer over depth on every image (the
    rows of ``layer_agreement`` with concept -1); stars mark the depth that decides."""
    fig = go.Figure()
    for role, colour, width in (("a", COLOUR_A, 5), ("b", COLOUR_B, 2)):  # A shows under B
        own = rows[rows["role"] == role]
        name = f"{role.upper()}: {names[role]}"
        _curve(fig, own, "agree", name, colour, decided.get(role), width=width)
    _depth_axis(fig, rows)
    _agreement_axis(fig, rows["agree"], threshold)
    fig.update_layout(title={"text": "probe agrees with the model's answer, every image", "x": 0})
    return _legend_top(_layout(fig, LAYER_HEIGHT))


def _legend_top(fig: go.Figure) -> go.Figure:
    """The legend at the top right, beside the title (below, it hides the depth's names)."""
    fig.update_layout(
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"}
    )
    return fig


def _layer_label(name: str) -> str:
    return f"module {name}" if name.isdigit() else name


def cka_height(cka: pd.DataFrame) -> int:
    """The height of :func:`cka_heatmap` for these rows."""
    return 70 + 34 * int(cka["depth_a"].nunique())


def cka_heatmap(cka: pd.DataFrame, names: dict[str, str]) -> go.Figure:
    """Linear CKA of each of A's layers (rows, first at the top) with each of B's
    (columns), from the rows of ``layer_cka`` of one concept."""
    z = cka.pivot(index="depth_a", columns="depth_b", values="cka").sort_index()
    z = z.reindex(sorted(z.columns), axis=1)
    a = cka.drop_duplicates("depth_a").set_index("depth_a")["layer_a"].astype(str)
    b = cka.drop_duplicates("depth_b").set_index("depth_b")["layer_b"].astype(str)
    x = [f"{d}: {_layer_label(b[d])}" for d in z.columns]
    y = [f"{d}: {_layer_label(a[d])}" for d in z.index]
    fig = go.Figure(
        go.Heatmap(
            z=z.to_numpy().round(3).tolist(),
            x=x,
            y=y,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            texttemplate="%{z:.2f}",
            hovertemplate="A %{y} · B %{x}: CKA %{z:.3f}<extra></extra>",
            colorbar={"thickness": 10, "len": 0.9},
        )
    )
    fig.update_xaxes(type="category", title=f"B: {names['b']}", side="bottom")
    fig.update_yaxes(type="category", title=f"A: {names['a']}", autorange="reversed")
    fig = _layout(fig, cka_height(cka))
    fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig
