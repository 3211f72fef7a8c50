"""Slice against slice (:mod:`imacs.shift`): slice X is what the filters and the query box
select, slice Y the same filters with this box's query instead (a SELECT, or the shorthand
``column=value``, e.g. ``season=summer``). The table ranks the concepts (or clusters) by how
each model's reliance on them changes from X to Y, with simultaneous intervals, and shows
``B - A`` within each slice. Kept in the URL (``?vs=...&vsby=...``), so a link shares it;
a group's name opens it."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import ALL, Dash, Input, Output, dcc, html

from imacs.errors import InputError
from imacs.settings import SHIFT_RANKINGS
from imacs.shift import MIN_IMAGES

from ..catalog import RunCatalog
from ..declare import Click, Mirror, UrlFormat, choice_key, text_key
from . import navigation
from .common import view_of

#: groups shown in the table
ROWS = 15


class ids:
    """The ids the slice-against-slice card renders."""

    VERSUS = "vs-sql"
    CLEAR = "vs-clear"
    BY = "vs-by"
    OUT = "vs-out"

    @staticmethod
    def group(index: Any) -> dict:
        """A group's name in the table (``ALL``: every one)."""
        return {"type": "vs-group", "index": index}


URL_KEYS = (
    text_key("versus", "vs", position=76),
    choice_key("vsby", tuple(SHIFT_RANKINGS), position=77, per_run=False),
)
CLICKS = (
    Click(ids.VERSUS, lambda s, hit: s.with_(versus=(hit.value or "").strip()), "value"),
    Click(ids.CLEAR, lambda s, hit: s.with_(versus="")),
    Click(ids.BY, lambda s, hit: s.with_(vsby=hit.value or "either"), "value"),
    Click(ids.group(ALL), lambda s, hit: s.with_(cluster=int(hit.id["index"]), image=None)),
)
MIRRORS = (
    Mirror(ids.VERSUS, "value", lambda s, view, catalog: s.versus),
    Mirror(ids.BY, "value", lambda s, view, catalog: s.vsby),
)


def layout() -> dict[str, list]:
    """The second slice's box, the ranking's choice and the table."""
    section = html.Section(
        className="card query versus",
        children=[
            html.H3("Slice against slice", className="versus-title"),
            html.Div(
                className="query-row",
                children=[
                    html.Span("versus", className="versus-label"),
                    dcc.Input(
                        id=ids.VERSUS,
                        type="text",
                        debounce=True,
                        placeholder="slice Y: a SELECT returning image_id or patch_id, or "
                        "column=value (e.g. label=cat); X is what the filters and query select",
                        className="query-input",
                        spellCheck=False,
                    ),
                    html.Button("clear", id=ids.CLEAR, className="button"),
                ],
            ),
            html.Div(
                className="hint",
                children=[
                    "Rank by ",
                    dcc.Dropdown(
                        id=ids.BY,
                        options=[{"label": t, "value": k} for k, t in SHIFT_RANKINGS.items()],
                        value="either",
                        clearable=False,
                        searchable=False,
                        className="versus-by",
                    ),
                ],
            ),
            html.Div(id=ids.OUT, className="query-out"),
        ],
    )
    return {"top": [section]}


def _interval(row: pd.Series, m: str) -> str:
    if row[m] != row[m]:
        return "–"
    return f"{row[m]:+.3f} [{row[f'{m}_lo']:+.3f}, {row[f'{m}_hi']:+.3f}]"


def _share(x: float) -> str:
    return "–" if x != x else f"{x:.3f}"


def _row(row: pd.Series, unit: str) -> html.Tr:
    k = int(row["cluster"])
    n_x, n_y = int(row["n_images_x"]), int(row["n_images_y"])
    note = ""
    if min(n_x, n_y) == 0:
        note = " (only in " + ("Y)" if n_x == 0 else "X)")
    elif row["few_images"]:
        note = " (too few images)"
    cells = [
        html.Td(html.Button(f"{unit} {k}", id=ids.group(k), className="link-button")),
        html.Td(f"{n_x} / {n_y}{note}"),
    ]
    for m in ("a", "b"):
        shifted = bool(row[f"{m}_shifted"])
        cells += [
            html.Td(f"{_share(row[f'{m}_x'])} → {_share(row[f'{m}_y'])}"),
            html.Td(_interval(row, f"{m}_change"), className="shifted" if shifted else ""),
        ]
    cells += [
        html.Td(_interval(row, "diff_x")),
        html.Td(_interval(row, "diff_y")),
    ]
    few = bool(row["few_images"])
    return html.Tr(cells, className="versus-row few" if few else "versus-row")


def _result(catalog: RunCatalog, s: Any) -> list:
    """The table of changes, or why there is none."""
    if not s.versus:
        return []
    try:
        view = view_of(catalog, s)
        table = view.shift(s.filters, s.versus, s.vsby, s.measure)
    except InputError as exc:
        return [html.Div(f"{exc} (no comparison)", className="warning query-error")]
    names = view.run.names
    unit = view.unit
    head = html.Tr(
        [
            html.Th(unit),
            html.Th("images X / Y"),
            html.Th(f"{names['a']}: X → Y"),
            html.Th(f"{names['a']} change"),
            html.Th(f"{names['b']}: X → Y"),
            html.Th(f"{names['b']} change"),
            html.Th("B − A in X"),
            html.Th("B − A in Y"),
        ]
    )
    rows = [_row(r, unit) for _, r in table.head(ROWS).iterrows()]
    n_shifted = int((table["a_shifted"] | table["b_shifted"]).sum())
    x = s.query or "every image"
    ci = view.run.comparison_settings().ci
    return [
        html.Div(
            f"X: {x}; Y: {s.versus} (both with the other filters). {n_shifted} of "
            f"{len(table)} {unit}s change for a model, ranked by {SHIFT_RANKINGS[s.vsby]}; "
            f"changes in bold: their {ci:.0%} simultaneous interval excludes 0 (greyed: "
            f"fewer than {MIN_IMAGES} images in a slice, never called).",
            className="query-slice versus-summary",
        ),
        html.Div(html.Table([html.Thead(head), html.Tbody(rows)]), className="query-table"),
    ]


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Show the slice-against-slice table."""

    @app.callback(Output(ids.OUT, "children"), Input(navigation.ids.KEY_DATA, "data"))
    def versus_view(key):
        return _result(catalog, fmt.parse(key))
