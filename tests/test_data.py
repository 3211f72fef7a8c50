"""Scanning evaluation sets: ImageFolder trees and CSV-labelled folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imacs.data import load_dataset
from imacs.errors import InputError


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)


def test_dat001_image_folder_classes_sorted(tmp_path: Path) -> None:
    for rel in ("zebra/1.png", "ant/a.jpg", "ant/sub/b.png", "mole/x.bmp", "ant/.hidden.png"):
        _img(tmp_path / rel)
    (tmp_path / "ant" / "readme.txt").write_text("not an image")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["ant", "mole", "zebra"]
    assert [(r.relpath, r.label) for r in ds.records] == [
        ("ant/a.jpg", 0),
        ("ant/sub/b.png", 0),
        ("mole/x.bmp", 1),
        ("zebra/1.png", 2),
    ]


def test_dat002_csv_with_meta_columns(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _img(tmp_path / "imgs" / name)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,weather,sensor_temp\n"
        "imgs/a.png,cat,rain,21.5\nimgs/b.png,dog,sun,19\nimgs/gone.png,dog,sun,3\n"
        "imgs/c.png,cat,fog,7\n"
    )
    ds = load_dataset(tmp_path, labels_csv=csv)
    assert ds.classes == ["cat", "dog"]
    assert [r.label for r in ds.records] == [0, 1, 0]
    assert list(ds.meta.columns) == ["weather", "sensor_temp"]
    assert ds.meta["weather"].tolist() == ["rain", "sun", "fog"]
    assert ds.meta["sensor_temp"].tolist() == [21.5, 19.0, 7.0]  # numbers stay numbers
    assert ds.missing == [("imgs/gone.png", "file not found")]


def test_dat003_csv_missing_label_names_the_line(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\na.png,cat\na.png,\n")
    with pytest.raises(InputError, match=r"l\.csv:3: missing label"):
        load_dataset(tmp_path, labels_csv=csv)


def test_dat004_csv_without_columns(tmp_path: Path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("file,class\na.png,cat\n")
    with pytest.raises(InputError, match="needs columns 'path' and 'label'"):
        load_dataset(tmp_path, labels_csv=csv)


def test_dat005_empty_folder_and_flat_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no class subfolders"):
        load_dataset(tmp_path)
    _img(tmp_path / "loose.png")
    with pytest.raises(InputError, match="holds images but no class subfolders"):
        load_dataset(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_dataset(tmp_path)
    with pytest.raises(InputError, match="data folder not found"):
        load_dataset(tmp_path / "missing")


def test_dat006_classes_file_sets_order(tmp_path: Path) -> None:
    _img(tmp_path / "b" / "1.png")
    _img(tmp_path / "a" / "1.png")
    names = tmp_path / "classes.txt"
    names.write_text("b\na\nc\n")
    ds = load_dataset(tmp_path, classes_file=names)
    assert ds.classes == ["b", "a", "c"]
    assert {r.relpath: r.label for r in ds.records} == {"a/1.png": 1, "b/1.png": 0}


def test_dat007_integer_labels_and_unknown_label(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\na.png,3\n")
    ds = load_dataset(tmp_path, labels_csv=csv)
    assert ds.classes_inferred and ds.records[0].label == 3
    names = tmp_path / "classes.txt"
    names.write_text("x\ny\n")
    csv.write_text("path,label\na.png,zebra\n")
    with pytest.raises(InputError, match="'zebra' is not a known class"):
        load_dataset(tmp_path, labels_csv=csv, classes_file=names)


def test_dat008_fingerprint_changes_with_content(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "1.png")
    first = load_dataset(tmp_path).fingerprint()
    assert load_dataset(tmp_path).fingerprint() == first
    Image.new("RGB", (9, 9)).save(tmp_path / "a" / "1.png")
    assert load_dataset(tmp_path).fingerprint() != first


def test_dat009_a_huge_integer_label_is_refused_without_allocating(tmp_path: Path) -> None:
    import resource

    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,0\nb.png,999999999\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"labels.csv:3: label 999999999 is not a class index"):
        load_dataset(tmp_path, labels_csv=csv)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mb < 100  # the old code built a 999999999-name class list (~60 GB)


def test_dat010_duplicate_and_outside_rows_are_refused_with_the_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("a.png", "b.png"):
        _img(data / name)
    _img(tmp_path / "secret.png")
    csv = tmp_path / "labels.csv"
    for body, message in (
        (
            "a.png,cat\nb.png,dog\na.png,cat\n",
            r"labels.csv:4: 'a.png' is listed again \(first on line 2\)",
        ),
        (
            "a.png,cat\n./a.png,dog\n",
            r"labels.csv:3: './a.png' is listed with label 'cat' and 'dog'",
        ),
        ("a.png,cat\n../secret.png,dog\n", r"labels.csv:3: '../secret.png' is outside --data"),
        (f"{tmp_path / 'secret.png'},dog\n", r"labels.csv:2: .*secret.png' is outside --data"),
    ):
        csv.write_text("path,label\n" + body)
        with pytest.raises(InputError, match=message):
            load_dataset(data, labels_csv=csv)


def test_dat011_a_file_name_that_is_not_utf8_is_skipped_and_listed(tmp_path: Path) -> None:
    import os

    _img(tmp_path / "cat" / "good.png")
    bad = os.path.join(os.fsencode(tmp_path / "cat"), b"caf\xe9.png")  # Latin-1 bytes
    with open(bad, "wb") as f:
        Image.new("RGB", (8, 8)).save(f, "PNG")
    ds = load_dataset(tmp_path)
    assert [r.relpath for r in ds.records] == ["cat/good.png"]
    assert ds.missing == [("cat/caf\\xe9.png", "file name is not valid UTF-8; rename the file")]


def test_dat012_an_unreadable_class_folder_is_skipped_and_listed(tmp_path, monkeypatch) -> None:
    import os

    _img(tmp_path / "cat" / "a.png")
    _img(tmp_path / "cat" / "inner" / "b.png")
    _img(tmp_path / "dog" / "c.png")
    locked = [tmp_path / "dog", tmp_path / "cat" / "inner"]
    for folder in locked:
        folder.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: make listing it fail as it would for a user
        scandir = os.scandir

        def denied(path=".", *args, **kw):
            if Path(path) in locked:
                raise PermissionError(13, "Permission denied", str(path))
            return scandir(path, *args, **kw)

        monkeypatch.setattr(os, "scandir", denied)
    try:
        ds = load_dataset(tmp_path)
    finally:
        for folder in locked:
            folder.chmod(0o755)
    assert ds.classes == ["cat", "dog"] and [r.relpath for r in ds.records] == ["cat/a.png"]
    why = (
        "folder cannot be read (Permission denied); its images are left out: make it "
        "readable (chmod a+rx) to include them"
    )
    assert ds.missing == [("cat/inner/", why), ("dog/", why)]
