"""One guard for reading a user's image file: every verb that reads pictures (predict, int8
calibration, datasets) goes through :func:`read_image`.

* a decompression bomb (a small file declaring a huge canvas) is refused from its header,
  before any pixel is decoded: at most :data:`MAX_IMAGE_PIXELS` pixels;
* 16-bit and 32-bit greyscale (``I;16*``, ``I``), float (``F``), palette (``P``, with or
  without transparency), ``LA``/``RGBA``/``CMYK``/... become 8-bit RGB by their value range
  (``convert("RGB")`` alone clips a 16-bit image to white);
* the EXIF orientation is applied (boxes are then in the orientation the image is shown in);
* anything unreadable is one :class:`~nasfcos.errors.NasfcosError` line naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nasfcos.errors import NasfcosError, first_line

#: Largest canvas read (width x height): 100 megapixels, e.g. 10000 x 10000.
MAX_IMAGE_PIXELS = 100_000_000

#: File suffixes read as images by folder listings.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _to_rgb(img: Any) -> Any:
    """An 8-bit RGB copy of ``img``, scaling high-bit-depth modes by their range."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and (img.format == "PNG" or arr.max(initial=0) > 255)):
            arr = arr / 65535.0
        elif mode == "F":
            arr = arr if arr.max(initial=0) <= 1.0 else arr / 255.0
        else:
            arr = arr / 255.0
        grey = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str | Path, *, what: str = "image", orient: bool = True) -> Any:
    """``path`` as an 8-bit RGB PIL image (EXIF orientation applied unless ``orient`` is
    False), or a one-line :class:`NasfcosError` naming the file (see the module doc)."""
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise NasfcosError(f"{path}: {what} declares {w}x{h} pixels, more than the "
                                       f"{MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit "
                                       "(decompression bomb?)")
                im.load()
                if orient:
                    im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except NasfcosError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise NasfcosError(f"{path}: {what} too large ({first_line(exc, 160)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise NasfcosError(f"{path}: cannot read {what} ({first_line(exc, 160)})") from None


__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "read_image"]
