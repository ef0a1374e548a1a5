"""Every image Pillow opens comes in as 8-bit RGB (+ alpha) and goes out with provenance."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared_core.errors import InputFileError
from shared_core.images import encode_image, load_image, read_provenance, save_image


@pytest.fixture
def rgb(photos):
    return photos[0][:40, :60]


def test_rgba_keeps_alpha(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2], 77, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert np.array_equal(loaded.rgb, rgb) and np.array_equal(loaded.alpha, alpha)


def test_palette_greyscale_cmyk_16bit(tmp_path, rgb):
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.gif")
    Image.fromarray(rgb).convert("L").save(tmp_path / "l.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "i16.png")
    for name in ("p.gif", "l.png", "c.jpg", "i16.png"):
        loaded = load_image(tmp_path / name)
        assert loaded.rgb.shape == rgb.shape and loaded.rgb.dtype == np.uint8, name
    assert np.abs(load_image(tmp_path / "i16.png").rgb[..., 0].astype(int) - rgb[..., 0]).max() <= 1


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.rgb.shape[:2] == (rgb.shape[1], rgb.shape[0])
    assert "EXIF orientation applied" in loaded.notes


def test_gif_first_frame(tmp_path, rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = load_image(tmp_path / "anim.gif").rgb.astype(int)
    assert np.abs(first - rgb).mean() < np.abs(first - (255 - rgb)).mean()


@pytest.mark.parametrize("content", [b"", b"GIF89a garbage", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_png_is_an_input_error(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="t.png"):
        load_image(tmp_path / "t.png")


def test_pixel_bound_is_checked_before_decoding(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "big.png")
    with pytest.raises(InputFileError, match="pixels is more than"):
        load_image(tmp_path / "big.png", max_pixels=100)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_provenance_round_trip(tmp_path, rgb, fmt):
    path = save_image(tmp_path / f"x.{fmt}", rgb, fmt, metadata={"method": "eudp", "budget": 8})
    assert read_provenance(path) == {"method": "eudp", "budget": 8}
    assert not list(tmp_path.glob("*.part"))


def test_png_is_lossless_and_keeps_icc(tmp_path, rgb):
    data = encode_image(rgb, "png", icc_profile=b"fake-icc-profile")
    (tmp_path / "x.png").write_bytes(data)
    loaded = load_image(tmp_path / "x.png")
    assert np.array_equal(loaded.rgb, rgb) and loaded.icc_profile == b"fake-icc-profile"
