"""data/images.py: any image mode decodes to RGB at the requested size; broken files are clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tlpipe.data import images
from tlpipe.data.images import Reader, decode, load_array
from tlpipe.data import sources
from tlpipe.errors import PipelineError


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def check_rgb(arr: np.ndarray, size: int) -> None:
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8


def test_rgb_keeps_colour_and_resizes():
    arr = decode(encode(Image.new("RGB", (40, 20), (200, 100, 50))), "rgb.png", 16)
    check_rgb(arr, 16)
    assert (arr == np.array([200, 100, 50], dtype=np.uint8)).all()


def test_grayscale_L_becomes_three_equal_channels():
    arr = decode(encode(Image.new("L", (10, 30), 77)), "gray.png", 32)
    check_rgb(arr, 32)
    assert (arr == 77).all()


def test_palette_P_uses_palette_colours():
    img = Image.new("P", (12, 12), 0)
    img.putpalette([10, 20, 30, 250, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 6, 12))  # left half palette index 1
    arr = decode(encode(img), "pal.png", 12)
    check_rgb(arr, 12)
    assert tuple(arr[6, 1]) == (250, 0, 0)
    assert tuple(arr[6, 10]) == (10, 20, 30)


def test_palette_with_transparency_composited_on_black():
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 1
    arr = decode(encode(img, transparency=1), "ptrans.png", 8)
    assert (arr == 0).all()


def test_rgba_composited_on_black():
    img = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    img.paste((255, 0, 0, 255), (0, 0, 5, 10))
    arr = decode(encode(img), "rgba.png", 10)
    check_rgb(arr, 10)
    assert tuple(arr[5, 1]) == (255, 0, 0)
    assert tuple(arr[5, 8]) == (0, 0, 0)  # fully transparent -> black, not white


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_converted_to_rgb(fmt):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    arr = decode(encode(img, fmt), f"cmyk.{fmt.lower()}", 8)
    check_rgb(arr, 8)
    r, g, b = arr[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_grayscale_scaled_to_8bit():
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    data = encode(img)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode in ("I;16", "I")  # a real 16-bit PNG
    arr = decode(data, "deep.png", 32)
    check_rgb(arr, 32)
    assert arr[:, 0].max() <= 5 and arr[:, -1].min() >= 250  # full range used
    assert 110 <= int(arr[0, 16, 0]) <= 150  # mid-grey stays mid-grey: scaled, not clipped at 255
    assert (np.diff(arr[0, :, 0].astype(int)) >= 0).all()  # ramp stays monotone
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@pytest.mark.parametrize("mode", ["1", "LA", "I;16"])
def test_other_modes_decode(mode):
    if mode == "I;16":
        img = Image.fromarray(np.full((9, 9), 1000, dtype=np.uint16))
    else:
        img = Image.new(mode, (9, 9))
    check_rgb(decode(encode(img), f"{mode}.png", 24), 24)


@pytest.mark.parametrize("fmt", ["PPM", "BMP", "GIF", "WEBP"])
def test_other_formats_decode(fmt):
    check_rgb(decode(encode(Image.new("RGB", (30, 31), (0, 128, 255)), fmt), f"x.{fmt.lower()}", 20), 20)


def test_truncated_png_names_file():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(PipelineError) as info:
        decode(data[: len(data) // 2], "data/raw/broken.png", 32)
    assert "data/raw/broken.png" in str(info.value)


def test_zero_byte_file_names_file():
    with pytest.raises(PipelineError) as info:
        decode(b"", "digits/3/0001.png", 32)
    assert "digits/3/0001.png" in str(info.value) and "empty" in str(info.value)


def test_text_file_with_png_name_names_file():
    with pytest.raises(PipelineError) as info:
        decode(b"<html>404 not found</html>\n", "class_1/notes.png", 32)
    assert "class_1/notes.png" in str(info.value) and "cannot decode" in str(info.value)


def test_decompression_bomb_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PipelineError, match="too many pixels"):
        decode(encode(Image.new("L", (20, 20))), "bomb.png", 8)


# ------------------------------------------------------------------ Reader and load_array
def test_reader_reads_archive_member(tiny_zip):
    rows = sources.gtsrb_index(tiny_zip)
    reader = Reader(tiny_zip.parent)
    try:
        data = reader.read(rows[0]["path"])
        assert rows[0]["path"].startswith("GTSRB_tiny.zip::GTSRB/")
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PPM"
        check_rgb(decode(data, rows[0]["path"], 32), 32)
        with pytest.raises(PipelineError) as info:
            reader.read("GTSRB_tiny.zip::GTSRB/nope.ppm")
        assert "GTSRB/nope.ppm" in str(info.value)
    finally:
        reader.close()


def test_reader_missing_archive_and_file(tmp_path):
    reader = Reader(tmp_path)
    with pytest.raises(PipelineError, match="archive not found"):
        reader.read("absent.zip::a/b.ppm")
    with pytest.raises(PipelineError) as info:
        reader.read("digits/3/0001.png")
    assert "0001.png" in str(info.value)


def test_load_array_from_tiny_zip(tiny_zip):
    rows = sources.gtsrb_index(tiny_zip)
    pick = [rows[i]["path"] for i in (0, 59, 60, 419)]
    arr = load_array(pick, tiny_zip.parent, 32)
    assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8
    assert arr.std() > 5  # real photos, not blank
    assert not np.array_equal(arr[0], arr[3])


def test_load_array_from_files(tmp_path):
    Image.new("RGB", (5, 7), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("L", (9, 9), 200).save(tmp_path / "b.jpg")
    arr = load_array(["a.png", "b.jpg"], tmp_path, 6)
    assert arr.shape == (2, 6, 6, 3)
    assert (arr[0] == [1, 2, 3]).all()
    assert abs(int(arr[1].mean()) - 200) <= 2


def test_load_array_error_names_bad_file(tmp_path):
    Image.new("RGB", (5, 5)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("not an image", encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        load_array(["ok.png", "bad.png"], tmp_path, 8)
    assert "bad.png" in str(info.value)


def test_max_image_pixels_is_bounded():
    assert images.Image.MAX_IMAGE_PIXELS is not None and images.Image.MAX_IMAGE_PIXELS <= 64_000_000
