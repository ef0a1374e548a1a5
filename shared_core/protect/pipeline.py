"""Protecting whole images and folders: tiling, batching across images, 8-bit output, resume.

Any image size works: images at most one tile large are padded to the model's size multiple;
larger ones are covered by overlapping tiles of the surrogate's native resolution (never
downscaled), and the per-tile perturbations are pasted back, so the output has exactly the
input's width and height.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import __version__
from ..errors import InputFileError, SettingsError
from ..files import atomic_write_bytes, iter_image_files, sha256_bytes
from ..images import encode_image, load_image, output_suffix, read_provenance
from ..metrics import visibility
from ..optout import OptOut, apply_optout, protection_action
from ..surrogates.base import Surrogate
from .engine import craft_perturbation
from .settings import ProtectSettings

#: advanced by the number of tiles that just took one PGD step; may raise to cancel
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    height: int  # real pixels taken from the image
    width: int
    padded_height: int  # what the model sees (a multiple of the surrogate's size multiple)
    padded_width: int


def _axis_spans(length: int, tile: int, multiple: int) -> list[tuple[int, int, int]]:
    if length <= tile:
        return [(0, length, math.ceil(length / multiple) * multiple)]
    count = math.ceil(length / tile)
    return [(round(i * (length - tile) / (count - 1)), tile, tile) for i in range(count)]


def tile_layout(height: int, width: int, tile: int, multiple: int) -> list[Tile]:
    """Tiles covering the image; overlapping where the size is not a multiple of the tile."""
    tile = max(multiple, tile // multiple * multiple)
    return [
        Tile(y, x, h, w, ph, pw)
        for y, h, ph in _axis_spans(height, tile, multiple)
        for x, w, pw in _axis_spans(width, tile, multiple)
    ]


def _crop(array: torch.Tensor, tile: Tile) -> torch.Tensor:
    crop = array[:, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    pad_h, pad_w = tile.padded_height - tile.height, tile.padded_width - tile.width
    if pad_h or pad_w:
        crop = F.pad(crop[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return crop


def apply_perturbation(rgb: np.ndarray, delta: torch.Tensor, budget: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Round to 8 bits so that the published file itself stays within the budget."""
    limit = np.floor(budget * (np.ones(rgb.shape[:2]) if mask is None else mask) + 1e-6)[..., None]
    step = np.rint(delta.permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255.0)
    step = np.clip(step, -limit, limit)
    return np.clip(rgb.astype(np.int16) + step, 0, 255).astype(np.uint8)


def protect_arrays(
    surrogate: Surrogate,
    images: list[np.ndarray],
    settings: ProtectSettings,
    masks: list[np.ndarray | None] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Protect uint8 HxWx3 images; tiles of equal shape from all images share PGD batches.

    masks: per image, None or float HxW in [0, 1] (1 = may be perturbed).
    """
    masks = masks or [None] * len(images)
    tile_edge = settings.tile_size or surrogate.native_resolution
    jobs: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
    for index, rgb in enumerate(images):
        for tile in tile_layout(rgb.shape[0], rgb.shape[1], tile_edge, surrogate.size_multiple):
            jobs.setdefault((tile.padded_height, tile.padded_width), []).append((index, tile))
    tensors = [torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1) / 255.0 for rgb in images]  # a copy: inputs may be read-only
    mask_tensors = [None if m is None else torch.from_numpy(np.asarray(m, dtype=np.float32))[None] for m in masks]
    deltas = [torch.zeros_like(t) for t in tensors]
    for group in jobs.values():
        for start in range(0, len(group), settings.batch_size):
            batch = group[start : start + settings.batch_size]
            pixels = torch.stack([_crop(tensors[i], tile) for i, tile in batch])
            batch_masks = None
            if any(mask_tensors[i] is not None for i, _ in batch):
                batch_masks = torch.stack(
                    [_crop(mask_tensors[i] if mask_tensors[i] is not None else torch.ones_like(tensors[i][:1]), t) for i, t in batch]
                )
            on_step = (lambda _step, n=len(batch): progress(n)) if progress else None
            result = craft_perturbation(surrogate, pixels, settings, masks=batch_masks, on_step=on_step)
            for (index, tile), delta in zip(batch, result.delta.cpu()):
                deltas[index][:, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = delta[:, : tile.height, : tile.width]
    return [apply_perturbation(rgb, delta, settings.budget, mask) for rgb, delta, mask in zip(images, deltas, masks)]


@dataclass
class ImageOutcome:
    source: str
    output: str | None
    status: str  # "protected", "skipped" (already done with the same settings) or "failed"
    error: str | None = None
    linf: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    outcomes: list[ImageOutcome]
    settings: dict
    model: dict
    seconds: float = 0.0
    optout: dict | None = None  # what OptOut.describe() says was written into every output

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict:
        done = [o for o in self.outcomes if o.status == "protected"]
        return {
            "tool": "unlearnable",
            "version": __version__,
            "model": self.model,
            "settings": self.settings,
            "optout": self.optout,
            "images": [asdict(o) for o in self.outcomes],
            "totals": {
                "protected": len(done),
                "skipped": sum(o.status == "skipped" for o in self.outcomes),
                "failed": len(self.failed),
                "seconds": round(self.seconds, 2),
                "seconds_per_image": round(sum(o.seconds for o in done) / len(done), 3) if done else None,
                "max_linf": max((o.linf for o in done), default=None),
                "mean_psnr": round(float(np.mean([o.psnr for o in done])), 3) if done else None,
                "mean_ssim": round(float(np.mean([o.ssim for o in done])), 5) if done else None,
            },
        }


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) after EXIF rotation, from the header only; None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            return height, width
    except (OSError, SyntaxError, ValueError):
        return None


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask image as float HxW in [0, 1], resized to (height, width); white = protect."""
    loaded = load_image(path)
    grey = Image.fromarray(loaded.rgb).convert("L")
    if grey.size != (size[1], size[0]):
        grey = grey.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def _mask_for(mask: Path | None, rel: Path) -> Path | None:
    """A single mask file applies to every image; a folder holds one mask per image, same stem."""
    if mask is None or mask.is_file():
        return mask
    for candidate in sorted(mask.joinpath(rel.parent).glob(rel.stem + ".*")):
        if candidate.is_file():
            return candidate
    return None


def protect_files(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    surrogate: Surrogate,
    settings: ProtectSettings,
    *,
    fmt: str = "png",
    quality: int = 95,
    mask: str | Path | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
    optout: OptOut | None = None,
) -> RunSummary:
    """Protect image files and folders into `out_dir`; originals are never written to.

    Each output is written atomically and carries its provenance (method, budget, settings hash,
    source hash) and, with `optout`, the machine-readable training reservation; a re-run skips outputs already made from the same source with the same
    settings, so an interrupted run resumes. Unreadable files are reported and skipped.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    suffix = output_suffix(fmt)
    mask_path = Path(mask) if mask else None
    if mask_path is not None and not mask_path.exists():
        raise InputFileError(mask_path, "mask file or folder not found")
    fingerprint = settings.fingerprint({"model": surrogate.name, "format": fmt, "quality": quality, "mask": str(mask_path),
                                        **({"optout": optout.describe()} if optout else {})})  # fmt: skip
    files = list(iter_image_files(inputs))
    if not files:
        raise SettingsError("no image files found in the given inputs")
    sources = {path.resolve() for path, _ in files}
    outcomes: list[ImageOutcome] = []
    pending: list[tuple[ImageOutcome, Path, Path, str]] = []
    used: set[Path] = set()
    for path, rel in files:
        output = out_dir / rel.with_suffix(suffix)
        if output in used:
            output = out_dir / rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.')}{suffix}")
        used.add(output)
        outcome = ImageOutcome(source=str(path), output=str(output), status="pending")
        outcomes.append(outcome)
        if output.resolve() in sources:
            outcome.status, outcome.error = "failed", "output would overwrite an input; choose another --out folder"
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            outcome.status, outcome.error = "failed", f"cannot read file ({exc.strerror})"
            continue
        source_hash = sha256_bytes(data)
        previous = read_provenance(output) if output.exists() else None
        if previous and previous.get("fingerprint") == fingerprint and previous.get("source_sha256") == source_hash:
            outcome.status = "skipped"
            continue
        pending.append((outcome, path, rel, source_hash))

    total_tiles = 0
    tile_edge = settings.tile_size or surrogate.native_resolution
    for _, path, _, _ in pending:
        size = image_size(path)
        if size:
            total_tiles += len(tile_layout(*size, tile_edge, surrogate.size_multiple))
    progress = progress_factory(total_tiles * settings.steps) if progress_factory else None

    metadata = {
        "tool": "unlearnable",
        "version": __version__,
        "method": settings.method,
        "budget": settings.budget,
        "steps": settings.steps,
        "model": surrogate.name,
        "demo_only": surrogate.demo_only,
        "fingerprint": fingerprint,
    }
    for start in range(0, len(pending), settings.batch_size):
        chunk = []
        for outcome, path, rel, source_hash in pending[start : start + settings.batch_size]:
            try:
                loaded = load_image(path)
                mask_file = _mask_for(mask_path, rel)
                mask_array = load_mask(mask_file, loaded.rgb.shape[:2]) if mask_file else None
            except InputFileError as exc:
                outcome.status, outcome.error = "failed", exc.problem
                continue
            outcome.notes = loaded.notes
            chunk.append((outcome, loaded, mask_array, source_hash))
        if not chunk:
            continue
        chunk_started = time.perf_counter()
        protected = protect_arrays(surrogate, [c[1].rgb for c in chunk], settings, [c[2] for c in chunk], progress)
        seconds_each = (time.perf_counter() - chunk_started) / len(chunk)
        for (outcome, loaded, _, source_hash), rgb in zip(chunk, protected):
            data = encode_image(
                rgb, fmt, alpha=loaded.alpha, quality=quality, metadata={**metadata, "source_sha256": source_hash},
                icc_profile=loaded.icc_profile, exif=loaded.exif,
            )
            if optout:
                data = apply_optout(data, fmt, optout, action=protection_action(metadata), source=Path(outcome.source))
            atomic_write_bytes(outcome.output, data)
            published = load_image(outcome.output).rgb  # measure what was written (lossy formats too)
            outcome.status = "protected"
            outcome.seconds = round(seconds_each, 3)
            for key, value in visibility(loaded.rgb, published).items():
                setattr(outcome, key, value)
    return RunSummary(
        outcomes=outcomes,
        settings=settings.to_dict(),
        model=surrogate.describe(),
        seconds=time.perf_counter() - started,
        optout=optout.describe() if optout else None,
    )
