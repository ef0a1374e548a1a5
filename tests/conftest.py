"""Shared fixtures: real photographs shipped inside scikit-image / scikit-learn, tiny real models."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png")


@pytest.fixture(autouse=True)
def private_keys_dir(tmp_path_factory, monkeypatch) -> Path:
    """Trace keys the UI writes go to a temporary folder, never the user's ~/.unlearnable/keys."""
    folder = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("UNLEARNABLE_KEYS_DIR", str(folder))
    return folder


def load_by_path(path: Path, name: str):
    """Load a file the way ComfyUI loads a custom-node pack (and A1111 a script): by path, registered under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def real_photo(name: str = "astronaut.png") -> np.ndarray:
    from shared_core.images import load_image

    return load_image(skimage_data_dir() / name).rgb


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return [real_photo(name) for name in SKIMAGE_PHOTOS]


@pytest.fixture
def photo_folder(tmp_path, photos) -> Path:
    """A folder of real photo crops at assorted sizes and formats, with a subfolder."""
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    sizes = [(96, 80), (70, 130), (64, 64)]
    for index, (photo, (h, w)) in enumerate(zip(photos, sizes)):
        Image.fromarray(photo[:h, :w]).save(folder / f"photo{index}.png")
    Image.fromarray(photos[3][100:172, 100:172]).save(folder / "sub" / "rocket.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def tiny_surrogate():
    """A Stable-Diffusion-shaped surrogate at 64 px (8x8 latents): every code path, in milliseconds."""
    from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate
    from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline

    pipeline = tiny_sd_pipeline(TinyLatentConfig(resolution=64))
    return LatentDiffusersSurrogate(pipeline, "test:tiny64", torch.device("cpu"), demo_only=True)


@pytest.fixture(scope="session")
def photo_batch(photos) -> torch.Tensor:
    """Two real 64x64 photo crops as a [2, 3, 64, 64] batch in [0, 1]."""
    from shared_core.images import rgb_to_tensor

    return torch.stack([rgb_to_tensor(photos[0][40:104, 200:264]), rgb_to_tensor(photos[1][60:124, 120:184])])


def assert_optimised(surrogate, images: torch.Tensor, settings, min_changed: float = 0.5, objective_moves: bool = True):
    """N PGD steps must give another image than 1 step (a random start alone fails this), and the
    protected images' objective must differ from the clean images' the method's way on the whole
    batch (`objective_moves`; the web UI stubs' tiny networks hardly depend on their input).
    Returns the N-step result."""
    from dataclasses import replace

    from shared_core.protect import craft_perturbation, make_objective

    objective = make_objective(settings.method, settings.method_options)
    result = craft_perturbation(surrogate, images, settings, objective=objective)
    start = craft_perturbation(surrogate, images, replace(settings, steps=1))
    to_uint8 = lambda delta: ((images + delta).clamp(0, 1) * 255).round()  # noqa: E731
    changed = (to_uint8(result.delta) != to_uint8(start.delta)).float().mean().item()
    assert changed > min_changed, f"{settings.method}: {settings.steps} steps changed {changed:.0%} of the channels of 1 step"
    clean, protected = sum(result.objective_clean), sum(result.objective_protected)
    assert not objective_moves or ((protected > clean) if objective.maximise else (protected < clean)), (settings.method, clean, protected)
    return result


def png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A real 8x8 PNG whose header claims width x height: a decompression bomb's header, tiny on disk."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path, photo: np.ndarray) -> Path:
    """A real JPEG cut at two thirds: its header reads fine, its pixels do not all decode."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    return path
