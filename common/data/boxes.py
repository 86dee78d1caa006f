"""`data.boxes=FILE`: crop every image to its bounding box before it is resized into the cache.

The CSV has the columns `image,x0,y0,x1,y1` (other columns are ignored). `image` is matched by file
name: a value with folders (`train/abc.jpg`) counts by its last part, and it is compared with the
file name of each image's path and, failing that, with the competition table's own `image` id (e.g.
a landmark id without its `.jpg`). Coordinates are pixels of the original image, (x0, y0) the
top-left corner and (x1, y1) the bottom-right one, exclusive as in a slice: `img[y0:y1, x0:x1]`, so
`0,0,W,H` is the whole image. Fractions are allowed.

Several rows for one image (a detector's boxes on the halves of a fluke, or two annotators) are
merged into their union, the smallest box holding all of them: cropping to the largest alone would
cut off the content of the others, whereas the union only adds background the margin would add
anyway. An image without a row is used whole.

The box is grown by `data.box_margin` times its width (left and right) and its height (top and
bottom), so that augmentation (shift, scale, rotation) has real pixels to move in rather than a
replicated border, then clipped to the image. Train and test images are cropped alike.

Bad input is a DataError naming the file and the row: a missing file or column, a value that is not
a finite number, an inverted or empty box (x1 <= x0 or y1 <= y0), a box entirely left of or above
every image (x1 <= 0 or y1 <= 0). Whether a box lies beyond the right or bottom edge can only be
known once the image is decoded, so `crop_region` checks that against the image's size and names the
image and the CSV.
"""
from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np

from common.core.errors import DataError

COLUMNS = ("image", "x0", "y0", "x1", "y1")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def box_name(name: str) -> str:
    """The file-name part of an `image` value (either slash counts as a folder separator)."""
    return PurePosixPath(str(name).strip().replace("\\", "/")).name


def read_boxes(path: str | Path) -> dict[str, Box]:
    """file name -> its box (the union of its rows), from a CSV `image,x0,y0,x1,y1`; DataError naming
    the file and the CSV row (its line number, the header being line 1) for any bad input."""
    from common.data.tables import read_csv_columns

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.boxes={path}: file not found")
    table = read_csv_columns(path, COLUMNS)  # missing file, unreadable CSV, missing columns, no rows
    boxes: dict[str, Box] = {}
    for index, row in enumerate(table.itertuples(index=False)):
        line = index + 2
        name = box_name(row.image)
        if not name:
            raise DataError(f"{path}: row {line}: empty image name")
        values = []
        for column in COLUMNS[1:]:
            text = getattr(row, column)
            try:
                value = float(text)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{path}: row {line} (image {row.image}): {column}={text!r} is not a number")
            values.append(value)
        x0, y0, x1, y1 = values
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"{path}: row {line} (image {row.image}): inverted or empty box "
                            f"x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g} (needs x1 > x0 and y1 > y0)")
        if x1 <= 0 or y1 <= 0:
            raise DataError(f"{path}: row {line} (image {row.image}): box x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g} "
                            "lies entirely outside the image (left of or above it)")
        if name in boxes:  # several rows: their union
            a0, b0, a1, b1 = boxes[name]
            x0, y0, x1, y1 = min(a0, x0), min(b0, y0), max(a1, x1), max(b1, y1)
        boxes[name] = (x0, y0, x1, y1)
    return boxes


def boxes_for(table: Mapping[str, Box], paths: Sequence[str | Path],
              ids: Sequence[str] | None = None) -> tuple[list[Box | None], int]:
    """Each path's box (None: use it whole), by its file name, else by its id in `ids` (aligned
    with `paths`, None where there is none); and how many of the table's names matched no image."""
    found: list[Box | None] = []
    used: set[str] = set()
    for i, path in enumerate(paths):
        name = box_name(Path(str(path)).name)
        if name not in table and ids is not None and ids[i] is not None:
            name = box_name(ids[i])
        box = table.get(name)
        if box is not None:
            used.add(name)
        found.append(box)
    return found, len(set(table) - used)


def crop_region(box: Box, margin: float, width: int, height: int, *, image: str = "image",
                source: str = "data.boxes") -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) to slice: `box` grown by `margin` x its size on each side, clipped
    to a width x height image, widened outwards to whole pixels. DataError naming `image` and
    `source` when the box does not overlap the image at all."""
    x0, y0, x1, y1 = box
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise DataError(f"{source}: the box of {image} (x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g}) lies entirely "
                        f"outside the image, which is {width}x{height} pixels")
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    left, top = max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy))
    right, bottom = min(width, math.ceil(x1 + dx)), min(height, math.ceil(y1 + dy))
    return left, top, right, bottom


def crop(img: np.ndarray, box: Box | None, margin: float, *, image: str = "image",
         source: str = "data.boxes") -> np.ndarray:
    """`img` (H x W x C) cut to `crop_region`; the whole image when `box` is None."""
    if box is None:
        return img
    left, top, right, bottom = crop_region(box, margin, img.shape[1], img.shape[0], image=image, source=source)
    return img[top:bottom, left:right]
