"""Warping a foreground image into a template's panel."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .templates import Template

#: Short sides a templated image is given, as training buckets use them.
RESOLUTION_CLASSES = (256, 512, 768, 1024)


def resolution_class(width: int, height: int) -> int:
    """The short side a templated copy of a `width` x `height` image gets.

    The image's short side snapped to the nearest of 256, 512, 768, 1024 (ties go to the smaller).
    Images whose short side is under 256 (thumbnails, the 32-64 px datasets of tiny test models)
    keep their own short side: upscaling them would make the marked images stand out in size and
    break loaders that expect one size.
    """
    short = int(min(width, height))
    if short <= 0:
        raise ValueError(f"image size {width}x{height} has no pixels")
    if short < RESOLUTION_CLASSES[0]:
        return short
    return min(RESOLUTION_CLASSES, key=lambda c: (abs(c - short), c))


def perspective_coefficients(source: np.ndarray, target: np.ndarray) -> list[float]:
    """Pillow's 8 PERSPECTIVE coefficients mapping `target` points (output) onto `source` (input).

    The homography is solved exactly from the 4 point pairs (least squares if more are given).
    """
    rows, rhs = [], []
    for (x, y), (u, v) in zip(np.asarray(target, dtype=np.float64), np.asarray(source, dtype=np.float64)):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return solution.tolist()


def _as_rgb(foreground: np.ndarray) -> np.ndarray:
    array = np.asarray(foreground)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"foreground must be an HxWx3 image, got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3])


def scene_size(template: Template, short_side: int) -> tuple[int, int]:
    """(w, h) of the template scene with its aspect ratio and the given short side."""
    tw, th = template.size
    scale = short_side / min(tw, th)
    return max(1, round(tw * scale)), max(1, round(th * scale))


def compose(foreground: np.ndarray, template: Template, short_side: int | None = None) -> np.ndarray:
    """The template scene with `foreground` warped (perspective) into its panel, uint8 HxWx3.

    The scene keeps its aspect ratio; its short side is `short_side`, by default the foreground's
    resolution class (see `resolution_class`). The foreground fills the whole panel (stretched to
    the panel's shape), with antialiased edges.
    """
    foreground = _as_rgb(foreground)
    height, width = foreground.shape[:2]
    short = int(short_side) if short_side else resolution_class(width, height)
    if short < 1:
        raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
    out_size = scene_size(template, short)
    tw, th = template.size
    scene = Image.fromarray(template.image).resize(out_size, Image.LANCZOS if out_size[0] < tw else Image.BICUBIC)
    quad = np.asarray(template.corners, dtype=np.float64) * np.array([out_size[0] / tw, out_size[1] / th])

    # shrink a large foreground to about the panel's size first: the perspective warp alone would alias
    edges = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)  # top, right, bottom, left
    panel_w, panel_h = max(2, int(np.ceil(max(edges[0], edges[2])))), max(2, int(np.ceil(max(edges[1], edges[3]))))
    image = Image.fromarray(foreground)
    if width > 1.5 * panel_w or height > 1.5 * panel_h:
        image = image.resize((min(width, panel_w * 2), min(height, panel_h * 2)), Image.LANCZOS)
    fw, fh = image.size
    source = np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], dtype=np.float64)
    coefficients = perspective_coefficients(source, quad)
    warped = image.transform(out_size, Image.PERSPECTIVE, coefficients, Image.BICUBIC)
    mask = Image.new("L", (out_size[0] * 4, out_size[1] * 4), 0)  # panel coverage, antialiased 4x4
    ImageDraw.Draw(mask).polygon([tuple(p) for p in (quad * 4).tolist()], fill=255)
    mask = mask.resize(out_size, Image.BOX)
    scene.paste(warped, (0, 0), mask)
    return np.asarray(scene, dtype=np.uint8)
