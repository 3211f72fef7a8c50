"""Building the Dash app around a folder of runs."""

from __future__ import annotations

from pathlib import Path

from dash import Dash

from . import auth, callbacks
from .layout import layout
from .reader import RunCatalog
from .server import register_routes

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def create_app(runs: str | Path, accounts: dict[str, str] | None = None) -> Dash:
    """A Dash app serving every run under ``runs`` (a run directory or a folder of runs).

    Nothing per-user lives in the process: the view state is in the page URL, and the
    catalog only caches read-only run data, so several gunicorn workers serve alike.
    ``accounts`` (default: from ``IMACS_BASIC_AUTH`` / ``IMACS_BASIC_AUTH_FILE``) turns on
    HTTP basic authentication for every route but ``/healthz``.
    """
    catalog = RunCatalog(runs)
    app = Dash(
        __name__,
        title="imacs",
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        update_title=None,
    )
    app.layout = layout
    callbacks.register(app, catalog)
    register_routes(app.server, catalog)
    auth.install(app.server, auth.load_accounts() if accounts is None else accounts)
    app.server.config["IMACS_CATALOG"] = catalog
    return app


def serve(runs: str | Path, host: str = "127.0.0.1", port: int = 8050, debug: bool = False) -> None:
    """Serve the dashboard (development server; use gunicorn with app.wsgi for a team)."""
    app = create_app(runs)
    app.run(host=host, port=port, debug=debug, dev_tools_ui=debug, dev_tools_hot_reload=False)
