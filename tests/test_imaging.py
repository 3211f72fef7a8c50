"""Safe decoding of odd and hostile image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imacs.errors import ImageDecodeError
from imacs.imaging import load_rgb


def _save(path: Path, im: Image.Image, fmt: str = "PNG", **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def test_img001_truncated_png_is_an_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_rgb(path)


def test_img002_text_with_image_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        load_rgb(path)


def test_img003_disallowed_format_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", Image.new("RGB", (8, 8)), "PPM")  # PPM bytes, .png name
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        load_rgb(path)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("LA", (0, 255), (0, 0, 0)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_img004_odd_modes_become_rgb(tmp_path: Path, mode: str, value, expected) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = _save(tmp_path / f"m.{fmt.lower()}", Image.new(mode, (6, 4), value), fmt)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (6, 4)
    assert np.allclose(np.asarray(im)[0, 0], expected, atol=3)


def test_img005_palette_image_keeps_its_colours(tmp_path: Path) -> None:
    im = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = load_rgb(_save(tmp_path / "p.png", im))
    assert tuple(np.asarray(out)[0, 0]) == (0, 0, 255)


def test_img006_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(arr))
    out = np.asarray(load_rgb(path))
    assert 126 <= out[0, 0, 0] <= 129  # half of the 16-bit range -> half of 8 bits


def test_img007_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "bomb.png", Image.new("L", (3000, 3000)))
    with pytest.raises(ImageDecodeError, match="larger than"):
        load_rgb(path, max_pixels=1_000_000)


def test_img008_exif_rotation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = _save(tmp_path / "rot.jpg", im, "JPEG", exif=exif, quality=95)
    out = load_rgb(path)
    assert out.size == (20, 40)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 80  # the red band is now at the top


def test_img009_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_rgb(tmp_path / "nope.png")
