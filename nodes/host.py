"""What the nodes ask of ComfyUI itself: progress, cancellation, folders, and a gradient-enabled scope.

comfy modules are imported inside the functions, so the pack imports without ComfyUI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def step_progress(total: int) -> Callable[[int], None]:
    """A callback advancing ComfyUI's progress bar by n steps; raises when the user cancels."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def advance(n: int = 1) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update(n)

    return advance


def count_progress(total: int) -> Callable[[int, int], None]:
    """The core's (done, total) callbacks on ComfyUI's progress bar, with the cancel check."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def report(done: int, total_now: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total_now)

    return report


@contextlib.contextmanager
def gradients() -> Iterator[None]:
    """Leave the inference mode ComfyUI runs every prompt under, and enable autograd."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def output_dir(*parts: str) -> Path:
    """A folder under ComfyUI's output directory (created)."""
    import folder_paths

    folder = Path(folder_paths.get_output_directory(), *parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lora_names() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    return list(folder_paths.get_filename_list("loras"))


def lora_path(name: str) -> Path:
    import folder_paths

    from ..shared_core.errors import InputFileError

    path = folder_paths.get_full_path("loras", name)
    if not path:
        raise InputFileError(name, "not found in ComfyUI's loras folders (refresh the node after adding files)")
    return Path(path)


def resolve_user_file(text: str, what: str) -> Path:
    """A file path typed into a node: absolute, or relative to ComfyUI's output then input folder."""
    return resolve_user_path(text, what)


def resolve_user_path(text: str, what: str, folder: bool = False) -> Path:
    """A file (or, with `folder`, a folder) path typed into a node: absolute, or relative to ComfyUI's output then input folder."""
    from ..shared_core.errors import InputFileError

    text = (text or "").strip().strip('"')
    if not text:
        raise InputFileError("(empty)", f"no {what} given")
    path = Path(text).expanduser()
    candidates = [path]
    if not path.is_absolute():
        try:
            import folder_paths

            candidates += [Path(folder_paths.get_output_directory(), text), Path(folder_paths.get_input_directory(), text)]
        except ImportError:
            pass
    for candidate in candidates:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    raise InputFileError(text, f"{what} not found (give an absolute path, or one relative to ComfyUI's output or input folder)")
