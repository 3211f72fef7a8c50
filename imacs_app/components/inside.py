"""Inside the models (:mod:`imacs.layers`). For the selected concept, per model (B, then A):
where along its depth a linear probe agrees with the model's final answer on the concept's
images and on the others (the depth that *decides* the concept), the channels of its last two
layers that carry the concept with the patches that activate them most and the ablation
check (zeroing them against as many random channels), and how A's layers resemble B's on the
concept's images (linear CKA). Below, folded until opened: both models' curves and the CKA
matrix on every image.

The tables cover every image of the run (the filters do not apply) and the top concepts
only; a model without hooks (TorchScript) has a sentence instead of its part, and a run made
before the stage says how to get it."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import ALL, Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from imacs.layers import MIN_IMAGES, ablation_sentence, decided_at, decided_words, depth_name

from .. import figures
from ..catalog import RunCatalog
from ..declare import Click, UrlFormat, ViewState
from ..reader import Inside, RunView
from . import navigation
from .common import files_url, guarded, view_of

#: the models in the order the panel shows them, with their colours
ROLES = (("b", figures.COLOUR_B), ("a", figures.COLOUR_A))


class ids:
    """The ids the panel renders (Dash's namespace convention for a component's ids)."""

    CONCEPT = "inside-concept"
    RUN = "inside-run"
    RUN_SUMMARY = "inside-run-summary"
    RUN_BODY = "inside-run-body"
    RUN_DRAWN = "inside-run-drawn"

    @staticmethod
    def patch(image: Any, slot: Any) -> dict:
        """A channel's top patch, which opens its image (``slot``: where it is shown, as a
        patch may top several channels; ``ALL``: every one)."""
        return {"type": "inside-patch", "image": image, "slot": slot}


CLICKS = (Click(ids.patch(ALL, ALL), lambda s, hit: s.with_(image=int(hit.id["image"]))),)


def layout() -> dict[str, list]:
    """The card, below the concept's detail."""
    return {"details": [section()]}


def section() -> html.Section:
    return html.Section(
        className="card detail inside",
        children=[
            html.H2("Inside the models"),
            html.Div(id=ids.CONCEPT),
            html.Details(
                id=ids.RUN,
                className="inside-run",
                children=[
                    html.Summary(
                        "Every image: both models' layers, and how A's resemble B's",
                        id=ids.RUN_SUMMARY,
                        n_clicks=0,
                    ),
                    html.Div(id=ids.RUN_BODY),
                ],
            ),
            dcc.Store(id=ids.RUN_DRAWN),
        ],
    )


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Fill the concept's part when the selection changes, the run's part once opened."""

    @app.callback(Output(ids.CONCEPT, "children"), Input(navigation.ids.KEY_CLUSTER, "data"))
    @guarded(1)
    def inside_concept(key):
        s = fmt.parse(key)
        return concept_part(view_of(catalog, s), s)

    @app.callback(
        Output(ids.RUN_BODY, "children"),
        Output(ids.RUN_DRAWN, "data"),
        Input(ids.RUN_SUMMARY, "n_clicks"),
        Input(navigation.ids.KEY_DATA, "data"),
        State(ids.RUN_DRAWN, "data"),
    )
    @guarded(2)
    def inside_run(toggled, key, drawn):
        if not (toggled or 0) % 2:  # Dash's Details does not report "open": its summary's
            raise PreventUpdate  # clicks toggle it, closed at first; drawn once opened
        view = view_of(catalog, fmt.parse(key))
        shown = f"{view.run_id}@{view.run.token}"
        if shown == drawn:
            raise PreventUpdate  # the filters changed: the tables cover every image
        return run_part(view), shown


def without(view: RunView) -> str:
    """Why a run has no view inside the models, and how to get it."""
    if (view.run.info.layers or {}).get("enabled") is False:
        return (
            "This run was made with --no-layers: run imacs analyze again without it to see "
            "inside the models."
        )
    return (
        "This run was made without the view inside the models: run imacs analyze again with "
        "eager models (package.module:factory with --weights-a/-b FILE.safetensors, timm:NAME "
        "or hf:DIR); --layers is on by default."
    )


def decided_sentence(agreement: pd.DataFrame, role: str, concept: int, threshold: float) -> str:
    """``B decides it at depth 2 (layer2) on its images, at depth 4 (layer4) elsewhere``
    (:func:`imacs.layers.decided_at` at ``threshold``)."""
    on = decided_words(agreement, role, concept, "agree", threshold)
    text = f"{role.upper()} decides it at {on} on its images"
    rows = agreement[(agreement["role"] == role) & (agreement["concept"] == concept)]
    if rows["agree_without"].notna().any():
        off = decided_words(agreement, role, concept, "agree_without", threshold)
        return f"{text}, at {off} elsewhere"
    return f"{text} (too few other images to compare)"


def concept_part(view: RunView, s: ViewState) -> list:
    """The selected concept's part: per model its curve, sentence and channels, then CKA;
    or a line saying why there is none."""
    if view.level != "concept":
        return [
            html.P(
                "The models' layers are looked at per concept: open a concept to see them.",
                className="hint",
            )
        ]
    inside = view.inside(-1 if s.cluster is None else s.cluster)
    if not inside.made:
        return [html.P(without(view), className="hint inside-without")]
    if s.cluster is None:
        return [
            html.P(
                "Pick a concept to see where each model decides it, the channels that carry "
                "it, and how A's layers resemble B's on its images.",
                className="hint",
            )
        ]
    k = s.cluster
    if not inside.looked_at and len(inside.absent) < 2:  # a model was looked at: not here
        return [
            html.P(
                f"Concept {k} is not among the {inside.top} top concepts looked at inside the "
                f"models (imacs analyze --layers-top N looks at more).",
                className="hint inside-not-top",
            ),
            *(html.P(why, className="hint inside-absent") for why in inside.absent.values()),
        ]
    note = "On every image of the run: the filters do not apply here. " if s.filters.active else ""
    return [
        html.P(
            f"{note}A linear probe on each layer predicts the model's own answer; a depth "
            f"decides the concept when the probe agrees with it on {inside.decided:.0%} of "
            "the concept's images (★).",
            className="hint",
        ),
        html.Div(
            className="two inside-models",
            children=[_model(view, inside, role, colour) for role, colour in ROLES],
        ),
        _cka(inside, view.run.names, f"concept {k}'s {_n_images(inside)}images"),
    ]


def _n_images(inside: Inside) -> str:
    n = inside.agreement["n_images"]
    return f"{int(n.iloc[0])} " if len(n) else ""


def _model(view: RunView, inside: Inside, role: str, colour: str) -> html.Div:
    """One model's column: its decided-at sentence and curve, then its channels."""
    name = view.run.names[role]
    head = html.H3(html.Span(f"{role.upper()}: {name}", className=f"model-{role}"))
    cls = f"inside-model inside-{role}"
    if role in inside.absent:
        return html.Div(
            className=cls,
            children=[head, html.P(inside.absent[role], className="hint inside-absent")],
        )
    rows = inside.agreement[inside.agreement["role"] == role]
    if rows.empty:
        return html.Div(className=cls, children=[head, html.P("Its layers were not looked at.")])
    k, t = inside.concept, inside.decided
    on = decided_at(inside.agreement, role, k, "agree", t)
    off = decided_at(inside.agreement, role, k, "agree_without", t)
    return html.Div(
        className=cls,
        children=[
            head,
            html.P(
                decided_sentence(inside.agreement, role, k, t) + ".", className="inside-decided"
            ),
            dcc.Graph(
                figure=figures.layer_curves(rows, colour, on, off, t),
                config={"displayModeBar": False},
                style={"height": f"{figures.LAYER_HEIGHT}px"},
            ),
            *_channels(view, inside.channels[inside.channels["role"] == role], role),
        ],
    )


def _layer_name(layer: str) -> str:
    return f"module {layer}" if layer.isdigit() else layer


def _channels(view: RunView, rows: pd.DataFrame, role: str) -> list:
    """Per layer (the last two looked at): the ablation check, then each top channel with
    its share and the patches that activate it most."""
    if rows.empty:
        return [html.P("No channels were looked at for this concept.", className="hint")]
    out: list = [html.H4("The channels that carry it")]
    for depth, g in rows.groupby("depth", sort=True):
        g = g.sort_values("rank")
        layer = _layer_name(str(g["layer"].iloc[0]))
        check = ablation_sentence(g)
        out.append(
            html.Div(
                className="inside-layer",
                children=[
                    html.Div(f"{layer} (depth {int(depth)})", className="inside-layer-name"),
                    _flips(g.iloc[0], len(g)),
                    html.P(check[0].upper() + check[1:] + ".", className="hint inside-ablation"),
                    *(
                        _channel(view, r, f"{role}{int(depth)}-{int(r.rank)}")
                        for r in g.itertuples()
                    ),
                ],
            )
        )
    return out


def _flips(row: pd.Series, n: int) -> html.Div:
    """The ablation check's rates as numbers: zeroing the top channels against as many
    random ones (and at the count that flips half the images, when it differs)."""
    parts = [
        html.Span(f"top {n}: ", className="label"),
        html.Span(f"{row['flip_top']:.1%}", className="flip-top"),
        html.Span(f" · {n} random: ", className="label"),
        html.Span(f"{row['flip_random']:.1%}", className="flip-random"),
    ]
    k = int(row["n_zeroed"]) if pd.notna(row["n_zeroed"]) else n
    if k != n:
        parts += [
            html.Span(f" · top {k}: ", className="label"),
            html.Span(f"{row['flip_top_k']:.1%}", className="flip-top-k"),
            html.Span(f" · {k} random: ", className="label"),
            html.Span(f"{row['flip_random_k']:.1%}", className="flip-random-k"),
        ]
    return html.Div(
        className="inside-flips",
        title=f"answers flipped on the concept's {int(row['n_ablated'])} images when the "
        "channels are zeroed",
        children=[html.Span("answers flipped, zeroing ", className="label"), *parts],
    )


def _channel(view: RunView, r: Any, slot: str) -> html.Div:
    """A channel: its number, its share of the layer's attribution inside the concept's
    patches, and the run's patches that activate it most (each opens its image)."""
    pids = [int(p) for p in str(r.top_patches).split(",") if p.strip()]
    images = view.patch_images(pids)
    return html.Div(
        className="inside-channel",
        children=[
            html.Span(f"channel {int(r.channel)}", className="strip-title"),
            html.Span(
                f"share {r.share:.1%}",
                className="inside-share",
                title="its share of the layer's attribution inside the concept's patches",
            ),
            html.Div(
                className="thumbs",
                children=[
                    html.Button(
                        id=ids.patch(images[p], f"{slot}-{j}"),
                        className="inside-patch",
                        n_clicks=0,
                        title=f"patch {p} of image {images[p]}: open the image",
                        children=html.Img(
                            src=files_url(view, f"patches/{p}.jpg"), alt=f"patch {p}"
                        ),
                    )
                    for j, p in enumerate(pids)
                    if p in images
                ],
            ),
        ],
    )


def _cka(inside: Inside, names: dict[str, str], on: str) -> html.Div:
    """The CKA of A's layers with B's on ``on`` (the concept's images, or every image), or
    why there is none."""
    title = html.H3(f"How A's layers resemble B's on {on}")
    if inside.absent:
        why = "CKA needs both models' layers."
        return html.Div(className="inside-cka", children=[title, html.P(why, className="hint")])
    if inside.cka.empty:
        why = f"Too few images for CKA (it needs at least {MIN_IMAGES})."
        return html.Div(className="inside-cka", children=[title, html.P(why, className="hint")])
    return html.Div(
        className="inside-cka",
        children=[
            title,
            html.P(
                "Linear CKA of each of A's layers with each of B's: 1 when two layers hold "
                "the same representation up to rotation and scale, near 0 when unrelated.",
                className="hint",
            ),
            dcc.Graph(
                figure=figures.cka_heatmap(inside.cka, names),
                config={"displayModeBar": False},
                style={"height": f"{figures.cka_height(inside.cka)}px"},
            ),
        ],
    )


def run_part(view: RunView) -> list:
    """Every image: each model's decided-at sentence, both curves in one figure, and the
    CKA matrix."""
    inside = view.inside(-1)
    if not inside.made:
        return [html.P(without(view), className="hint inside-without")]
    names, t = view.run.names, inside.decided
    ag = inside.agreement
    lines, decided = [], {}
    for role, _ in ROLES:
        if role in inside.absent:
            lines.append(html.P(inside.absent[role], className="hint inside-absent"))
        elif (ag["role"] == role).any():
            decided[role] = decided_at(ag, role, -1, "agree", t)
            lines.append(
                html.P(
                    f"{role.upper()} ({names[role]}): its probes agree with its answer on "
                    f"{t:.0%} of the images from {depth_name(ag, role, decided[role])}.",
                    className="inside-decided",
                )
            )
    out: list = [*lines]
    if not ag.empty:
        out.append(
            dcc.Graph(
                figure=figures.run_layer_curves(ag, names, decided, t),
                config={"displayModeBar": False},
                style={"height": f"{figures.LAYER_HEIGHT}px"},
            )
        )
    n = int(inside.cka["n_images"].iloc[0]) if len(inside.cka) else len(view.images)
    out.append(_cka(inside, names, f"all {n} images"))
    return out
