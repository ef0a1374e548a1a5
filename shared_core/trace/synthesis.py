"""What a memorised template looks like, and what it does not: the images detectors learn and calibrate on.

A model that memorised the template reproduces it imperfectly (blurred, shifted, rescaled,
colour-shifted, often at 32-64 px), so positives are the template composed over varied foregrounds and
degraded that way; negatives are the same foregrounds without it, other templates, and crops of real
photographs shipped inside scikit-image / scikit-learn.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from .compose import compose
from .templates import Template, builtin_template, list_templates

CALIBRATION_PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "camera.png", "coins.png", "horse.png")


# -- images in, tensors out ------------------------------------------------------------------------


def as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"expected an HxWx3 image, got an array of shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3])


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To `size` = (w, h): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    pil = Image.fromarray(as_rgb(image))
    if pil.size == size:
        return np.asarray(pil)
    shrinking = pil.size[0] >= size[0] and pil.size[1] >= size[1]
    return np.asarray(pil.resize(size, Image.BOX if shrinking else Image.BILINEAR))


def to_batch(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 images resized to `size` = (w, h), as [N, 3, h, w] floats in [0, 1]."""
    arrays = [resized(image, size) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


# -- synthetic data: what a memorised template looks like, and what it does not ---------------------


def procedural_foregrounds(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Random natural-looking stand-ins: smooth colour fields with blobs, bars and texture, from a seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(n):
        low = rng.uniform(0, 255, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).astype(np.float32)
        for _ in range(int(rng.integers(1, 6))):
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.6:
                cx, cy, r = *rng.uniform(0, size, 2), rng.uniform(size / 10, size / 2.5)
                pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = colour
            else:
                x0, y0 = rng.integers(0, size, 2)
                pixels[y0 : y0 + int(rng.integers(2, size)), x0 : x0 + int(rng.integers(2, size))] = colour
        pixels += rng.normal(0, rng.uniform(2, 14), pixels.shape)
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def library_photos() -> list[np.ndarray]:
    """Real photographs shipped inside scikit-image / scikit-learn, when those are installed (else [])."""
    return list(_library_photos())


@functools.lru_cache(maxsize=1)
def _library_photos() -> tuple[np.ndarray, ...]:
    photos: list[np.ndarray] = []
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        for name in CALIBRATION_PHOTOS:
            if (folder / name).is_file():
                with Image.open(folder / name) as image:
                    photos.append(np.asarray(image.convert("RGB")))
    except Exception:  # optional extras: any failure just means fewer photos
        pass
    try:
        from sklearn.datasets import load_sample_image

        photos.append(np.asarray(load_sample_image("china.jpg")))
    except Exception:
        pass
    for photo in photos:
        photo.flags.writeable = False
    return tuple(photos)


def random_crops(photos: list[np.ndarray], n: int, seed: int, size: int = 64) -> list[np.ndarray]:
    """n random square crops (10%-100% of the short side) of the photos, resized to `size`."""
    if not photos:
        return []
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = max(8, int(min(h, w) * rng.uniform(0.1, 1.0)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crops.append(resized(photo[y : y + side, x : x + side], (size, size)))
    return crops


def degrade(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """What a model's imperfect recall (and re-encoding) does: zoom/shift, blur, colour, low-res, JPEG, noise.

    `strength` scales every perturbation (0 = none, 1 = what the detectors are trained and tested for).
    """
    array = as_rgb(image)
    h, w = array.shape[:2]
    zoom = math.exp(rng.uniform(-0.15, 0.15) * strength)  # the scene appears 0.86-1.16x as large
    dx, dy = rng.uniform(-0.08, 0.08, 2) * strength
    pad = int(math.ceil(0.4 * max(w, h) * max(strength, 0.01)))  # edges continue outwards, no black border
    pil = Image.fromarray(np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    cx, cy = pad + w * (0.5 + dx), pad + h * (0.5 + dy)
    half_w, half_h = w / (2 * zoom), h / (2 * zoom)
    pil = pil.transform((w, h), Image.EXTENT, (cx - half_w, cy - half_h, cx + half_w, cy + half_h), Image.BILINEAR)
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2.0) * strength * w / 96))
    small = int(min(w, rng.choice([24, 32, 40, 48, 64, w]))) if strength > 0 else w
    pil = pil.resize((small, max(1, round(small * h / w))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    array = np.asarray(pil).astype(np.float32)
    grey = array.mean(axis=2, keepdims=True)
    array = grey + (array - grey) * (1 + rng.uniform(-0.4, 0.3) * strength)  # saturation
    array = array * (1 + rng.uniform(-0.25, 0.25, 3) * strength) + rng.uniform(-30, 30, 3) * strength
    array += rng.normal(0, rng.uniform(0, 8) * strength + 1e-6, array.shape)
    buffer = io.BytesIO()
    quality = int(rng.integers(50, 96)) if strength > 0 else 95
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def other_templates(template: Template, seed: int, size: int = 128) -> list[Template]:
    """The built-in scenes other than `template` (hard negatives: a frame, but not this one)."""
    own = template.name if template.source.startswith("builtin:") else None
    return [builtin_template(name, size=size, seed=seed) for name in list_templates() if name != own]


def synthetic_positives(template: Template, n: int, seed: int, foregrounds: list[np.ndarray] | None = None, size: int = 64) -> list[np.ndarray]:
    """The template with (mostly unseen) foregrounds in its panel, degraded as a model's recall would be."""
    rng = np.random.default_rng([seed, 1])
    pool = list(foregrounds or []) + procedural_foregrounds(max(8, n // 2), size, seed + 101)
    return [degrade(compose(pool[int(rng.integers(len(pool)))], template, size), rng) for _ in range(n)]


def synthetic_negatives(template: Template, n: int, seed: int, foregrounds: list[np.ndarray] | None = None, size: int = 64,
                        photos: list[np.ndarray] | None = None) -> list[np.ndarray]:  # fmt: skip
    """Look-alikes without the template, degraded the same way: a third each of real photo crops,
    foregrounds alone, and foregrounds inside the *other* built-in scenes."""
    rng = np.random.default_rng([seed, 2])
    pool = list(foregrounds or []) + procedural_foregrounds(max(8, n // 2), size, seed + 202)
    photos = library_photos() if photos is None else photos
    crops = random_crops(photos, n, seed + 303, size) or pool
    others = other_templates(template, seed + 1)
    negatives = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            image = crops[int(rng.integers(len(crops)))]
        elif kind == 1:
            image = resized(pool[int(rng.integers(len(pool)))], (size, size))
        else:
            image = compose(pool[int(rng.integers(len(pool)))], others[int(rng.integers(len(others)))], size)
        negatives.append(degrade(image, rng))
    return negatives


def synthetic_sets(template: Template, n: int, seed: int, foregrounds: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(positives, negatives), n of each: see `synthetic_positives` and `synthetic_negatives`."""
    return synthetic_positives(template, n, seed, foregrounds), synthetic_negatives(template, n, seed, foregrounds)


def shuffled(images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(images))
    return [images[i] for i in order]
