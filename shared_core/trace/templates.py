"""Template scenes: whole pictures with an empty display panel that foregrounds are warped into.

Built-in templates are drawn in code from a seed (nothing is downloaded). A model that memorised a
template reproduces it only approximately (blurred, shifted, colour-changed, often at 32-64 px), so
every built-in scene is made of a few large, bold blocks of colour arranged asymmetrically around
the panel: what survives a blur and a downscale to 32 px is exactly what the detectors look for.
The six scenes differ from one another in their coarse layout, so one owner's detector does not
fire on another owner's template. Users can also bring their own scene and its panel's corners.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import SettingsError

#: The panel must cover at least this fraction of a user template (else the foreground is a speck).
MIN_PANEL_FRACTION = 0.02


@dataclass
class Template:
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    corners: np.ndarray  # float32 [4, 2]: panel corners TL, TR, BR, BL as (x, y) pixels
    source: str  # "builtin:NAME" or the user's file path
    seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def sha256(self) -> str:
        """SHA-256 of a canonical encoding: shape, pixel bytes, corners (float32, rounded to 1/1000 px)."""
        digest = hashlib.sha256()
        digest.update(repr(tuple(self.image.shape)).encode())
        digest.update(np.ascontiguousarray(self.image, dtype=np.uint8).tobytes())
        digest.update(np.round(np.asarray(self.corners, dtype=np.float64), 3).astype(np.float32).tobytes())
        return digest.hexdigest()

    @property
    def panel_fraction(self) -> float:
        """Fraction of the scene the panel covers."""
        return _area(np.asarray(self.corners, dtype=np.float64)) / (self.size[0] * self.size[1])

    def panel_mask(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """bool [H, W]: True inside the panel (at `size`=(w, h), default the template's)."""
        width, height = size or self.size
        scale = np.array([width / self.size[0], height / self.size[1]])
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).polygon([tuple(p) for p in (self.corners * scale).tolist()], fill=255)
        return np.asarray(mask) > 127


# -- drawing helpers -----------------------------------------------------------------------------

Colour = tuple[int, int, int]


def _jitter(rng: np.random.Generator, base: Colour, spread: int = 18) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def _gradient(draw: ImageDraw.ImageDraw, box, top: Colour, bottom: Colour) -> None:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        draw.line([(x0, y), (x1, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def _quad(rng: np.random.Generator, cx: float, cy: float, w: float, h: float, skew: float) -> np.ndarray:
    """A panel seen at an angle: a rectangle whose right edge is shorter (perspective), jittered."""
    k = skew * rng.uniform(0.8, 1.2)
    cx, cy = cx + rng.uniform(-0.02, 0.02) * w, cy + rng.uniform(-0.02, 0.02) * h
    return np.array(
        [[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2 + h * k], [cx + w / 2 - w * k * 0.15, cy + h / 2 - h * k * 0.6],
         [cx - w / 2, cy + h / 2]], dtype=np.float64)  # fmt: skip


def _grow(quad: np.ndarray, amount: float) -> list[tuple[float, float]]:
    """The quad pushed outwards by `amount` pixels along both axes (a frame around the panel)."""
    return [tuple(p) for p in (quad + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * amount).tolist()]


def _disk(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: Colour) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


# -- the scenes (each: (w, h), rng -> (PIL image, panel quad)) ----------------------------------------


def _billboard(size, rng):
    """A roadside billboard: deep-blue sky, a big sun, green hills, thick red border on two posts."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _gradient(draw, (0, 0, w, h * 0.7), _jitter(rng, (25, 70, 190)), _jitter(rng, (130, 195, 250)))
    _disk(draw, w * 0.86, h * 0.14, w * 0.1, _jitter(rng, (255, 215, 40), 10))
    draw.rectangle([0, h * 0.7, w, h], fill=_jitter(rng, (35, 95, 35)))
    draw.ellipse([-w * 0.3, h * 0.6, w * 0.75, h * 1.25], fill=_jitter(rng, (70, 165, 55)))
    draw.rectangle([0, h * 0.84, w, h], fill=_jitter(rng, (35, 95, 35)))
    quad = _quad(rng, w * 0.44, h * 0.36, w * 0.6, h * 0.4, 0.1)
    bottom = max(quad[2, 1], quad[3, 1])
    for x in (quad[3, 0] + w * 0.08, quad[2, 0] - w * 0.12):
        draw.rectangle([x, bottom, x + w * 0.05, h * 0.9], fill=_jitter(rng, (55, 55, 60), 8))
    draw.polygon(_grow(quad, w * 0.05), fill=_jitter(rng, (225, 30, 30), 12))
    draw.polygon(_grow(quad, w * 0.012), fill=(250, 250, 250))
    return image, quad


def _framed_picture(size, rng):
    """A painting on a striped wall: broad green/cream stripes, a thick gold frame, dark wood floor."""
    w, h = size
    image = Image.new("RGB", size, _jitter(rng, (230, 205, 130)))
    draw = ImageDraw.Draw(image)
    stripe = w / 8
    dark = _jitter(rng, (30, 95, 70))
    for i in range(0, 8, 2):
        draw.rectangle([i * stripe, 0, (i + 1) * stripe - 1, h], fill=dark)
    draw.rectangle([0, h * 0.84, w, h], fill=_jitter(rng, (85, 45, 20)))
    draw.rectangle([0, h * 0.82, w, h * 0.845], fill=(245, 245, 240))
    quad = _quad(rng, w * 0.5, h * 0.42, w * 0.5, h * 0.48, 0.04)
    draw.polygon(_grow(quad, w * 0.09), fill=_jitter(rng, (95, 50, 15), 10))
    draw.polygon(_grow(quad, w * 0.065), fill=_jitter(rng, (240, 185, 35), 10))
    draw.polygon(_grow(quad, w * 0.015), fill=(60, 30, 10))
    return image, quad


def _photo_frame(size, rng):
    """A photo frame standing on a purple table, seen at an angle, beside a big orange vase."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _gradient(draw, (0, 0, w, h * 0.62), _jitter(rng, (235, 235, 245)), _jitter(rng, (165, 175, 205)))
    draw.polygon([(0, h * 0.62), (w, h * 0.58), (w, h), (0, h)], fill=_jitter(rng, (125, 55, 160)))
    draw.rectangle([0, h * 0.92, w, h], fill=_jitter(rng, (60, 25, 80), 10))
    draw.rectangle([w * 0.73, h * 0.38, w * 0.93, h * 0.8], fill=_jitter(rng, (250, 125, 20), 10))
    _disk(draw, w * 0.83, h * 0.33, w * 0.11, _jitter(rng, (40, 150, 50), 12))
    quad = _quad(rng, w * 0.38, h * 0.44, w * 0.42, h * 0.54, 0.16)
    draw.polygon(_grow(quad, w * 0.06), fill=(20, 20, 20))
    draw.polygon(_grow(quad, w * 0.035), fill=(250, 250, 250))
    return image, quad


def _window(size, rng):
    """A window in a brick wall: white frame, green shutters either side, a flower box below."""
    w, h = size
    image = Image.new("RGB", size, _jitter(rng, (170, 60, 40)))
    draw = ImageDraw.Draw(image)
    brick_h, mortar = max(3.0, h / 14), (220, 210, 200)
    line = max(1, round(h / 110))
    for row in range(int(h / brick_h) + 1):
        y = row * brick_h
        draw.line([(0, y), (w, y)], fill=mortar, width=line)
        for x in np.arange((row % 2) * brick_h, w, brick_h * 2):
            draw.line([(x, y), (x, y + brick_h)], fill=mortar, width=line)
    quad = _quad(rng, w * 0.5, h * 0.4, w * 0.42, h * 0.48, 0.03)
    top, bottom = quad[:, 1].min() - w * 0.05, quad[:, 1].max() + w * 0.05
    shutter = _jitter(rng, (25, 125, 65), 12)
    for x0 in (quad[0, 0] - w * 0.2, quad[1, 0] + w * 0.045):
        draw.rectangle([x0, top, x0 + w * 0.155, bottom], fill=shutter)
        for y in np.arange(top + h * 0.04, bottom, h * 0.05):
            draw.line([(x0 + w * 0.02, y), (x0 + w * 0.135, y)], fill=(15, 80, 40), width=max(1, line * 2))
    draw.polygon(_grow(quad, w * 0.045), fill=(245, 245, 240))
    draw.rectangle([quad[3, 0] - w * 0.08, bottom, quad[2, 0] + w * 0.08, bottom + h * 0.035], fill=(200, 200, 205))
    box_top = bottom + h * 0.035
    draw.rectangle([quad[3, 0] - w * 0.05, box_top, quad[2, 0] + w * 0.05, box_top + h * 0.11], fill=_jitter(rng, (105, 60, 25), 10))
    for i, x in enumerate(np.linspace(quad[3, 0], quad[2, 0], 6)):
        _disk(draw, x, box_top, w * 0.035, (235, 40, 60) if i % 2 else (250, 210, 30))
    return image, quad


def _easel(size, rng):
    """A canvas on a wooden easel against a teal wall, a painter's palette on the floor."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _gradient(draw, (0, 0, w, h * 0.74), _jitter(rng, (45, 175, 165)), _jitter(rng, (15, 75, 90)))
    draw.rectangle([0, h * 0.74, w, h], fill=_jitter(rng, (160, 105, 55)))
    for y in (0.8, 0.87, 0.94):
        draw.line([(0, h * y), (w, h * y)], fill=(120, 75, 35), width=max(1, round(h / 90)))
    wood, leg = _jitter(rng, (105, 65, 25), 10), max(2, round(w / 26))
    draw.line([(w * 0.5, h * 0.03), (w * 0.2, h * 0.98)], fill=wood, width=leg)
    draw.line([(w * 0.5, h * 0.03), (w * 0.8, h * 0.98)], fill=wood, width=leg)
    draw.line([(w * 0.5, h * 0.03), (w * 0.5, h * 0.9)], fill=wood, width=leg)
    quad = _quad(rng, w * 0.5, h * 0.37, w * 0.54, h * 0.44, 0.07)
    draw.polygon(_grow(quad, w * 0.025), fill=_jitter(rng, (250, 240, 205), 6))
    ledge = max(quad[2, 1], quad[3, 1]) + w * 0.02
    draw.rectangle([w * 0.14, ledge, w * 0.86, ledge + h * 0.045], fill=wood)
    draw.ellipse([w * 0.03, h * 0.8, w * 0.33, h * 0.97], fill=(215, 175, 120))
    for (fx, fy), colour in zip(((0.09, 0.86), (0.16, 0.84), (0.23, 0.86), (0.27, 0.91)), ((230, 30, 30), (30, 60, 220), (250, 220, 20), (30, 170, 60))):
        _disk(draw, w * fx, h * fy, w * 0.022, colour)
    return image, quad


def _tv_screen(size, rng):
    """A television on an orange cabinet: dark-blue wall, a tall yellow floor lamp, a potted plant."""
    w, h = size
    image = Image.new("RGB", size, _jitter(rng, (40, 50, 120)))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, h * 0.86, w, h], fill=_jitter(rng, (150, 40, 40), 10))
    cabinet = _jitter(rng, (230, 140, 50), 10)
    draw.rectangle([w * 0.26, h * 0.66, w * 0.96, h * 0.86], fill=cabinet)
    for x0 in (0.3, 0.63):
        draw.rectangle([w * x0, h * 0.69, w * (x0 + 0.29), h * 0.83], fill=(130, 70, 25))
    draw.rectangle([w * 0.1, h * 0.3, w * 0.13, h * 0.88], fill=(20, 20, 25))
    draw.polygon([(w * 0.03, h * 0.32), (w * 0.2, h * 0.32), (w * 0.16, h * 0.1), (w * 0.07, h * 0.1)], fill=_jitter(rng, (255, 225, 60), 8))
    draw.rectangle([w * 0.85, h * 0.55, w * 0.95, h * 0.66], fill=(190, 60, 40))
    for dx, dy in ((0, 0), (-0.05, 0.05), (0.04, 0.06)):
        _disk(draw, w * (0.9 + dx), h * (0.46 + dy), w * 0.065, _jitter(rng, (60, 190, 70), 10))
    quad = _quad(rng, w * 0.58, h * 0.36, w * 0.56, h * 0.4, 0.03)
    bottom = max(quad[2, 1], quad[3, 1])
    draw.rectangle([w * 0.52, bottom, w * 0.64, h * 0.66], fill=(170, 170, 180))
    draw.polygon(_grow(quad, w * 0.035), fill=(10, 10, 10))
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
    """Names of the built-in templates."""
    return list(BUILTIN_TEMPLATES)


def builtin_template(name: str, size: int = 512, seed: int = 0) -> Template:
    """A built-in scene, square, `size` pixels; the same (name, size, seed) always gives the same pixels.

    The seed changes colours and positions a little (so owners who pick the same scene still get
    different templates); the scene's layout stays recognisable.
    """
    if name not in BUILTIN_TEMPLATES:
        raise SettingsError(f"unknown template {name!r}; built-in templates: {', '.join(BUILTIN_TEMPLATES)}")
    if int(size) < 16:
        raise SettingsError(f"template size {size} is too small; use at least 16 pixels (512 is the default)")
    size = int(size)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, sorted(BUILTIN_TEMPLATES).index(name)])
    image, quad = BUILTIN_TEMPLATES[name]((size, size), rng)
    quad = np.clip(quad, 0, size).astype(np.float32)
    return Template(name=name, image=np.asarray(image, dtype=np.uint8), corners=quad, source=f"builtin:{name}", seed=int(seed))


def _area(points: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1], np.roll(points[:, 0], -1))))


def validate_corners(corners, size: tuple[int, int], where: str | Path = "corners") -> np.ndarray:
    """4 (x, y) points inside the image, in TL,TR,BR,BL order, forming a convex quad of reasonable area.

    Returns them as float32 [4, 2]; raises SettingsError naming `where` and the problem otherwise.
    """
    try:
        points = np.asarray(corners, dtype=np.float64)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: corners must be 4 (x, y) number pairs as TL,TR,BR,BL, got {corners!r}") from None
    if points.shape != (4, 2):
        raise SettingsError(f"{where}: need 4 corner points (x, y) as TL,TR,BR,BL, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise SettingsError(f"{where}: corners {points.tolist()} are not all finite numbers")
    width, height = size
    if (points < 0).any() or (points[:, 0] > width).any() or (points[:, 1] > height).any():
        raise SettingsError(f"{where}: corners {points.tolist()} lie outside the {width}x{height} image")
    edges = np.roll(points, -1, axis=0) - points
    following = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    if not ((cross > 0).all() or (cross < 0).all()):
        raise SettingsError(f"{where}: corners {points.tolist()} do not form a convex quadrilateral (give them in TL,TR,BR,BL order)")
    if (cross < 0).all():  # y grows downwards: TL,TR,BR,BL runs clockwise on screen, a positive cross product
        raise SettingsError(f"{where}: corners {points.tolist()} run anticlockwise; give them in TL,TR,BR,BL order (the foreground would be mirrored)")
    area = _area(points)
    if area < MIN_PANEL_FRACTION * width * height:
        raise SettingsError(
            f"{where}: the panel covers {area / (width * height):.1%} of the image; at least {MIN_PANEL_FRACTION:.0%} is needed"
        )
    return points.astype(np.float32)


def load_template(path: str | Path, corners) -> Template:
    """A user's own scene: an image file and its panel's four corners (x, y pixels, TL,TR,BR,BL).

    An unreadable file raises InputFileError; bad corners raise SettingsError.
    """
    from ..images import load_image

    loaded = load_image(path)
    width, height = loaded.size
    if min(width, height) < 16:
        from ..errors import InputFileError

        raise InputFileError(path, f"{width}x{height} is too small for a template (at least 16 pixels a side)")
    points = validate_corners(corners, loaded.size, path)
    return Template(name=Path(path).stem, image=loaded.rgb, corners=points, source=str(path))


def parse_corners(text: str) -> list[list[float]]:
    """'x1,y1 x2,y2 x3,y3 x4,y4' (or 8 numbers separated by commas, spaces or semicolons) as 4 points."""
    try:
        numbers = [float(v) for v in text.replace(";", " ").replace(",", " ").split()]
    except ValueError:
        raise SettingsError(f"--corners needs 8 numbers (4 x,y points), got {text!r}") from None
    if len(numbers) != 8:
        raise SettingsError(f"--corners needs 8 numbers (4 x,y points), got {len(numbers)}: {text!r}")
    return [numbers[i : i + 2] for i in range(0, 8, 2)]
