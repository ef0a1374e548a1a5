"""Every image Pillow opens comes in as 8-bit RGB (+ alpha) and goes out with provenance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared_core.errors import InputFileError
from shared_core.images import MAX_PIXELS, encode_image, load_image, read_image_size, read_provenance, save_image
from tests.conftest import png_with_declared_size, truncated_jpeg


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


def test_bomb_sized_header_is_refused_by_our_limit_not_by_pillows(tmp_path):
    bomb = png_with_declared_size(tmp_path / "bomb.png", 30000, 30000)
    for read in (read_image_size, load_image):
        with pytest.raises(InputFileError, match=rf"bomb.png: 900,000,000 pixels is more than the {MAX_PIXELS:,} allowed"):
            read(bomb)
    # above Pillow's own default limit (89 M, refused at 179 M) but under ours: accepted from the header
    assert 12000 * 12000 < MAX_PIXELS
    assert read_image_size(png_with_declared_size(tmp_path / "large.png", 12000, 12000)) == (12000, 12000)
    assert Image.MAX_IMAGE_PIXELS != MAX_PIXELS  # Pillow's global is restored afterwards


def test_truncated_jpeg_is_refused_even_when_the_host_allows_truncated_files(tmp_path, photos, monkeypatch):
    from PIL import ImageFile

    path = truncated_jpeg(tmp_path / "cut.jpg", photos[0])
    assert read_image_size(path) == (512, 512)  # the header is intact
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as ComfyUI sets it
    with pytest.raises(InputFileError, match="cut.jpg: cannot decode image .*truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("raised", [UserWarning("Possibly corrupt EXIF data"), ValueError("bad tile"), Image.DecompressionBombError("x")])
def test_whatever_pillow_raises_while_decoding_names_the_file(tmp_path, rgb, monkeypatch, raised):
    from PIL import ImageFile

    Image.fromarray(rgb).save(tmp_path / "x.png")

    def failing_load(self):
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    with pytest.raises(InputFileError, match=r"x.png: "):
        load_image(tmp_path / "x.png")


def test_pillow_warnings_turned_errors_fail_the_file_only(tmp_path, rgb):
    import warnings

    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(rgb).save(tmp_path / "w.jpg", exif=exif.tobytes()[:-6])  # EXIF cut short: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_image(tmp_path / "w.jpg").rgb.shape == rgb.shape
        warnings.simplefilter("error")  # python -W error
        with pytest.raises(InputFileError, match=r"w.jpg: cannot decode image \(UserWarning: Corrupt EXIF"):
            load_image(tmp_path / "w.jpg")


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(InputFileError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_greyscale_is_encoded_as_greyscale(tmp_path, rgb, mode):
    grey = Image.fromarray(rgb).convert(mode)
    grey.save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.greyscale
    written = Image.open(io.BytesIO(encode_image(loaded.rgb, "png", alpha=loaded.alpha, grey=True)))
    assert written.mode == mode
    assert np.array_equal(np.asarray(written), np.asarray(grey))


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
