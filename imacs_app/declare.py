"""What the page's components declare, and the view state made from it: the page URL holds
the view state, so a pasted link opens the same view.

Each component declares the URL keys it owns (:class:`UrlKey`: its part of the state, how
the query string holds it, which views its change re-renders), and :class:`UrlFormat`
assembles a page's state from its components. :class:`ViewState` holds one value per key,
read as attributes (``state.cluster``); anything malformed in a URL reads as the default.
Components also declare their clicks (:class:`Click`), the controls that show the state
(:class:`Mirror`) and what a click opens (:class:`Opens`); the navigation assembles the
state callback from them (:class:`imacs_app.components.navigation.Router`).

A leaf: it imports no component and no Dash (declarations are plain data), so every
component can import it. The dashboard's own page state is :mod:`imacs_app.state`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlencode

from .reader import Filters, RunView

if TYPE_CHECKING:
    from .catalog import RunCatalog

#: a parsed query string: name -> its values, in order (``urllib.parse.parse_qs``)
Query = Mapping[str, list[str]]

#: what a key's change re-renders: every view ("data"), the map alone ("map"), the selected
#: group's views and the image ("cluster"), the image detail alone ("image")
SCOPES = ("data", "map", "cluster", "image")


@dataclass(frozen=True)
class UrlKey:
    """One part of the view state, and how the page URL's query string holds it.

    Args:
        field (str): its name in the view state (``state.<field>``).
        default (object): its value when the URL does not say; never written to the URL.
        read (callable): ``read(query) -> value`` from the parsed query string; a malformed
            value reads as ``default``.
        write (callable): ``write(state) -> [(name, text), ...]``: the query pairs that
            hold it (none when it is at its default).
        names (tuple of str): the query names it reads and writes.
        scope (str): which views its change re-renders, one of :data:`SCOPES`.
            Default: "data" (every view)
        per_run (bool): True if it belongs to one run (cleared when another run is
            opened), False for a display choice that is kept. Default: True
        position (int): where its pairs go in the URL, lowest first (the page writes one
            order, so it never rewrites a link it made). Default: 100
    """

    field: str
    default: Any
    read: Callable[[Query], Any]
    write: Callable[[ViewState], list[tuple[str, str]]]
    names: tuple[str, ...]
    scope: str = "data"
    per_run: bool = True
    position: int = 100

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"URL key {self.field!r}: scope must be one of {SCOPES}")


def first(query: Query, name: str) -> str | None:
    """The first value of ``name`` in a parsed query string, or None."""
    values = query.get(name)
    return values[0] if values else None


def integer(query: Query, name: str) -> int | None:
    """The first value of ``name`` as an integer; None if absent or not a number."""
    text = first(query, name)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def choice_key(
    field: str, choices: Sequence[str], position: int, scope: str = "data", per_run: bool = True
) -> UrlKey:
    """A key that holds one of ``choices`` under its own name; the first is the default.

    Args:
        field (str): the state's field and the query name.
        choices (sequence of str): allowed values, the default first.
        position (int): see :class:`UrlKey`.
        scope (str): see :class:`UrlKey`. Default: "data"
        per_run (bool): see :class:`UrlKey`. Default: True
    """
    default = choices[0]

    def read(q: Query) -> str:
        value = first(q, field)
        return value if value in choices else default

    def write(s: ViewState) -> list[tuple[str, str]]:
        value = getattr(s, field)
        return [] if value == default else [(field, value)]

    return UrlKey(field, default, read, write, (field,), scope, per_run, position)


def integer_key(field: str, position: int, scope: str = "data") -> UrlKey:
    """A key that holds a whole number (or nothing) under its own name.

    Args:
        field (str): the state's field and the query name.
        position (int): see :class:`UrlKey`.
        scope (str): see :class:`UrlKey`. Default: "data"
    """

    def write(s: ViewState) -> list[tuple[str, str]]:
        value = getattr(s, field)
        return [] if value is None else [(field, str(value))]

    return UrlKey(field, None, lambda q: integer(q, field), write, (field,), scope, True, position)


def text_key(field: str, name: str, position: int) -> UrlKey:
    """A key that holds free text (a query) under ``name``, stripped; empty is the default.

    Args:
        field (str): the state's field.
        name (str): the query name.
        position (int): see :class:`UrlKey`.
    """

    def write(s: ViewState) -> list[tuple[str, str]]:
        value = getattr(s, field)
        return [(name, value)] if value else []

    return UrlKey(
        field, "", lambda q: (first(q, name) or "").strip(), write, (name,), position=position
    )


@dataclass(frozen=True)
class Hit:
    """What fired a click.

    Args:
        id (str or dict): the id of the clicked element (a pattern-matching id as a dict).
        prop (str): the property that changed ("n_clicks", "value", "clickData"...).
        value (object): its new value.
        inputs (mapping): the current value of every click input with a plain id, by id
            (for controls read together, as the filters).
        catalog (RunCatalog): the runs, for clicks that read the run (a map point).
    """

    id: str | Mapping[str, Any]
    prop: str
    value: Any
    inputs: Mapping[str, Any]
    catalog: RunCatalog


@dataclass(frozen=True)
class Click:
    """How a click, or a change of a control, changes the view state.

    Args:
        source (str or dict): the id of what fires it; a pattern-matching id (``{"type":
            ..., ...}``) fires for every rendered element of its ``type`` whose other values
            match (``ALL`` matches any).
        apply (callable): ``apply(state, hit) -> state``, the new view state (see
            :class:`Hit`); raise ``PreventUpdate`` to leave the view as it is. A state of
            another run opens that run.
        prop (str): the property that fires it. Default: "n_clicks" (a button; one that
            was just rendered, with no clicks yet, is ignored)
    """

    source: str | Mapping[str, Any]
    apply: Callable[[ViewState, Hit], ViewState]
    prop: str = "n_clicks"


@dataclass(frozen=True)
class Mirror:
    """A control's property that shows part of the view state. Mirrors are set whenever a
    run is opened (a pasted link, the run picker), options and values together.

    Args:
        target (str): the control's id.
        prop (str): its property ("value", "options").
        show (callable): ``show(state, view, catalog) -> value``; ``view`` is the state's
            run (a RunView), None when no run can be shown.
        follows_clicks (bool): also set after every click (a control that a click elsewhere
            can change, as the level toggle). Default: False
    """

    target: str
    prop: str
    show: Callable[[ViewState, RunView | None, RunCatalog], Any]
    follows_clicks: bool = False


@dataclass(frozen=True)
class Opens:
    """A part of the page that a click opens: once its content has arrived after a click
    set ``field`` (not on page load: a pasted link opens at the top), it is brought into
    view. When several open at once, the last declared (lowest on the page) wins.

    Args:
        target (str): the id of the element to scroll to (its ``children`` announce that
            its content arrived).
        field (str): the part of the view state that opens it.
    """

    target: str
    field: str


class Component(Protocol):
    """A part of the page: a module (or any object) with ``layout()``, and optionally
    ``register(app, catalog, fmt)`` for its own callbacks (``fmt``, the page's
    :class:`UrlFormat`, parses the keys they listen to) and these declarations (none when
    absent):

    - ``URL_KEYS`` (tuple of :class:`UrlKey`): its parts of the view state;
    - ``CLICKS`` (tuple of :class:`Click`): what a user clicks in it, and what that does;
    - ``MIRRORS`` (tuple of :class:`Mirror`): its controls that show the view state;
    - ``OPENS`` (tuple of :class:`Opens`): what to bring into view when a click opens it.
    """

    def layout(self) -> Mapping[str, list]:
        """Its elements, by the page region they go in (see :mod:`imacs_app.layout`)."""
        ...


def declared(component: object, what: str) -> tuple:
    """A component's declarations of one kind (``URL_KEYS``, ``CLICKS``...); none if it
    declares none."""
    return tuple(getattr(component, what, ()))


class UrlFormat:
    """The view state's query string, assembled from the URL keys of a page's components.
    Formats with the same keys are equal.

    Args:
        keys (iterable of UrlKey): every part of the view state; fields and query names
            must be unique.
        state_type (type): the class of its states, :class:`ViewState` or a subclass.
            Default: :class:`ViewState`
    """

    def __init__(self, keys: Iterable[UrlKey], state_type: type[ViewState] | None = None) -> None:
        self.keys = tuple(keys)
        self.state_type = state_type or ViewState
        self.fields = {k.field: k for k in self.keys}
        names = [n for k in self.keys for n in k.names]
        if len(self.fields) != len(self.keys) or len(set(names)) != len(names):
            raise ValueError("two components declare the same URL key or query name")
        self._written = sorted(self.keys, key=lambda k: k.position)  # stable: ties keep order

    @classmethod
    def of(
        cls, components: Iterable[object], state_type: type[ViewState] | None = None
    ) -> UrlFormat:
        """The format of a page made of ``components`` (in their order)."""
        return cls((k for c in components for k in declared(c, "URL_KEYS")), state_type)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlFormat) and self.keys == other.keys

    def __hash__(self) -> int:
        return hash(self.keys)

    def made(self, values: dict[str, Any]) -> ViewState:
        """A state of this format with every part given (no check: see :meth:`state`)."""
        s = object.__new__(self.state_type)
        object.__setattr__(s, "_format", self)
        object.__setattr__(s, "_values", values)
        return s

    def state(self, **values: Any) -> ViewState:
        """A state of this format; parts not given are at their defaults."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"no URL key declares {sorted(unknown)}")
        return self.made({f: values.get(f, k.default) for f, k in self.fields.items()})

    def parse(self, search: str | None) -> ViewState:
        """Parse ``?...`` into a state; anything malformed is ignored rather than fatal."""
        q = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
        return self.made({f: k.read(q) for f, k in self.fields.items()})

    def search(self, state: ViewState) -> str:
        """``?...`` for a state (empty when every part is at its default)."""
        pairs = [pair for k in self._written for pair in k.write(state)]
        return "?" + urlencode(pairs) if pairs else ""


class ViewState:
    """What the page shows: one value per URL key of the page's components, read as
    attributes; immutable (:meth:`with_` gives a changed copy). Made by its format
    (:meth:`UrlFormat.state`, :meth:`UrlFormat.parse`); the dashboard's own page has
    :class:`imacs_app.state.ViewState`, made from keyword arguments.
    """

    __slots__ = ("_format", "_values")
    _format: UrlFormat
    _values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): no lookup through _values
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no URL key declares {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a view state is immutable; use with_()")

    def __copy__(self) -> ViewState:
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> ViewState:
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ViewState):
            return NotImplemented
        return self._format == other._format and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = ", ".join(
            f"{f}={v!r}" for f, v in self._values.items() if v != self._format.fields[f].default
        )
        return f"ViewState({changed})"

    @property
    def format(self) -> UrlFormat:
        return self._format

    @property
    def filters(self) -> Filters:
        """The filter component's parts, as the reader takes them."""
        return Filters(
            classes=self.classes,
            outcome=self.outcome,
            meta=self.meta,
            query=self._values.get("query", ""),
        )

    def with_(self, **kw: Any) -> ViewState:
        """A copy with some parts changed."""
        unknown = set(kw) - set(self._values)
        if unknown:
            raise TypeError(f"no URL key declares {sorted(unknown)}")
        return self._format.made({**self._values, **kw})

    def display_only(self) -> ViewState:
        """The display choices alone: every part that belongs to one run (the run, its
        filters and selection) back at its default."""
        keys = self._format.fields
        return self._format.made(
            {f: keys[f].default if keys[f].per_run else v for f, v in self._values.items()}
        )

    def scoped(self, scopes: Iterable[str]) -> ViewState:
        """This state with every part outside ``scopes`` (see :data:`SCOPES`) at its
        default: what a view that re-renders for those scopes depends on."""
        keep = set(scopes)
        keys = self._format.fields
        return self._format.made(
            {f: v if keys[f].scope in keep else keys[f].default for f, v in self._values.items()}
        )

    def to_search(self) -> str:
        return self._format.search(self)
