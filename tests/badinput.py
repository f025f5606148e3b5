"""The bad-input corpus: what a hostile or careless user hands the tool.

Everything is built here, from scratch, in a temporary folder (nothing is shipped): broken and
truncated image files, files that are not images, odd Pillow modes, a file name that is not
valid UTF-8, an upright photo stored rotated (EXIF orientation 6), a decompression bomb,
a FIFO, link loops, links out of the folder and dangling links, bad label files, and hostile
weight files (pickle payloads, crafted safetensors headers, bad `dsmix` metadata).

`image_corpus(root)` writes one folder and returns a `Corpus` that says which files are good
(must be processed) and which are bad (must be named on stderr).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_NAME = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 e-acute and a byte no encoding gives


def photo(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A small smooth colour image with some texture (uint8 HxWx3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([np.sin(xx / rng.uniform(4, 9)), np.cos(yy / rng.uniform(4, 9)),
                     np.sin((xx + yy) / rng.uniform(6, 12))], axis=-1)
    return np.clip(np.round((0.5 + 0.3 * base + 0.05 * rng.standard_normal((h, w, 3))) * 255), 0, 255).astype(np.uint8)


def encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@lru_cache(maxsize=None)
def bomb_png(width: int = 10000, height: int = 10000) -> bytes:
    """A valid greyscale PNG of width x height black pixels: about 100 KB on disk, 100 MB
    decoded (400 MB as RGB), built row by row so building it costs little memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + the row
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rotated_photo(path: Path, seed: int = 7) -> np.ndarray:
    """Write `path` as a phone does for a portrait photo: the pixels stored landscape (48x64
    stored, W x H = 64 x 48) and EXIF orientation 6 ("rotate 90 degrees clockwise to view").

    Returns:
        The upright image (64 high, 48 wide) the file stands for.
    """
    stored = photo(seed)
    stored[:, :8] = (255, 0, 0)  # a red strip on the stored left side: on top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    path.write_bytes(encoded(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {})))
    return np.ascontiguousarray(np.rot90(stored, k=-1))


@dataclass
class Corpus:
    """A folder of images: `good` must be processed, `bad` must be named (path -> what is wrong)."""

    root: Path
    good: list[Path] = field(default_factory=list)
    bad: dict[Path, str] = field(default_factory=dict)
    skipped_links: list[Path] = field(default_factory=list)  # links a walk must skip (and name)
    outside: Path | None = None  # a folder with an image, reached only through a link

    def all_images(self) -> list[Path]:
        return sorted(self.good + list(self.bad), key=str)


def image_corpus(root: Path, with_links: bool = True) -> Corpus:
    """Write the image corpus under `root/images` and return it.

    Good: plain PNG/JPEG/BMP, a JPEG named .png, odd modes (L, LA, P with transparency, RGBA,
    CMYK JPEG, 16-bit grey PNG, 1-bit, an animated GIF), a 1x1 image, a non-UTF-8 name, an
    EXIF-rotated photo, a JPEG with a damaged EXIF block. Bad: empty, truncated PNG and JPEG, text named .jpg, an HTML page named
    .png, a folder named .png, a decompression bomb, a FIFO. Links (with `with_links`): a loop
    to the folder itself, a link to a folder outside, a dangling link.
    """
    folder = root / "images"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    c = Corpus(folder)

    def good(name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        c.good.append(path)

    def bad(name: str, data: bytes, why: str) -> None:
        path = folder / name
        path.write_bytes(data)
        c.bad[path] = why

    good("plain.png", encoded(photo(1), "PNG"))
    good("plain.jpg", encoded(photo(2), "JPEG", quality=90))
    good("sub/plain.bmp", encoded(photo(3), "BMP"))
    good("jpeg-named.png", encoded(photo(4), "JPEG"))
    grey = photo(5)[..., 0]
    good("grey.png", encoded(grey, "PNG"))
    buf = io.BytesIO()
    Image.fromarray(photo(6)).convert("LA").save(buf, format="PNG")
    good("grey-alpha.png", buf.getvalue())
    buf = io.BytesIO()
    pal = Image.fromarray(photo(8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(buf, format="PNG", transparency=0)
    good("palette-transparent.png", buf.getvalue())
    rgba = np.dstack([photo(9), np.full((48, 64), 128, np.uint8)])
    good("rgba.png", encoded(rgba, "PNG"))
    buf = io.BytesIO()
    Image.fromarray(photo(10)).convert("CMYK").save(buf, format="JPEG")
    good("cmyk.jpg", buf.getvalue())
    good("grey16.png", encoded((grey.astype(np.uint16) * 257), "PNG"))
    buf = io.BytesIO()
    Image.fromarray(grey).convert("1").save(buf, format="PNG")
    good("bilevel.png", buf.getvalue())
    buf = io.BytesIO()
    frames = [Image.fromarray(photo(11 + k)).convert("P") for k in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    good("animated.gif", buf.getvalue())
    good("tiny-1x1.png", encoded(np.full((1, 1, 3), 200, np.uint8), "PNG"))
    good(NON_UTF8_NAME, encoded(photo(14), "PNG"))
    rotated_photo(folder / "rotated.jpg")
    c.good.append(folder / "rotated.jpg")
    buf = io.BytesIO()
    Image.fromarray(photo(15)).save(buf, format="JPEG", exif=b"Exif\x00\x00MM\x00*garbage-ifd")
    good("corrupt-exif.jpg", buf.getvalue())

    bad("empty.png", b"", "empty file")
    png = encoded(photo(20), "PNG")
    bad("truncated.png", png[: len(png) // 2], "truncated")
    jpg = encoded(photo(21), "JPEG", quality=90)
    bad("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    bad("notes.jpg", b"this is not an image\n", "not an image")
    bad("download.png", b"<html><body>404 Not Found</body></html>\n", "not an image")
    bad("bomb.png", bomb_png(), "above the limit")
    (folder / "folder.png").mkdir()
    c.bad[folder / "folder.png"] = "folder"
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.png")
        c.bad[folder / "fifo.png"] = "not a regular file"

    if with_links:
        outside = root / "outside"
        outside.mkdir(exist_ok=True)
        (outside / "secret.png").write_bytes(encoded(photo(30), "PNG"))
        c.outside = outside
        for name, target in (("sub/loop", ".."), ("self", "."), ("elsewhere", str(outside)),
                             ("dangling.png", "gone.png")):
            os.symlink(target, folder / name)
            c.skipped_links.append(folder / name)
    return c


# ------------------------------------------------------------------------------- label files

def bad_label_files(folder: Path, image: str) -> dict[str, str]:
    """Generic `name,score` CSVs that must be refused (exit 2, naming the file), next to the
    image `image` they name. Returns file name -> a word the message must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "no-score-column.csv": (f"name\n{image}\n", "score"),
        "text-score.csv": (f"name,score\n{image},good\n", "not a number"),
        "inf-score.csv": (f"name,score\n{image},inf\n", "finite"),
        "nan-score.csv": (f"name,score\n{image},nan\n", "finite"),
        "short-row.csv": (f"name,score\n{image}\n", "column"),
        "empty.csv": ("", "empty"),
        "header-only.csv": ("name,score\n", "no images"),
        "nul-byte.csv": (f"name,score\n{image},1\x00\n", "line 2"),
        "huge-field.csv": (f"name,score\n{image},1\n{'x' * 200_000},2\n", "CSV"),
        "missing-image.csv": ("name,score\nnot-there.png,3\n", "not-there.png"),
    }
    out = {}
    for name, (text, word) in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        out[name] = word
    (folder / "latin1.csv").write_bytes(f"name,score\n{image},3\n".encode() + b"caf\xe9.png,2\n")
    out["latin1.csv"] = "UTF-8"
    return out


# ------------------------------------------------------------------------------- weight files

class _Payload:
    """Unpickling this runs `os.system` (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _safetensors(header: dict | bytes, data: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or raw bytes for crafted ones) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def hostile_weights(folder: Path) -> tuple[dict[str, str], Path]:
    """Weight files that must be refused with one line (exit 2) and never run code.

    Returns:
        (file name -> a word the message must hold, the marker file a payload would create).
    """
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "PWNED"
    files: dict[str, str] = {}
    (folder / "pickle-payload.pt").write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    files["pickle-payload.pt"] = "run code"
    import torch

    torch.save({"format_version": 1, "kind": "qep", "config": {}, "step": 1, "model": {},
                "x": _Payload(marker)}, folder / "torch-payload.pt")
    files["torch-payload.pt"] = "run code"
    (folder / "text.pt").write_text("not a checkpoint\n")
    files["text.pt"] = "not a readable"
    tensor = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    crafted = {
        "header-too-long.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        "header-not-json.safetensors": _safetensors(b"{not json" + b" " * 7, b"\0" * 8),
        "offsets-past-end.safetensors": _safetensors({"w": {"dtype": "F32", "shape": [1000],
                                                            "data_offsets": [0, 4000]}}, b"\0" * 8),
        "meta-not-json.safetensors": _safetensors({**tensor, "__metadata__": {"dsmix": "{oops"}}, b"\0" * 8),
        "meta-a-list.safetensors": _safetensors({**tensor, "__metadata__": {"dsmix": "[1, 2]"}}, b"\0" * 8),
        "meta-string-version.safetensors": _safetensors(
            {**tensor, "__metadata__": {"dsmix": json.dumps({"format_version": "1", "kind": "probe-model"})}},
            b"\0" * 8),
        "meta-missing.safetensors": _safetensors(tensor, b"\0" * 8),
    }
    words = {"header-too-long.safetensors": "not a readable", "header-not-json.safetensors": "not a readable",
             "offsets-past-end.safetensors": "not a readable", "meta-not-json.safetensors": "not valid JSON",
             "meta-a-list.safetensors": "not an object", "meta-string-version.safetensors": "not an integer",
             "meta-missing.safetensors": "no dsmix metadata"}
    for name, data in crafted.items():
        (folder / name).write_bytes(data)
        files[name] = words[name]
    return files, marker
