"""Image decoding: RGB out of every Pillow mode, and a clear error naming the file otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsmix_cli.errors import ImageReadError
from dsmix_cli.imageio import load_rgb, load_rgb_tensor


def _save(tmp_path, im: Image.Image, name: str, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def _pixel(path):
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (4, 3)
    return im.getpixel((0, 0))


def test_rgb_is_kept(tmp_path):
    assert _pixel(_save(tmp_path, Image.new("RGB", (4, 3), (10, 20, 30)), "a.png")) == (10, 20, 30)


def test_grey_l_and_bilevel(tmp_path):
    assert _pixel(_save(tmp_path, Image.new("L", (4, 3), 100), "l.png")) == (100, 100, 100)
    assert _pixel(_save(tmp_path, Image.new("1", (4, 3), 1), "b.png")) == (255, 255, 255)


def test_alpha_is_composited_onto_white(tmp_path):
    assert _pixel(_save(tmp_path, Image.new("LA", (4, 3), (100, 255)), "la.png")) == (100, 100, 100)
    assert _pixel(_save(tmp_path, Image.new("LA", (4, 3), (100, 0)), "la0.png")) == (255, 255, 255)
    assert _pixel(_save(tmp_path, Image.new("RGBA", (4, 3), (10, 20, 30, 255)), "o.png")) == (10, 20, 30)
    assert _pixel(_save(tmp_path, Image.new("RGBA", (4, 3), (10, 20, 30, 0)), "t.png")) == (255, 255, 255)
    half = _pixel(_save(tmp_path, Image.new("RGBA", (4, 3), (0, 100, 200, 128)), "h.png"))
    # out = a * c + (1 - a) * 255 with a = 128 / 255
    want = [v * 128 / 255 + 255 * 127 / 255 for v in (0, 100, 200)]
    assert np.allclose(half, want, atol=1)


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 3), 1)
    im.putpalette([0, 0, 0, 40, 80, 120] + [0] * 762)
    if transparent:
        im.info["transparency"] = 1
    return im


def test_palette_with_and_without_transparency(tmp_path):
    assert _pixel(_save(tmp_path, _palette_image(False), "p.png")) == (40, 80, 120)
    path = tmp_path / "pt.png"
    _palette_image(True).save(path, transparency=1)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    assert _pixel(path) == (255, 255, 255)
    gif = tmp_path / "p.gif"
    _palette_image(False).save(gif)
    assert _pixel(gif) == (40, 80, 120)


def test_cmyk(tmp_path):
    assert _pixel(_save(tmp_path, Image.new("CMYK", (4, 3), (0, 0, 0, 0)), "w.tif")) == (255, 255, 255)
    assert _pixel(_save(tmp_path, Image.new("CMYK", (4, 3), (255, 0, 0, 0)), "c.tif")) == (0, 255, 255)
    jpg = _save(tmp_path, Image.new("CMYK", (4, 3), (0, 255, 0, 0)), "m.jpg", quality=100)
    with Image.open(jpg) as im:
        assert im.mode == "CMYK"
    assert np.allclose(_pixel(jpg), (255, 0, 255), atol=3)


def test_sixteen_bit_grey(tmp_path):
    arr = np.full((3, 4), 32768, dtype=np.uint16)
    arr[0, 0] = 65535
    arr[0, 1] = 0
    path = _save(tmp_path, Image.fromarray(arr), "g16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    im = load_rgb(path)
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (0, 0, 0)
    assert im.getpixel((2, 0)) == (128, 128, 128)  # 32768 / 65535 * 255 = 127.5 -> 128


def test_thirty_two_bit_int_and_float(tmp_path):
    ints = _save(tmp_path, Image.fromarray(np.full((3, 4), 30000, dtype=np.int32), mode="I"), "i.tif")
    with Image.open(ints) as im:
        assert im.mode == "I"
    assert _pixel(ints) == (117, 117, 117)  # 30000 / 65535 * 255 = 116.7
    floats = _save(tmp_path, Image.fromarray(np.full((3, 4), 0.25, dtype=np.float32), mode="F"), "f.tif")
    with Image.open(floats) as im:
        assert im.mode == "F"
    assert _pixel(floats) == (64, 64, 64)  # 0.25 * 255 = 63.75


def test_tensor(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (4, 3), (10, 20, 30)), "a.bmp")
    t = load_rgb_tensor(path)
    assert t.dtype == torch.uint8 and t.shape == (3, 3, 4)
    assert t[:, 0, 0].tolist() == [10, 20, 30]


def _rgb_bytes(tmp_path, fmt: str) -> bytes:
    path = tmp_path / f"src.{fmt}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp"])
def test_truncated_files(tmp_path, fmt):
    data = _rgb_bytes(tmp_path, fmt)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        load_rgb(path)
    assert str(path) in str(err.value) and err.value.path == path


def test_empty_missing_folder_and_non_image(tmp_path):
    cases = {}
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases[empty] = "empty file"
    cases[tmp_path / "missing.jpg"] = "file not found"
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    cases[text] = "not an image"
    folder = tmp_path / "dir.png"
    folder.mkdir()
    cases[folder] = "folder"
    for path, reason in cases.items():
        with pytest.raises(ImageReadError) as err:
            load_rgb(path)
        assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)
