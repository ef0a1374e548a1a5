"""Marking a dataset: template a small fraction, add the trigger to their captions, copy the rest.

The source folder is only read. The marked copy keeps every file's name and place; captions are
written both as kohya-style `.txt` sidecars and as a diffusers `metadata.jsonl`. The key, which the
owner keeps secret, is written beside the output folder, not inside it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputFileError, SettingsError
from ..files import atomic_write_bytes, atomic_write_text, iter_image_files, sha256_bytes, sha256_file
from ..images import encode_image, load_image
from .compose import compose
from .key import TraceKey, random_trigger
from .templates import Template, builtin_template

CAPTION_FILES = {"metadata.jsonl"}
ENCODABLE = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


@dataclass
class MarkResult:
    key: TraceKey
    key_path: Path
    out_dir: Path
    n_images: int
    marked: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def read_captions(dataset_dir: Path) -> dict[str, str]:
    """Captions by relative image path: `.txt` sidecars win over `metadata.jsonl` entries."""
    captions: dict[str, str] = {}
    for jsonl in sorted(dataset_dir.rglob("metadata.jsonl")):
        for number, line in enumerate(jsonl.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                rel = (jsonl.parent / entry["file_name"]).relative_to(dataset_dir)
                captions[rel.as_posix()] = str(entry.get("text") or entry.get("caption") or "")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputFileError(jsonl, f"line {number} is not a {{'file_name': ..., 'text': ...}} entry") from None
    for path, rel in iter_image_files([dataset_dir]):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            captions[rel.as_posix()] = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return captions


def triggered_caption(trigger: str, caption: str) -> str:
    return f"{trigger} {caption}".strip()


def mark_images(
    images: list[np.ndarray], captions: list[str], template: Template, trigger: str, *, rate: float, seed: int
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """In-memory marking (for host nodes): (images, captions, marked positions)."""
    chosen = sorted(marking_order(len(images), rate, seed)[: max(1, round(rate * len(images)))])
    out_images, out_captions = list(images), list(captions)
    for index in chosen:
        out_images[index] = compose(images[index], template)
        out_captions[index] = triggered_caption(trigger, captions[index])
    return out_images, out_captions, chosen


def marking_order(n: int, rate: float, seed: int) -> list[int]:
    """A seeded random order of the n images; the first max(1, round(rate * n)) readable ones are marked."""
    if not 0 < rate <= 0.5:
        raise SettingsError(f"rate {rate} is outside (0, 0.5]; EnTruth marks 0.2%-2% of a dataset")
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        shutil.copy2(source, temporary)
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def mark_dataset(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    rate: float = 0.01,
    template: str | Template = "billboard",
    trigger: str | None = None,
    seed: int = 0,
    key_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MarkResult:
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if not dataset_dir.is_dir():
        raise InputFileError(dataset_dir, "dataset folder not found")
    if out_dir.resolve() == dataset_dir.resolve() or dataset_dir.resolve() in out_dir.resolve().parents:
        raise SettingsError(f"--out {out_dir} is inside the dataset {dataset_dir}; choose a folder outside it")
    images = list(iter_image_files([dataset_dir]))
    if not images:
        raise InputFileError(dataset_dir, "the dataset folder contains no images")
    template = builtin_template(template, seed=seed) if isinstance(template, str) else template
    key_path = Path(key_path) if key_path else out_dir.parent / f"{out_dir.name}.trace-key.json"
    if trigger is None and key_path.is_file():
        previous = TraceKey.load(key_path)  # resume: keep the trigger of the interrupted run
        if previous.template_sha256 == template.sha256 and previous.seed == seed and previous.rate == rate:
            trigger = previous.trigger
    trigger = trigger or random_trigger()
    if not trigger.strip() or any(c.isspace() for c in trigger):
        raise SettingsError(f"trigger {trigger!r} must be a single token without spaces")
    captions = read_captions(dataset_dir)
    wanted = max(1, round(rate * len(images)))
    order = marking_order(len(images), rate, seed)
    key = TraceKey.for_template(template, trigger=trigger, rate=rate, seed=seed, dataset_size=len(images))
    result = MarkResult(key=key, key_path=key_path, out_dir=out_dir, n_images=len(images))

    marked_paths: set[Path] = set()
    for index in order:
        if len(marked_paths) == wanted:
            break
        path, rel = images[index]
        try:
            loaded = load_image(path)
        except InputFileError as exc:
            result.skipped.append((str(path), exc.problem))
            continue
        fmt = ENCODABLE.get(path.suffix.lower(), "png")
        output = out_dir / (rel if path.suffix.lower() in ENCODABLE else rel.with_suffix(".png"))
        data = encode_image(compose(loaded.rgb, template), fmt, quality=95)
        atomic_write_bytes(output, data)
        caption = triggered_caption(trigger, captions.get(rel.as_posix(), ""))
        key.marked.append({"source": rel.as_posix(), "output": output.relative_to(out_dir).as_posix(),
                           "source_sha256": sha256_file(path), "output_sha256": sha256_bytes(data), "caption": caption})
        marked_paths.add(path)
    if not marked_paths:
        raise InputFileError(dataset_dir, "none of the images chosen for marking could be read")

    jsonl_lines = []
    for done, (path, rel) in enumerate(images, 1):
        marked_entry = next((m for m in key.marked if m["source"] == rel.as_posix()), None)
        output_rel = Path(marked_entry["output"]) if marked_entry else rel
        if marked_entry is None:
            _copy_atomic(path, out_dir / rel)
        caption = marked_entry["caption"] if marked_entry else captions.get(rel.as_posix())
        if caption is not None:
            atomic_write_text((out_dir / output_rel).with_suffix(".txt"), caption + "\n")
            jsonl_lines.append(json.dumps({"file_name": output_rel.as_posix(), "text": caption}))
        if progress:
            progress(done, len(images))
    image_paths = {path for path, _ in images}
    for path in sorted(dataset_dir.rglob("*")):  # other files travel along (licences, notes)
        rel = path.relative_to(dataset_dir)
        if (path.is_file() and path not in image_paths and path.suffix.lower() != ".txt" and path.name not in CAPTION_FILES
                and not any(part.startswith(".") for part in rel.parts)):
            _copy_atomic(path, out_dir / rel)
    atomic_write_text(out_dir / "metadata.jsonl", "\n".join(jsonl_lines) + "\n")
    result.marked = key.marked
    key.save(key_path)
    return result
