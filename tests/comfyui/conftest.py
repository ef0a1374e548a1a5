"""Fixtures for the ComfyUI face: stand-in ComfyUI modules, the pack loaded as ComfyUI loads it, tiny models.

The stand-ins in stubs/ go on sys.path only while a test module of this folder runs; everything
imported from them (and the pack copies loaded from the repository root) is removed afterwards,
so the rest of the suite never sees a `comfy` module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_by_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STUBS = HERE / "stubs"


comfy_like = load_by_path(HERE / "comfy_like.py", "unlearnable_tests_comfy_like")
runtime = load_by_path(HERE / "runtime.py", "unlearnable_tests_comfy_runtime")


def load_pack(name: str):
    """The repository root imported as ComfyUI imports a custom-node folder: by path, as a package."""
    return load_by_path(ROOT / "__init__.py", name)


def _drop_modules(prefixes: tuple[str, ...]) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def comfy_host(tmp_path_factory):
    """The stand-in ComfyUI modules, importable; output/input/loras folders in a temporary directory."""
    stub_names = ("comfy", "comfy_api", "folder_paths")
    assert not any(name in sys.modules for name in stub_names), "a real or stale comfy module is already imported"
    sys.path.insert(0, str(STUBS))
    try:
        import comfy.model_management
        import comfy.utils
        import folder_paths

        base = tmp_path_factory.mktemp("comfy")
        folder_paths.output_directory = str(base / "output")
        folder_paths.input_directory = str(base / "input")
        folder_paths.user_directory = str(base / "user")
        (base / "loras").mkdir()
        folder_paths.add_model_folder_path("loras", str(base / "loras"))
        yield {"base": base, "mm": comfy.model_management, "utils": comfy.utils, "folder_paths": folder_paths}
    finally:
        sys.path.remove(str(STUBS))
        _drop_modules(stub_names + ("unlearnable_comfy_pack", "unlearnable_comfy_pack_v1"))


@pytest.fixture(scope="module")
def pack(comfy_host):
    """The pack with comfy_api.latest available: V3 node classes."""
    return load_pack("unlearnable_comfy_pack")


@pytest.fixture(scope="module")
def pack_v1(comfy_host):
    """The pack on a host without comfy_api (older ComfyUI): classic V1 classes."""
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "comfy_api"}
    for name in saved:
        del sys.modules[name]
    sys.modules["comfy_api"] = None  # makes `import comfy_api` fail, as on a host without it
    try:
        return load_pack("unlearnable_comfy_pack_v1")
    finally:
        del sys.modules["comfy_api"]
        sys.modules.update(saved)


@pytest.fixture
def progress_log(comfy_host):
    events = []
    comfy_host["utils"].set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    yield events
    comfy_host["utils"].set_progress_bar_global_hook(None)


def tiny_pipeline(kind: str = "sd", inference: bool = False, resolution: int = 64):
    from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline, tiny_sdxl_pipeline

    build = tiny_sdxl_pipeline if kind == "sdxl" else tiny_sd_pipeline
    if inference:  # as ComfyUI's loaders do: every weight is an inference tensor
        with torch.inference_mode():
            return build(TinyLatentConfig(resolution=resolution))
    return build(TinyLatentConfig(resolution=resolution))


@pytest.fixture(scope="module")
def sd_host_objects():
    """(MODEL, CLIP, VAE, pipeline) with weights created under torch.inference_mode(), like ComfyUI's loaders."""
    pipeline = tiny_pipeline("sd", inference=True)
    model, clip, vae = comfy_like.from_pipeline(pipeline)
    return model, clip, vae, pipeline

