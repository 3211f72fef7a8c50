"""Safe image decoding.

Decoded pixels are capped (decompression bombs are errors, not warnings), only the image
formats listed in :data:`ALLOWED_FORMATS` are opened, EXIF orientation is applied, and every
odd mode (palette, CMYK, 16-bit, alpha, grayscale) is converted to 8-bit RGB on purpose:
alpha is composited on white, 16-bit is scaled to 8 bits rather than clipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageDecodeError

#: Formats imacs opens; anything else is refused even if Pillow could read it.
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "MPO"})
#: File name endings scanned as images in a data folder.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
#: Largest decoded image, in pixels (about 8k x 8k).
MAX_PIXELS: int = 64_000_000


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB :class:`PIL.Image.Image`, upright.

    Args:
        path (str or Path): the image file.
        max_pixels (int, optional): refuse images with more decoded pixels than this.
            Default: :data:`MAX_PIXELS`.

    Raises:
        ImageDecodeError: the file is missing, not an allowed image format, truncated,
            corrupt, or larger than ``max_pixels``. The message says which.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_open_formats()) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        f"{w}x{h} pixels is larger than the {max_pixels} pixel limit"
                    )
                if w == 0 or h == 0:
                    raise ImageDecodeError("image has no pixels")
                im.seek(0)  # first frame of an animated GIF
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused ({exc})") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(f"decompression bomb refused ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not a readable image (unknown or disallowed format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises OSError for truncated files, SyntaxError/ValueError for broken headers.
        raise ImageDecodeError(f"corrupt or truncated image ({exc})") from None


def _open_formats() -> list[str]:
    Image.init()  # register every plugin so that the allowed ones can be named
    return sorted(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((np.nan_to_num(arr, nan=lo) - lo) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...: Pillow's conversions are the deliberate ones here.
    return im.convert("RGB")
