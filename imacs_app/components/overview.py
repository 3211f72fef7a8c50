"""Overview: the run's summary (models, accuracies, counts, settings) and the ranking of
concepts (or clusters) with one strip of representative patches each."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pandas as pd
from dash import ALL, Dash, Input, Output, Patch, dcc, html
from dash.exceptions import PreventUpdate

from imacs.errors import InputError
from imacs.run import Run

from .. import figures
from ..catalog import RunCatalog
from ..declare import Click, Hit, Mirror, UrlFormat, ViewState, choice_key
from ..reader import Filters, RunView
from . import filters, navigation
from .common import NO_MATCH, files_url, guarded, open_clicked, pct, stat, view_of
from .evidence import verdict_line


class ids:
    """The ids the overview renders (Dash's namespace convention for a component's ids)."""

    SUMMARY = "summary"
    MAP_AGREEMENT = "map-agreement"
    RUN_WARNINGS = "run-warnings"
    RANKING_TITLE = "ranking-title"
    RANKING_HINT = "ranking-hint"
    LEVEL = "rank-level"
    MEASURE = "rank-measure"
    RANKING = "ranking"
    RANKING_DRAWN = "ranking-drawn"
    STRIPS = "strips"

    @staticmethod
    def strip(cluster: Any) -> dict:
        """A ranking strip, which opens its group (``ALL``: every strip)."""
        return {"type": "strip", "cluster": cluster}


#: ``measure=relative`` ranks by relative reliance: shares renormalised over each image's
#: patches; a display choice, kept when another run is opened
URL_KEYS = (choice_key("measure", ("share", "relative"), position=90, per_run=False),)


def _level(s: ViewState, hit: Hit) -> ViewState:
    """The level toggle: concepts or clusters. What is open stays open where it still
    exists: the image, and the open group as the other level sees it (a concept becomes
    its largest cluster, a cluster the concept that holds it)."""
    level = hit.value or "concept"
    if level == s.level:
        raise PreventUpdate
    return s.with_(level=level, cluster=_same_group(s, level, hit))


def _same_group(s: ViewState, level: str, hit: Hit) -> int | None:
    """The group at ``level`` that holds what ``s`` has open, or None."""
    if s.cluster is None:
        return None
    try:
        clusters = hit.catalog.get(s.run).run.clusters
    except InputError:
        return None
    if level == "concept":  # the concept that holds the open cluster
        row = clusters[clusters["cluster"] == s.cluster]
        return int(row["concept"].iloc[0]) if len(row) else None
    members = clusters[clusters["concept"] == s.cluster]  # the open concept's largest cluster
    if members.empty:
        return None
    return int(
        members.sort_values(["n_patches", "cluster"], ascending=[False, True]).iloc[0]["cluster"]
    )


CLICKS = (
    Click(ids.MEASURE, lambda s, hit: s.with_(measure=hit.value or "share"), prop="value"),
    Click(ids.LEVEL, _level, prop="value"),
    Click(ids.RANKING, open_clicked("ranking"), prop="clickData"),
    Click(ids.strip(ALL), lambda s, hit: s.with_(cluster=int(hit.id["cluster"]), image=None)),
)
MIRRORS = (
    Mirror(ids.MEASURE, "value", lambda s, view, catalog: s.measure),
    # the level toggle follows a click that changed the level (a concept's cluster)
    Mirror(ids.LEVEL, "value", lambda s, view, catalog: s.level, follows_clicks=True),
)


def layout() -> dict[str, list]:
    """The summary (above the filters) and the ranking card (first in the grid)."""
    return {"top": [summary()], "grid": [ranking_card()]}


def summary() -> html.Section:
    return html.Section(id=ids.SUMMARY, className="summary")


def ranking_card() -> html.Section:
    return html.Section(
        className="card",
        children=[
            html.H2("Concepts, ranked by |B − A|", id=ids.RANKING_TITLE),
            html.P(id=ids.RANKING_HINT, className="hint"),
            dcc.RadioItems(
                id=ids.LEVEL,
                options=[
                    {"label": "concepts", "value": "concept"},
                    {"label": "clusters", "value": "cluster"},
                ],
                value="concept",
                inline=True,
            ),
            html.Div(
                title=(
                    "Relative reliance renormalises each model's shares over the image's "
                    "salient patches, so a model with diffuse maps does not lose every "
                    "cluster to the other"
                ),
                children=dcc.RadioItems(
                    id=ids.MEASURE,
                    options=[
                        {"label": "share of attribution", "value": "share"},
                        {"label": "relative reliance", "value": "relative"},
                    ],
                    value="share",
                    inline=True,
                ),
            ),
            dcc.Loading(dcc.Graph(id=ids.RANKING, config={"displayModeBar": False})),
            dcc.Store(id=ids.RANKING_DRAWN),
            html.Div(id=ids.STRIPS, className="strips"),
        ],
    )


def _evidence(run: Run) -> list:
    """How far the maps can be trusted and how much the two models' maps agree (runs made
    before these were computed show nothing), and the run's warnings."""
    out = [html.P(f"Significance: {run.bar_sentence().partition(': ')[2]}.", className="trust")]
    summary = run.info.summary
    spearman = summary.get("map_spearman_median")
    if spearman is not None:
        iou = summary.get("map_iou_top10_median")
        out.append(
            html.P(
                f"Map agreement per image (median): Spearman {spearman:.2f}"
                + ("" if iou is None else f", top-10 % IoU {iou:.2f}")
                + " (1 = both models look at the same pixels).",
                className="trust",
                id=ids.MAP_AGREEMENT,
            )
        )
    trust = run.trust
    for r in ("a", "b"):
        res = trust.get(r) or {}
        if res.get("reading"):
            out.append(
                html.P(
                    [f"Trust: {res['reading']}", html.Span(_trust_detail(res), className="hint")],
                    className=f"trust model-{r}"
                    + (" inconclusive" if res.get("inconclusive") else ""),
                )
            )
    if run.warnings:
        out.append(
            html.Div(className="warning", id=ids.RUN_WARNINGS, children=[
                html.Div(f"Warning: {w}") for w in run.warnings
            ])
        )  # fmt: skip
    return out


def _trust_detail(res: dict) -> str:
    """captum's infidelity (against the same maps shuffled), max-sensitivity and the
    convergence delta, for a reader who wants them (run.json has them all)."""

    def num(x: object) -> str:
        return "–" if not isinstance(x, int | float) else f"{x:.3g}"

    parts = []
    if "infidelity" in res:
        parts.append(
            f"infidelity {num(res['infidelity'])} (shuffled maps "
            f"{num(res.get('infidelity_shuffled'))}; lower is better)"
        )
    if "sensitivity_max" in res:
        parts.append(f"max-sensitivity {num(res['sensitivity_max'])}")
    delta = res.get("delta") or {}
    if "median_rel" in delta:
        parts.append(f"convergence error, median {num(delta['median_rel'])} of f(x) − f(baseline)")
    return (" · " + " · ".join(parts)) if parts else ""


def alone_line(row: dict | pd.Series, long: bool = False) -> html.Span | None:
    """What the two models answer to the group's patches shown alone (pasted on the
    baseline), or None for runs made before it was measured."""
    a, b = row.get("alone_a"), row.get("alone_b")
    if not isinstance(a, str) or not isinstance(b, str):
        return None
    sa, sb = float(row.get("alone_a_share", 0.0)), float(row.get("alone_b_share", 0.0))
    text = (
        f"shown alone, its patches make A say {a} ({sa:.0%}) and B say {b} ({sb:.0%})"
        if long
        else f"alone: A says {a} ({sa:.0%}), B says {b} ({sb:.0%})"
    )
    return html.Span(text, className="alone")


def trait(column: str, value: str) -> str:
    """How a breakdown value reads in a sentence: ``B predicts urban``, ``class forest``,
    ``site = north`` (a meta-annotation)."""
    if column in ("A predicts", "B predicts", "class"):
        return f"{column} {value}"
    return f"{column} = {value}"


def _summary(view: RunView, f: Filters) -> list:
    """The models, their accuracies and agreement, the counts and the run's settings."""
    names = view.run.names
    summ = view.summary(f)
    settings = view.run.settings
    ig = settings.attribution
    h, w = settings.preprocess.input_size

    def count(kept: str, total: str) -> str:
        return f"{summ[kept]} / {summ[total]}" if f.active else str(summ[total])

    tag = " · filtered" if f.active else ""
    return [
        html.Div(
            className="models",
            children=[
                html.Span([html.B("A "), names["a"]], className="model-a"),
                html.Span(" vs ", className="vs"),
                html.Span([html.B("B "), names["b"]], className="model-b"),
            ],
        ),
        html.Div(
            className="stats",
            children=[
                stat(f"accuracy A{tag}", pct(summ["accuracy_a"])),
                stat(f"accuracy B{tag}", pct(summ["accuracy_b"])),
                stat(f"agreement{tag}", pct(summ["agreement"])),
                stat("images", count("n_images", "n_images_total")),
                stat("skipped", str(summ["n_skipped"])),
                stat("patches", count("n_patches", "n_patches_total")),
                stat(f"{view.unit}s", count("n_clusters", "n_clusters_total")),
            ],
        ),
        html.Div(
            f"{ig.describe()}, {ig.baseline} baseline, target {ig.target}; "
            f"input {h}x{w}; {len(view.run.classes)} classes; "
            f"seed {settings.seed}; made {view.run.info.created}",
            className="settings",
        ),
    ]


def _problems(catalog: RunCatalog) -> list:
    """The runs in the folder that cannot be read, if any."""
    problems = catalog.problems()
    if not problems:
        return []
    return [
        html.Div(
            className="warning",
            children=[f"{len(problems)} run(s) here cannot be read and are not listed: "]
            + [html.Div(f"{k}: {why}") for k, why in sorted(problems.items())],
        )
    ]


def _title(unit: str) -> tuple[str, str]:
    """The ranking's title and hint at a level."""
    title = f"{unit.title()}s, ranked by |B − A|"
    if unit == "concept":
        return title, (
            "A concept groups clusters of salient patches that the models answer alike "
            "when shown a patch alone (one logo on different backgrounds, one shortcut "
            "in several colours). Bars show the mean share of each model's attribution "
            "inside them; click a bar or a row to open the concept and its clusters."
        )
    return title, (
        "Each cluster groups similar salient patches (by the run's embedding). Bars "
        "show the mean share of each model's attribution inside them; click a bar "
        "or a row to open the cluster."
    )


#: a relative share resting on fewer images than this is flagged on its strip
FEW_IMAGES = 10


def _on_images(r: object) -> str:
    """`` relative`` and, when the measure rests on few images, how few."""
    n = getattr(r, "n_images_rel", None)
    if n is None or pd.isna(n):
        return " relative"
    n = int(n)
    if n >= FEW_IMAGES:
        return " relative"
    return f" relative, rests on {n} image{'s' if n != 1 else ''}"


def _left_out(view: RunView, f: Filters) -> str:
    """How many of the kept images the relative measure leaves out (a single salient patch
    gives both models a share of 1: it says nothing about what either prefers)."""
    sizes = view.filtered_patches(f).groupby("image_id").size()
    alone = int((sizes < 2).sum())
    if not alone:
        return ""
    return (
        f"Relative reliance leaves out {alone} of {len(sizes)} images: they hold a single "
        "salient patch, which gets a share of 1 from both models."
    )


def _strips(view: RunView, clusters: pd.DataFrame, f: Filters, relative: bool) -> list:
    """One strip per group, in the ranking's order: its numbers, what stands out in its
    images, and representative patches."""
    unit = view.unit
    reps = view.representatives(f)
    traits = view.cluster_traits(f)
    strips = []
    for pos, r in enumerate(clusters.itertuples(), start=1):
        c = int(r.cluster)
        shown = float(r.diff_rel if relative else r.diff)
        if c in traits.index:
            t = traits.loc[c]
            stands_out = f"{trait(t['column'], t['value'])} in {t['share']:.0%} of images"
        else:
            stands_out = f"mostly {r.top_class}"
        members = int(getattr(r, "n_clusters", 1) or 1) if unit == "concept" else 0
        grouped = f" · {members} clusters" if members > 1 else ""
        strips.append(
            html.Button(
                id=ids.strip(c),
                className="strip",
                n_clicks=0,
                children=[
                    html.Div(
                        className="strip-head",
                        children=[
                            html.Span(
                                f"#{pos if relative else int(r.rank)} {unit} {c}{grouped}",
                                className="strip-title",
                            ),
                            html.Span(
                                f"B − A {shown:+.3f}" + (_on_images(r) if relative else ""),
                                className="pos" if shown >= 0 else "neg",
                            ),
                            html.Span(f"{int(r.n_patches)} patches · {int(r.n_images)} images"),
                            html.Span(stands_out, className="strip-trait"),
                            alone_line(r._asdict()),
                            verdict_line(r._asdict()),
                        ],
                    ),
                    html.Div(
                        className="thumbs",
                        children=[
                            html.Img(src=files_url(view, f"patches/{pid}.jpg"), alt=f"patch {pid}")
                            for pid in reps.get(c, [])
                        ],
                    ),
                ],
            )
        )
    return strips


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """The summary and ranking, and marking the selected cluster in them."""

    @app.callback(
        Output(ids.SUMMARY, "children"),
        Output(ids.RANKING_TITLE, "children"),
        Output(ids.RANKING_HINT, "children"),
        Output(filters.ids.DL_CONCEPTS, "href"),
        Output(filters.ids.DL_CLUSTERS, "href"),
        Output(filters.ids.DL_PATCHES, "href"),
        Output(ids.RANKING, "figure"),
        Output(ids.RANKING_DRAWN, "data"),
        Output(ids.STRIPS, "children"),
        Input(navigation.ids.KEY_DATA, "data"),
    )
    @guarded(9, blank=("", "", "", "", "", figures.empty("See the message above."), None, []))
    def data_views(key):
        s = fmt.parse(key)
        view = view_of(catalog, s)
        f = s.filters
        clusters = view.clusters(f)
        summary = [*_summary(view, f), *_evidence(view.run), *_problems(catalog)]
        qs = s.with_(run=None).to_search()
        downloads = [
            f"/download/{quote(view.run_id)}/{table}.csv{qs}"
            for table in ("concepts", "clusters", "patches")
        ]
        title, hint = _title(view.unit)
        if clusters.empty:
            empty = figures.empty(NO_MATCH, height=200)
            return (summary, title, hint, *downloads, empty, None, [])
        relative = s.measure == "relative" and "diff_rel" in clusters.columns
        if relative:  # ranked by |diff_rel|; the figure and the strips show this order
            clusters = clusters.reindex(
                clusters["diff_rel"].abs().sort_values(ascending=False, kind="stable").index
            )
        if relative:
            hint = f"{hint} {_left_out(view, f)}"
        figure = figures.ranking(clusters, view.run.names, None, relative, view.run.bar)
        # what the highlight needs of the figure drawn: its rows and its own shapes
        drawn = {
            "order": list(figure["data"][0]["customdata"]),
            "shapes": list(figure["layout"]["shapes"]),
        }
        strips = _strips(view, clusters, f, relative)
        return (summary, title, hint, *downloads, figure, drawn, strips)

    @app.callback(
        Output(ids.RANKING, "figure", allow_duplicate=True),
        Input(navigation.ids.KEY_CLUSTER, "data"),
        Input(ids.RANKING_DRAWN, "data"),
        prevent_initial_call=True,
    )
    def ranking_highlight(key, drawn):
        """Mark the selected cluster's row in the ranking: a partial update of its shapes,
        from what the ranking drew (a small store; the figure is neither rebuilt nor sent
        back by the browser)."""
        if not drawn:
            raise PreventUpdate
        marks = figures.ranking_marks(drawn["order"], fmt.parse(key).cluster)
        shapes = list(drawn["shapes"]) + marks
        patch = Patch()
        patch["layout"]["shapes"] = shapes
        return patch

    @app.callback(
        Output(ids.strip(ALL), "className"),
        Input(navigation.ids.KEY_CLUSTER, "data"),
        Input(ids.strip(ALL), "id"),
    )
    def strip_highlight(key, ids):
        """Mark the selected cluster's strip."""
        selected = fmt.parse(key).cluster
        return ["strip selected" if i["cluster"] == selected else "strip" for i in ids]
