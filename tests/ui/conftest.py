"""UI tests: fixtures for the A1111 stubs, and skips that turn into failures in CI.

Set UNLEARNABLE_REQUIRE_UI=1 (CI does) to make a missing gradio or missing host-gradio venv
fail instead of skip. The browser test has its own switch, UNLEARNABLE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import load_by_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def skip_or_fail(reason: str, switch: str = "UNLEARNABLE_REQUIRE_UI") -> None:
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} ({switch}=1)")
    pytest.skip(reason)


def require_gradio():
    try:
        import gradio
    except ImportError:
        skip_or_fail("gradio is not installed (pip install -e '.[ui]')")
    return gradio


@pytest.fixture(scope="session")
def stubs():
    return load_by_path(HERE / "webui_stubs.py", "unlearnable_webui_stubs")


class _ModulesProxy:
    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __setitem__(self, key, value):
        self.monkeypatch.setitem(sys.modules, key, value)


@pytest.fixture
def webui(monkeypatch, stubs):
    """Fake `modules.*` in sys.modules and the repository root on sys.path, as inside A1111."""
    monkeypatch.syspath_prepend(str(ROOT))
    return stubs.install_modules(_ModulesProxy(monkeypatch))


@pytest.fixture
def photo_file(tmp_path) -> Path:
    """A real photograph crop (scikit-image's astronaut), 72x88, as PNG."""
    import skimage
    from PIL import Image

    from shared_core.images import load_image

    rgb = load_image(Path(skimage.__file__).parent / "data" / "astronaut.png").rgb[40:112, 180:268]
    path = tmp_path / "inputs" / "astronaut.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
