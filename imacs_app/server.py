"""Plain HTTP routes beside the Dash callbacks: health, files, renderings, downloads.

Files are served only from inside a run's ``thumbs/`` folder (paths are resolved, links
included, and checked), renderings and files are cacheable (ETag + Cache-Control), and
nothing is written. URLs the pages make carry the run's token (``?v=``): a page of a run
that was replaced since gets 404s, never the new run's pictures.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, abort, jsonify, request, send_file

from imacs.errors import InputError
from imacs.run import safe_csv

from .catalog import NoSuchRun, RunCatalog
from .reader import LEVELS
from .render import render_png
from .state import parse_search

#: answers for every route: no sniffing, no framing, no third-party anything
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def content_security_policy(script_hashes: list[str]) -> str:
    """Only this server's own scripts (and Dash's inline bootstrap, by hash); plotly needs
    inline styles, and its WebGL scatter (the patch map) compiles shaders with ``Function``,
    so 'unsafe-eval' stays (without it the map says "WebGL is not supported"); images may
    be data: or blob: URLs (plotly's exports). No inline script runs unless hashed."""
    scripts = " ".join(["'self'", "'unsafe-eval'", *script_hashes])  # Dash gives them quoted
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )


def _unavailable(exc: Exception, root: object) -> Response:
    """A damaged run: the same sentence the dashboard shows, never a 500 or a traceback,
    and paths relative to the runs folder (the server's layout is nobody's business)."""
    text = str(exc).replace(f"{root}/", "").replace(str(root), ".")
    return Response(f"This run cannot be shown: {text}\n", 503, mimetype="text/plain")


def register_routes(server: Flask, catalog: RunCatalog, script_hashes: list[str]) -> None:
    csp = content_security_policy(script_hashes)

    @server.after_request
    def _secure(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        resp.headers.setdefault("Content-Security-Policy", csp)
        return resp

    @server.route("/healthz")
    def healthz() -> tuple[Response, int]:
        # says whether runs can be read, never where they are: it answers without a login
        try:
            dirs = catalog.run_dirs()
            if not dirs:
                return jsonify(status="no runs"), 503
            catalog.get(catalog.default_run()).run.manifest  # noqa: B018 - readable?
        except (InputError, OSError):
            return jsonify(status="error", error="a run cannot be read"), 503
        return jsonify(status="ok", runs=len(dirs)), 200

    @server.route("/files/<path:run_id>/thumbs/<path:subpath>")
    def files(run_id: str, subpath: str) -> Response:
        path = catalog.safe_file(run_id, subpath, request.args.get("v"))
        if path is None:
            abort(404)
        return send_file(path, max_age=3600, conditional=True, etag=True)

    @server.route("/render/<path:run_id>/<int:image_id>/<kind>.png")
    def render(run_id: str, image_id: int, kind: str) -> Response:
        level = request.args.get("level", "cluster")
        if level not in LEVELS:
            abort(404)
        token = request.args.get("v")
        patch = request.args.get("patch", type=int)
        cluster = request.args.get("cluster", type=int)
        for _ in range(10):  # a run replaced during the rendering is rendered again
            try:
                view = catalog.get(run_id).at(level)
            except NoSuchRun:
                abort(404)
            except InputError as exc:
                return _unavailable(exc, catalog.root)
            if token is not None and view.run.token != token:
                abort(404)  # a page of a run replaced since: its pictures are gone
            tag = hashlib.sha1(
                f"{view.run.token}/{image_id}/{kind}/{patch}/{level}/{cluster}".encode()
            ).hexdigest()
            if request.if_none_match and tag in request.if_none_match:
                return Response(status=304, headers={"ETag": f'"{tag}"'})
            try:
                png = render_png(view, image_id, kind, patch, cluster)
            except KeyError:
                abort(404)
            except (InputError, OSError, ValueError) as exc:
                return _unavailable(exc, catalog.root)
            if view.run.current():  # the thumbnail it drew is this run's
                break
        else:
            return _unavailable(InputError("the run keeps being replaced; reload"), catalog.root)
        resp = Response(png, mimetype="image/png")
        resp.set_etag(tag)
        resp.cache_control.max_age = 3600
        resp.cache_control.public = True
        return resp

    @server.route("/download/<path:run_id>/<table>.csv")
    def download(run_id: str, table: str) -> Response:
        try:
            view = catalog.get(run_id)
        except NoSuchRun:
            abort(404)
        except InputError as exc:
            return _unavailable(exc, catalog.root)
        f = parse_search("?" + request.query_string.decode()).filters
        if table not in ("clusters", "concepts", "patches"):
            abort(404)
        try:
            if table == "patches":
                frame = view.export_patches(f)
            elif table == "concepts":
                frame = view.at("concept").clusters(f).rename(columns={"cluster": "concept"})
            else:
                frame = view.at("cluster").clusters(f)
        except (InputError, OSError, ValueError) as exc:
            return _unavailable(exc, catalog.root)
        name = f"{run_id.replace('/', '_')}-{table}{'-filtered' if f.active else ''}.csv"
        return Response(
            safe_csv(frame),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
