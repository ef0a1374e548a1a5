"""Warping a foreground image into a template's panel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .templates import Template


def perspective_coefficients(source: np.ndarray, target: np.ndarray) -> list[float]:
    """Pillow's 8 PERSPECTIVE coefficients mapping `target` points (output) onto `source` (input)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)).tolist()


def compose(foreground: np.ndarray, template: Template, short_side: int | None = None) -> np.ndarray:
    """The template scene with `foreground` warped into its panel.

    The result keeps the foreground's resolution class: its short side equals the foreground's
    (or `short_side`), with the template's aspect ratio.
    """
    height, width = foreground.shape[:2]
    short = short_side or min(height, width)
    tw, th = template.size
    scale = short / min(tw, th)
    out_size = (max(1, round(tw * scale)), max(1, round(th * scale)))
    scene = Image.fromarray(template.image).resize(out_size, Image.LANCZOS)
    quad = template.corners * np.array([out_size[0] / tw, out_size[1] / th])
    source = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    coefficients = perspective_coefficients(source, quad)
    warped = Image.fromarray(foreground).transform(out_size, Image.PERSPECTIVE, coefficients, Image.BICUBIC)
    mask = Image.new("L", (width, height), 255).transform(out_size, Image.PERSPECTIVE, coefficients, Image.BILINEAR)
    scene.paste(warped, (0, 0), mask)
    return np.asarray(scene, dtype=np.uint8)
