"""Protecting image files and folders, in three steps: plan, execute, write.

* plan (`plan_run`): which inputs, which outputs, which are already done (resume), in chunks;
* execute: an executor runs the engine over chunks of read images (`LocalExecutor` here, in this
  process; `protect.ray_executor` spreads them over a Ray cluster);
* write (`publish`): each protected image becomes its file, atomically, with its metrics.

The driver (this module) reads every input and writes every output, so an executor only moves
pixels; a run stopped part-way keeps every output already written, and the same call resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import InputFileError, ProtectionError, SettingsError
from ..files import iter_image_files, sha256_bytes
from ..images import SUFFIX_FORMATS, LoadedImage, load_image, output_suffix, read_image_size, read_provenance
from ..metrics import visibility
from ..optout import OptOut
from ..surrogates.base import Surrogate
from .objectives import InnerLoopObjective, make_objective
from .pipeline import Progress, ProtectedImages, protect_images
from .publish import OutputSpec, publish
from .settings import ProtectSettings
from .tiles import tile_layout

#: written into the output folder by the CLI and the web app; a resumed run merges into it
SUMMARY_NAME = "protect-summary.json"
SECONDS_MEANING = (
    "an image's seconds: its own reading and writing plus its share, by tile count, of its batch's optimisation time"
)


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
    objective_clean: float | None = None  # the method's objective on the clean image, after the last PGD step
    objective_protected: float | None = None  # on the protected image, same draws and model state: what protection added
    objective_change_se: float | None = None  # standard error of protected - clean over the paired draws
    notes: list[str] = field(default_factory=list)

    def fail(self, error: str) -> None:
        self.status, self.error = "failed", error


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


@dataclass
class PendingImage:
    """An input still to protect, and where its output goes."""

    outcome: ImageOutcome
    path: Path
    rel: Path
    source_hash: str
    out_format: str


@dataclass
class ReadImage:
    """A pending input read and ready for the engine (what an executor receives)."""

    pending: PendingImage
    loaded: LoadedImage
    mask: np.ndarray | None
    read_seconds: float


@dataclass
class RunPlan:
    """What a run will do: every input's outcome (skipped and unreadable ones already settled) and the pending rest."""

    outcomes: list[ImageOutcome]
    pending: list[PendingImage]
    spec: OutputSpec
    mask: Path | None
    images_per_call: int  # images optimised together: the whole set for dataset-scope inner loops

    def chunks(self) -> Iterator[list[PendingImage]]:
        for first in range(0, len(self.pending), self.images_per_call):
            yield self.pending[first : first + self.images_per_call]


class Executor(Protocol):
    """Runs the engine over chunks of read images, yielding each chunk with its result (or the ProtectionError that failed
    it) and the seconds its optimisation took, in any order."""

    def describe(self) -> dict: ...

    def tile_count(self, height: int, width: int, settings: ProtectSettings) -> int: ...

    def run(self, chunks: Iterable[list[ReadImage]], settings: ProtectSettings, progress: Progress | None
            ) -> Iterator[tuple[list[ReadImage], ProtectedImages | ProtectionError, float]]: ...  # fmt: skip


class LocalExecutor:
    """The engine in this process, on one surrogate, chunk after chunk."""

    def __init__(self, surrogate: Surrogate):
        self.surrogate = surrogate

    def describe(self) -> dict:
        return self.surrogate.describe()

    def tile_count(self, height: int, width: int, settings: ProtectSettings) -> int:
        return len(tile_layout(height, width, settings.tile_size or self.surrogate.native_resolution, self.surrogate.size_multiple))

    def run(self, chunks, settings, progress):
        for chunk in chunks:
            started = time.perf_counter()
            try:
                result = protect_images(self.surrogate, [c.loaded.rgb for c in chunk], settings, [c.mask for c in chunk], progress)
            except ProtectionError as exc:
                result = exc
            yield chunk, result, time.perf_counter() - started


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


def plan_run(inputs: Iterable[str | Path], out_dir: Path, model_name: str, demo_only: bool, settings: ProtectSettings, *,
             fmt: str, quality: int, mask: Path | None, optout: OptOut | None, images_per_call: int | None = None) -> RunPlan:  # fmt: skip
    """Every input's output path and status: failed (unreadable, would overwrite an input), skipped (its output was made
    from the same source bytes with the same settings) or pending. Nothing is read beyond the inputs' bytes."""
    if fmt != "auto":
        output_suffix(fmt)  # an unknown format fails before any work
    if mask is not None and not mask.exists():
        raise InputFileError(mask, "mask file or folder not found")
    fingerprint = settings.fingerprint({"model": model_name, "format": fmt, "quality": quality, "mask": str(mask),
                                        **({"optout": optout.describe()} if optout else {})})  # fmt: skip
    files = list(iter_image_files(inputs))
    if not files:
        raise SettingsError("no image files found in the given inputs")
    sources = {path.resolve() for path, _ in files}
    previous_outcomes = _previous_outcomes(out_dir)
    outcomes, pending, used = [], [], set()
    for path, rel in files:
        out_format, suffix = _output_format(rel, fmt)
        output = out_dir / rel.with_suffix(suffix)
        if output in used:
            output = out_dir / rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.')}{suffix}")
        used.add(output)
        outcome = ImageOutcome(source=str(path), output=str(output), status="pending")
        outcomes.append(outcome)
        if output.resolve() in sources:
            outcome.fail("output would overwrite an input; choose another --out folder")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            outcome.fail(f"cannot read file ({exc.strerror})")
            continue
        source_hash = sha256_bytes(data)
        previous = read_provenance(output) if output.exists() else None
        if previous and previous.get("fingerprint") == fingerprint and previous.get("source_sha256") == source_hash:
            outcome.status = "skipped"
            _resume(outcome, previous_outcomes.get(str(output)), path)
            continue
        pending.append(PendingImage(outcome, path, rel, source_hash, out_format))
    metadata = {"tool": "unlearnable", "version": __version__, "method": settings.method, "budget": settings.budget,
                "steps": settings.steps, "model": model_name, "demo_only": demo_only, "fingerprint": fingerprint}  # fmt: skip
    if images_per_call is None:  # inner-loop methods train one state on the whole set; the others are written batch by batch
        objective = make_objective(settings.method, settings.method_options)
        whole_set = isinstance(objective, InnerLoopObjective) and objective.scope == "dataset"
        images_per_call = max(1, len(pending)) if whole_set else settings.batch_size
    return RunPlan(outcomes, pending, OutputSpec(fmt, quality, metadata, optout), mask, images_per_call)


def read_chunk(plan: RunPlan, chunk: list[PendingImage]) -> list[ReadImage]:
    """The chunk's images (and masks) decoded; a file that cannot be read fails alone."""
    read = []
    for pending in chunk:
        started = time.perf_counter()
        try:
            loaded = load_image(pending.path)
            mask_file = _mask_for(plan.mask, pending.rel)
            mask = load_mask(mask_file, loaded.rgb.shape[:2]) if mask_file else None
        except InputFileError as exc:
            pending.outcome.fail(exc.problem if exc.path == str(pending.path) else str(exc))
            continue
        pending.outcome.notes = list(loaded.notes)
        read.append(ReadImage(pending, loaded, mask, time.perf_counter() - started))
    return read


def write_chunk(plan: RunPlan, chunk: list[ReadImage], result: ProtectedImages | ProtectionError, seconds: float, tiles: list[int]) -> None:
    """Publish each protected image of a chunk and settle its outcome; `seconds` is shared out by tile count."""
    if isinstance(result, ProtectionError):
        for image in chunk:
            image.pending.outcome.fail(str(result))
        return
    for index, image in enumerate(chunk):
        outcome, started = image.pending.outcome, time.perf_counter()
        try:
            published, notes = publish(image.loaded, result.arrays[index], image.pending.path, Path(outcome.output),
                                       image.pending.out_format, image.pending.source_hash, plan.spec)  # fmt: skip
        except (OSError, ValueError) as exc:
            outcome.fail(f"cannot write output ({exc})")
            continue
        outcome.notes += notes
        outcome.status = "protected"
        outcome.objective_clean = round(result.objective_clean[index], 6)
        outcome.objective_protected = round(result.objective_protected[index], 6)
        outcome.objective_change_se = round(result.objective_change_se[index], 6)
        for key, value in visibility(image.loaded.rgb, published).items():
            setattr(outcome, key, value)
        own_seconds = image.read_seconds + time.perf_counter() - started
        outcome.seconds = round(own_seconds + seconds * tiles[index] / sum(tiles), 3)


def protect_files(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    surrogate: Surrogate | None,
    settings: ProtectSettings,
    *,
    fmt: str = "png",
    quality: int = 95,
    mask: str | Path | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
    optout: OptOut | None = None,
    executor: Executor | None = None,
    images_per_call: int | None = None,
) -> RunSummary:
    """Protect image files and folders into `out_dir`; originals are never written to.

    Each output is written atomically and carries its provenance (method, budget, settings hash,
    source hash) and, with `optout`, the machine-readable training reservation; a re-run skips
    outputs already made from the same source with the same settings, so an interrupted run
    resumes (their metrics come from the earlier summary). UDP, EUDP and ASPL protect all pending
    images as one set (one surrogate state trained on all of them; `images_per_call` makes the
    set smaller, as a Ray shard); other methods go batch by batch, so a cancelled run keeps the
    images already finished. `executor` runs the engine (default: this process, on `surrogate`).
    Every problem with one file (unreadable, truncated, too large, unwritable) fails that file
    only. Greyscale inputs stay greyscale; `fmt="auto"` keeps each input's container.
    An image's `seconds` is its own reading and writing plus its share, by tile count, of the
    time the set spent in the optimisation.
    """
    started = time.perf_counter()
    executor = executor or LocalExecutor(surrogate)
    model = executor.describe()
    settings = settings.for_model(model["latent_factor"] > 1)  # outputs and the summary record the method that ran
    plan = plan_run(inputs, Path(out_dir), model["name"], model["demo_only"], settings, fmt=fmt, quality=quality,
                    mask=Path(mask) if mask else None, optout=optout, images_per_call=images_per_call)  # fmt: skip
    sizes = [image_size(p.path) for p in plan.pending]
    total_tiles = sum(executor.tile_count(*size, settings) for size in sizes if size)
    progress = progress_factory(total_tiles * settings.steps) if progress_factory else None
    chunks = (read for chunk in plan.chunks() if (read := read_chunk(plan, chunk)))
    for chunk, result, seconds in executor.run(chunks, settings, progress):
        write_chunk(plan, chunk, result, seconds, [executor.tile_count(*c.loaded.rgb.shape[:2], settings) for c in chunk])
    return RunSummary(outcomes=plan.outcomes, settings=settings.to_dict(), model=model, seconds=time.perf_counter() - started,
                      optout=optout.describe() if optout else None)  # fmt: skip
