"""The write step: one protected image becomes its published file, in one pass.

Encode in the output's format (searching the JPEG quality that keeps the perturbation, with
`--format auto`), check what the published pixels keep, add the opt-out reservation, write
atomically, and say in notes whatever differs from the input (container, alpha, grey).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write_bytes
from ..images import SUFFIX_FORMATS, LoadedImage, encode_image
from ..optout import OptOut, apply_optout, protection_action

#: JPEG outputs must keep this share of the perturbation (see `perturbation_kept`); qualities tried
JPEG_MIN_KEPT = 0.75
JPEG_QUALITY_LADDER = (95, 97, 98, 99, 100)


@dataclass(frozen=True)
class OutputSpec:
    """How every output of a run is written: `fmt` as asked ("auto" keeps each input's container and
    searches the JPEG quality), the base quality, the provenance metadata and the opt-out."""

    fmt: str
    quality: int
    metadata: dict
    optout: OptOut | None = None


def perturbation_kept(original: np.ndarray, intended: np.ndarray, published: np.ndarray) -> float:
    """1 - rms(compression error) / rms(perturbation): the share of the perturbation a lossy file keeps."""
    perturbation = np.sqrt(np.mean((intended.astype(np.float64) - original) ** 2))
    if perturbation == 0:
        return 1.0
    error = np.sqrt(np.mean((published.astype(np.float64) - intended) ** 2))
    return float(1.0 - error / perturbation)


def publish(original: LoadedImage, protected: np.ndarray, source: Path, output: Path, out_format: str, source_hash: str,
            spec: OutputSpec) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Write `protected` to `output` as the file to publish; returns the pixels a reader of it gets and notes.

    Raises OSError or ValueError when the file cannot be encoded or written (nothing is left behind).
    """
    metadata = {**spec.metadata, "source_sha256": source_hash}
    data, published, notes = _encode(original, protected, out_format, spec.quality, spec.fmt == "auto", metadata)
    if spec.optout:
        data = apply_optout(data, out_format, spec.optout, action=protection_action(spec.metadata), source=source)
    atomic_write_bytes(output, data)
    return published, [*_container_notes(source, out_format, len(data)), *notes]


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _encode(original: LoadedImage, protected: np.ndarray, fmt: str, quality: int, search_quality: bool,
            metadata: dict) -> tuple[bytes, np.ndarray, list[str]]:  # fmt: skip
    """(bytes, their decoded RGB, notes). JPEG with `search_quality`: the lowest quality from `quality` up whose file
    keeps JPEG_MIN_KEPT of the perturbation; a note says what it keeps, and when even 100 is not enough."""
    grey = original.greyscale
    options = {"metadata": metadata, "icc_profile": original.icc_profile, "exif": original.exif}
    notes = []
    if grey and fmt == "webp":
        notes.append("greyscale written as RGB (WebP has no grey mode)")
    if original.alpha is not None and fmt == "jpeg":
        notes.append("alpha dropped (JPEG has none)")
    if fmt != "jpeg":
        data = encode_image(protected, fmt, alpha=original.alpha, quality=quality, grey=grey, **options)
        return data, _decoded(data), notes
    intended = np.repeat(np.asarray(Image.fromarray(protected).convert("L"))[..., None], 3, axis=2) if grey else protected
    ladder = sorted({quality, *(q for q in JPEG_QUALITY_LADDER if q > quality)}) if search_quality else [quality]
    for candidate in ladder:
        data = encode_image(protected, fmt, alpha=None, quality=candidate, grey=grey, **options)
        published = _decoded(data)
        kept = perturbation_kept(original.rgb, intended, published)
        if kept >= JPEG_MIN_KEPT:
            notes.append(f"JPEG quality {candidate} keeps {kept:.0%} of the perturbation")
            return data, published, notes
    notes.append(
        f"JPEG quality {candidate} keeps only {kept:.0%} of the perturbation (wanted {JPEG_MIN_KEPT:.0%}); "
        "--format png keeps all of it" + ("" if search_quality else ", --format auto raises the quality")
    )
    return data, published, notes


def _container_notes(source: Path, out_format: str, size: int) -> list[str]:
    """Says when an output is not in its input's container (and how much larger a lossless copy is)."""
    source_format = SUFFIX_FORMATS.get(source.suffix.lower(), source.suffix.lstrip(".").lower())
    if source_format == out_format:
        return []
    note = f"{source_format.upper()} input written as {out_format.upper()}"
    if out_format == "png" and source_format in ("jpeg", "webp"):
        ratio = size / max(1, source.stat().st_size)
        note += f" (lossless, {ratio:.1f}x the input's size; --format auto keeps {source_format.upper()})"
    return [note]
