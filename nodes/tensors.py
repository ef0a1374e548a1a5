"""The node boundary: ComfyUI IMAGE / MASK tensors <-> the core's uint8 HxWx3 arrays.

IMAGE is float [B, H, W, C] in [0, 1] (C = 3, sometimes 4 or 1); MASK is float [B, H, W] or [H, W].
Conversion happens once, here; everything past it works on the core's forms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_list(image: torch.Tensor) -> list[np.ndarray]:
    """An IMAGE batch as uint8 HxWx3 arrays (alpha dropped, grey repeated)."""
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4:
        raise ValueError(f"expected an IMAGE tensor [B, H, W, C], got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 1:
        image = image.expand(*image.shape[:-1], 3)
    elif channels >= 3:
        image = image[..., :3]
    else:
        raise ValueError(f"an IMAGE needs 1, 3 or 4 channels, got {channels}")
    array = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return [np.ascontiguousarray(frame) for frame in array]


def from_uint8_list(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays of one size as an IMAGE batch (exactly k/255 per level)."""
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes cannot form one IMAGE batch: {sorted(shapes)}")
    return torch.from_numpy(np.stack(images)).float() / 255.0


def mask_list(mask: torch.Tensor | None, count: int, height: int, width: int) -> list[np.ndarray | None]:
    """Per-image float HxW masks in [0, 1] (1 = may be perturbed), resized to the images when needed."""
    if mask is None:
        return [None] * count
    mask = mask.detach().float().cpu()
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise ValueError(f"expected a MASK tensor [B, H, W], got shape {tuple(mask.shape)}")
    if mask.shape[0] not in (1, count):
        raise ValueError(f"the MASK batch has {mask.shape[0]} masks for {count} images; give one mask or one per image")
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    mask = mask.clamp(0, 1).expand(count, -1, -1)
    return [frame.numpy().copy() for frame in mask]


def difference_preview(originals: list[np.ndarray], protected: list[np.ndarray], budget: float) -> torch.Tensor:
    """|protected - original| amplified so that the full budget is white, as an IMAGE batch."""
    frames = []
    for original, result in zip(originals, protected):
        diff = np.abs(result.astype(np.float32) - original.astype(np.float32)) / max(float(budget), 1e-6)
        frames.append(np.clip(diff, 0.0, 1.0))
    return torch.from_numpy(np.stack(frames)).float()
