"""Robustness transforms approximate the real thing and let gradients through."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from shared_core.images import rgb_to_tensor, tensor_to_rgb
from shared_core.protect.transforms import RobustnessTransform, gaussian_blur, jpeg_approx, random_resize


def real_jpeg(rgb, quality):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(buffer).convert("RGB")).astype(float)


def test_differentiable_jpeg_tracks_libjpeg(photos):
    rgb = photos[0][:64, :72]
    for quality in (50, 75, 90):
        approx = tensor_to_rgb(jpeg_approx(rgb_to_tensor(rgb)[None], quality)[0]).astype(float)
        real = real_jpeg(rgb, quality)
        assert np.abs(approx - real).mean() < 2.0, quality  # both far closer to each other than to the input
        assert np.abs(approx - real).mean() < 0.5 * np.abs(rgb.astype(float) - real).mean() + 1.0


def test_transforms_keep_shape_and_pass_gradients(photos):
    x = rgb_to_tensor(photos[1][:50, :70])[None].requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    for out in (jpeg_approx(x, 75), random_resize(x, generator), gaussian_blur(x, 1.0)):
        assert out.shape == x.shape
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert grad.abs().sum() > 0


def test_unknown_transform_is_named():
    try:
        RobustnessTransform(("jpeg", "sharpen"), torch.Generator())
    except ValueError as exc:
        assert "sharpen" in str(exc)
    else:
        raise AssertionError("expected ValueError")
