"""Target images for latent-pulling objectives (encoder, mist)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...images import load_image


def pattern_image(size: int = 512, seed: int = 1234) -> torch.Tensor:
    """A fixed high-contrast texture [3, size, size]: dense stripes and blobs the decoder reproduces."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(0, 2 * np.pi)
        channels.append(0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (fx * x + fy * y) + phase)))
    return torch.from_numpy(np.stack(channels)).float()


def target_pixels(target: str, like: torch.Tensor) -> torch.Tensor:
    """The target as a batch shaped like `like` ([B, 3, H, W])."""
    if target == "gray":
        return torch.full_like(like, 0.5)
    if target == "pattern":
        image = pattern_image(max(like.shape[-2:]))
    else:
        image = load_image(target).to_tensor()
    image = F.interpolate(image[None], size=like.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return image.to(like).expand_as(like).contiguous()
