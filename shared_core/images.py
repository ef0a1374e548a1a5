"""Reading any image Pillow opens into 8-bit RGB (+ alpha), and writing results with provenance.

Everything the engine sees is 8-bit RGB, because that is what gets published; the alpha channel,
ICC profile and EXIF ride alongside untouched (EXIF orientation is applied to the pixels and reset).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputFileError
from .files import atomic_write_bytes

#: Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 250_000_000
METADATA_KEY = "unlearnable"
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
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
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def to_tensor(self) -> torch.Tensor:
        """Float [3, H, W] in [0, 1]."""
        return rgb_to_tensor(self.rgb)


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)


def tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """Float [3, H, W] in [0, 1] to uint8 [H, W, 3], rounding to the nearest level."""
    array = tensor.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Open `path` and convert it to 8-bit RGB, keeping alpha, ICC profile and EXIF aside.

    Raises InputFileError naming the file for anything unreadable, truncated or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise InputFileError(path, f"{width}x{height} pixels is more than the {max_pixels:,} allowed")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            return _convert(image)
    except InputFileError:
        raise
    except UnidentifiedImageError:
        raise InputFileError(path, "not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputFileError(path, f"cannot decode image ({exc})") from None


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
) -> bytes:
    """Encode to bytes with `metadata` (JSON) stored where each format keeps text."""
    pil_format = OUTPUT_FORMATS[fmt.lower()]
    image = Image.fromarray(rgb, "RGB")
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
