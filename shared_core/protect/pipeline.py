"""Protecting whole images in memory: tiling, one optimisation over the set, 8-bit output.

Any image size works (see protect.tiles): the output has exactly the input's width and height.
The images of a `protect_images` call are protected together, so UDP/EUDP/ASPL train one
surrogate state on the whole set, as the victim will. Files and folders: protect.folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ProtectionError
from ..surrogates.base import Surrogate
from .engine import craft_perturbations
from .objectives import InnerLoopObjective, make_objective
from .settings import ProtectSettings
from .tiles import Tile, tile_layout

#: advanced by the number of tiles that just took one PGD step; may raise to cancel
Progress = Callable[[int], None]

__all__ = ["ProtectedImages", "Tile", "protect_arrays", "protect_images", "tile_layout"]


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
    objective_clean: list[float]  # the method's objective on the clean image after the last step (fixed draws, final state)
    objective_protected: list[float]  # the same on the protected image: what protection added
    objective_change_se: list[float]  # standard error of protected - clean over the paired draws
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
    settings = settings.for_model(surrogate.latent_factor > 1)
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
    return ProtectedImages(arrays, result.objective_clean, result.objective_protected, result.objective_change_se, movement)


def protect_arrays(
    surrogate: Surrogate,
    images: list[np.ndarray],
    settings: ProtectSettings,
    masks: list[np.ndarray | None] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """`protect_images`, returning only the protected uint8 arrays."""
    return protect_images(surrogate, images, settings, masks, progress).arrays
