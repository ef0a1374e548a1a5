"""Protection: bounded perturbations that make images unlearnable for diffusion models."""

from .engine import AttackResult, craft_perturbation
from .objectives import OBJECTIVES, make_objective
from .pipeline import ImageOutcome, RunSummary, protect_arrays, protect_files
from .settings import ProtectSettings

__all__ = [
    "OBJECTIVES",
    "AttackResult",
    "ImageOutcome",
    "ProtectSettings",
    "RunSummary",
    "craft_perturbation",
    "make_objective",
    "protect_arrays",
    "protect_files",
]
