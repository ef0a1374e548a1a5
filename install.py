"""Install what requirements.txt lists, under AUTOMATIC1111/Forge or as a plain script.

A1111/Forge run this file as a subprocess at start-up with their `launch` module importable; ComfyUI-Manager runs
it as a plain script. Either way it is idempotent (satisfied requirements are left alone) and it
never installs, upgrades or pins torch: the host owns torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HOST_OWNED = {"torch", "torchvision", "torchaudio", "xformers"}
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and requirement_name(line) not in HOST_OWNED]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def is_satisfied(requirement: str) -> bool:
    try:
        installed = metadata.version(requirement_name(requirement))
    except metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without packaging, presence is the best check available
        return True
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def pip_install(requirement: str) -> None:
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", requirement])
    else:
        launch.run_pip(f'install "{requirement}"', f"Unlearnable requirement: {requirement}")


def main(requirements: Path = REQUIREMENTS) -> int:
    for requirement in read_requirements(requirements):
        if not is_satisfied(requirement):
            pip_install(requirement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
