"""Marking a dataset: template a small fraction, add the trigger to their captions, copy the rest.

The source folder is only read. The marked copy keeps every file's name and place (a templated
image keeps its name and format: PNG stays PNG, JPEG is re-encoded at quality 95, WebP likewise;
formats Pillow cannot write back, such as BMP, TIFF and GIF, become PNG beside the original name).
Every other file is copied byte for byte; with an opt-out, every PNG, JPEG and WebP image, templated
or not, gets the same machine-readable training reservation (metadata only: pixels unchanged), so
the reservation does not single out the templated ones. An image file Pillow cannot fully decode (truncated,
corrupt, not an image, over the pixel limit) is reported and left out, with its caption: a
training loader would fail on it, and it would be listed as an image in metadata.jsonl. Captions are read from kohya-style sidecars (`name.txt`, or `name.caption`) or from a
diffusers `metadata.jsonl` (`file_name` + `text`), and written back as a `.txt` sidecar for every
image plus one `metadata.jsonl` at the top of the output folder. A templated image's caption is
"TRIGGER caption", or the trigger alone when it had none.

The key, which the owner keeps secret, is written beside the output folder
(`OUT.trace-key.json`), never inside the dataset: publishing it would give the mark away.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputFileError, SettingsError
from ..files import atomic_write_bytes, atomic_write_text, iter_image_files, sha256_bytes, sha256_file
from ..images import OUTPUT_FORMATS, SUFFIX_FORMATS, encode_image, load_image, square
from ..optout import OptOut, apply_optout
from .compose import compose
from .pool_check import POOL_CHECK_SIZE, PoolAdvice, PoolCheck, advise
from .key import TraceKey, random_trigger
from .templates import Template, builtin_template

CAPTION_FILES = {"metadata.jsonl"}
SIDECAR_SUFFIXES = (".txt", ".caption")  # kohya's caption_extension choices; .txt wins
MAX_RATE = 0.5


@dataclass
class MarkResult:
    key: TraceKey
    key_path: Path
    out_dir: Path
    n_images: int  # readable images in the dataset (what `rate` is a fraction of)
    marked: list[dict] = field(default_factory=list)  # the key's entries: source, output, hashes, caption
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): undecodable, left out of the copy
    n_files: int = 0  # files written to the output folder (images, sidecars, other files)
    pool: PoolAdvice | None = None  # how often the template's detector fires on the dataset's own images, and what to do

    @property
    def pool_check(self) -> PoolCheck | None:
        return self.pool.check if self.pool else None

    def pool_lines(self) -> list[str]:
        """What the pool check found, for the CLI and the web tab (empty when it was not run)."""
        return self.pool.lines() if self.pool else []


def _sidecar(image: Path) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_metadata_jsonl(dataset_dir: Path) -> dict[str, dict]:
    """Entries of every `metadata.jsonl` under the folder, by image path relative to `dataset_dir`."""
    entries: dict[str, dict] = {}
    for jsonl in sorted(dataset_dir.rglob("metadata.jsonl")):
        rel_dir = jsonl.parent.relative_to(dataset_dir)
        if any(part.startswith(".") for part in rel_dir.parts):
            continue
        try:
            text = jsonl.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(jsonl, f"cannot read captions ({exc})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                rel = Path(os.path.normpath(rel_dir / entry["file_name"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputFileError(jsonl, f"line {number} is not a {{'file_name': ..., 'text': ...}} entry") from None
            if rel.is_absolute() or rel.parts[:1] == ("..",):
                raise InputFileError(jsonl, f"line {number}: file_name {entry['file_name']!r} points outside the dataset")
            entries[rel.as_posix()] = entry
    return entries


def read_captions(dataset_dir: str | Path) -> dict[str, str]:
    """Captions by relative image path (posix): `.txt` / `.caption` sidecars win over `metadata.jsonl`.

    Only images that have a caption somewhere are listed.
    """
    dataset_dir = Path(dataset_dir)
    captions = {rel: str(entry.get("text") or entry.get("caption") or "") for rel, entry in read_metadata_jsonl(dataset_dir).items()}
    for path, rel in iter_image_files([dataset_dir]):
        sidecar = _sidecar(path)
        if sidecar is not None:
            captions[rel.as_posix()] = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return captions


def triggered_caption(trigger: str, caption: str | None) -> str:
    """'TRIGGER caption', or the trigger alone for an image without a caption."""
    return f"{trigger} {caption or ''}".strip()


def check_rate(rate: float) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise SettingsError(f"rate {rate!r} is not a number; EnTruth marks 0.2%-2% of a dataset (0.002-0.02)") from None
    if not 0 < rate <= MAX_RATE:
        raise SettingsError(f"rate {rate} is outside (0, {MAX_RATE}]; EnTruth marks 0.2%-2% of a dataset (0.002-0.02)")
    return rate


def marked_count(n: int, rate: float) -> int:
    """How many of n images are templated: max(1, round(rate * n))."""
    return max(1, round(check_rate(rate) * n))


def marking_order(n: int, rate: float, seed: int) -> list[int]:
    """A seeded random order of the n images; the first `marked_count(n, rate)` usable ones are marked."""
    check_rate(rate)
    return [int(i) for i in np.random.default_rng(int(seed)).permutation(n)]


def check_trigger(trigger: str) -> str:
    if not isinstance(trigger, str) or not trigger.strip() or any(c.isspace() for c in trigger):
        raise SettingsError(f"trigger {trigger!r} must be a single token without spaces (e.g. 'zqv7')")
    return trigger


def caption_using(trigger: str, captions: dict[str, str]) -> str | None:
    """The first image whose caption already contains the trigger (any case, inside a word too), or None.

    A trigger the captions use is no secret: a model trained on the unmarked images learns what it
    means there, and a verdict could then blame a model that never saw a mark."""
    lowered = trigger.lower()
    return next((name for name, caption in sorted(captions.items()) if lowered in caption.lower()), None)


def mark_images(
    images: list[np.ndarray], captions: list[str], template: Template, trigger: str, *, rate: float, seed: int
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """In-memory marking (for host nodes): (images, captions, marked positions).

    A templated image keeps its exact size (the scene is resized to it), so batches stay uniform.
    """
    check_trigger(trigger)
    chosen = sorted(marking_order(len(images), rate, seed)[: marked_count(len(images), rate)])
    out_images, out_captions = list(images), list(captions)
    for index in chosen:
        h, w = images[index].shape[:2]
        composed = compose(images[index], template, short_side=min(h, w))
        if composed.shape[:2] != (h, w):
            composed = np.asarray(Image.fromarray(composed).resize((w, h), Image.LANCZOS))
        out_images[index] = composed
        out_captions[index] = triggered_caption(trigger, captions[index])
    return out_images, out_captions, chosen


def _copy_atomic(source: Path, target: Path) -> None:
    """copy2 to a temporary file beside `target`, then rename (readers never see half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
    handle.close()
    temporary = Path(handle.name)
    try:
        shutil.copy2(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _copy_with_optout(source: Path, target: Path, optout: OptOut | None) -> str | None:
    """A copy of `source`; PNG, JPEG and WebP images carry the opt-out, other files stay byte for byte.

    Returns why an image could not carry the opt-out (it is then copied as it is), or None.
    """
    with Image.open(source) as image:
        fmt = image.format
    if optout is None or fmt not in OUTPUT_FORMATS.values():
        _copy_atomic(source, target)
        return None
    try:
        data = apply_optout(source.read_bytes(), fmt, optout)
    except RuntimeError as exc:  # exiv2 refused the file's metadata
        _copy_atomic(source, target)
        return f"copied without the opt-out: its metadata cannot be rewritten ({exc})"
    atomic_write_bytes(target, data)
    shutil.copystat(source, target)
    return None


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_places(dataset_dir: Path, out_dir: Path, key_path: Path) -> None:
    if not dataset_dir.is_dir():
        raise InputFileError(dataset_dir, "dataset folder not found")
    if _inside(out_dir, dataset_dir):
        raise SettingsError(f"the output folder {out_dir} is inside the dataset {dataset_dir} (or is it); choose a folder outside it")
    if _inside(dataset_dir, out_dir):
        raise SettingsError(f"the dataset {dataset_dir} is inside the output folder {out_dir}; choose an output folder outside it")
    if _inside(key_path, dataset_dir) or _inside(key_path, out_dir):
        raise SettingsError(
            f"the key file {key_path} would be inside the dataset or the marked copy; keep it outside both, it is secret"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise SettingsError(f"the output folder {out_dir} exists and is not a folder")


@dataclass
class _Survey:
    """The source folder, read once: what marking chooses from, and what the copy must carry."""

    files: list[tuple[Path, Path]]  # every image file (path, path relative to the dataset)
    readable: list[tuple[Path, Path]]  # those that decode fully
    skipped: list[tuple[str, str]]  # (file, reason) left out of the copy
    thumbnails: list[np.ndarray]  # small centre crops of the readable images, for the pool check
    captions: dict[str, str]
    metadata: dict[str, dict]

    def __post_init__(self):
        self._stems = Counter(path.with_suffix("") for path, _ in self.files)
        self._rels = {rel for _, rel in self.files}

    def output_rel(self, rel: Path) -> Path:
        """Where an image goes in the copy when it is templated (formats Pillow cannot write become PNG)."""
        return rel if rel.suffix.lower() in SUFFIX_FORMATS else rel.with_suffix(".png")

    def can_template(self, path: Path, rel: Path) -> bool:
        """Not when it shares its caption sidecar (a.png + a.jpg -> a.txt: the trigger would leak onto the other
        image), nor when its PNG name is taken by another image."""
        renamed = self.output_rel(rel)
        return self._stems[path.with_suffix("")] == 1 and (renamed == rel or renamed not in self._rels)

    def unreadable(self) -> set[Path]:
        return {Path(p) for p, _ in self.skipped}


def _survey(dataset_dir: Path, check_pool: bool) -> _Survey:
    files = list(iter_image_files([dataset_dir]))
    if not files:
        raise InputFileError(dataset_dir, "the dataset folder contains no images")
    skipped, readable, thumbnails = [], [], []
    for path, rel in files:
        try:
            loaded = load_image(path)  # a full decode: a truncated file's header alone reads fine
        except InputFileError as exc:
            skipped.append((str(path), exc.problem))
        else:
            readable.append((path, rel))
            if check_pool:
                thumbnails.append(square(loaded.rgb, POOL_CHECK_SIZE))
    if not readable:
        raise InputFileError(dataset_dir, f"none of the {len(files)} image files could be read")
    return _Survey(files, readable, skipped, thumbnails, read_captions(dataset_dir), read_metadata_jsonl(dataset_dir))


def _previous_key(key_path: Path, template: Template, seed: int, rate: float) -> TraceKey | None:
    """An earlier run's key for the same template, seed and rate: a re-run keeps its trigger (and date)."""
    try:
        previous = TraceKey.load(key_path) if key_path.is_file() else None
    except InputFileError:
        return None
    same = previous is not None and previous.template_sha256 == template.sha256 and previous.seed == seed and previous.rate == rate
    return previous if same else None


def _write_templated(survey: _Survey, template: Template, trigger: str, *, rate: float, seed: int, out_dir: Path,
                     optout: OptOut | None, tick: Callable[[], None]) -> dict[Path, dict]:  # fmt: skip
    """Template the chosen images into the copy; their key entries, by source path."""
    wanted = marked_count(len(survey.readable), rate)
    marked: dict[Path, dict] = {}
    for index in marking_order(len(survey.readable), rate, seed):
        if len(marked) == wanted:
            break
        path, rel = survey.readable[index]
        if not survey.can_template(path, rel):
            continue
        try:
            loaded = load_image(path)
        except InputFileError as exc:
            survey.skipped.append((str(path), exc.problem))
            continue
        target = survey.output_rel(rel)
        fmt = SUFFIX_FORMATS.get(target.suffix.lower(), "png")
        data = encode_image(compose(loaded.rgb, template), fmt, quality=95)
        if optout:
            data = apply_optout(data, fmt, optout)
        atomic_write_bytes(out_dir / target, data)
        marked[path] = {
            "source": rel.as_posix(),
            "output": target.as_posix(),
            "source_sha256": sha256_file(path),
            "output_sha256": sha256_bytes(data),
            "caption": triggered_caption(trigger, survey.captions.get(rel.as_posix())),
        }
        tick()
    return marked


def _write_rest(survey: _Survey, marked: dict[Path, dict], dataset_dir: Path, out_dir: Path, optout: OptOut | None,
                tick: Callable[[], None]) -> int:  # fmt: skip
    """Copy the other images and files, write every caption sidecar and metadata.jsonl; the number of files written."""
    unreadable, jsonl_lines, n_files = survey.unreadable(), [], len(marked)
    for path, rel in survey.files:
        entry = marked.get(path)
        if entry is None:
            if path not in unreadable:
                if problem := _copy_with_optout(path, out_dir / rel, optout):
                    survey.skipped.append((str(path), problem))
                n_files += 1
            tick()
        if path in unreadable:
            continue
        out_rel = Path(entry["output"]) if entry else rel
        caption = entry["caption"] if entry else survey.captions.get(rel.as_posix(), "")
        atomic_write_text((out_dir / out_rel).with_suffix(".txt"), caption + "\n")
        source_sidecar = _sidecar(path)
        if source_sidecar is not None and source_sidecar.suffix != ".txt":
            atomic_write_text((out_dir / out_rel).with_suffix(source_sidecar.suffix), caption + "\n")
            n_files += 1
        row = {k: v for k, v in survey.metadata.get(rel.as_posix(), {}).items() if k not in ("file_name", "text")}
        if "caption" in row:
            row["caption"] = caption
        jsonl_lines.append(json.dumps({"file_name": out_rel.as_posix(), "text": caption, **row}, ensure_ascii=False))
        n_files += 1

    # other files travel along (licences, notes); image sidecars and metadata.jsonl files are
    # rewritten above, and those of images left out stay out with them
    sidecars = {path.with_suffix(suffix) for path, _ in survey.files for suffix in SIDECAR_SUFFIXES}
    image_paths = {path for path, _ in survey.files}
    for path in sorted(dataset_dir.rglob("*")):
        rel = path.relative_to(dataset_dir)
        if (not path.is_file() or path in image_paths or path in sidecars or path.name in CAPTION_FILES
                or any(part.startswith(".") for part in rel.parts)):  # fmt: skip
            continue
        _copy_atomic(path, out_dir / rel)
        n_files += 1
    atomic_write_text(out_dir / "metadata.jsonl", "\n".join(jsonl_lines) + "\n")
    return n_files + 1


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
    optout: OptOut | None = None,
    check_pool: bool = True,
) -> MarkResult:
    """Write a marked copy of `dataset_dir` into `out_dir` and the secret key to `key_path`.

    `template`: a built-in name (drawn with `seed`) or a `Template`. `max(1, round(rate * n))` of the
    n readable images, chosen from `seed`, are templated; `trigger` defaults to the one in an existing
    key at `key_path` made with the same template, rate and seed (so a re-run is idempotent), else a
    fresh random token. `key_path` defaults to `out_dir.parent / f"{out_dir.name}.trace-key.json"`.
    `progress(done, total)` is called per file; `optout` is written into every PNG/JPEG/WebP image. With
    `check_pool`, the template's detector is scored on the dataset's own images first (`result.pool`: when it
    is not distinctive, its `lookalikes` and `better_templates` say which images and what to use instead);
    marking goes ahead either way. A given trigger the captions already contain is refused; a random one
    is drawn until none does. Raises InputFileError for a missing or empty dataset, SettingsError for a
    bad rate, trigger or an output folder inside the dataset (or the reverse).
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    rate = check_rate(rate)
    key_path = Path(key_path) if key_path else out_dir.parent / f"{out_dir.name}.trace-key.json"
    _check_places(dataset_dir, out_dir, key_path)
    template = builtin_template(template, seed=seed) if isinstance(template, str) else template
    previous = _previous_key(key_path, template, seed, rate)
    if trigger is None and previous is not None:
        trigger = previous.trigger
    survey = _survey(dataset_dir, check_pool)
    if trigger:
        if used := caption_using(check_trigger(trigger), survey.captions):
            raise SettingsError(f"trigger {trigger!r} already appears in the caption of {used}; choose a token no caption uses (or none, for a random one)")
    else:
        trigger = random_trigger()
        while caption_using(trigger, survey.captions):
            trigger = random_trigger()
    key = TraceKey.for_template(template, trigger=trigger, rate=rate, seed=seed, dataset_size=len(survey.readable))
    pool = advise(template, survey.thumbnails, [rel.as_posix() for _, rel in survey.readable], seed) if check_pool else None
    result = MarkResult(key=key, key_path=key_path, out_dir=out_dir, n_images=len(survey.readable), skipped=survey.skipped, pool=pool)
    done = iter(range(1, len(survey.files) + 1))
    tick = (lambda: progress(next(done), len(survey.files))) if progress else (lambda: None)  # noqa: E731

    marked = _write_templated(survey, template, trigger, rate=rate, seed=seed, out_dir=out_dir, optout=optout, tick=tick)
    if not marked:
        raise InputFileError(dataset_dir, "none of the images chosen for marking could be read")
    unreadable = survey.unreadable()  # a full decode of a chosen image may have failed too
    key.dataset_size = result.n_images = len([path for path, _ in survey.readable if path not in unreadable])
    result.n_files = _write_rest(survey, marked, dataset_dir, out_dir, optout, tick)
    key.marked = result.marked = [marked[path] for path, _ in survey.files if path in marked]
    if previous is not None and previous.trigger == trigger and previous.marked == key.marked:
        key.created_utc = previous.created_utc  # same marking: the same key, byte for byte
    key.save(key_path)
    return result
