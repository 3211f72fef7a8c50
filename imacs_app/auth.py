"""Optional HTTP basic authentication for every route except ``/healthz``.

Configured by the environment:

* ``IMACS_BASIC_AUTH="user:password"``: one account;
* ``IMACS_BASIC_AUTH_FILE=/path/to/file``: one ``user:password`` per line (``#`` comments).

Both may be set; their accounts add up. Passwords are compared in constant time and never
logged; an unreadable or malformed file is an error at start-up, not an open door.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from flask import Flask, Response, request

from imacs.errors import InputError

OPEN_PATHS = frozenset({"/healthz"})


def load_accounts(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Accounts from ``IMACS_BASIC_AUTH`` and ``IMACS_BASIC_AUTH_FILE``.

    Neither variable set: no accounts, no authentication. A variable that is set but gives
    no account (empty, or a file with none) fails closed: an error, never an open server.
    """
    env = os.environ if environ is None else environ
    accounts: dict[str, str] = {}
    single = env.get("IMACS_BASIC_AUTH")
    if single is not None and not single.strip():
        raise InputError(
            "IMACS_BASIC_AUTH is set but empty; give user:password, or unset it to serve "
            "without authentication"
        )
    if single:
        user, sep, password = single.partition(":")
        if not sep or not user or not password:
            raise InputError("IMACS_BASIC_AUTH must be user:password, both non-empty")
        accounts[user] = password
    path = env.get("IMACS_BASIC_AUTH_FILE")
    if path is not None and not path.strip():
        raise InputError("IMACS_BASIC_AUTH_FILE is set but empty; name a file of user:password")
    if path:
        before = len(accounts)
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read IMACS_BASIC_AUTH_FILE ({exc})") from None
        for n, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise InputError(f"{path}:{n}: expected user:password")  # the line is not echoed
            accounts[user] = password
        if len(accounts) == before:
            raise InputError(
                f"{path}: IMACS_BASIC_AUTH_FILE holds no account; add user:password lines "
                "(refusing to serve without authentication)"
            )
    return accounts


def install(server: Flask, accounts: dict[str, str]) -> None:
    """Require one of ``accounts`` on every request but those to :data:`OPEN_PATHS`."""
    if not accounts:
        return
    encoded = {u.encode(): p.encode() for u, p in accounts.items()}

    @server.before_request
    def _require_login() -> Response | None:
        if request.path in OPEN_PATHS:
            return None
        auth = request.authorization
        if auth is not None and auth.type == "basic" and auth.username and auth.password:
            expected = encoded.get(auth.username.encode())
            # compare even for unknown users, so timing does not reveal who exists
            ok = hmac.compare_digest(expected or b"\0" * 32, auth.password.encode())
            if ok and expected is not None:
                return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": 'Basic realm="imacs", charset="UTF-8"'},
        )
