"""Image decoding: the one place that opens image files.

Every stage reads images through `load_rgb`, which returns 8-bit RGB whatever the file holds
(L, LA, P, RGBA, CMYK, I;16, I, F, ...), upright (the EXIF orientation a camera or phone
records is applied), and raises `ImageReadError` naming the file for anything it cannot decode:
a missing or empty file, a FIFO or device, a truncated image, a non-image, or an image larger
than the pixel limit.

The pixel limit guards against decompression bombs (a 97 KB PNG can declare 10000x10000
pixels, 400 MB once decoded). It is checked on the header, before any decoding: the default,
`DEFAULT_MAX_PIXELS` = 64 million pixels (8000x8000), is four times the largest photos of the
common IQA sets (about 4000x4000 in SPAQ and FLIVE) and admits today's 48-50 megapixel phone
photos; decoding such an image takes 4 bytes a pixel in Pillow, about 256 MB. The
image-reading commands take `--max-pixels N` (0 = no limit); `set_max_pixels` stores the limit
in `$DSMIX_MAX_PIXELS`, so data-loading worker processes inherit it. Pillow's own limit and its
`DecompressionBombWarning` are replaced by this one.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dsmix_cli.errors import DsmixError, ImageReadError
from dsmix_cli.fileio import atomic_open

# Pillow otherwise accepts some truncated files silently (filling the rest with grey).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# The limit is ours (checked on the header in `load_rgb`), not Pillow's warning at 89 MP.
Image.MAX_IMAGE_PIXELS = None
# A damaged EXIF block costs only the orientation (the pixels are read as stored): no warning.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "DSMIX_MAX_PIXELS"
_EXIF_ORIENTATION = 0x0112


def set_max_pixels(limit: int | None) -> None:
    """Set the pixel limit of `load_rgb` for this process and its children (None: the default;
    0: no limit)."""
    if limit is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
        return
    if limit < 0:
        raise DsmixError(f"--max-pixels {limit}: expected a count of pixels >= 0 (0 = no limit)")
    os.environ[MAX_PIXELS_ENV] = str(int(limit))


def max_pixels() -> int:
    """The pixel limit in force: `$DSMIX_MAX_PIXELS` if set, else `DEFAULT_MAX_PIXELS` (0 = none)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return max(0, int(float(text)))
    except ValueError:
        raise DsmixError(f"${MAX_PIXELS_ENV}={text!r}: expected a count of pixels (0 = no limit)") from None

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


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (2-8: mirrored and/or rotated storage) to a decoded image."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels are still good, keep them as stored
        return im
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make the image unreadable
        return im


def load_rgb(path: str | Path, limit: int | None = None) -> Image.Image:
    """Open an image file as an 8-bit RGB Pillow image, upright.

    Args:
        path: the image file.
        limit: the largest width x height accepted (default: `max_pixels()`; 0 = no limit).

    Returns:
        A fully decoded RGB `PIL.Image.Image`, with its EXIF orientation applied.

    Raises:
        ImageReadError: the file is missing, empty, not a regular file, truncated, not an
            image, or above the pixel limit; the message names the file and the reason.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror})", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError("is a folder, not an image file", path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block forever, a device never ends
        raise ImageReadError("not a regular file (a FIFO, socket or device)", path)
    if st.st_size == 0:
        raise ImageReadError("empty file (0 bytes)", path)
    limit = max_pixels() if limit is None else limit
    try:
        with Image.open(path) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise ImageReadError(
                    f"image of {w}x{h} = {w * h:,} pixels is above the limit of {limit:,} (a decompression "
                    f"bomb?); pass --max-pixels {w * h} (or 0 for no limit) to read it", path)
            im.load()
            # (leaving the block closes the file only; the decoded pixels stay, Pillow >= 10)
        return _to_rgb(_upright(im))
    except UnidentifiedImageError:
        raise ImageReadError("not an image file Pillow can read", path) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image too large ({exc})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, MemoryError):
            reason = "not enough memory to decode it"
        if "truncated" in reason.lower() or "broken data stream" in reason.lower():
            reason = f"truncated or corrupt image ({reason})"
        raise ImageReadError(reason, path) from None


def crops_uint8(im: Image.Image, boxes) -> torch.Tensor:
    """Crops of an RGB Pillow image as one uint8 tensor (N, 3, h, w); `boxes` are
    (left, top, right, bottom) of one size. Only the crops are copied out of Pillow, never the
    whole image, so a large image costs no more than its decoded form."""
    arrays = [np.asarray(im.crop(tuple(int(v) for v in b)), dtype=np.uint8) for b in boxes]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a uint8 tensor (3, H, W) (one copy of the pixels)."""
    arr = np.asarray(im, dtype=np.uint8)  # Pillow's buffer is read-only: this is a fresh copy
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_rgb_tensor(path: str | Path) -> torch.Tensor:
    """Open an image file as a uint8 tensor of shape (3, H, W)."""
    return pil_to_tensor(load_rgb(path))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W) image tensor to float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image tensor in [0, 1] to uint8 with rounding (values outside are clipped)."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def check_image_extension(path: str | Path, what: str) -> None:
    """Raise a `DsmixError` (exit 2) unless Pillow can write an image named `path` (by its extension)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DsmixError(f"{what}: {path.suffix or 'no extension'!r} is not an image format this tool can write; "
                         "use .png or .jpg", path)


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
