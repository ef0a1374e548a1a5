"""Protection: bounded perturbations that make images unlearnable for diffusion models."""

from .engine import AttackResult, PerturbationResult, craft_perturbation, craft_perturbations, evaluate_objective
from .objectives import OBJECTIVES, make_objective
from .folder import ImageOutcome, RunSummary, protect_files
from .pipeline import ProtectedImages, protect_arrays, protect_images
from .settings import ProtectSettings

__all__ = [
    "OBJECTIVES",
    "AttackResult",
    "ImageOutcome",
    "PerturbationResult",
    "ProtectSettings",
    "ProtectedImages",
    "RunSummary",
    "craft_perturbation",
    "craft_perturbations",
    "evaluate_objective",
    "make_objective",
    "protect_arrays",
    "protect_files",
    "protect_images",
]
