"""Thumbnails for the dashboard and the pixels the embedding sees, in one pass per image."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .data import ImageRecord
from .errors import ImageDecodeError, InputError, disk_error
from .imaging import load_rgb
from .patches import PatchTable
from .progress import Progress
from .stage import stage

#: side of the pixels each patch is resized to for the embedding
EMBED_SIZE = 32
PATCH_THUMB = 96
IMAGE_THUMB = 256


def thumbnails_and_pixels(
    records: list[ImageRecord],
    table: PatchTable,
    box_orig: np.ndarray,
    tmp: Path,
    progress: bool,
) -> np.ndarray:
    """Write image and patch thumbnails; return (patches, 32, 32, 3) uint8 embedding pixels."""
    (tmp / "thumbs" / "images").mkdir(parents=True)
    (tmp / "thumbs" / "patches").mkdir(parents=True)
    pixels = np.zeros((len(table), EMBED_SIZE, EMBED_SIZE, 3), dtype=np.uint8)
    order = np.argsort(table.image, kind="stable")
    bounds = np.searchsorted(table.image[order], np.arange(len(records) + 1))

    def work(image_id: int) -> None:
        rec = records[image_id]
        try:
            im = load_rgb(rec.path)
        except ImageDecodeError as exc:
            raise InputError(
                f"{rec.path}: changed while imacs was running ({exc}); run again"
            ) from None
        thumb = im.copy()
        thumb.thumbnail((IMAGE_THUMB, IMAGE_THUMB), Image.Resampling.LANCZOS)
        _save_jpeg(thumb, tmp / "thumbs" / "images" / f"{image_id}.jpg")
        for pid in order[bounds[image_id] : bounds[image_id + 1]]:
            x0, y0, x1, y1 = (int(v) for v in box_orig[pid])
            crop = im.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
            pixels[pid] = np.asarray(
                crop.resize((EMBED_SIZE, EMBED_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8
            )
            _save_jpeg(
                crop.resize((PATCH_THUMB, PATCH_THUMB), Image.Resampling.LANCZOS),
                tmp / "thumbs" / "patches" / f"{pid}.jpg",
            )

    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imacs-thumbs") as pool:
        futures = [pool.submit(work, i) for i in range(len(records))]
        with Progress(len(futures), "thumbnails", enabled=progress) as bar:
            for f in futures:
                f.result()
                bar.update(1)
    return pixels


def _save_jpeg(im: Image.Image, path: Path) -> None:
    try:
        im.save(path, "JPEG", quality=85)
    except OSError as exc:
        raise disk_error(exc, path) from None


@stage(
    "thumbnails",
    reads=("records", "patch_table", "box_orig", "run_dir", "progress"),
    produces=("pixels",),
)
def thumbnails_stage(
    records: list[ImageRecord],
    patch_table: PatchTable,
    box_orig: np.ndarray,
    run_dir: Path,
    progress: bool,
) -> dict[str, object]:
    """Thumbnails of every image and patch in the run directory, and the patches' pixels."""
    return {"pixels": thumbnails_and_pixels(records, patch_table, box_orig, run_dir, progress)}
