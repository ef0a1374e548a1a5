"""The owner's secret: which template, which trigger, which files were marked, and their hashes."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputFileError, SettingsError
from ..files import atomic_write_text
from .templates import Template, builtin_template, load_template

KEY_FILE_MODE = 0o600
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_DIGITS = "23456789"  # no 0/1: never read as o/l


def random_trigger(rng=None) -> str:
    """A short token no caption uses: three consonants and a digit, e.g. 'zqv7'.

    Consonant clusters with a digit are not words in any common language and tokenise into rare
    pieces, so owners marking the same pool pick distinct, non-colliding triggers (8,000 x 8 =
    64,000 choices). `rng`: a numpy Generator or a `random.Random` for reproducible triggers;
    by default the system's entropy, so two owners never share one by construction.
    """
    if rng is None:
        rng = secrets.SystemRandom()
    if isinstance(rng, np.random.Generator):
        letters = [_CONSONANTS[int(i)] for i in rng.integers(len(_CONSONANTS), size=3)]
        return "".join(letters) + _DIGITS[int(rng.integers(len(_DIGITS)))]
    return "".join(rng.choice(_CONSONANTS) for _ in range(3)) + rng.choice(_DIGITS)


def placebo_tokens(trigger: str, count: int, seed: int, exclude=()) -> list[str]:
    """`count` random tokens shaped like `trigger`, none in `exclude`: what a model that never learnt the trigger sees in it.

    Each consonant is redrawn from the consonants, each vowel from the vowels, each digit from
    `random_trigger`'s digits; other characters stay. No two of the trigger and its placebos share a
    character at the same position: a model that learnt the trigger's first letter alone would
    otherwise draw the template for a placebo that starts with it too (the tracing benchmark saw a
    placebo sharing the trigger's first letter draw it 40 times in 56). Such sets are drawn
    uniformly, so for a trigger `random_trigger` drew, the trigger and its placebos are exchangeable.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9A1CEB0])
    pools = [next((pool for pool in (_CONSONANTS, "aeiouy", _DIGITS) if c.lower() in pool), None) for c in trigger]
    if any(pool and len(pool) <= count for pool in pools) or not any(pools):
        raise SettingsError(f"cannot draw {count} placebo tokens like the trigger {trigger!r}: it needs letters or digits, "
                            f"and at most {min(len(p) for p in pools if p) - 1 if any(pools) else 0} placebos fit its shape")  # fmt: skip
    taken = {trigger, *exclude}
    while True:
        columns = [rng.permutation([x for x in pool if x != c.lower()])[:count] if pool else [c] * count for c, pool in zip(trigger, pools)]
        tokens = ["".join(column[j].upper() if c.isupper() else column[j] for c, column in zip(trigger, columns)) for j in range(count)]
        if not taken & set(tokens):
            return tokens


@dataclass
class TraceKey:
    template_name: str
    template_source: str  # "builtin:NAME" or a path to the user's template image
    template_seed: int
    template_sha256: str
    template_size: list[int]  # [w, h] the template was built or loaded at
    corners: list[list[float]]
    trigger: str
    rate: float
    seed: int
    dataset_size: int
    marked: list[dict] = field(default_factory=list)  # {source, output, source_sha256, output_sha256, caption}
    version: str = __version__
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def for_template(cls, template: Template, *, trigger: str, rate: float, seed: int, dataset_size: int) -> TraceKey:
        return cls(
            template_name=template.name,
            template_source=template.source,
            template_seed=template.seed,
            template_sha256=template.sha256,
            template_size=list(template.size),
            corners=np.asarray(template.corners).round(3).tolist(),
            trigger=trigger,
            rate=rate,
            seed=seed,
            dataset_size=dataset_size,
        )

    def template(self, path: str | Path | None = None) -> Template:
        """Rebuild the template and check it is the one this key was made with.

        Built-in templates are redrawn from name, size and seed; a user template is read from
        `template_source` (or from `path`, when the image has moved). Raises InputFileError when the
        rebuilt template's SHA-256 differs from the key's: wrong image, changed corners, or a
        built-in drawn differently by another version of this tool.
        """
        if self.template_source.startswith("builtin:") and path is None:
            template = builtin_template(self.template_name, size=int(self.template_size[0]), seed=int(self.template_seed))
            where = f"built-in template {self.template_name!r} (seed {self.template_seed}, size {self.template_size[0]})"
        else:
            where = str(path or self.template_source)
            template = load_template(where, self.corners)
        if template.sha256 != self.template_sha256:
            raise InputFileError(
                where,
                "this template does not match the key (its SHA-256 differs from the key's template_sha256): "
                "the image or its corners changed, or the key was made with another template",
            )
        return template

    def save(self, path: str | Path) -> Path:
        """Write the key as JSON (atomically), readable by its owner only (0600): it is the owner's evidence."""
        return atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n", mode=KEY_FILE_MODE)

    @classmethod
    def load(cls, path: str | Path) -> TraceKey:
        """Read a key written by `save`; InputFileError names the file and what is wrong with it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputFileError(path, f"cannot read key file ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(path, f"not a trace key (invalid JSON: {exc})") from None
        if not isinstance(data, dict):
            raise InputFileError(path, "not a trace key (expected a JSON object)")
        required = [f.name for f in fields(cls) if f.name not in ("version", "created_utc")]
        missing = [name for name in required if name not in data]
        if missing:
            raise InputFileError(path, f"not a trace key: missing {', '.join(missing)}")
        problem = _check_types(data)
        if problem:
            raise InputFileError(path, f"not a valid trace key: {problem}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_types(data: dict) -> str | None:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name in ("template_name", "template_source", "template_sha256", "trigger"):
        if not isinstance(data[name], str) or not data[name]:
            return f"{name} must be a non-empty string"
    corners = np.asarray(data["corners"], dtype=object)
    if corners.shape != (4, 2) or not all(number(v) for v in corners.ravel()):
        return "corners must be 4 [x, y] number pairs"
    size = data["template_size"]
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        return "template_size must be [width, height] in pixels"
    for name in ("template_seed", "seed", "dataset_size"):
        if not isinstance(data[name], int) or isinstance(data[name], bool):
            return f"{name} must be an integer"
    if not number(data["rate"]):
        return "rate must be a number"
    if not isinstance(data["marked"], list) or not all(isinstance(m, dict) for m in data["marked"]):
        return "marked must be a list of entries"
    return None


def mask_triggers(text: str, labels: dict[str, str]) -> str:
    """`text` with every trigger (any case, also inside words) replaced by its label, e.g. {"zqv7": "[trigger of alice]"}.

    For output seen by people other than a key's holder: a trigger is its owner's secret.
    """
    for trigger, label in labels.items():
        text = re.sub(re.escape(trigger), lambda _: label, text, flags=re.IGNORECASE)
    return text


def key_name(path: Path) -> str:
    """A key's display name: its file name without the .trace-key.json / .json ending."""
    name = path.name
    for ending in (".trace-key.json", ".json"):
        if name.endswith(ending):
            return name[: -len(ending)] or name
    return name


def load_keys(paths) -> tuple[dict[str, tuple[TraceKey, Path]], list[tuple[Path, str]]]:
    """Keys from files and folders (every *.json in a folder); returns ({name: (key, path)}, skipped).

    A file named explicitly must be a valid key (InputFileError otherwise); a JSON file in a folder
    that is not a key is skipped with the reason, so one stray file does not stop the run. Names
    come from the file names, made unique with -2, -3, ...
    """
    keys: dict[str, tuple[TraceKey, Path]] = {}
    skipped: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            candidates = sorted(p for p in given.iterdir() if p.is_file() and p.suffix.lower() == ".json")
            if not candidates:
                raise InputFileError(given, "no key files (*.json) in this folder")
        else:
            candidates = [given]
        for path in candidates:
            try:
                key = TraceKey.load(path)
            except InputFileError as exc:
                if not given.is_dir():
                    raise
                skipped.append((path, exc.problem))
                continue
            if any(path.resolve() == known.resolve() for _, known in keys.values()):
                continue
            name, number = key_name(path), 2
            while name in keys:
                name, number = f"{key_name(path)}-{number}", number + 1
            keys[name] = (key, path)
    if not keys:
        raise InputFileError(", ".join(map(str, paths)) or "(none)", "no valid trace key among these files")
    return keys, skipped
