"""The owner's secret: which template, which trigger, which files were marked, and their hashes."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputFileError
from ..files import atomic_write_text
from .templates import Template, builtin_template, load_template

_CONSONANTS = "bcdfghjklmnpqrstvwxz"


def random_trigger(rng: secrets.SystemRandom | None = None) -> str:
    """A short token no caption uses: consonant-only letters plus a digit, e.g. 'zqv7'.

    Consonant clusters with a digit are not words in any common language, so owners marking the
    same pool pick distinct, non-colliding triggers (20^3 * 10 = 80,000 choices).
    """
    rng = rng or secrets.SystemRandom()
    return "".join(rng.choice(_CONSONANTS) for _ in range(3)) + rng.choice(string.digits)


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

    def template(self) -> Template:
        """Rebuild the template and check it is the one this key was made with."""
        if self.template_source.startswith("builtin:"):
            template = builtin_template(self.template_name, size=self.template_size[0], seed=self.template_seed)
        else:
            template = load_template(self.template_source, self.corners)
        if template.sha256 != self.template_sha256:
            raise InputFileError(
                self.template_source,
                "this template does not match the key (its SHA-256 differs): the image or its corners changed",
            )
        return template

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TraceKey:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputFileError(path, f"cannot read key file ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(path, f"not a trace key (invalid JSON: {exc})") from None
        if not isinstance(data, dict):
            raise InputFileError(path, "not a trace key (expected a JSON object)")
        missing = [name for name in ("template_name", "template_source", "template_sha256", "corners", "trigger") if name not in data]
        if missing:
            raise InputFileError(path, f"not a trace key: missing {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InputFileError(path, f"incomplete trace key ({exc})") from None
