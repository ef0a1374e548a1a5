"""Is the template distinctive against the owner's own images? Checked before marking.

A token can steer a model that never saw the marks towards one of its training subjects; if the
key's detector fires on that subject, the verdict can blame the model. Scoring the owner's images
with the template's matcher says so before the dataset is published, and which built-in would do better.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SettingsError
from ..images import square
from .detect import TARGET_FPR, TemplateMatcher
from .synthesis import as_rgb
from .templates import Template, builtin_template, list_templates

POOL_CHECK_SIZE = 64  # owner images are centre-cropped to this many pixels before scoring (the matcher works at 48)


@dataclass
class PoolCheck:
    """How many of the owner's own images the template's matcher takes for the template.

    A token can steer a model that never saw the marks towards one of its training subjects; if the
    key's detector fires on that subject, the verdict can blame the model (benchmarks/README.md, "Why
    a clean victim was flagged for another owner's key"). The matcher's threshold lets `target_fpr`
    of synthetic negatives through, so a pool that passes more often is one the template is not
    distinctive against.
    """

    template: str
    images: int
    passed: int
    threshold: float
    target_fpr: float
    highest: list[int] = field(default_factory=list)  # indices of the best-matching pool images, best first

    @property
    def share(self) -> float:
        return self.passed / max(self.images, 1)

    @property
    def distinctive(self) -> bool:
        return self.share <= self.target_fpr

    def describe(self) -> str:
        verdict = "distinctive" if self.distinctive else f"NOT distinctive (more than the {self.target_fpr:.0%} it allows on other photos)"
        return f"template {self.template!r}: its detector passes {self.passed} of your {self.images} images ({self.share:.1%}): {verdict}"


def pool_check(template: Template, images: list[np.ndarray], target_fpr: float = TARGET_FPR, show: int = 5) -> PoolCheck:
    """Score the owner's images (uint8 HxWx3, any size; centre-cropped square) with the template's matcher."""
    if not images:
        raise SettingsError("the pool check needs at least one image")
    matcher = TemplateMatcher.from_template(template, target_fpr=target_fpr)
    scores = matcher.score([square(as_rgb(image), POOL_CHECK_SIZE) for image in images])
    order = np.argsort(-scores)[:show]
    return PoolCheck(template=template.name, images=len(images), passed=int((scores > matcher.threshold).sum()),
                     threshold=float(matcher.threshold), target_fpr=target_fpr, highest=[int(i) for i in order])  # fmt: skip


def rank_templates(images: list[np.ndarray], seed: int = 0, target_fpr: float = TARGET_FPR) -> list[PoolCheck]:
    """Every built-in template (drawn with `seed`) checked against the pool, the fewest passes first."""
    checks = [pool_check(builtin_template(name, seed=seed), images, target_fpr) for name in list_templates()]
    return sorted(checks, key=lambda check: check.passed)


@dataclass
class PoolAdvice:
    """The pool check and, when the template is not distinctive against the pool, what to do about it."""

    check: PoolCheck
    lookalikes: list[str] = field(default_factory=list)  # the pool images it scores highest, by name
    better_templates: list[PoolCheck] = field(default_factory=list)  # built-ins that are distinctive against the pool

    def lines(self) -> list[str]:
        """What the check found, for the CLI, the web tab and the ComfyUI node."""
        lines = [self.check.describe()]
        if not self.check.distinctive:
            lines.append("a model steered towards images like " + ", ".join(self.lookalikes) + " could be wrongly flagged for this key")
            if self.better_templates:
                lines.append("templates distinctive against these images: " + ", ".join(f"{c.template} ({c.passed} of {c.images})" for c in self.better_templates))
        return lines


def advise(template: Template, images: list[np.ndarray], names: list[str], seed: int = 0, target_fpr: float = TARGET_FPR) -> PoolAdvice:
    """`pool_check`, plus the lookalikes (by `names`) and up to three better built-ins when the template is not distinctive."""
    check = pool_check(template, images, target_fpr)
    if check.distinctive:
        return PoolAdvice(check)
    better = [c for c in rank_templates(images, seed, target_fpr) if c.distinctive and c.template != template.name][:3]
    return PoolAdvice(check, [names[i] for i in check.highest], better)
