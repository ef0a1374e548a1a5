"""Install what requirements.txt lists, under AUTOMATIC1111/Forge or as a plain script.

A1111/Forge run this file as a subprocess at start-up with their `launch` module importable; ComfyUI-Manager runs
it as a plain script. Either way it is idempotent (satisfied requirements are left alone), it
never installs, upgrades or pins torch (the host owns torch), and it never upgrades anything the
host already has: every installed distribution is passed to pip as a `name==version` constraint,
so a missing package is installed in a version that fits the host's, or pip says why none does.
Where a release declares it fits the host's packages but fails to import beside them, `HOST_LIMITS`
adds the upper bound pip cannot know.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HOST_OWNED = {"torch", "torchvision", "torchaudio", "xformers"}
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
#: (host distribution, first version newer releases work with, bounds below it): releases whose metadata admits the
#: host's older package but which fail to import beside it. AUTOMATIC1111 v1.10.1 pins transformers 4.30.2 and
#: accelerate 0.21.0: diffusers 0.32-0.37 fail importing its pipelines (transformers classes added later), peft 0.14
#: needs transformers.Cache (4.36) and peft 0.15+ a newer accelerate; diffusers 0.31.0 with peft 0.13.2 import and
#: protect there (benchmarks/hosts/a1111-cpu.json).
HOST_LIMITS = (("transformers", "4.36", ("diffusers<0.32", "peft<0.14")),)


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


def installed_constraints() -> list[str]:
    """`name==version` for every distribution already installed: what pip must leave as it is.

    A name can be installed twice on the path (a venv plus a user site or a `.pth`-linked folder);
    the first one is the one `import` and pip see, so it is the one pinned.
    """
    pins = {}
    for dist in metadata.distributions():  # in sys.path order
        name = (dist.metadata["Name"] or "").strip()
        if name and dist.version and _valid_version(dist.version):
            pins.setdefault(requirement_name(name), f"{name}=={dist.version}")
    return [pins[name] for name in sorted(pins)]


def _valid_version(text: str) -> bool:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return True
    try:
        Version(text)
    except InvalidVersion:  # a legacy version pip would refuse as a constraint
        return False
    return True


def host_limits() -> list[str]:
    """The `HOST_LIMITS` bounds this environment needs: those whose host package is installed older than it works with."""
    bounds = []
    for host, works_from, limits in HOST_LIMITS:
        try:
            installed = metadata.version(host)
        except metadata.PackageNotFoundError:
            continue
        if _release(installed) < _release(works_from):
            bounds += [limit for limit in limits if limit not in bounds]
    return bounds


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version ("4.30.2" -> (4, 30, 2), "4.36.0.dev0" -> (4, 36, 0))."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+", 1)[0])[:3])


def pip_install(requirement: str, constraints: Path) -> None:
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", requirement, "-c", str(constraints)])
    else:
        launch.run_pip(f'install "{requirement}" -c "{constraints}"', f"Unlearnable requirement: {requirement}")


def main(requirements: Path = REQUIREMENTS) -> int:
    missing = [requirement for requirement in read_requirements(requirements) if not is_satisfied(requirement)]
    if not missing:
        return 0
    with tempfile.TemporaryDirectory(prefix="unlearnable-install-") as folder:
        constraints = Path(folder, "host-constraints.txt")
        constraints.write_text("\n".join(installed_constraints() + host_limits()) + "\n")
        for requirement in missing:
            pip_install(requirement, constraints)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
