"""Plain HTTP routes beside the Dash callbacks: health, files, renderings, downloads.

Files are served only from inside a run's ``thumbs/`` folder (paths are resolved and
checked), renderings and files are cacheable (ETag + Cache-Control), and nothing is written.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, abort, jsonify, request, send_file

from imacs.errors import InputError

from .reader import RunCatalog, render_png
from .state import parse_search


def register_routes(server: Flask, catalog: RunCatalog) -> None:
    @server.route("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            dirs = catalog.run_dirs()
            if not dirs:
                return jsonify(status="no runs", root=str(catalog.root)), 503
            catalog.get(catalog.default_run()).run.manifest  # noqa: B018 - readable?
        except (InputError, OSError) as exc:
            return jsonify(status="error", error=str(exc)), 503
        return jsonify(status="ok", runs=len(dirs)), 200

    @server.route("/files/<path:run_id>/thumbs/<path:subpath>")
    def files(run_id: str, subpath: str) -> Response:
        path = catalog.safe_file(run_id, subpath)
        if path is None:
            abort(404)
        return send_file(path, max_age=3600, conditional=True, etag=True)

    @server.route("/render/<path:run_id>/<int:image_id>/<kind>.png")
    def render(run_id: str, image_id: int, kind: str) -> Response:
        try:
            view = catalog.get(run_id)
        except InputError:
            abort(404)
        patch = request.args.get("patch", type=int)
        tag = hashlib.sha1(
            f"{view.run.manifest['fingerprint']}/{view.mtime}/{image_id}/{kind}/{patch}".encode()
        ).hexdigest()
        if request.if_none_match and tag in request.if_none_match:
            return Response(status=304, headers={"ETag": f'"{tag}"'})
        try:
            png = render_png(view, image_id, kind, patch)
        except KeyError:
            abort(404)
        resp = Response(png, mimetype="image/png")
        resp.set_etag(tag)
        resp.cache_control.max_age = 3600
        resp.cache_control.public = True
        return resp

    @server.route("/download/<path:run_id>/<table>.csv")
    def download(run_id: str, table: str) -> Response:
        try:
            view = catalog.get(run_id)
        except InputError:
            abort(404)
        f = parse_search("?" + request.query_string.decode()).filters
        if table == "clusters":
            frame = view.clusters(f)
        elif table == "patches":
            frame = view.export_patches(f)
        else:
            abort(404)
        name = f"{run_id.replace('/', '_')}-{table}{'-filtered' if f.active else ''}.csv"
        return Response(
            frame.to_csv(index=False),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
