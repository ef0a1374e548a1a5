"""Side environments with the hosts' gradio versions, for the tab tests.

gradio 3.41.2 (AUTOMATIC1111) and 4.40.0 (Forge) cannot share one environment with a current gradio
(nor with numpy 2), so each gets a small venv under a cache folder with the host's pins. torch,
diffusers and the other core dependencies are not installed again: a `.pth` file appends the
project environment's site-packages after the venv's own, so the venv's gradio/numpy/pillow win.

    python tests/ui/gradio_envs.py create      # once (CI does it before pytest)
    python tests/ui/gradio_envs.py list

The folder is $UNLEARNABLE_GRADIO_ENVS, default ~/.cache/unlearnable/gradio-envs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

#: gradio version -> the pins its host ships with (A1111 requirements_versions.txt, Forge's)
HOST_PINS = {
    "3.41.2": ["gradio==3.41.2", "fastapi==0.94.0", "httpx==0.24.1"],
    "4.40.0": ["gradio==4.40.0", "fastapi==0.104.1", "pydantic==2.8.2", "httpx==0.24.1", "numpy==1.26.4",
               "huggingface-hub==0.26.2", "diffusers==0.31.0", "transformers==4.46.1", "peft==0.13.2"],
}
PTH_NAME = "zz_unlearnable_project_env.pth"


def envs_root() -> Path:
    return Path(os.environ.get("UNLEARNABLE_GRADIO_ENVS", Path.home() / ".cache" / "unlearnable" / "gradio-envs")).expanduser()


def env_python(version: str) -> Path:
    return envs_root() / f"gradio-{version}" / "bin" / "python"


def env_ready(version: str) -> bool:
    python = env_python(version)
    if not python.exists():
        return False
    result = subprocess.run([str(python), "-c", "import gradio, torch; print(gradio.__version__)"],
                            capture_output=True, text=True, timeout=300)
    return result.returncode == 0 and result.stdout.strip().endswith(version)


def link_project(version: str) -> None:
    """Point the venv's `.pth` at this interpreter's site-packages. The venvs live in a per-user cache
    that several checkouts share, so each test run re-links them to its own project environment."""
    purelib = subprocess.check_output(
        [str(env_python(version)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    project = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    pth = Path(purelib, PTH_NAME)
    text = "\n".join(sorted(project)) + "\n"
    if not pth.exists() or pth.read_text() != text:
        pth.write_text(text)


def create(version: str) -> Path:
    folder = envs_root() / f"gradio-{version}"
    if not env_python(version).exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(folder)])
    link_project(version)  # the project environment first, so that pip sees its torch and never installs another one
    import torch

    constraints = folder / "project-torch.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")
    gradio, *pins = HOST_PINS[version]
    # gradio first, then the host's pins over it: one combined resolve backtracks for many minutes
    pip = [str(env_python(version)), "-m", "pip", "install", "-q", "-c", str(constraints)]
    subprocess.check_call([*pip, gradio])
    subprocess.check_call([*pip, *pins])
    return folder


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "list"
    versions = argv[1:] or list(HOST_PINS)
    for version in versions:
        if command == "create":
            print(f"gradio {version}: {create(version)}")
        print(f"gradio {version}: {'ready' if env_ready(version) else 'missing'} at {env_python(version)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
