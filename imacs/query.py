"""SQL over a run: the run's tables as read-only views in an in-process DuckDB.

A question the fixed filters cannot ask ("images where A is right, B is wrong and concept 3
is present") is one ``SELECT``::

    run.query("SELECT * FROM images_with(3) WHERE a_correct AND NOT b_correct")

Views (:data:`VIEWS` says what each holds; :meth:`QueryEngine.schema` lists the columns):

* ``images``: one row per analysed image: ``image_id``, ``image`` (its path in the data),
  ``label``, ``a_pred``/``b_pred`` (class names), ``a_prob``/``b_prob``,
  ``a_correct``/``b_correct``, ``disagree`` (the two predictions differ), ``agreement``
  (Spearman correlation of the two maps), ``map_iou``, and the meta-annotation columns;
* ``patches``: one row per salient patch: its box, ``cluster``, ``concept``, each model's
  share of attribution ``attr_a``/``attr_b`` and ``diff`` (B - A), the relative shares,
  what each model answers to it alone (``alone_a``/``alone_b``), its map position;
* ``clusters``, ``concepts``: the stored statistics (rank, shares, interval, what-if);
* ``whatif_images``: per concept (``level`` 'concept') or cluster ('cluster') and image,
  each model's answer after the group's content was removed, and ``a_flipped``/
  ``b_flipped`` (the answer changed);
* ``meta``: ``image_id`` and the meta-annotation columns.

Helpers (the operators of the i-Algebra paper over the views): ``images_with(k)`` and
``images_with_cluster(k)`` (drill-down: the images holding concept/cluster ``k``), and
``flip_rates(k)`` (what-if: per model, how often removing concept ``k`` flips it; filter
``whatif_images`` by ``image_id IN (...)`` for a slice).

Read-only by construction: only one ``SELECT`` (or ``WITH ... SELECT``) statement runs; the
database lives in memory and holds the run's tables, file access, extensions and Python
variable lookups are switched off and the configuration is locked before any query runs;
a query that runs longer than ``timeout`` seconds is interrupted.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .errors import InputError, first_line


class Run(Protocol):
    """What the engine reads of a run (:class:`imacs.run.Run` has it; the engine does not
    import it, so the run can offer queries without an import circle)."""

    @property
    def images(self) -> pd.DataFrame: ...
    @property
    def patches(self) -> pd.DataFrame: ...
    @property
    def clusters(self) -> pd.DataFrame: ...
    @property
    def concepts(self) -> pd.DataFrame: ...
    @property
    def whatif_images(self) -> pd.DataFrame: ...
    @property
    def concept_whatif_images(self) -> pd.DataFrame: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def info(self) -> Any: ...  # its ``meta_columns``
    def current_file(self, name: str) -> Any: ...  # a table's Parquet file, if up to date
    def query(self, sql: str) -> pd.DataFrame: ...


#: what each view holds, for ``imacs query --schema`` and the dashboard
VIEWS = {
    "images": "one row per analysed image, A and B side by side",
    "patches": "one row per salient patch, with its cluster and concept",
    "clusters": "the clusters' statistics, as ranked",
    "concepts": "the concepts' statistics, as ranked",
    "whatif_images": "per group and image: the answers after removing the group's content",
    "meta": "image_id and the meta-annotation columns",
}

#: the helpers' signatures and what they return
HELPERS = {
    "images_with(k)": "images holding a patch of concept k (the columns of images)",
    "images_with_cluster(k)": "images holding a patch of cluster k",
    "flip_rates(k)": "n_images, flip_a, flip_b: how often removing concept k flips each model",
}

#: example queries, one click away in the dashboard
EXAMPLES = {
    "A right, B wrong": "SELECT * FROM images WHERE a_correct AND NOT b_correct",
    "maps that agree least": (
        "SELECT image_id, image, label, agreement FROM images "
        "WHERE a_correct AND b_correct ORDER BY agreement LIMIT 20"
    ),
    "images with the top concept": (
        "SELECT * FROM images_with((SELECT concept FROM concepts ORDER BY rank LIMIT 1))"
    ),
    "concepts per class": (
        "SELECT i.label, p.concept, avg(p.diff) AS diff, count(*) AS n_patches "
        "FROM patches p JOIN images i USING (image_id) GROUP BY ALL ORDER BY diff DESC"
    ),
}

#: seconds a query may run
TIMEOUT = 10.0


class QueryError(InputError):
    """A query that cannot run: not a single SELECT, wrong SQL, too slow; one line."""


def _sql_name(name: str) -> str:
    """A column name as a quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    """A Python string as an SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _class_name(column: str, classes: list[str]) -> str:
    """SQL for a class index column as its class name (NULL when missing or out of range)."""
    names = "[" + ", ".join(_sql_text(c) for c in classes) + "]"
    col = _sql_name(column)
    return f"CASE WHEN {col} >= 0 THEN list_extract({names}, {col}::BIGINT + 1) END"


def _images_sql(columns: list[str], run: Run, source: str) -> str:
    """The ``images`` view's table from the stored images table (read from ``source``, with
    ``columns``): A and B side by side, class indices as names."""
    cls = run.classes
    parts = [
        "image_id",
        "image",
        "label_name AS label",
        f"{_class_name('pred_a', cls)} AS a_pred",
        f"{_class_name('pred_b', cls)} AS b_pred",
        "prob_a AS a_prob",
        "prob_b AS b_prob",
        "correct_a::BOOLEAN AS a_correct",
        "correct_b::BOOLEAN AS b_correct",
        "pred_a <> pred_b AS disagree",
    ]
    for src, dst in (("map_spearman", "agreement"), ("map_iou_top10", "map_iou")):
        if src in columns:
            parts.append(f"{src} AS {dst}")
    taken = {"label", "a_pred", "b_pred", "a_prob", "b_prob", "a_correct", "b_correct"}
    taken |= {"disagree", "agreement", "map_iou", "image_id", "image"}
    parts += [_sql_name(c) for c in run.info.meta_columns if c in columns and c not in taken]
    return "SELECT " + ", ".join(parts) + f" FROM {source}"


def _patches_sql(columns: list[str], run: Run, source: str) -> str:
    """The ``patches`` view's table: the stored one, what each model answers to a patch
    alone as a class name."""
    names = [
        f"{_class_name(c, run.classes)} AS {c}" for c in ("alone_a", "alone_b") if c in columns
    ]
    return "SELECT * " + (f"REPLACE ({', '.join(names)}) " if names else "") + f"FROM {source}"


def _whatif_view(run: Run) -> pd.DataFrame:
    parts = []
    for level, table in (("concept", run.concept_whatif_images), ("cluster", run.whatif_images)):
        if not table.empty:  # its group column is named after the level
            parts.append(table.rename(columns={level: "grp"}).assign(level=level))
    cols = ["level", "grp", "image_id", "a_pred_after", "b_pred_after", "area"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    w = pd.concat(parts, ignore_index=True).rename(
        columns={"pred_a_after": "a_pred_after", "pred_b_after": "b_pred_after"}
    )
    return w[cols]


def _small_tables(run: Run) -> dict[str, pd.DataFrame]:
    """The tables copied from pandas (the small ones, and what-if's, which are merged)."""
    return {
        "t_clusters": run.clusters,
        "t_concepts": run.concepts,
        "t_whatif": _whatif_view(run),
    }


_SETUP = """
CREATE VIEW images AS SELECT * FROM t_images;
CREATE VIEW patches AS SELECT * FROM t_patches;
CREATE VIEW clusters AS SELECT * FROM t_clusters ORDER BY rank;
CREATE VIEW concepts AS SELECT * FROM t_concepts ORDER BY rank;
CREATE VIEW meta AS SELECT * FROM t_meta;
CREATE VIEW whatif_images AS
  SELECT w.level, w.grp, w.image_id, w.a_pred_after, w.b_pred_after, w.area,
         w.a_pred_after <> p.pred_a AS a_flipped, w.b_pred_after <> p.pred_b AS b_flipped
  FROM t_whatif w JOIN t_preds p USING (image_id);
CREATE MACRO images_with(k) AS TABLE
  SELECT * FROM images WHERE image_id IN (SELECT image_id FROM patches WHERE concept = k);
CREATE MACRO images_with_cluster(k) AS TABLE
  SELECT * FROM images WHERE image_id IN (SELECT image_id FROM patches WHERE cluster = k);
CREATE MACRO flip_rates(k) AS TABLE
  SELECT count(*) AS n_images, avg(a_flipped::DOUBLE) AS flip_a, avg(b_flipped::DOUBLE) AS flip_b
  FROM whatif_images WHERE level = 'concept' AND grp = k;
"""

#: switched off before any user query: files, extensions, Python lookups, then the lock
_LOCKDOWN = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET python_enable_replacements = false",
    "SET lock_configuration = true",
)


class QueryEngine:
    """Read-only SQL over one run (see the module's docstring).

    Args:
        run (Run): the run whose tables the views show.
        timeout (float): seconds a query may run. Default: :data:`TIMEOUT`.

    Raises:
        InputError: duckdb is not installed.
    """

    def __init__(self, run: Run, timeout: float = TIMEOUT) -> None:
        self.run = run
        self.timeout = timeout
        try:
            import duckdb
        except ImportError as exc:
            raise InputError(
                f"queries need duckdb ({first_line(exc, 200)}); pip install duckdb"
            ) from None
        self._duckdb = duckdb
        con = duckdb.connect(":memory:", config={"threads": 2})
        try:
            self._build(con, run)
        except duckdb.Error as exc:  # a file damaged past its footer
            for name in ("images", "patches"):
                getattr(run, name)  # the run's reader names the damaged file, if it sees it
            raise InputError(
                f"query: the run's tables cannot be read ({first_line(exc, 200)}); "
                "re-run imacs analyze"
            ) from None
        con.execute(_SETUP)
        for statement in _LOCKDOWN:
            con.execute(statement)
        self._con = con

    def _build(self, con: Any, run: Run) -> None:
        """The views' tables, from the run's files or frames."""
        src, cols = {}, {}
        for name in ("images", "patches"):
            src[name], cols[name] = self._source(con, name)
        con.execute(f"CREATE TABLE t_images AS {_images_sql(cols['images'], run, src['images'])}")
        con.execute(f"CREATE TABLE t_preds AS SELECT image_id, pred_a, pred_b FROM {src['images']}")
        con.execute(
            f"CREATE TABLE t_patches AS {_patches_sql(cols['patches'], run, src['patches'])}"
        )
        meta = [c for c in run.info.meta_columns if c in cols["images"]]
        con.execute(
            "CREATE TABLE t_meta AS SELECT "
            + ", ".join(["image_id", *(_sql_name(c) for c in meta)])
            + " FROM t_images"
        )
        for name, frame in _small_tables(run).items():
            con.register(f"{name}_df", frame)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_df")
            con.unregister(f"{name}_df")
        for name in ("images", "patches"):
            if src[name] == f"raw_{name}":
                con.unregister(src[name])

    def _source(self, con: Any, name: str) -> tuple[str, list[str]]:
        """What to read table ``name`` from, as SQL, and its columns: the run's Parquet file
        where it needs no upgrade (DuckDB reads it in parallel, without pandas), else the
        run's upgraded frame (registered under a name)."""
        path = self.run.current_file(name)
        if path is not None:
            source = f"read_parquet({_sql_text(str(path))})"
            try:
                described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
                return source, [r[0] for r in described]
            except self._duckdb.Error:  # a damaged file: the run's reader says why
                pass
        frame = getattr(self.run, name)
        con.register(f"raw_{name}", frame)
        return f"raw_{name}", [str(c) for c in frame.columns]

    def schema(self) -> dict[str, list[tuple[str, str]]]:
        """``{view: [(column, type), ...]}`` of every view."""
        out = {}
        for view in VIEWS:
            rows = self._con.cursor().execute(f"DESCRIBE {view}").fetchall()
            out[view] = [(r[0], str(r[1])) for r in rows]
        return out

    def query(self, sql: str) -> pd.DataFrame:
        """The result of one read-only ``SELECT``.

        Raises:
            QueryError: not exactly one SELECT statement, an error in it (the database's
                first line), or it ran longer than the time limit.
        """
        text = (sql or "").strip().rstrip(";").strip()
        if not text:
            raise QueryError("query: empty; write one SELECT, e.g. SELECT * FROM images")
        cur = self._con.cursor()
        try:
            statements = cur.extract_statements(text)
        except self._duckdb.Error as exc:
            raise QueryError(f"query: {first_line(exc, 300)}") from None
        if len(statements) != 1:
            raise QueryError(f"query: {len(statements)} statements; write one SELECT")
        kind = statements[0].type
        if kind != self._duckdb.StatementType.SELECT:
            raise QueryError(
                f"query: {kind.name} statements are not allowed: queries are read-only; "
                "write one SELECT"
            )
        with self._deadline(cur):
            try:
                return cur.execute(text).df()
            except self._duckdb.InterruptException:
                raise QueryError(
                    f"query: stopped after {self.timeout:g} s; narrow it (a WHERE, a LIMIT)"
                ) from None
            except self._duckdb.Error as exc:
                raise QueryError(f"query: {first_line(exc, 300)}") from None

    @contextmanager
    def _deadline(self, cur: object) -> Iterator[None]:
        timer = threading.Timer(self.timeout, cur.interrupt)  # type: ignore[attr-defined]
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            timer.join()  # no thread left behind (a daemon killed at exit aborts the process)


#: ``column=value``: the images whose meta-annotation (or any ``images`` column) has it
_SHORTHAND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$", re.DOTALL)


def slice_sql(text: str) -> str:
    """A slice's SQL: ``text`` itself, or for the shorthand ``column=value`` (e.g.
    ``season=autumn``) the images whose ``column`` reads ``value`` (as text)."""
    m = _SHORTHAND.match(text or "")
    if m is None or re.match(r"\s*(select|with|from)\b", text, re.IGNORECASE):
        return (text or "").strip()
    col, value = m.group(1), m.group(2).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    value = value.replace("'", "''")
    return f"SELECT image_id FROM images WHERE CAST(\"{col}\" AS VARCHAR) = '{value}'"


@dataclass(frozen=True, eq=False)
class Slice:
    """What a query's result makes of a run: a slice of ``images`` or ``patches`` (``ids``,
    the distinct ids of the result's ``image_id`` or ``patch_id`` column, and ``images``,
    the images they hold), a ``table`` (any other result), or an ``error`` (a sentence)."""

    kind: str
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    images: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    table: pd.DataFrame | None = None
    message: str = ""

    @property
    def slices(self) -> bool:
        """True if it selects images or patches (a table or an error selects nothing)."""
        return self.kind in ("images", "patches")

    def patch_mask(self, patches: pd.DataFrame) -> np.ndarray:
        """Bool per row of ``patches`` (with ``image_id``, ``patch_id``): in the slice."""
        if self.kind == "patches":
            return patches["patch_id"].isin(self.ids).to_numpy()
        if self.kind == "images":
            return patches["image_id"].isin(self.images).to_numpy()
        raise QueryError(f"query: {self.message or 'it returns no image_id or patch_id'}")


def slice_of(result: pd.DataFrame, patches: pd.DataFrame) -> Slice:
    """The slice a query's ``result`` selects in a run whose patches are ``patches``: its
    ``patch_id`` column if it has one, else its ``image_id`` column, else a table."""
    for kind, col in (("patches", "patch_id"), ("images", "image_id")):
        if col in result.columns:
            ids = pd.to_numeric(result[col], errors="coerce").dropna().astype(np.int64)
            ids = np.unique(ids.to_numpy())
            held = ids
            if kind == "patches":  # the images those patches lie in, found once
                held = np.unique(patches.loc[patches["patch_id"].isin(ids), "image_id"])
            return Slice(kind, ids, held, result)
    return Slice("table", table=result)


def run_slice(run: Run, text: str) -> Slice:
    """The slice ``text`` (a SELECT, or ``column=value``) selects in ``run``; an empty text
    is every image; an error or a result without ids is a :class:`Slice` saying so."""
    if not (text or "").strip():
        return Slice("images", run.images["image_id"].to_numpy(), run.images["image_id"].to_numpy())
    try:
        result = run.query(slice_sql(text))
    except InputError as exc:
        return Slice("error", message=str(exc))
    return slice_of(result, run.patches)


__all__ = [
    *("EXAMPLES", "HELPERS", "TIMEOUT", "VIEWS", "QueryEngine", "QueryError", "Slice"),
    *("run_slice", "slice_of", "slice_sql"),
]
