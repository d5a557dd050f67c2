"""Image files to uint8 arrays the way pixelq's data readers prepare them, without PyTorch: the
data readers and the runtime's `classify` (`pixelq predict`) share these."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

# What a folder given to `pixelq predict` is searched for; a file named directly may be any format Pillow reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def fit(img: Image.Image, size: int) -> Image.Image:
    """Shorter side scaled to `size` (antialiased bilinear), then the centre size x size crop."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((rw, rh), Image.BILINEAR)
    left, top = (rw - size) // 2, (rh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _eight_bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer and float greyscale as 8-bit "L": integers by their top byte of 16
    (65535 -> 255), floats read as [0, 1]."""
    a = np.asarray(img)
    if img.mode == "F":
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255)
    else:
        a = np.clip(a.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(a.astype(np.uint8), "L")


def as_mode(img: Image.Image, channels: int) -> Image.Image:
    """`img` upright (its EXIF orientation applied) as "L" for one channel or "RGB" for three:
    16-bit and float greyscale scaled to 8 bits, palettes expanded, transparency composited on white
    (what a viewer shows), CMYK and other modes converted by Pillow."""
    if channels not in (1, 3):
        raise DataError(f"image files give 1 (grey) or 3 (RGB) channels; this model takes {channels}")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _eight_bit(img)
    if img.mode == "P" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def read_image(path: "str | Path", image_shape: tuple) -> np.ndarray:
    """The file at `path` as a uint8 (H, W, C) array of `image_shape`: upright, in the model's colour
    mode (`as_mode`), shorter side scaled to the model's size and the centre kept (`fit`), as pixelq's
    readers prepare images of other sizes. DataError naming the file if it cannot be read."""
    h, w, c = image_shape
    if h != w:
        raise DataError(f"this model takes {h}x{w} images; pixelq prepares square images only")
    try:
        with Image.open(path) as img:
            img.load()
            a = np.asarray(fit(as_mode(img, c), h), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read the image ({e})") from e
    return a[..., None] if a.ndim == 2 else a


def image_files(items) -> list:
    """The files `items` name, in order: a file as it is; a folder as the image files under it
    (suffixes in IMAGE_SUFFIXES, sorted, subfolders included); a glob pattern (*, ?, [) as the files
    it matches, sorted. A name that matches nothing is kept, so that reading it reports it."""
    files = []
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists() and any(c in item for c in "*?["):
            files += sorted(glob.glob(item, recursive=True)) or [item]
        else:
            files.append(item)
    return files
