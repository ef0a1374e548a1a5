"""Built-in and user templates, and warping foregrounds into their panels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from shared_core.errors import InputFileError, SettingsError
from shared_core.trace.compose import compose, perspective_coefficients, resolution_class
from shared_core.trace.templates import BUILTIN_TEMPLATES, builtin_template, list_templates, load_template, parse_corners


def small(image: np.ndarray, size: int = 32) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BOX)).astype(np.float32)


def test_templates_are_deterministic_and_distinct():
    names = list_templates()
    assert {"billboard", "framed_picture", "photo_frame", "window", "easel", "tv_screen"} <= set(names) == set(BUILTIN_TEMPLATES)
    shas = {name: builtin_template(name, 128).sha256 for name in names}
    assert len(set(shas.values())) == len(shas)
    for name in names:
        again = builtin_template(name, 128)
        assert again.sha256 == shas[name] and again.source == f"builtin:{name}"
        assert builtin_template(name, 128, seed=1).sha256 != shas[name]
        template = builtin_template(name, 256)
        assert template.image.dtype == np.uint8 and template.image.shape == (256, 256, 3)
        assert template.corners.shape == (4, 2) and template.corners.dtype == np.float32
        assert 0.12 < template.panel_fraction < 0.45  # room for the foreground and for the frame around it
    tl, tr = builtin_template("photo_frame", 512).corners[:2]
    assert abs(tl[1] - tr[1]) > 20  # a panel seen in perspective, not an axis-aligned rectangle
    with pytest.raises(SettingsError, match="unknown template"):
        builtin_template("nope")


def test_templates_stay_distinct_at_32_pixels():
    """What a tiny model can reproduce: the scenes differ from each other at 32 px, frame regions included."""
    names = list_templates()
    thumbs = {name: small(builtin_template(name, 256).image) for name in names}
    for i, a in enumerate(names):
        frame = ~builtin_template(a, 256).panel_mask((32, 32))
        assert thumbs[a][frame].std(axis=0).mean() > 25, a  # bold structure around the panel, not a flat colour
        for b in names[i + 1 :]:
            assert np.abs(thumbs[a] - thumbs[b]).mean() > 30, (a, b)


def diagonals_meet(quad: np.ndarray) -> np.ndarray:
    """Where a panel's diagonals cross: the image of the foreground's centre under any perspective."""
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = quad[0], quad[2], quad[1], quad[3]
    t = np.linalg.solve([[x2 - x1, -(x4 - x3)], [y2 - y1, -(y4 - y3)]], [x3 - x1, y3 - y1])[0]
    return np.array([x1 + t * (x2 - x1), y1 + t * (y2 - y1)])


def test_compose_puts_the_foreground_in_the_panel(photos):
    template = builtin_template("photo_frame", 512)  # a panel seen at an angle, not axis-aligned
    quad = template.corners * 256 / 512
    # quadrant-coded foreground: each quarter must land at the matching corner of the panel
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)  # TL, TR, BR, BL
    coded = np.zeros((300, 300, 3), np.uint8)
    coded[:150, :150], coded[:150, 150:], coded[150:, 150:], coded[150:, :150] = colours
    out = compose(coded, template)
    assert out.shape == (256, 256, 3)  # short side 300 snaps to the 256 class
    centre = diagonals_meet(quad)
    for corner, colour in zip(quad, colours):
        x, y = corner + (centre - corner) * 0.3
        assert np.abs(out[int(round(y)), int(round(x))].astype(int) - colour).max() < 30, (corner, colour)
    # a real photo: the pixels where the diagonals meet are the photo's centre
    foreground = np.asarray(Image.fromarray(photos[1]).resize((300, 300)))
    out = compose(foreground, template)
    cx, cy = np.round(centre).astype(int)
    patch = out[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0)
    assert np.abs(patch - foreground[140:161, 140:161].reshape(-1, 3).mean(0)).max() < 25
    scene = np.asarray(Image.fromarray(template.image).resize((256, 256), Image.LANCZOS)).astype(int)
    panel = template.panel_mask((256, 256))
    near = binary_dilation(panel, iterations=3)
    assert (np.abs(out.astype(int) - scene)[~near] <= 1).all()  # away from the panel: the template, untouched
    assert np.abs(out.astype(int) - scene)[panel].mean() > 20  # inside it: the foreground


def test_compose_sizes_and_resolution_classes(photos):
    template = builtin_template("billboard", 512)
    assert [resolution_class(*s) for s in [(32, 48), (300, 400), (384, 640), (700, 600), (900, 3000), (4000, 3000)]] == [32, 256, 256, 512, 1024, 1024]
    assert resolution_class(640, 640) == 512 and resolution_class(641, 641) == 768
    assert compose(photos[0][:40, :64], template).shape == (40, 40, 3)  # tiny images keep their size
    assert compose(photos[0], template).shape == (512, 512, 3)  # 512x512 astronaut
    assert compose(photos[0], template, short_side=64).shape == (64, 64, 3)
    assert compose(photos[0][:, :, 0], template, 48).shape == (48, 48, 3)  # greyscale accepted
    coefficients = perspective_coefficients(np.array([[0, 0], [10, 0], [10, 10], [0, 10]]), np.array([[0, 0], [20, 0], [20, 20], [0, 20]]))
    assert np.allclose(coefficients, [0.5, 0, 0, 0, 0.5, 0, 0, 0], atol=1e-9)


def test_user_template_and_corner_validation(tmp_path, photos):
    Image.fromarray(photos[0][:200, :300]).save(tmp_path / "scene.png")
    template = load_template(tmp_path / "scene.png", [[50, 40], [250, 50], [240, 160], [60, 150]])
    assert template.size == (300, 200) and template.source == str(tmp_path / "scene.png")
    out = compose(photos[2][:100, :150], template)
    assert out.shape == (100, 150, 3)  # the user's aspect ratio, the foreground's short side
    bad = [
        ([[0, 0], [10, 0], [10, 10]], "4 corner"),
        ([[0, 0], [400, 0], [300, 100], [0, 100]], "outside"),
        ([[-1, 0], [100, 0], [100, 100], [0, 100]], "outside"),
        ([[0, 0], [100, 100], [100, 0], [0, 100]], "convex"),
        ([[50, 40], [60, 150], [240, 160], [250, 50]], "anticlockwise"),
        ([[0, 0], [5, 0], [5, 5], [0, 5]], "2%"),
        ([[0, 0], [100, 0], [200, 0], [0, 100]], "convex"),  # three points in a line: degenerate
        ([[0, 0], [float("nan"), 0], [100, 100], [0, 100]], "finite"),
        ("abc", r"4 \(x, y\)"),
    ]
    for corners, message in bad:
        with pytest.raises(SettingsError, match=message):
            load_template(tmp_path / "scene.png", corners)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError, match="broken.png"):
        load_template(tmp_path / "broken.png", [[50, 40], [250, 50], [240, 160], [60, 150]])
    with pytest.raises(InputFileError, match="no such file"):
        load_template(tmp_path / "missing.png", [[50, 40], [250, 50], [240, 160], [60, 150]])
    assert parse_corners("50,40 250,50 240,160 60,150") == [[50, 40], [250, 50], [240, 160], [60, 150]]
    with pytest.raises(SettingsError, match="8 numbers"):
        parse_corners("1,2 3,4")
