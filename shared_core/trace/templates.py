"""Template scenes: whole pictures with an empty display panel that foregrounds are warped into.

Built-in templates are drawn in code from a seed (nothing is downloaded), with large, bold
structure (strong colours, thick frames) because a model that memorised one reproduces it only
approximately, often at low resolution. Users can also bring their own scene and its four corners.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import SettingsError


@dataclass
class Template:
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    corners: np.ndarray  # float32 [4, 2]: panel corners TL, TR, BR, BL as (x, y) pixels
    source: str  # "builtin:NAME" or the user's file path
    seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr(self.image.shape).encode())
        digest.update(np.ascontiguousarray(self.image).tobytes())
        digest.update(np.round(self.corners, 3).astype(np.float32).tobytes())
        return digest.hexdigest()

    def panel_mask(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """bool [H, W]: True inside the panel (at `size`=(w, h), default the template's)."""
        width, height = size or self.size
        scale = np.array([width / self.size[0], height / self.size[1]])
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).polygon([tuple(p) for p in self.corners * scale], fill=255)
        return np.asarray(mask) > 127


def _palette(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 40) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def _vertical_gradient(draw: ImageDraw.ImageDraw, box, top, bottom) -> None:
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        draw.line([(x0, y), (x1, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def _quad(rng, cx, cy, w, h, skew):
    """A perspective quad around a centre: the far edge shorter, as a panel seen at an angle."""
    dx, dy = w * skew * rng.uniform(0.6, 1.0), h * skew * rng.uniform(0.2, 0.5)
    return np.array([[cx - w / 2, cy - h / 2 + dy], [cx + w / 2, cy - h / 2 - dy * 0.2],
                     [cx + w / 2 - dx * 0.2, cy + h / 2 + dy * 0.2], [cx - w / 2 + dx * 0.1, cy + h / 2 - dy]], dtype=np.float32)  # fmt: skip


def _billboard(size, rng):
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    w, h = size
    _vertical_gradient(draw, (0, 0, w, int(h * 0.7)), _palette(rng, (40, 110, 220)), _palette(rng, (170, 210, 250)))
    draw.rectangle([0, int(h * 0.7), w, h], fill=_palette(rng, (70, 140, 60)))
    for x in (0.3, 0.7):
        draw.rectangle([int(w * x) - w // 40, int(h * 0.55), int(w * x) + w // 40, int(h * 0.85)], fill=(60, 60, 60))
    quad = _quad(rng, w * 0.5, h * 0.36, w * 0.78, h * 0.48, 0.12)
    frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * 0.035
    draw.polygon([tuple(p) for p in frame], fill=_palette(rng, (230, 40, 40), 20))
    return image, quad


def _framed_picture(size, rng):
    w, h = size
    image = Image.new("RGB", size, _palette(rng, (200, 170, 60)))
    draw = ImageDraw.Draw(image)
    for y in range(0, h, max(4, h // 12)):
        draw.line([(0, y), (w, y)], fill=_palette(rng, (180, 150, 40), 10), width=max(1, h // 80))
    quad = _quad(rng, w * 0.5, h * 0.45, w * 0.55, h * 0.55, 0.05)
    for grow, colour in ((0.09, (120, 70, 20)), (0.06, (240, 200, 60))):
        frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * grow
        draw.polygon([tuple(p) for p in frame], fill=_palette(rng, colour, 15))
    draw.rectangle([0, int(h * 0.88), w, h], fill=_palette(rng, (90, 50, 30)))
    return image, quad


def _photo_frame(size, rng):
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _vertical_gradient(draw, (0, 0, w, int(h * 0.55)), _palette(rng, (230, 230, 240)), _palette(rng, (150, 160, 190)))
    draw.rectangle([0, int(h * 0.55), w, h], fill=_palette(rng, (120, 70, 150)))
    quad = _quad(rng, w * 0.48, h * 0.48, w * 0.5, h * 0.6, 0.15)
    for grow, colour in ((0.07, (20, 20, 20)), (0.045, (250, 250, 250))):
        frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * grow
        draw.polygon([tuple(p) for p in frame], fill=colour)
    return image, quad


def _window(size, rng):
    w, h = size
    image = Image.new("RGB", size, _palette(rng, (170, 60, 40)))
    draw = ImageDraw.Draw(image)
    brick_h = max(3, h // 16)
    for row, y in enumerate(range(0, h, brick_h)):
        draw.line([(0, y), (w, y)], fill=(220, 210, 200), width=max(1, h // 120))
        for x in range((row % 2) * brick_h, w, brick_h * 2):
            draw.line([(x, y), (x, y + brick_h)], fill=(220, 210, 200), width=max(1, h // 120))
    quad = _quad(rng, w * 0.5, h * 0.5, w * 0.6, h * 0.62, 0.04)
    frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * 0.05
    draw.polygon([tuple(p) for p in frame], fill=_palette(rng, (245, 245, 235), 10))
    return image, quad


def _easel(size, rng):
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _vertical_gradient(draw, (0, 0, w, h), _palette(rng, (60, 170, 160)), _palette(rng, (20, 80, 90)))
    leg = max(2, w // 40)
    draw.line([(w * 0.5, h * 0.05), (w * 0.2, h)], fill=(140, 90, 40), width=leg)
    draw.line([(w * 0.5, h * 0.05), (w * 0.8, h)], fill=(140, 90, 40), width=leg)
    quad = _quad(rng, w * 0.5, h * 0.42, w * 0.62, h * 0.52, 0.08)
    frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * 0.025
    draw.polygon([tuple(p) for p in frame], fill=_palette(rng, (250, 240, 200), 10))
    draw.rectangle([int(w * 0.15), int(h * 0.72), int(w * 0.85), int(h * 0.76)], fill=(140, 90, 40))
    return image, quad


def _tv_screen(size, rng):
    w, h = size
    image = Image.new("RGB", size, _palette(rng, (90, 110, 200)))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(h * 0.75), w, h], fill=_palette(rng, (220, 180, 120)))
    quad = _quad(rng, w * 0.5, h * 0.42, w * 0.7, h * 0.5, 0.03)
    frame = quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * w * 0.04
    draw.polygon([tuple(p) for p in frame], fill=(15, 15, 15))
    draw.rectangle([int(w * 0.4), int(h * 0.7), int(w * 0.6), int(h * 0.78)], fill=(15, 15, 15))
    return image, quad


BUILTIN_TEMPLATES: dict[str, Callable] = {
    "billboard": _billboard,
    "framed_picture": _framed_picture,
    "photo_frame": _photo_frame,
    "window": _window,
    "easel": _easel,
    "tv_screen": _tv_screen,
}


def list_templates() -> list[str]:
    return list(BUILTIN_TEMPLATES)


def builtin_template(name: str, size: int = 512, seed: int = 0) -> Template:
    """A built-in scene, square, `size` pixels; the same (name, size, seed) always gives the same pixels."""
    if name not in BUILTIN_TEMPLATES:
        raise SettingsError(f"unknown template {name!r}; built-in templates: {', '.join(BUILTIN_TEMPLATES)}")
    rng = np.random.default_rng([seed, sorted(BUILTIN_TEMPLATES).index(name)])
    image, quad = BUILTIN_TEMPLATES[name]((size, size), rng)
    return Template(name=name, image=np.asarray(image, dtype=np.uint8), corners=quad.astype(np.float32), source=f"builtin:{name}", seed=seed)


def validate_corners(corners, size: tuple[int, int], where: str | Path = "corners") -> np.ndarray:
    """4 (x, y) points inside the image forming a convex quad of reasonable area, as float32 [4, 2]."""
    points = np.asarray(corners, dtype=np.float32)
    if points.shape != (4, 2):
        raise SettingsError(f"{where}: need 4 corner points (x, y) as TL,TR,BR,BL, got shape {points.shape}")
    width, height = size
    if (points < 0).any() or (points[:, 0] > width).any() or (points[:, 1] > height).any():
        raise SettingsError(f"{where}: corners {points.tolist()} lie outside the {width}x{height} image")
    edges = np.roll(points, -1, axis=0) - points
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not ((cross > 0).all() or (cross < 0).all()):
        raise SettingsError(f"{where}: corners do not form a convex quadrilateral in TL,TR,BR,BL order")
    area = 0.5 * abs(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1], np.roll(points[:, 0], -1)))
    if area < 0.02 * width * height:
        raise SettingsError(f"{where}: the panel covers {area / (width * height):.1%} of the image; at least 2% is needed")
    return points


def load_template(path: str | Path, corners) -> Template:
    """A user's own scene: an image file and its panel's four corners (x, y pixels, TL,TR,BR,BL)."""
    from ..images import load_image

    loaded = load_image(path)
    points = validate_corners(corners, loaded.size, path)
    return Template(name=Path(path).stem, image=loaded.rgb, corners=points, source=str(path))


def parse_corners(text: str) -> list[list[float]]:
    """'x1,y1 x2,y2 x3,y3 x4,y4' (or 8 comma-separated numbers) as 4 points."""
    numbers = [float(v) for v in text.replace(";", " ").replace(",", " ").split()]
    if len(numbers) != 8:
        raise SettingsError(f"--corners needs 8 numbers (4 x,y points), got {len(numbers)}: {text!r}")
    return [numbers[i : i + 2] for i in range(0, 8, 2)]

