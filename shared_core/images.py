"""Reading any image Pillow opens into 8-bit RGB (+ alpha), and writing results with provenance.

Everything the engine sees is 8-bit RGB, because that is what gets published; the alpha channel,
ICC profile and EXIF ride alongside untouched (EXIF orientation is applied to the pixels and reset).
"""

from __future__ import annotations

import io
import json
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputFileError
from .files import atomic_write_bytes

#: The one pixel limit: images above it are refused from their header, before any decoding
#: (decompression bombs), by every reader here; Pillow's own, lower limit is lifted to it meanwhile.
MAX_PIXELS = 250_000_000
METADATA_KEY = "unlearnable"
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
#: file suffixes written back in their own container; anything else (BMP, TIFF, GIF) becomes PNG
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_PILLOW_SETTINGS = threading.RLock()
_EXIF_ORIENTATION = 0x0112
_EXIF_IMAGE_DESCRIPTION = 0x010E


@dataclass
class LoadedImage:
    """An image as 8-bit RGB plus everything needed to write it back faithfully."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    alpha: np.ndarray | None = None  # uint8 [H, W]
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_mode: str = "RGB"
    notes: list[str] = field(default_factory=list)

    @property
    def greyscale(self) -> bool:
        """A one-channel source (L, LA, 16-bit, float): written back as L / LA, not as colour."""
        return self.source_mode in GREY_MODES

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def to_tensor(self) -> torch.Tensor:
        """Float [3, H, W] in [0, 1]."""
        return rgb_to_tensor(self.rgb)


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop resized to `size` px: what LoRA trainers feed the model."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return np.asarray(Image.fromarray(rgb[y : y + side, x : x + side]).resize((size, size), Image.BICUBIC))


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)


def tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """Float [3, H, W] in [0, 1] to uint8 [H, W, 3], rounding to the nearest level."""
    array = tensor.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


@contextmanager
def _strict_pillow(max_pixels: int) -> Iterator[None]:
    """Pillow's global bomb limit set to ours and truncated files refused, whatever a host set.

    Both settings are module globals of Pillow (ComfyUI turns LOAD_TRUNCATED_IMAGES on), so they are
    set for the duration of one read only, under a lock.
    """
    with _PILLOW_SETTINGS, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check below says it
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode_problem(exc: BaseException, max_pixels: int) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown or corrupt format)"
    if isinstance(exc, Image.DecompressionBombError):  # Pillow refuses twice our limit already in open()
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        return f"{int(declared[1]):,} pixels is more than the {max_pixels:,} allowed" if declared else str(exc)
    return f"cannot decode image ({type(exc).__name__}: {exc})"


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputFileError(path, f"{width}x{height} pixels is more than the {max_pixels:,} allowed")
    if width < 1 or height < 1:
        raise InputFileError(path, "image has no pixels")


def _header_orientation(image: Image.Image) -> int:
    """EXIF orientation without decoding: a PNG's getexif() decodes the pixels to find a late eXIf chunk."""
    if image.format != "PNG":
        return image.getexif().get(_EXIF_ORIENTATION, 1)
    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    return exif.get(_EXIF_ORIENTATION, 1)


def read_image_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as stored, from the header only; InputFileError as `load_image` would raise."""
    path = Path(path)
    try:
        with _strict_pillow(max_pixels), Image.open(path) as image:
            width, height = image.size
            orientation = _header_orientation(image)
    except InputFileError:
        raise
    except Exception as exc:  # untrusted file: whatever Pillow raises (warnings turned errors too) is this file's problem
        raise InputFileError(path, _decode_problem(exc, max_pixels)) from None
    _check_pixels(path, width, height, max_pixels)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Open `path` and convert it to 8-bit RGB, keeping alpha, ICC profile and EXIF aside.

    Raises InputFileError naming the file for anything unreadable, truncated or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "is a folder, not an image file" if path.is_dir() else "no such file")
    try:
        with _strict_pillow(max_pixels), Image.open(path) as image:
            _check_pixels(path, *image.size, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            return _convert(image)
    except InputFileError:
        raise
    except Exception as exc:  # untrusted file: whatever Pillow raises (warnings turned errors too) is this file's problem
        raise InputFileError(path, _decode_problem(exc, max_pixels)) from None


def _convert(image: Image.Image) -> LoadedImage:
    notes: list[str] = []
    source_mode = image.mode
    icc = image.info.get("icc_profile")
    exif = image.getexif()
    if exif.get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
        notes.append("EXIF orientation applied")
        exif[_EXIF_ORIENTATION] = 1
    exif_bytes = exif.tobytes() if len(exif) else None

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        notes.append(f"{source_mode} scaled to 8 bits")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        notes.append("float image scaled to 8 bits")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette expanded")
    elif image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    elif image.mode == "CMYK":
        image = image.convert("RGB")
        notes.append("CMYK converted to RGB")
        icc = None  # the CMYK profile no longer describes the pixels

    alpha = None
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A")).copy()
        image = image.convert("RGB")
    elif image.mode != "RGB":
        if image.mode not in ("L", "1"):
            notes.append(f"{image.mode} converted to RGB")
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.uint8).copy()
    return LoadedImage(rgb=rgb, alpha=alpha, icc_profile=icc, exif=exif_bytes, source_mode=source_mode, notes=notes)


def output_suffix(fmt: str) -> str:
    if fmt.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of png, jpeg, webp")
    return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[OUTPUT_FORMATS[fmt.lower()]]


def encode_image(
    rgb: np.ndarray,
    fmt: str = "png",
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    metadata: dict | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    grey: bool = False,
) -> bytes:
    """Encode to bytes with `metadata` (JSON) stored where each format keeps text.

    grey: write one channel (L, or LA with alpha), for a greyscale source. Pillow's RGB->L weights
    sum to one, so a grey pixel perturbed by at most k per channel stays within k after conversion.
    WebP has no grey mode and stores such an image as RGB.
    """
    pil_format = OUTPUT_FORMATS[fmt.lower()]
    image = Image.fromarray(rgb, "RGB")
    if grey:
        image = image.convert("L")
    if alpha is not None and pil_format != "JPEG":
        image.putalpha(Image.fromarray(alpha, "L"))
    text = json.dumps(metadata, sort_keys=True) if metadata else None
    options: dict = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    exif_obj = Image.Exif()
    if exif:
        exif_obj.load(exif)
    if pil_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        if text:
            info.add_itxt(METADATA_KEY, text)
        options.update(pnginfo=info, compress_level=6)
    elif pil_format == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
        if text:
            options["comment"] = text.encode("utf-8")
    else:
        options.update(quality=quality, lossless=quality >= 100)
        if text:
            exif_obj[_EXIF_IMAGE_DESCRIPTION] = text
    if len(exif_obj):
        options["exif"] = exif_obj.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def save_image(path: str | Path, rgb: np.ndarray, fmt: str = "png", **kwargs) -> Path:
    """Encode and write atomically (temporary file, then rename)."""
    return atomic_write_bytes(path, encode_image(rgb, fmt, **kwargs))


def read_provenance(path: str | Path) -> dict | None:
    """The metadata written by `encode_image`, or None if the file has none or is unreadable."""
    try:
        with Image.open(path) as image:
            raw = image.info.get(METADATA_KEY) or image.info.get("comment")
            if raw is None:
                raw = image.getexif().get(_EXIF_IMAGE_DESCRIPTION)
    except (OSError, SyntaxError, ValueError):
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    raw = raw.rstrip("\x00") if raw else raw  # exiv2 (the opt-out writer) NUL-terminates JPEG comments
    try:
        value = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
