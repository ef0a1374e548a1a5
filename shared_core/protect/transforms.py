"""Differentiable stand-ins for what happens to a published image: JPEG, resizing, blur.

Optimising through a random one of these at every step (expectation over transformations) makes
the perturbation survive them instead of living in the fragile highest frequencies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)  # fmt: skip
_CHROMA_TABLE = torch.full((8, 8), 99.0)
_CHROMA_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    matrix = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


_DCT = _dct_matrix()


def _quality_tables(quality: int) -> torch.Tensor:
    """The libjpeg scaling of the standard tables: [3, 8, 8] for Y, Cb, Cr."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    tables = torch.stack([_LUMA_TABLE, _CHROMA_TABLE, _CHROMA_TABLE])
    return torch.clamp(torch.floor((tables * scale + 50) / 100), 1, 255)


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding whose gradient is not zero almost everywhere (Shin & Song, 2017)."""
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3


def jpeg_approx(images: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Differentiable JPEG: YCbCr, 8x8 DCT, quantisation with soft rounding, inverse (no subsampling)."""
    _, _, height, width = images.shape
    pad_h, pad_w = (-height) % 8, (-width) % 8
    x = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images
    matrix = _RGB_TO_YCBCR.to(x)
    ycbcr = torch.einsum("ij,bjhw->bihw", matrix, x) * 255.0
    ycbcr[:, 0] -= 128.0
    b, c, h, w = ycbcr.shape
    blocks = ycbcr.view(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    dct = _DCT.to(x)
    coefficients = dct @ blocks @ dct.T
    tables = _quality_tables(quality).to(x).view(1, 3, 1, 1, 8, 8)
    coefficients = _soft_round(coefficients / tables) * tables
    blocks = dct.T @ coefficients @ dct
    ycbcr = blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
    ycbcr = torch.cat([ycbcr[:, :1] + 128.0, ycbcr[:, 1:]], dim=1) / 255.0
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(matrix), ycbcr)
    return rgb[:, :, :height, :width].clamp(0, 1)


def random_resize(images: torch.Tensor, generator: torch.Generator, low: float = 0.5, high: float = 0.9) -> torch.Tensor:
    """Downscale by a random factor and back: what re-uploading at a smaller size does."""
    scale = low + (high - low) * torch.rand((), generator=generator).item()
    _, _, height, width = images.shape
    small = F.interpolate(images, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def random_blur(images: torch.Tensor, generator: torch.Generator, low: float = 0.4, high: float = 1.2) -> torch.Tensor:
    sigma = low + (high - low) * torch.rand((), generator=generator).item()
    return gaussian_blur(images, sigma)


def random_jpeg(images: torch.Tensor, generator: torch.Generator, low: int = 60, high: int = 90) -> torch.Tensor:
    quality = int(torch.randint(low, high + 1, (), generator=generator).item())
    return jpeg_approx(images, quality)


ROBUSTNESS_TRANSFORMS = {"jpeg": random_jpeg, "resize": random_resize, "blur": random_blur}


class RobustnessTransform:
    """Applies one randomly chosen transform (or none) per step; `names` come from ROBUSTNESS_TRANSFORMS."""

    def __init__(self, names: tuple[str, ...] | list[str], generator: torch.Generator):
        unknown = sorted(set(names) - set(ROBUSTNESS_TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown robustness transform(s) {unknown}; choose from {sorted(ROBUSTNESS_TRANSFORMS)}")
        self.choices = [None, *(ROBUSTNESS_TRANSFORMS[name] for name in names)]
        self.generator = generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if len(self.choices) == 1:
            return images
        index = int(torch.randint(len(self.choices), (), generator=self.generator).item())
        transform = self.choices[index]
        return images if transform is None else transform(images, self.generator)
