"""Cached stage outputs, keyed on what produced them.

Attribution is the expensive stage, so its results are cached per model and per chunk of
images, under a key made of the model file's hash, the images' paths, sizes, modification
times and labels, and every setting that changes the numbers. Comparing A with B and then A
with C recomputes only C; a run that was killed resumes from its finished chunks; a changed
image recomputes only its chunk. Entries are written atomically (temporary file, then
rename), so a crash never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import disk_error


def default_cache_dir() -> Path:
    """``$IMACS_CACHE_DIR``, else ``$XDG_CACHE_HOME/imacs``, else ``~/.cache/imacs``."""
    env = os.environ.get("IMACS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "imacs"


def stable_hash(*parts: object) -> str:
    """SHA-256 of JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


class StageCache:
    """A folder of ``.npz`` entries, by namespace and key.

    Args:
        root (Path, optional): the cache folder; None disables caching.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, namespace: str, key: str) -> Path:
        assert self.root is not None
        return self.root / namespace / key[:2] / f"{key}.npz"

    def has(self, namespace: str, key: str) -> bool:
        return self.root is not None and self._path(namespace, key).is_file()

    def get(self, namespace: str, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (a damaged entry counts as missing)."""
        if self.root is None:
            return None
        path = self._path(namespace, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None

    def discard(self, namespace: str, key: str) -> Path | None:
        """Remove the entry under ``key`` (one that does not fit what it is used for);
        returns its path, or None when caching is off."""
        if self.root is None:
            return None
        path = self._path(namespace, key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise disk_error(exc, path) from None
        return path

    def put(self, namespace: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store arrays under ``key`` atomically."""
        if self.root is None:
            return
        path = self._path(namespace, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise disk_error(exc, path) from None
