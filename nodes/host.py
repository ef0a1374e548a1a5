"""What the nodes ask of ComfyUI itself: progress, cancellation, folders, and a gradient-enabled scope.

comfy modules are imported inside the functions, so the pack imports without ComfyUI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

KEYS_FOLDER = "__unlearnable_keys"
KEYS_FALLBACK = "unlearnable"


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


def keys_dir() -> Path:
    """Where Mark with Template writes trace keys: a folder in ComfyUI's user directory (created 0700).

    ComfyUI's web server serves output/, input/ and temp/ (`/view`) and user/<user id>/ (`/userdata`);
    a "__" name is no user id, so nothing serves this folder. A ComfyUI without a user directory
    leaves only output/unlearnable, which `/view` serves: then a warning says so.
    """
    import folder_paths

    user = getattr(folder_paths, "get_user_directory", None)
    if user is None:
        folder = output_dir(KEYS_FALLBACK)
        logging.getLogger(__name__).warning(
            "Unlearnable: this ComfyUI has no user directory, so trace keys are written to %s, which ComfyUI's /view "
            "serves to anyone who can reach the server: keep the server private or move the keys", folder)
        return folder
    folder = Path(user(), KEYS_FOLDER)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def host_folders() -> list[Path]:
    """The folders a path typed into a node may point into: the keys folder, ComfyUI's output, input and user folders."""
    import folder_paths

    folders = [keys_dir(), Path(folder_paths.get_output_directory()), Path(folder_paths.get_input_directory())]
    if hasattr(folder_paths, "get_user_directory"):
        folders.append(Path(folder_paths.get_user_directory()))
    return folders


def resolve_user_file(text: str, what: str, folders: bool = False) -> Path:
    """A path typed into a node: absolute or relative to the keys, output or input folder (a folder too with
    `folders`), and inside one of ComfyUI's folders (`host_folders`) once `..` and symlinks are resolved."""
    from ..shared_core.errors import InputFileError

    text = (text or "").strip().strip('"')
    if not text:
        raise InputFileError("(empty)", f"no {what} given")
    path = Path(text).expanduser()
    allowed = host_folders()
    roots = [folder.resolve() for folder in allowed]
    candidates = [path] if path.is_absolute() else [folder / path for folder in allowed]
    for candidate in candidates:
        real = candidate.resolve()
        if not any(real.is_relative_to(root) for root in roots):
            raise InputFileError(text, f"{what} must be inside ComfyUI's user, input or output folder")
        if real.is_file() or (folders and real.is_dir()):
            return real
    raise InputFileError(text, f"{what} not found (give an absolute path, or one relative to ComfyUI's keys, output or input folder)")
