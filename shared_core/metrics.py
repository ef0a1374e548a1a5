"""How visible a perturbation is: L-infinity, PSNR and SSIM on 8-bit images."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def linf_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest per-channel difference in 0-255 levels."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for uint8 images (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004, Gaussian window) averaged over channels."""
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(x.shape[-1]):
        xc, yc = x[..., channel], y[..., channel]
        mu_x, mu_y = gaussian_filter(xc, sigma), gaussian_filter(yc, sigma)
        var_x = gaussian_filter(xc * xc, sigma) - mu_x**2
        var_y = gaussian_filter(yc * yc, sigma) - mu_y**2
        cov = gaussian_filter(xc * yc, sigma) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def visibility(original: np.ndarray, protected: np.ndarray) -> dict:
    return {
        "linf": linf_distance(original, protected),
        "psnr": round(psnr(original, protected), 3),
        "ssim": round(ssim(original, protected), 5),
    }
