"""Hostile and careless image files at the loader: EXIF orientation, decompression bombs, the
pixel limit, special files, and the memory one image costs `score`."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset

from badinput import bomb_png, image_corpus, photo, rotated_photo
from dsmix_cli.errors import ImageReadError
from dsmix_cli.evaluation.score import ScoreCropDataset, five_crop_boxes
from dsmix_cli.evaluation.views import five_crops
from dsmix_cli.imageio import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, load_rgb, load_rgb_tensor, set_max_pixels


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


# ------------------------------------------------------------------------- item 6: EXIF orientation

def test_exif_rotated_png_is_loaded_upright_exactly(tmp_path):
    upright = rotated_photo(tmp_path / "phone.png")
    got = np.asarray(load_rgb(tmp_path / "phone.png"))
    assert got.shape == (64, 48, 3)  # stored 64 wide and 48 high; upright it is a portrait
    assert np.array_equal(got, upright)  # np.rot90 clockwise: an independent transpose
    assert (got[:8, :, 0] == 255).all()  # the strip stored on the left is on top


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    rotated_photo(tmp_path / "phone.jpg")
    with Image.open(tmp_path / "phone.jpg") as im:  # Pillow alone decodes the stored pixels as they lie
        stored = np.asarray(im.convert("RGB"))
    got = load_rgb_tensor(tmp_path / "phone.jpg")
    assert tuple(got.shape) == (3, 64, 48)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), np.rot90(stored, k=-1))


def test_a_malformed_exif_block_keeps_the_pixels(tmp_path):
    path = tmp_path / "odd.jpg"
    Image.fromarray(photo(1)).save(path, exif=b"Exif\x00\x00MM\x00*garbage-ifd")
    assert load_rgb(path).size == (64, 48)  # (that no warning is printed: test_hostile_cli, in a subprocess)


# ------------------------------------------------------------------------- item 7: decompression bombs

def test_a_bomb_is_refused_on_its_header_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 200_000  # 10000 x 10000 pixels in about 100 KB

    def no_decoding(self, *a, **k):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (nor any other) on the way
        with pytest.raises(ImageReadError) as err:
            load_rgb(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "10000x10000" in text and "--max-pixels" in text
    assert f"{DEFAULT_MAX_PIXELS:,}" in text


def test_max_pixels_is_a_limit_workers_inherit(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo(2)).save(path)  # 64 x 48 = 3072 pixels

    class Loads(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            try:
                return tuple(load_rgb_tensor(path).shape)
            except ImageReadError as exc:
                return str(exc)

    try:
        set_max_pixels(3000)
        with pytest.raises(ImageReadError, match="3,072 pixels is above the limit of 3,000"):
            load_rgb(path)
        assert "above the limit" in next(iter(DataLoader(Loads(), batch_size=None, num_workers=1)))
        set_max_pixels(3072)
        assert load_rgb(path).size == (64, 48)
        set_max_pixels(0)  # no limit
        assert load_rgb(path, limit=None).size == (64, 48)
    finally:
        set_max_pixels(None)
    assert os.environ.get(MAX_PIXELS_ENV) is None


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def test_score_holds_one_decoded_image_and_five_crops(tmp_path):
    """The five crops are cut in Pillow: the peak memory of one large image is its decoded size
    (4 bytes a pixel in Pillow) and not the several uint8/float copies of the whole image."""
    if _peak_rss_bytes() is None:
        pytest.skip("needs Linux /proc to read the peak memory")
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (Linux >= 4.0)
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset the peak memory here")
    w, h = 5000, 4000
    path = tmp_path / "large.png"
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    with open("/proc/self/status") as fh:
        base = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
    index, crops, error = ScoreCropDataset([path], 224)[0]
    extra = (_peak_rss_bytes() - base) / (w * h)
    assert error == "" and tuple(crops.shape) == (5, 3, 224, 224)
    assert extra < 6.0, f"{extra:.1f} bytes a pixel"  # whole-image copies gave about 10-13


def test_crops_cut_in_pillow_equal_the_tensor_five_crops(tmp_path):
    for w, h in ((64, 48), (57, 40), (40, 40)):
        path = tmp_path / f"i{w}x{h}.png"
        arr = photo(w, h=h, w=w)
        Image.fromarray(arr).save(path)
        _, crops, _ = ScoreCropDataset([path], 33)[0]
        want = five_crops(torch.from_numpy(arr).permute(2, 0, 1), 33)
        assert torch.equal(crops, want)
        assert five_crop_boxes(w, h, 33)[0] == (0, 0, 33, 33)


# ------------------------------------------------------------------------- the corpus at the loader

def test_every_corpus_file_is_read_or_refused_with_its_name(tmp_path):
    corpus = image_corpus(tmp_path, with_links=False)
    for path in corpus.good:
        assert min(load_rgb(path).size) >= 1
    for path, why in corpus.bad.items():
        with pytest.raises(ImageReadError) as err:
            load_rgb(path)
        assert str(err.value).startswith(f"{path}: ") and why in str(err.value)
