"""Building the Dash app around a folder of runs."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path

from dash import Dash

from imacs.errors import InputError

from . import auth, components
from .catalog import RunCatalog
from .layout import layout
from .server import register_routes

ASSETS = Path(__file__).resolve().parent / "assets"  # package data: ships in the wheel


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
    # accounts first: a misconfigured login must stop the start, not open the door
    accounts = auth.load_accounts() if accounts is None else accounts
    components.register(app, catalog)
    # hashes of Dash's inline bootstrap and the clientside callbacks, for the CSP
    register_routes(app.server, catalog, app.csp_hashes())
    auth.install(app.server, accounts)
    app.server.config["IMACS_CATALOG"] = catalog
    return app


def serve(
    runs: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve the dashboard (development server; use gunicorn with imacs_app.wsgi for a team).

    Raises:
        InputError: the port is taken, or the authentication settings give no account.
    """
    app = create_app(runs)
    _check_port(host, port)
    if announce is not None:  # only once the server can start
        announce()
    app.run(host=host, port=port, debug=debug, dev_tools_ui=debug, dev_tools_hot_reload=False)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(
                    f"port {port} on {host} is in use; pass --port N or stop the other server"
                ) from None
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
