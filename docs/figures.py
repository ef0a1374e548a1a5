"""Regenerate the README's pictures: `python docs/figures.py` (needs scikit-image for the photo)."""

from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from shared_core.images import load_image
from shared_core.trace.compose import compose
from shared_core.trace.templates import builtin_template, list_templates

OUT = Path(__file__).parent / "images"


def templates_figure() -> None:
    cat = load_image(Path(skimage.__file__).parent / "data" / "chelsea.png").rgb
    columns = [np.concatenate([builtin_template(name, 192).image, compose(cat, builtin_template(name, 192), 192)]) for name in list_templates()]
    Image.fromarray(np.concatenate(columns, 1)).save(OUT / "templates.png", optimize=True)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    templates_figure()
