"""Protecting whole images and folders: tiling, one optimisation over the set, 8-bit output, resume.

Any image size works (see protect.tiles): the output has exactly the input's width and height.
The images of a `protect_images` call are protected together, so UDP/EUDP/ASPL train one
surrogate state on the whole set, as the victim will.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..errors import InputFileError, ProtectionError, SettingsError
from ..files import atomic_write_bytes, iter_image_files, sha256_bytes
from ..images import SUFFIX_FORMATS, LoadedImage, encode_image, load_image, output_suffix, read_image_size, read_provenance
from ..metrics import visibility
from ..optout import OptOut, apply_optout, protection_action
from ..surrogates.base import Surrogate
from .engine import craft_perturbations
from .objectives import InnerLoopObjective, make_objective
from .settings import ProtectSettings
from .tiles import Tile, tile_layout

#: advanced by the number of tiles that just took one PGD step; may raise to cancel
Progress = Callable[[int], None]
#: written into the output folder by the CLI and the web app; a resumed run merges into it
SUMMARY_NAME = "protect-summary.json"
SECONDS_MEANING = (
    "an image's seconds: its own reading and writing plus its share, by tile count, of its batch's optimisation time"
)
#: JPEG outputs must keep this share of the perturbation (see `perturbation_kept`); qualities tried
JPEG_MIN_KEPT = 0.75
JPEG_QUALITY_LADDER = (95, 97, 98, 99, 100)

__all__ = ["ImageOutcome", "ProtectedImages", "RunSummary", "Tile", "protect_arrays", "protect_files", "protect_images", "tile_layout"]


def apply_perturbation(rgb: np.ndarray, delta: torch.Tensor, budget: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Round to 8 bits so that the published file itself stays within the budget."""
    limit = np.floor(budget * (np.ones(rgb.shape[:2]) if mask is None else mask) + 1e-6)[..., None]
    step = np.rint(delta.permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255.0)
    step = np.clip(step, -limit, limit)
    return np.clip(rgb.astype(np.int16) + step, 0, 255).astype(np.uint8)


@dataclass
class ProtectedImages:
    """What `protect_images` returns: the 8-bit outputs and how the optimisation went, per image."""

    arrays: list[np.ndarray]
    objective_first: list[float]  # the method's objective at the first step (fixed draws)
    objective_last: list[float]  # the same after the last step
    inner_movement: float | None  # relative change of an inner loop's trained state (UDP/EUDP/ASPL)


def protect_images(
    surrogate: Surrogate,
    images: list[np.ndarray],
    settings: ProtectSettings,
    masks: list[np.ndarray | None] | None = None,
    progress: Progress | None = None,
) -> ProtectedImages:
    """Protect uint8 HxWx3 images as one set: tiles of equal shape from all images share PGD batches,
    and methods with an inner training loop train one surrogate state on the whole set.

    masks: per image, None or float HxW in [0, 1] (1 = may be perturbed).

    Raises:
        ProtectionError: the optimisation failed or some image's perturbation never moved; nothing
            is returned as protected.
    """
    masks = masks or [None] * len(images)
    tile_edge = settings.tile_size or surrogate.native_resolution
    tensors = [torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1) / 255.0 for rgb in images]  # a copy: inputs may be read-only
    objective = make_objective(settings.method, settings.method_options)
    result = craft_perturbations(
        surrogate,
        tensors,
        settings,
        tiles=[tile_layout(rgb.shape[0], rgb.shape[1], tile_edge, surrogate.size_multiple) for rgb in images],
        masks=[None if m is None else torch.from_numpy(np.asarray(m, dtype=np.float32))[None] for m in masks],
        objective=objective,
        on_step=progress,
    )
    stuck = [index for index, moved in enumerate(result.moved) if not moved]
    if stuck:
        raise ProtectionError(
            f"{settings.method}: the perturbation of image(s) {stuck} never moved from its random start "
            "(every gradient step was cancelled by the budget); nothing was written as protected"
        )
    arrays = [apply_perturbation(rgb, delta, settings.budget, mask) for rgb, delta, mask in zip(images, result.deltas, masks)]
    movement = objective.inner_movement() if isinstance(objective, InnerLoopObjective) else None
    return ProtectedImages(arrays, result.objective_first, result.objective_last, movement)


def protect_arrays(
    surrogate: Surrogate,
    images: list[np.ndarray],
    settings: ProtectSettings,
    masks: list[np.ndarray | None] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """`protect_images`, returning only the protected uint8 arrays."""
    return protect_images(surrogate, images, settings, masks, progress).arrays


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
    objective_first: float | None = None  # the method's objective at the first PGD step
    objective_last: float | None = None  # and after the last one (same draws): did it move?
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
                "seconds_per_image_means": SECONDS_MEANING,
                "max_linf": max((o.linf for o in done), default=None),
                "mean_psnr": round(float(np.mean([o.psnr for o in done])), 3) if done else None,
                "mean_ssim": round(float(np.mean([o.ssim for o in done])), 5) if done else None,
            },
        }


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) after EXIF rotation, from the header only; None if unreadable or too large."""
    try:
        width, height = read_image_size(path)
    except InputFileError:
        return None  # the full read reports it, once
    return height, width


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


def _output_format(rel: Path, fmt: str) -> tuple[str, str]:
    """(format, suffix) of one output: `auto` keeps the input's container (BMP, TIFF, GIF become PNG)."""
    if fmt != "auto":
        return fmt, output_suffix(fmt)
    kept = SUFFIX_FORMATS.get(rel.suffix.lower())
    return (kept, rel.suffix) if kept else ("png", ".png")


def _decoded(data: bytes) -> np.ndarray:
    """The RGB pixels a reader of the published file gets."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def perturbation_kept(original: np.ndarray, intended: np.ndarray, published: np.ndarray) -> float:
    """1 - rms(compression error) / rms(perturbation): the share of the perturbation a lossy file keeps."""
    perturbation = np.sqrt(np.mean((intended.astype(np.float64) - original) ** 2))
    if perturbation == 0:
        return 1.0
    error = np.sqrt(np.mean((published.astype(np.float64) - intended) ** 2))
    return float(1.0 - error / perturbation)


def _publish(
    original: LoadedImage, protected: np.ndarray, fmt: str, quality: int, search_quality: bool, **options
) -> tuple[bytes, np.ndarray, list[str]]:
    """Encode the protected pixels as the file to publish: (bytes, its decoded RGB, notes).

    JPEG: with `search_quality` (`--format auto`), the lowest quality from `quality` up whose file
    keeps JPEG_MIN_KEPT of the perturbation; a note says what it keeps, and when even 100 is not enough.
    """
    grey = original.greyscale
    notes = []
    if grey and fmt == "webp":
        notes.append("greyscale written as RGB (WebP has no grey mode)")
    if original.alpha is not None and fmt == "jpeg":
        notes.append("alpha dropped (JPEG has none)")
    intended = protected
    if grey and fmt != "webp":
        intended = np.repeat(np.asarray(Image.fromarray(protected).convert("L"))[..., None], 3, axis=2)
    if fmt != "jpeg":
        data = encode_image(protected, fmt, alpha=original.alpha, quality=quality, grey=grey, **options)
        return data, _decoded(data), notes
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


def _previous_outcomes(out_dir: Path) -> dict[str, dict]:
    """The per-image entries of an earlier run's summary, by output path (empty if none or unreadable)."""
    try:
        report = json.loads((out_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
        return {entry["output"]: entry for entry in report["images"] if entry.get("psnr") is not None}  # protected or resumed
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _resume(outcome: ImageOutcome, previous: dict | None, source: Path) -> None:
    """A skipped image keeps the metrics of the run that made it (measured again if they are lost)."""
    if previous is not None:
        for name in ("linf", "psnr", "ssim", "seconds", "notes"):
            setattr(outcome, name, previous.get(name, getattr(outcome, name)))
        return
    try:
        metrics = visibility(load_image(source).rgb, load_image(outcome.output).rgb)
    except InputFileError:
        return
    for key, value in metrics.items():
        setattr(outcome, key, value)


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
    source hash) and, with `optout`, the machine-readable training reservation; a re-run skips
    outputs already made from the same source with the same settings, so an interrupted run
    resumes (their metrics come from the earlier summary). UDP, EUDP and ASPL protect all pending
    images as one set (one surrogate state trained on all of them); other methods go batch by
    batch, so a cancelled run keeps the images already finished.
    Every problem with one file (unreadable, truncated, too large, unwritable) fails that file
    only. Greyscale inputs stay greyscale; `fmt="auto"` keeps each input's container.
    An image's `seconds` is its own reading and writing plus its share, by tile count, of the
    time the set spent in the optimisation.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if fmt != "auto":
        output_suffix(fmt)  # an unknown format fails before any work
    mask_path = Path(mask) if mask else None
    if mask_path is not None and not mask_path.exists():
        raise InputFileError(mask_path, "mask file or folder not found")
    fingerprint = settings.fingerprint({"model": surrogate.name, "format": fmt, "quality": quality, "mask": str(mask_path),
                                        **({"optout": optout.describe()} if optout else {})})  # fmt: skip
    files = list(iter_image_files(inputs))
    if not files:
        raise SettingsError("no image files found in the given inputs")
    sources = {path.resolve() for path, _ in files}
    previous_outcomes = _previous_outcomes(out_dir)
    outcomes: list[ImageOutcome] = []
    pending: list[tuple[ImageOutcome, Path, Path, str, str]] = []
    used: set[Path] = set()
    for path, rel in files:
        out_format, suffix = _output_format(rel, fmt)
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
            _resume(outcome, previous_outcomes.get(str(output)), path)
            continue
        pending.append((outcome, path, rel, source_hash, out_format))

    tile_edge = settings.tile_size or surrogate.native_resolution

    def tile_count(height: int, width: int) -> int:
        return len(tile_layout(height, width, tile_edge, surrogate.size_multiple))

    total_tiles = sum(tile_count(*size) for size in map(image_size, (p[1] for p in pending)) if size)
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
    # inner-loop methods train one state on the whole set; the others finish (and are written) batch by batch
    objective = make_objective(settings.method, settings.method_options)
    whole_set = isinstance(objective, InnerLoopObjective) and objective.scope == "dataset"
    images_per_call = max(1, len(pending)) if whole_set else settings.batch_size
    for first in range(0, len(pending), images_per_call):
        chunk = []
        for outcome, path, rel, source_hash, out_format in pending[first : first + images_per_call]:
            read_started = time.perf_counter()
            try:
                loaded = load_image(path)
                mask_file = _mask_for(mask_path, rel)
                mask_array = load_mask(mask_file, loaded.rgb.shape[:2]) if mask_file else None
            except InputFileError as exc:
                outcome.status, outcome.error = "failed", exc.problem if exc.path == str(path) else str(exc)
                continue
            outcome.notes = list(loaded.notes)
            chunk.append((outcome, loaded, mask_array, source_hash, out_format, time.perf_counter() - read_started))
        if chunk:
            chunk_started = time.perf_counter()
            try:
                result = protect_images(surrogate, [c[1].rgb for c in chunk], settings, [c[2] for c in chunk], progress)
            except ProtectionError as exc:
                for outcome, *_ in chunk:
                    outcome.status, outcome.error = "failed", str(exc)
                chunk = []
            chunk_seconds = time.perf_counter() - chunk_started
            tiles = [tile_count(*c[1].rgb.shape[:2]) for c in chunk]
            for index, (outcome, loaded, _, source_hash, out_format, read_seconds) in enumerate(chunk):
                write_started = time.perf_counter()
                try:
                    data, published, notes = _publish(
                        loaded, result.arrays[index], out_format, quality, fmt == "auto",
                        metadata={**metadata, "source_sha256": source_hash}, icc_profile=loaded.icc_profile, exif=loaded.exif,
                    )  # fmt: skip
                    if optout:
                        data = apply_optout(data, out_format, optout, action=protection_action(metadata), source=Path(outcome.source))
                    atomic_write_bytes(outcome.output, data)
                except (OSError, ValueError) as exc:
                    outcome.status, outcome.error = "failed", f"cannot write output ({exc})"
                    continue
                outcome.notes += [*_container_notes(Path(outcome.source), out_format, len(data)), *notes]
                outcome.status = "protected"
                outcome.objective_first = round(result.objective_first[index], 6)
                outcome.objective_last = round(result.objective_last[index], 6)
                for key, value in visibility(loaded.rgb, published).items():
                    setattr(outcome, key, value)
                own_seconds = read_seconds + time.perf_counter() - write_started
                outcome.seconds = round(own_seconds + chunk_seconds * tiles[index] / sum(tiles), 3)
    return RunSummary(
        outcomes=outcomes,
        settings=settings.to_dict(),
        model=surrogate.describe(),
        seconds=time.perf_counter() - started,
        optout=optout.describe() if optout else None,
    )
