"""Image decoding: the one place that opens image files.

Every stage reads images through `load_rgb`, which returns 8-bit RGB whatever the file holds
(L, LA, P, RGBA, CMYK, I;16, I, F, ...) and raises `ImageReadError` naming the file for
anything it cannot decode: a missing or empty file, a truncated image, a non-image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from dsmix_cli.errors import ImageReadError
from dsmix_cli.fileio import atomic_open

# Pillow otherwise accepts some truncated files silently (filling the rest with grey).
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha is composited onto white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth grey: scale the true range of the type down to 8 bits.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else 255.0
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, P, CMYK, YCbCr, LAB, HSV, 1, RGBX, ...
    return im.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as an 8-bit RGB Pillow image.

    Args:
        path: the image file.

    Returns:
        A fully decoded RGB `PIL.Image.Image`.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image; the message
            names the file and the reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror})", path) from None
    if path.is_dir():
        raise ImageReadError("is a folder, not an image file", path)
    if size == 0:
        raise ImageReadError("empty file (0 bytes)", path)
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im).copy() if im.mode == "RGB" else _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file Pillow can read", path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or "broken data stream" in reason.lower():
            reason = f"truncated or corrupt image ({reason})"
        raise ImageReadError(reason, path) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image too large ({exc})", path) from None


def load_rgb_tensor(path: str | Path) -> torch.Tensor:
    """Open an image file as a uint8 tensor of shape (3, H, W)."""
    arr = np.asarray(load_rgb(path), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W) image tensor to float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image tensor in [0, 1] to uint8 with rounding (values outside are clipped)."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def save_image_atomic(image: torch.Tensor | Image.Image, path: str | Path, **save_kwargs) -> None:
    """Write an image under a temporary name in the same folder, then rename it into place.

    Args:
        image: a uint8 (3, H, W) tensor, a float (3, H, W) tensor in [0, 1], or a PIL image.
        path: the destination; its extension decides the format (png, bmp, jpg, ...).
        **save_kwargs: passed to `PIL.Image.save`.
    """
    path = Path(path)
    if isinstance(image, torch.Tensor):
        t = image if image.dtype == torch.uint8 else to_uint8(image)
        image = Image.fromarray(t.cpu().permute(1, 2, 0).numpy())
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageReadError(f"unknown image extension {path.suffix!r}", path)
    with atomic_open(path, "wb") as fh:
        image.save(fh, format=fmt, **save_kwargs)


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of the image extensions the tool reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
