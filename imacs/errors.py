"""Errors that reach the user as one line.

Every problem with a user's input (a file that is not a model, an empty data folder, a
mismatched class count, a full disk) is raised as :class:`InputError`. Its message names the
file and says how to fix it; the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class ImacsError(Exception):
    """Base class for errors imacs raises on purpose."""


class InputError(ImacsError):
    """Bad input from the user: the message names the file and the fix."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints it as is.
        super().__init__(" ".join(str(message).split()))


class ModelFailure(InputError):
    """A model raised, or returned NaN/inf, on some inputs. The pipeline retries image by
    image and skips only the images the model fails on; if it fails on all, this is the
    error the user sees."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    ``limit`` characters: what a one-line error quotes of a library's long message.

    Args:
        exc (BaseException): the exception raised by torch, a user's model or a library.
        limit (int, optional): most characters kept. Default: 160.
    """
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class ImageDecodeError(ImacsError):
    """One image could not be decoded; the pipeline skips it (or stops under --strict)."""


def disk_error(exc: OSError, path: str | os.PathLike[str]) -> InputError:
    """Turn an ``OSError`` raised while writing ``path`` into a user-facing error."""
    if exc.errno == errno.ENOSPC:
        return InputError(
            f"{Path(path)}: no space left on the device; free some space or choose a folder "
            "on another disk (finished attribution work is kept in the cache and reused)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(
            f"{Path(path)}: not writable ({exc.strerror}); choose a folder you can write to"
        )
    return InputError(f"{Path(path)}: {exc.strerror or exc}")


def reserve_space(path: str | os.PathLike[str]) -> None:
    """Allocate the blocks of the (sparse) file ``path`` now, so that a full disk is an
    ``OSError`` (ENOSPC) here, not a crash when a memory map writes to them later. Does
    nothing where the file system cannot reserve space."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
