"""The runs a server shows: a folder scanned for run directories, with a cheap change check,
and a small per-process cache of loaded runs.

Everything the web app shows comes through :class:`RunCatalog`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from imacs.errors import InputError
from imacs.run import Run, RunReplaced, identity

from .reader import RunView

#: folders changed less than this many seconds ago are rescanned on every call (file
#: system times are coarser than the changes they stamp; git calls this "racy")
RACY_SECONDS = 2.0
#: how long a request waits for a run that ``imacs analyze`` is swapping in (its two renames
#: leave the folder missing for an instant) before it says the run is gone
SWAP_WAIT_SECONDS = 2.0


class NoSuchRun(InputError):
    """No run of that id under the root (removed, or never made)."""


class RunCatalog:
    """Runs under a root folder: the root itself if it is a run, or runs one or two levels down.

    Args:
        root (str or Path): a run directory or a folder of run directories.
        max_cached (int): loaded runs kept in memory per process. Default: 8.
        racy_seconds (float): a folder changed less than this long ago is listed again on
            every call, as its modification time may not show a change made in the same
            clock tick. Default: :data:`RACY_SECONDS`
    """

    def __init__(
        self, root: str | Path, max_cached: int = 8, racy_seconds: float = RACY_SECONDS
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.max_cached = max_cached
        self.racy_seconds = racy_seconds
        self._scans = 0
        self._cache: OrderedDict[str, RunView] = OrderedDict()
        self._checked: dict[Path, tuple[float, str | None]] = {}
        self._lock = threading.Lock()
        self._listing: tuple[tuple, dict[str, Path]] | None = None

    def _signature(self) -> tuple:
        """What changes when a run appears, disappears or is replaced: the modification
        times of the root and of its sub-folders (a run is committed by renaming it into its
        parent folder, which changes the parent's time). A single ``scandir``, where a
        rescan lists every run's folder."""
        try:
            stamp = [self.root.stat().st_mtime_ns]
            with os.scandir(self.root) as entries:
                for e in entries:
                    if e.is_dir() and not e.name.startswith("."):
                        stamp.append((e.name, e.stat().st_mtime_ns))
        except OSError:
            return ()
        return (*sorted(stamp[1:]), stamp[0])

    def _candidates(self) -> dict[str, Path]:
        """Run directories under the root (readable or not), rescanned only when
        :meth:`_signature` changed."""
        if (self.root / "run.json").is_file():
            return {self.root.name: self.root}
        sig = self._signature()
        with self._lock:
            if self._listing is not None and self._listing[0] == sig:
                return dict(self._listing[1])
        found = self._scan()
        newest = max([sig[-1], *(t for _, t in sig[:-1])]) if sig else 0
        if time.time_ns() - newest > self.racy_seconds * 1e9:  # a change in the clock tick of
            with self._lock:  # this scan would leave the times as they are: rescan then
                self._listing = (sig, found)
        return dict(found)

    @property
    def scans(self) -> int:
        """How many times the root folder was listed for runs (a listing is reused until
        the folder changes); for monitoring and tests."""
        return self._scans

    def _scan(self) -> dict[str, Path]:
        with self._lock:
            self._scans += 1
        found: dict[str, Path] = {}
        if not self.root.is_dir():
            return found
        for d in sorted(_run_folders(self.root)):
            found[d.relative_to(self.root).as_posix()] = d
        return found

    def _check(self, path: Path) -> str | None:
        """None if the run's manifest is readable and of this format, else why not."""
        try:
            mtime = (path / "run.json").stat().st_mtime
        except OSError as exc:
            return str(exc)
        with self._lock:
            hit = self._checked.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        try:
            Run(path)
            problem = None
        except RunReplaced:  # being swapped: judged on the next call, never cached
            return None
        except InputError as exc:
            problem = str(exc)
        with self._lock:
            self._checked[path] = (mtime, problem)
        return problem

    def run_dirs(self) -> dict[str, Path]:
        """Readable runs, newest first: id (path relative to the root, or the root's name)
        -> directory. A run's age is its manifest's modification time."""
        found = {k: p for k, p in self._candidates().items() if self._check(p) is None}

        def age(item: tuple[str, Path]) -> tuple[float, str]:
            try:
                return (-(item[1] / "run.json").stat().st_mtime, item[0])
            except OSError:  # removed since it was listed: last
                return (0.0, item[0])

        return dict(sorted(found.items(), key=age))

    def problems(self) -> dict[str, str]:
        """Runs found but not readable (an older format, a broken manifest): id -> why."""
        out = {}
        for k, p in self._candidates().items():
            why = self._check(p)
            if why is not None:
                out[k] = why
        return out

    def default_run(self) -> str | None:
        """The newest run: the one a user just made is the one they want to see."""
        return next(iter(self.run_dirs()), None)

    def get(self, run_id: str | None) -> RunView:
        """The run with this id (or the newest one); raises InputError if there is none.

        A view reads one consistent run: it is made from a :meth:`imacs.run.Run.snapshot`
        and replaced by a fresh one as soon as the directory holds another run (its
        :func:`imacs.run.identity` changed), never mixed with it. A run being swapped in by
        ``imacs analyze`` is waited for (up to :data:`SWAP_WAIT_SECONDS`)."""
        for _ in range(10):
            dirs = self.run_dirs()
            rid = run_id if run_id is not None else next(iter(dirs), None)
            if rid is None:
                raise NoSuchRun(f"{self.root}: no imacs runs found; make one with imacs analyze")
            path = dirs.get(rid)
            now = identity(path) if path is not None else None
            if now is None:
                damaged = self._candidates().get(rid)
                why = self._check(damaged) if damaged is not None else None
                if why is not None:  # a run that is there but cannot be read says why
                    raise InputError(why)
                if self._swapping(rid):
                    continue
                raise NoSuchRun(
                    f"no run named {rid!r} under {self.root} (removed, or never made); "
                    "pick one in the run list"
                )
            with self._lock:
                view = self._cache.get(rid)
                if view is not None and view.run.identity == now:
                    self._cache.move_to_end(rid)
                    return view
            try:
                run = Run(path).snapshot()
            except RunReplaced:
                continue
            view = RunView(run_id=rid, run=run)
            with self._lock:
                self._cache[rid] = view
                self._cache.move_to_end(rid)
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
            return view
        raise RunReplaced(
            f"{self.root / str(run_id)}: the run keeps being replaced; try again in a moment"
        )

    def _swapping(self, run_id: str) -> bool:
        """Wait while ``imacs analyze`` swaps a new run into ``run_id``'s folder (its
        previous run lies beside it under a ``.NAME.imacs-old-PID`` name until the new one
        is in place); True if the folder is back."""
        path = self.root / run_id if run_id != self.root.name else self.root
        deadline = time.monotonic() + SWAP_WAIT_SECONDS
        while time.monotonic() < deadline:
            if (path / "run.json").is_file():
                self._listing = None  # the folder changed within the listing's clock tick
                return True
            if not any(path.parent.glob(f".{path.name}.imacs-old-*")):
                return (path / "run.json").is_file()
            time.sleep(0.01)
        return False

    def safe_file(self, run_id: str, subpath: str, token: str | None = None) -> Path | None:
        """A thumbnail file inside the run's ``thumbs/`` folder (symbolic links resolved,
        the ``thumbs`` folder itself included), or None: never outside the run, never for
        a page of a run replaced since (``token``, :attr:`imacs.run.Run.token`, when given,
        must be the current run's)."""
        if "\x00" in subpath or "\x00" in run_id:
            return None
        path = self._candidates().get(run_id)  # thumbnails come by the dozen: no sorting
        if path is None or self._check(path) is not None:
            return None
        if token is not None:
            try:
                if self.get(run_id).run.token != token:
                    return None
            except InputError:
                return None
        try:
            run_dir = path.resolve()
            base = (path / "thumbs").resolve()
            target = (base / subpath).resolve()
        except (OSError, ValueError, RuntimeError):
            return None
        if not base.is_relative_to(run_dir) or not target.is_relative_to(base):
            return None
        if target.suffix.lower() not in (".jpg", ".png"):
            return None
        return target if target.is_file() else None


def _run_folders(root: Path) -> list[Path]:
    """Folders one or two levels under ``root`` that hold a ``run.json``, hidden ones (runs
    being written) left out. Folders renamed or removed during the walk (a run being
    swapped in) are skipped, where ``Path.glob`` would raise."""
    found = []

    def subfolders(folder: Path) -> list[Path]:
        try:
            with os.scandir(folder) as entries:
                return [
                    Path(e.path)
                    for e in entries
                    if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)
                ]
        except OSError:
            return []

    for first in subfolders(root):
        if (first / "run.json").is_file():
            found.append(first)
        found.extend(d for d in subfolders(first) if (d / "run.json").is_file())
    return found
