"""Writing run directories atomically.

A run is assembled in a hidden temporary folder beside its destination and renamed into
place only when complete (``run.json`` is written last). A crash, an error or a full disk
leaves either the previous run or nothing, never a half-written run that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError, disk_error, reserve_space
from .runformat import MANIFEST


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.imacs-tmp-"


def check_destination(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse to replace something that is not this run (fail before any compute).

    An existing run with the same fingerprint is replaced (it is recomputed from the
    cache); a different run needs ``overwrite``; anything else that is not empty is refused.
    """
    recover(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise InputError(
            f"{out}: folder is not empty and holds no imacs run; choose a new or empty --out"
        )
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    if old.get("fingerprint") != fingerprint and not overwrite:
        raise InputError(
            f"{out}: already holds a different run; choose another --out or pass --overwrite"
        )


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Create ``folder`` if needed and check that a file can be made in it, before any work
    that would otherwise be lost when the first write fails.

    Args:
        folder (Path): the folder.
        what (str): what it is for, in the message ("the attribution cache folder").
        fix (str): how to choose another, in the message.

    Raises:
        InputError: one line naming the folder, what it is for, why and the fix.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".imacs-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            why = "no space left on the device"
        raise InputError(f"{folder}: {what} is not writable ({why}); {fix}") from None


def is_current(out: Path, fingerprint: str) -> bool:
    """True when ``out`` holds a complete run made from exactly these inputs and settings."""
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return old.get("fingerprint") == fingerprint and is_complete(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary folders of ``out`` left by runs that were killed."""
    if not out.parent.is_dir():
        return
    prefix = _tmp_prefix(out)
    for p in out.parent.iterdir():
        if p.name.startswith(prefix) and p.is_dir():
            pid = p.name[len(prefix) :]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder for a run; the caller commits it with :func:`commit`.

    The folder is removed if the block raises.
    """
    out = out.expanduser().absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = out.parent / f"{_tmp_prefix(out)}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise disk_error(exc, out) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_table(tmp: Path, name: str, df: pd.DataFrame) -> str:
    path = tmp / f"{name}.parquet"
    try:
        df.to_parquet(path, index=False)
    except OSError as exc:
        raise disk_error(exc, path) from None
    return path.name


def write_array(tmp: Path, name: str, arr: np.ndarray) -> str:
    path = tmp / f"{name}.npy"
    try:
        np.save(path, arr, allow_pickle=False)
    except OSError as exc:
        raise disk_error(exc, path) from None
    return path.name


def write_scaled_maps(
    tmp: Path, name: str, maps: np.ndarray, scale: np.ndarray, block: int = 256
) -> str:
    """Write (n, H, W) maps divided by each row's ``scale`` as float16, a block of rows at a
    time (``maps`` may be memory-mapped: it is never copied whole)."""
    path = tmp / f"{name}.npy"
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=maps.shape)
        reserve_space(path)  # a full disk is an error here, not a crash while writing rows
        for s in range(0, len(maps), block):
            sc = scale[s : s + block, None, None]
            rows = np.asarray(maps[s : s + block], dtype=np.float32)
            out[s : s + block] = np.where(sc > 0, rows / np.where(sc > 0, sc, 1), 0)
        out.flush()
        del out
    except OSError as exc:
        raise disk_error(exc, path) from None
    return path.name


def _old_prefix(out: Path) -> str:
    return f".{out.name}.imacs-old-"


def recover(out: Path) -> str | None:
    """Finish or undo a commit that was killed between its two renames.

    :func:`commit` moves the previous run aside, then the new one into place. Killed in
    between, ``out`` is missing and both lie beside it: the new run (complete: its manifest
    is written first) is moved into place, else the previous one is put back. Returns what
    was done, or None.
    """
    out = out.expanduser().absolute()
    if out.exists() or not out.parent.is_dir():
        return None

    def dead(p: Path, prefix: str) -> bool:
        pid = p.name[len(prefix) :]
        return (
            p.is_dir() and pid.isdigit() and not (_pid_alive(int(pid)) and int(pid) != os.getpid())
        )

    news = [p for p in out.parent.glob(f"{_tmp_prefix(out)}*") if dead(p, _tmp_prefix(out))]
    olds = [p for p in out.parent.glob(f"{_old_prefix(out)}*") if dead(p, _old_prefix(out))]
    if not olds:
        return None  # no commit was under way: leftovers are removed by staging()
    done = None
    try:
        for new in news:
            if is_complete(new):
                new.rename(out)
                done = "finished"
                break
        if done is None:
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            newest.rename(out)
            olds.remove(newest)
            done = "restored"
        for leftover in olds:
            shutil.rmtree(leftover, ignore_errors=True)
    except OSError as exc:
        raise disk_error(exc, out) from None
    remove_stale_temporaries(out)  # an unfinished new run of a dead process
    return done


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a manifest and every file it lists."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = manifest.get("files", {})
    return isinstance(files, dict) and all((path / f).is_file() for f in files.values())


def commit(tmp: Path, out: Path, manifest: dict[str, object]) -> None:
    """Write ``run.json`` last, then move the finished run into place (a kill between the
    two renames is repaired by :func:`recover` on the next analysis)."""
    out = out.expanduser().absolute()
    try:
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old = None
        if out.exists():
            old = out.parent / f"{_old_prefix(out)}{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise disk_error(exc, out) from None


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
