"""Evaluation sets: an ImageFolder tree, or a folder plus a CSV of ``path,label[,meta...]``.

Class indices follow torchvision's ImageFolder convention: the i-th class is the i-th class
name in sorted order, unless a classes file (one name per line, in the models' output order)
says otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import InputError
from .imaging import IMAGE_EXTENSIONS

#: Column names that carry meaning in imacs' own tables and cannot be meta-annotations.
RESERVED_COLUMNS = frozenset(
    {"image_id", "image", "path", "label", "label_name", "width", "height"}
    | {f"{k}_{m}" for k in ("pred", "prob", "correct", "delta", "target") for m in "ab"}
)


@dataclass(frozen=True)
class ImageRecord:
    """One image of the evaluation set."""

    path: Path  #: absolute path of the file
    relpath: str  #: path relative to the data folder, with forward slashes
    label: int  #: class index
    size: int  #: file size in bytes (part of the cache key)
    mtime_ns: int  #: modification time (part of the cache key)

    def fingerprint(self) -> str:
        return f"{self.relpath}\x1f{self.size}\x1f{self.mtime_ns}\x1f{self.label}"


@dataclass
class Dataset:
    """An evaluation set: the images, their labels, class names and meta-annotations."""

    root: Path
    records: list[ImageRecord]
    classes: list[str]
    #: extra CSV columns, one row per record (empty frame when there are none)
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels_csv: Path | None = None
    #: True when class names were made up from integer labels (they can be extended to
    #: the models' class count)
    classes_inferred: bool = False
    #: CSV rows naming files that do not exist: (relpath, reason)
    missing: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """A hash of every image's path, size, mtime and label, the classes and meta."""
        h = hashlib.sha256()
        for r in self.records:
            h.update(r.fingerprint().encode())
            h.update(b"\n")
        h.update("\x1e".join(self.classes).encode())
        if not self.meta.empty:
            h.update(pd.util.hash_pandas_object(self.meta, index=False).values.tobytes())
        return h.hexdigest()


def load_dataset(
    root: str | Path,
    labels_csv: str | Path | None = None,
    classes_file: str | Path | None = None,
    model_classes: Sequence[str] | None = None,
) -> Dataset:
    """Scan an evaluation set.

    Args:
        root (str or Path): the data folder. Without ``labels_csv`` it must hold one
            subfolder per class (ImageFolder layout); images are found recursively.
        labels_csv (str or Path, optional): a CSV with columns ``path`` (relative to
            ``root``) and ``label`` (a class name or index); any other column is carried
            into the run as a meta-annotation. Default: None.
        classes_file (str or Path, optional): class names in the models' output order,
            one per line. Default: None (folder names, or CSV labels, sorted).
        model_classes (sequence of str, optional): class names the models state (a
            Hugging Face ``id2label``); used, in their order, when no ``classes_file`` is
            given and every folder name or label is one of them (or an index into them).

    Raises:
        InputError: the folder is missing or empty, the CSV lacks columns or labels, or a
            label is not one of the classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found; pass --data an existing folder")
    root = root.resolve()
    given_classes = _read_classes_file(Path(classes_file)) if classes_file else None
    suggested = list(model_classes) if model_classes and given_classes is None else None
    if labels_csv is not None:
        return _from_csv(root, Path(labels_csv).expanduser(), given_classes, suggested)
    return _from_folders(root, given_classes, suggested)


def _read_classes_file(path: Path) -> list[str]:
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise InputError(f"{path}: classes file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read classes file ({exc})") from None
    names = [n for n in names if n]
    if not names:
        raise InputError(f"{path}: classes file is empty; write one class name per line")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: classes file names a class twice; names must be unique")
    return names


def _record(root: Path, path: Path, label: int) -> ImageRecord:
    st = path.stat()
    return ImageRecord(path, path.relative_to(root).as_posix(), label, st.st_size, st.st_mtime_ns)


def _from_folders(root: Path, given: list[str] | None, suggested: list[str] | None) -> Dataset:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            "it holds images but no class subfolders; " if loose else "it has no class subfolders; "
        )
        raise InputError(
            f"{root}: {hint}arrange it as DATA/<class>/<image> or pass --labels-csv "
            "with path,label columns"
        )
    names = [d.name for d in subdirs]
    if suggested and set(names) <= set(suggested):
        given = suggested
    if given is not None:
        unknown = [n for n in names if n not in given]
        if unknown:
            raise InputError(
                f"{root}: class folder(s) {', '.join(unknown[:5])} are not in the classes "
                "file; add them or remove the folders"
            )
        classes = given
    else:
        classes = names
    index = {c: i for i, c in enumerate(classes)}
    records: list[ImageRecord] = []
    missing: list[tuple[str, str]] = []
    for d in subdirs:
        unreadable: list[tuple[Path, str]] = []
        files = sorted(_image_files(d, unreadable))
        for folder, why in unreadable:  # skipped and listed, like an unreadable image
            missing.append((_printable(folder.relative_to(root)) + "/", why))
        for p in files:
            if _undecodable(p):  # skipped and listed, like an unreadable image
                missing.append((_printable(p.relative_to(root)), _BAD_NAME))
            else:
                records.append(_record(root, p, index[d.name]))
    if not records:
        first = f"; first skipped: {missing[0][0]}: {missing[0][1]}" if missing else ""
        raise InputError(
            f"{root}: no images found in its class subfolders "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}){first}"
        )
    return Dataset(root=root, records=records, classes=classes, missing=missing)


def _image_files(folder: Path, unreadable: list[tuple[Path, str]]) -> list[Path]:
    """The image files under ``folder`` (hidden files and folders left out; symbolic links
    to folders not followed, as ``Path.rglob`` does); folders that cannot be listed are
    added to ``unreadable`` with the reason, instead of being passed over in silence."""
    found: list[Path] = []
    todo = [folder]
    while todo:
        here = todo.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError as exc:
            unreadable.append((here, f"folder cannot be read ({exc.strerror or exc}); {_FIX}"))
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    todo.append(Path(e.path))
                elif Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and e.is_file():
                    found.append(Path(e.path))
            except OSError:  # vanished, or a link into an unreadable place
                continue
    unreadable.sort()
    return found


_FIX = "its images are left out: make it readable (chmod a+rx) to include them"
_BAD_NAME = "file name is not valid UTF-8; rename the file"
#: no image classifier has this many classes: a larger integer label is a typo
MAX_CLASSES = 100_000


def _undecodable(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogate escapes
        return True
    return False


def _printable(path: Path) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _from_csv(
    root: Path, csv_path: Path, given: list[str] | None, suggested: list[str] | None
) -> Dataset:
    rows, fieldnames = _read_csv_rows(csv_path)
    labels = [row["label"].strip() for row in rows]
    if suggested and all(
        v in suggested or (_is_int(v) and 0 <= int(v) < len(suggested)) for v in labels
    ):
        given = suggested
    classes, lookup, classes_inferred = _csv_classes(csv_path, labels, given)
    records: list[ImageRecord] = []
    missing: list[tuple[str, str]] = []
    keep_rows: list[int] = []
    seen: dict[Path, tuple[int, str]] = {}
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        rec = _csv_record(root, csv_path, i + 2, row["path"].strip(), label, lookup, seen)
        if rec is None:
            missing.append((row["path"].strip(), "file not found"))
            continue
        records.append(rec)
        keep_rows.append(i)
    if not records:
        raise InputError(
            f"{csv_path}: none of its {len(rows)} paths exist under {root}; "
            "paths are relative to --data"
        )
    meta_cols = [c for c in fieldnames if c not in ("path", "label")]
    meta = pd.DataFrame([{c: rows[i][c] for c in meta_cols} for i in keep_rows], columns=meta_cols)
    for c in meta_cols:  # numbers stay numbers when every value is one
        converted = pd.to_numeric(meta[c], errors="coerce")
        if converted.notna().all():
            meta[c] = converted
    return Dataset(
        root=root,
        records=records,
        classes=classes,
        meta=meta,
        labels_csv=csv_path.resolve(),
        classes_inferred=classes_inferred,
        missing=missing,
    )


def _read_csv_rows(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The labels CSV's rows and header, every row checked (line numbers in the errors)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            fieldnames = (rows and list(rows[0].keys())) or []
    except FileNotFoundError:
        raise InputError(f"{csv_path}: labels CSV not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: cannot read labels CSV ({exc})") from None
    if not rows:
        raise InputError(f"{csv_path}: labels CSV has no rows; it needs a header path,label")
    if "path" not in fieldnames or "label" not in fieldnames:
        raise InputError(
            f"{csv_path}: labels CSV needs columns 'path' and 'label' "
            f"(found {', '.join(str(c) for c in fieldnames)})"
        )
    clash = sorted((set(fieldnames) - {"path", "label"}) & RESERVED_COLUMNS)
    if clash:
        raise InputError(
            f"{csv_path}: column(s) {', '.join(clash)} clash with imacs' own columns; rename them"
        )
    for lineno, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InputError(f"{csv_path}:{lineno}: wrong number of fields for the header")
        if not (row["label"] or "").strip():
            raise InputError(
                f"{csv_path}:{lineno}: missing label for {row['path']!r}; every row needs one"
            )
        if not (row["path"] or "").strip():
            raise InputError(f"{csv_path}:{lineno}: empty path")
    return rows, fieldnames


def _csv_classes(
    csv_path: Path, labels: list[str], given: list[str] | None
) -> tuple[list[str], dict[str, int], bool]:
    """The class names, label -> class index, and whether the names were inferred."""
    if given is not None:
        lookup = {c: i for i, c in enumerate(given)}
        # labels may be names from the file or indices into it
        for i in range(len(given)):
            lookup.setdefault(str(i), i)
        return given, lookup, False
    if all(_is_int(v) for v in labels):
        # never allocate from a user's number: a typo like 999999999 is refused, not listed
        top_line, top = max(enumerate(int(v) for v in labels), key=lambda t: t[1])
        if top >= MAX_CLASSES:
            raise InputError(
                f"{csv_path}:{top_line + 2}: label {top} is not a class index any classifier "
                f"outputs (more than {MAX_CLASSES:,}); fix the label, or pass --classes FILE"
            )
        return [str(i) for i in range(top + 1)], {str(i): i for i in range(top + 1)}, True
    classes = sorted(set(labels))
    return classes, {c: i for i, c in enumerate(classes)}, False


def _csv_record(
    root: Path,
    csv_path: Path,
    line: int,
    rel: str,
    label: str,
    lookup: dict[str, int],
    seen: dict[Path, tuple[int, str]],
) -> ImageRecord | None:
    """The record of one CSV row (None when its file does not exist)."""
    key = str(int(label)) if _is_int(label) and label not in lookup else label
    if key not in lookup:
        raise InputError(
            f"{csv_path}:{line}: label {label!r} is not a known class; "
            "fix the label or list it in --classes"
        )
    if int(lookup[key]) < 0:
        raise InputError(f"{csv_path}:{line}: negative class index {label!r}")
    p = Path(rel) if Path(rel).is_absolute() else root / rel
    try:
        relpath = p.resolve().relative_to(root).as_posix()
    except ValueError:
        raise InputError(
            f"{csv_path}:{line}: {rel!r} is outside --data {root}; list only files "
            "inside the data folder, with paths relative to it"
        ) from None
    resolved = p.resolve()
    if resolved in seen:
        first, first_label = seen[resolved]
        what = "again" if first_label == label else f"with label {first_label!r} and {label!r}"
        raise InputError(
            f"{csv_path}:{line}: {rel!r} is listed {what} (first on line {first}); "
            "list each image once"
        )
    seen[resolved] = (line, label)
    if not p.is_file():
        return None
    st = resolved.stat()
    return ImageRecord(resolved, relpath, int(lookup[key]), st.st_size, st.st_mtime_ns)


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
