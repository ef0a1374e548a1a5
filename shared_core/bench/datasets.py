"""Real images that ship inside scikit-learn and scikit-image, shaped for the efficacy benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SettingsError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: skimage photographs and what a caption would call them
PHOTO_SUBJECTS = {"astronaut.png": "an astronaut", "chelsea.png": "a cat", "coffee.png": "a cup of coffee", "rocket.jpg": "a rocket",
                  "motorcycle_left.png": "a motorcycle", "camera.png": "a cameraman"}  # fmt: skip
#: the photo settings' public data: photographs and textures that are not the owner's (the owner is chelsea.png, the cat)
BASE_SUBJECTS = {"astronaut.png": "an astronaut", "coffee.png": "a cup of coffee", "rocket.jpg": "a rocket", "motorcycle_left.png": "a motorcycle",
                 "camera.png": "a cameraman", "hubble_deep_field.jpg": "a galaxy field", "retina.jpg": "a retina", "ihc.png": "a tissue sample",
                 "brick.png": "a brick wall", "grass.png": "a lawn", "gravel.png": "gravel", "coins.png": "old coins"}  # fmt: skip
OWNER_SUBJECT = {"chelsea.png": "a photo of sks cat"}


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise SettingsError(f"the efficacy benchmark needs {module}: pip install 'unlearnable[bench]'") from None


def digits(size: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as uint8 RGB at `size` px, and their labels."""
    _require("sklearn")
    from sklearn.datasets import load_digits

    data = load_digits()
    images = []
    for grey in data.images:
        image = Image.fromarray(np.round(grey * 255 / 16).astype(np.uint8))
        if size != 8:
            image = image.resize((size, size), Image.BICUBIC)
        images.append(np.asarray(image.convert("RGB")))
    return images, data.target.astype(np.int64)


def photo_crops(n: int, size: int, seed: int, subjects: dict[str, str] = PHOTO_SUBJECTS, min_share: float = 0.5) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """n random square crops (`min_share` to all of the short side) of skimage photos at `size` px, cycling
    through `subjects`, with captions ("a photo of a cat") and the index of the photo each came from."""
    _require("skimage")
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    photos = [np.asarray(Image.open(folder / name).convert("RGB")) for name in subjects]
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for index in range(n):
        label = index % len(photos)
        photo = photos[label]
        h, w = photo.shape[:2]
        side = int(rng.integers(int(min(h, w) * min_share), min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(crop))
        subject = list(subjects.values())[label]
        captions.append(subject if subject.startswith("a photo") else f"a photo of {subject}")
        labels.append(label)
    return images, captions, np.asarray(labels)
