"""The ``imacs`` command line.

Every error caused by the user's input is printed as one line, ``imacs: error: ...``, and
exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import ImacsError, InputError
from .settings import MEASURES, SHIFT_RANKINGS, add_cli_options

if TYPE_CHECKING:
    from .run import Run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as argparse does, plus a hint
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imacs", description="Compare two image classifiers by where they look.")
    p.add_argument("--version", action="version", version=f"imacs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_analyze(sub)

    e = sub.add_parser("export", help="write a run's patch, cluster and concept tables as CSV")
    e.add_argument("run", metavar="RUN_DIR")
    e.add_argument("--patches", metavar="FILE.csv", help="patch table destination")
    e.add_argument("--clusters", metavar="FILE.csv", help="cluster table destination")
    e.add_argument("--concepts", metavar="FILE.csv", help="concept table destination")

    s = sub.add_parser("info", help="print a run's summary")
    s.add_argument("run", metavar="RUN_DIR")

    q = sub.add_parser(
        "query", help="ask a run in SQL (read-only views: images, patches, concepts...)"
    )
    q.add_argument("run", metavar="RUN_DIR")
    q.add_argument("sql", metavar="SQL", nargs="?", help='one SELECT, e.g. "SELECT * FROM images"')
    q.add_argument("--schema", action="store_true", help="list the views, columns and helpers")
    q.add_argument("--csv", metavar="FILE.csv", help="write the whole result as CSV")
    q.add_argument("--parquet", metavar="FILE.parquet", help="write the whole result as Parquet")
    q.add_argument("--rows", type=int, default=40, metavar="N", help="rows printed (default 40)")

    c = sub.add_parser(
        "compare-slices",
        help="how each model's reliance on each concept changes from one slice to another",
    )
    c.add_argument("run", metavar="RUN_DIR")
    for name in ("X", "Y"):
        c.add_argument(
            name.lower(),
            metavar=name,
            help=f"slice {name}: a SELECT returning image_id or patch_id, column=value "
            '(e.g. season=autumn), or "" for every image',
        )
    c.add_argument("--level", choices=("concept", "cluster"), default="concept")
    c.add_argument("--by", choices=tuple(SHIFT_RANKINGS), default="either", help="what ranks them")
    c.add_argument("--measure", choices=MEASURES, default="share", help="share or relative")
    c.add_argument("--csv", metavar="FILE.csv", help="write the whole table as CSV")
    c.add_argument("--rows", type=int, default=20, metavar="N", help="rows printed (default 20)")

    d = sub.add_parser(
        "demo", help="analyse the bundled sample data and models, then serve the dashboard"
    )
    _server_options(d)
    d.add_argument("--cache-dir", metavar="DIR", help="where the demo run and cache live")
    d.add_argument("--rebuild", action="store_true", help="recompute the run even if up to date")
    d.add_argument("--no-browser", action="store_true", help="do not open a browser")
    d.add_argument("--no-serve", action="store_true", help="only compute the run")

    v = sub.add_parser("serve", help="serve the dashboard for a run or a folder of runs")
    v.add_argument("runs", metavar="RUN_DIR_OR_FOLDER_OF_RUNS")
    _server_options(v)
    v.add_argument("--debug", action="store_true", help="Dash debug mode: development only")
    return p


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    """The ``analyze`` command: inputs and outputs here, settings from their declarations."""
    a = sub.add_parser(
        "analyze",
        help="compute Integrated Gradients, patches, clusters and the comparison into a run",
        description="Compute a run directory comparing where model A and model B look.",
    )
    g = a.add_argument_group("models")
    g.add_argument(
        "--model-a",
        required=True,
        metavar="PATH",
        help="TorchScript or torch.export (.pt2) file, package.module:factory, timm:NAME or hf:DIR",
    )
    g.add_argument(
        "--model-b",
        required=True,
        metavar="PATH",
        help="as --model-a",
    )
    g.add_argument(
        "--weights-a",
        metavar="FILE",
        help="weights for a factory or timm model A (.safetensors or state_dict)",
    )
    g.add_argument("--weights-b", metavar="FILE", help="weights for a factory model B")
    g.add_argument("--name-a", help="display name of model A")
    g.add_argument("--name-b", help="display name of model B")
    g.add_argument(
        "--reference-a",
        metavar="PATH",
        help="a reference pair (with --reference-b): two trainings of one recipe, differing "
        "only in their seed; what they surely differ by is the bar a difference of A and B "
        "must clear to be significant (their run is written beside --out, as OUT-reference)",
    )
    g.add_argument("--reference-b", metavar="PATH", help="the reference pair's second model")
    g.add_argument("--reference-weights-a", metavar="FILE", help="weights for --reference-a")
    g.add_argument("--reference-weights-b", metavar="FILE", help="weights for --reference-b")
    g = a.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="ImageFolder tree, or the folder --labels-csv paths are relative to",
    )
    g.add_argument(
        "--labels-csv",
        metavar="FILE",
        help="CSV with path,label and optional meta-annotation columns",
    )
    g.add_argument(
        "--classes", metavar="FILE", help="class names in the models' output order, one per line"
    )
    # every setting's flag, help and checks come from its declaration in imacs.settings
    a.set_defaults(settings=add_cli_options(a, {"data": g}))
    g = a.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    g.add_argument(
        "--overwrite", action="store_true", help="replace a different run already in --out"
    )
    g.add_argument(
        "--rebuild", action="store_true", help="recompute even if --out already holds this run"
    )
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="attribution cache (default $IMACS_CACHE_DIR or ~/.cache/imacs)",
    )
    g.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the attribution cache"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ImacsError as exc:  # InputError and the rest: one line, exit 2
        print(f"imacs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "imacs: interrupted; finished attribution chunks are kept in the cache", file=sys.stderr
        )
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "analyze":
        return _analyze(args)
    from .run import load_run

    if args.command == "export":
        if not args.patches and not args.clusters and not args.concepts:
            raise InputError(
                "export: name at least one of --patches FILE.csv, --clusters FILE.csv or "
                "--concepts FILE.csv"
            )
        run = load_run(args.run)
        run.export(patches_csv=args.patches, clusters_csv=args.clusters, concepts_csv=args.concepts)
        for what, path in (
            ("patches", args.patches),
            ("clusters", args.clusters),
            ("concepts", args.concepts),
        ):
            if path:
                print(f"wrote {what} to {path}")
        return 0
    if args.command == "info":
        print(load_run(args.run).summary())
        return 0
    if args.command == "query":
        return _query(args, load_run(args.run))
    if args.command == "compare-slices":
        return _compare_slices(args, load_run(args.run))
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    raise AssertionError(args.command)


def _query(args: argparse.Namespace, run: Run) -> int:
    """``imacs query``: the schema, or one SELECT printed and/or written to a file."""
    import pandas as pd

    from .query import HELPERS, VIEWS

    if args.schema:
        for view, cols in run.query_engine.schema().items():
            print(f"{view}: {VIEWS[view]}")
            print("  " + ", ".join(f"{c} {t.lower()}" for c, t in cols))
        print("helpers:")
        for call, what in HELPERS.items():
            print(f"  {call}: {what}")
        return 0
    if not args.sql:
        raise InputError('query: give one SELECT, e.g. imacs query RUN "SELECT * FROM images"')
    result = run.query(args.sql)
    for target, write in ((args.csv, "to_csv"), (args.parquet, "to_parquet")):
        if target:
            _write_table(result, target, write)
    if args.csv or args.parquet:
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result.head(args.rows).to_string(index=False))
    if len(result) > args.rows:
        print(f"({len(result)} rows; the first {args.rows} shown: --rows N, or --csv FILE for all)")
    return 0


def _compare_slices(args: argparse.Namespace, run: Run) -> int:
    """``imacs compare-slices``: the ranked table of changes, printed and/or written."""
    from .shift import describe

    table = run.compare_slices(args.x, args.y, args.level, args.by, args.measure)
    if args.csv:
        _write_table(table, args.csv, "to_csv")
        return 0
    print(
        f"{args.level}s ranked by {SHIFT_RANKINGS[args.by]}; X: {args.x or 'every image'}; "
        f"Y: {args.y or 'every image'}"
    )
    for line in describe(table.head(args.rows), args.level, run.names):
        print(line)
    if len(table) > args.rows:
        print(f"({len(table)} {args.level}s; the first {args.rows} shown: --rows N, or --csv FILE)")
    return 0


def _write_table(table: object, target: str, write: str) -> None:
    from .errors import disk_error

    path = Path(target).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        getattr(table, write)(path, index=False)
    except OSError as exc:
        raise disk_error(exc, path) from None
    print(f"wrote {len(table)} rows to {path}", file=sys.stderr)  # type: ignore[arg-type]


def _demo(args: argparse.Namespace) -> int:
    import threading
    import webbrowser

    from .cache import default_cache_dir
    from .demo import demo_run

    numba_home = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_home / "numba"))

    def log(msg: str) -> None:
        print(f"imacs: {msg}", file=sys.stderr, flush=True)

    # a bar in a terminal, plain lines every ~10 s in a log (imacs.progress)
    run = demo_run(args.cache_dir, rebuild=args.rebuild, progress=True, log=log)
    print(run.summary())
    if args.no_serve:
        return 0
    serve = _dashboard()
    url = f"http://{args.host}:{args.port}/"

    def announce() -> None:
        print(f"imacs: dashboard at {url}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
        if not args.no_browser:
            threading.Timer(1.5, lambda: webbrowser.open(url)).start()

    serve(run.path, host=args.host, port=args.port, announce=announce)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .run import Run

    root = Path(args.runs).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass a run directory or a folder of runs")
    if (root / "run.json").is_file():
        Run(root)  # a clear error now rather than a broken page later
    elif not any(root.glob("*/run.json")) and not any(root.glob("*/*/run.json")):
        raise InputError(
            f"{root}: holds no imacs runs; make one with imacs analyze --out {root}/NAME"
        )
    serve = _dashboard()  # the web stack loads only for this command

    def announce() -> None:
        print(
            f"imacs: serving {root.resolve()} at http://{args.host}:{args.port}/",
            file=sys.stderr,
            flush=True,
        )

    serve(root, host=args.host, port=args.port, debug=args.debug, announce=announce)
    return 0


def _dashboard() -> Callable[..., None]:
    """The dashboard's ``serve(runs, host, port, debug, announce)``, found by its entry point
    (group ``imacs.dashboard``), so the analysis package never imports the web app."""
    from importlib.metadata import entry_points

    found = entry_points(group="imacs.dashboard", name="serve")
    if not found:
        raise InputError(
            "the dashboard is not installed with this imacs; reinstall it: pip install imacs"
        )
    return next(iter(found)).load()


def _analyze(args: argparse.Namespace) -> int:
    from .api import analyze
    from .cache import default_cache_dir

    # numba's compiled code (UMAP) lives beside the attribution cache unless told otherwise
    numba_home = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_home / "numba"))
    quiet = args.quiet

    def log(msg: str) -> None:
        if not quiet:
            print(f"imacs: {msg}", file=sys.stderr, flush=True)

    run = analyze(
        args.model_a,
        args.model_b,
        args.data,
        args.out,
        weights_a=args.weights_a,
        weights_b=args.weights_b,
        name_a=args.name_a,
        name_b=args.name_b,
        reference=_pair(args.reference_a, args.reference_b, "--reference-a and -b"),
        reference_weights=(args.reference_weights_a, args.reference_weights_b),
        labels_csv=args.labels_csv,
        classes=args.classes,
        overwrite=args.overwrite,
        rebuild=args.rebuild,
        cache_dir=None if args.no_cache else (args.cache_dir or True),
        progress=not quiet,  # a bar in a terminal, plain lines in a log file
        log=log,
        # the settings given on the command line; the others keep their declared defaults
        **{k: getattr(args, k) for k in args.settings if getattr(args, k) is not None},
    )
    if not quiet and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        print(run.summary())
    return 0


def _pair(first: str | None, second: str | None, flags: str) -> tuple[str, str] | None:
    """Two values given together, or neither (InputError names the flags)."""
    if first is None and second is None:
        return None
    if first is None or second is None:
        raise InputError(f"a reference pair takes two models: give both {flags}")
    return (first, second)


if __name__ == "__main__":
    sys.exit(main())
