"""The query box: one SQL ``SELECT`` over the run (:mod:`imacs.query`). A result with an
``image_id`` or ``patch_id`` column is the slice every view follows (ranking, statistics
and their intervals, the map, the galleries, the what-if on the slice); any other result
shows as a table under the box; an error as a sentence. The query is kept in the URL
(``?q=...``), so a link shares it."""

from __future__ import annotations

from typing import Any

from dash import ALL, Dash, Input, Output, dcc, html

from imacs.errors import InputError
from imacs.query import EXAMPLES, HELPERS, VIEWS

from ..catalog import RunCatalog
from ..declare import Click, Mirror, UrlFormat, text_key
from . import navigation
from .common import problem, view_of

#: rows of a table result shown on the page
TABLE_ROWS = 50


class ids:
    """The ids the query box renders (Dash's namespace convention for a component's ids)."""

    QUERY = "q-sql"
    CLEAR = "q-clear"
    OUT = "q-out"
    SCHEMA = "q-schema"

    @staticmethod
    def example(index: Any) -> dict:
        """An example query's button (``ALL``: every one)."""
        return {"type": "q-example", "index": index}


URL_KEYS = (text_key("query", "q", position=75),)
_EXAMPLES = list(EXAMPLES.values())
CLICKS = (
    # the box is read on Enter or when it loses focus (debounced), not on every key
    Click(ids.QUERY, lambda s, hit: s.with_(query=(hit.value or "").strip(), image=None), "value"),
    Click(ids.CLEAR, lambda s, hit: s.with_(query="", image=None)),
    Click(
        ids.example(ALL),
        lambda s, hit: s.with_(query=_EXAMPLES[int(hit.id["index"])], image=None),
    ),
)
MIRRORS = (Mirror(ids.QUERY, "value", lambda s, view, catalog: s.query),)


def layout() -> dict[str, list]:
    """The box, its examples and the schema at hand, and where its result shows."""
    section = html.Section(
        className="card query",
        children=[
            html.Div(
                className="query-row",
                children=[
                    dcc.Input(
                        id=ids.QUERY,
                        type="text",
                        debounce=True,
                        placeholder="ask the run in SQL, e.g. SELECT * FROM images "
                        "WHERE a_correct AND NOT b_correct  (Enter runs it)",
                        className="query-input",
                        spellCheck=False,
                    ),
                    html.Button("clear", id=ids.CLEAR, className="button"),
                ],
            ),
            html.Div(
                className="hint",
                children=[
                    "Examples: ",
                    *[
                        html.Button(name, id=ids.example(i), className="link-button")
                        for i, name in enumerate(EXAMPLES)
                    ],
                ],
            ),
            html.Details(id=ids.SCHEMA, className="schema"),
            html.Div(id=ids.OUT, className="query-out"),
        ],
    )
    return {"top": [section]}


def _schema(catalog: RunCatalog, s: Any) -> list:
    try:
        schema = view_of(catalog, s).run.query_engine.schema()
    except InputError:
        return []
    items = [
        html.Li([html.B(view), f" ({VIEWS[view]}): ", ", ".join(c for c, _ in cols)])
        for view, cols in schema.items()
    ]
    helpers = [html.Li([html.B(call), f": {what}"]) for call, what in HELPERS.items()]
    return [html.Summary("views and columns"), html.Ul([*items, *helpers])]


def _result(catalog: RunCatalog, s: Any) -> list:
    """What the query made: the slice's size, a table, or the error."""
    if not s.query:
        return []
    try:
        view = view_of(catalog, s)
    except InputError as exc:
        return [html.Div(problem(exc), className="warning")]
    sl = view.query_slice(s.query)
    if sl.kind == "error":
        return [html.Div(f"{sl.message} (not applied)", className="warning query-error")]
    if sl.slices:
        n_img = int(view.image_mask(s.filters).sum())
        n_patch = len(view.filtered_patches(s.filters))
        return [
            html.Div(
                f"Slice: {len(sl.ids)} {sl.kind} from the query; every view below shows "
                f"{n_img} images and {n_patch} patches (with the other filters).",
                className="query-slice",
            )
        ]
    table = sl.table if sl.table is not None else None
    if table is None or table.empty:
        return [html.Div("The query returned no rows.", className="query-slice")]
    shown = table.head(TABLE_ROWS)
    head = html.Tr([html.Th(str(c)) for c in shown.columns])
    rows = [html.Tr([html.Td(_cell(v)) for v in row]) for row in shown.itertuples(index=False)]
    more = f" (the first {TABLE_ROWS} of {len(table)})" if len(table) > TABLE_ROWS else ""
    return [
        html.Div(f"{len(table)} rows{more}; no image_id or patch_id column, so no slice."),
        html.Div(html.Table([html.Thead(head), html.Tbody(rows)]), className="query-table"),
    ]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def register(app: Dash, catalog: RunCatalog, fmt: UrlFormat) -> None:
    """Show what the query made, and the run's schema."""

    @app.callback(
        Output(ids.OUT, "children"),
        Output(ids.SCHEMA, "children"),
        Input(navigation.ids.KEY_DATA, "data"),
    )
    def query_view(key):
        s = fmt.parse(key)
        return _result(catalog, s), _schema(catalog, s)
