"""The repository is at once a ComfyUI pack, an A1111 extension and a pip project."""

from __future__ import annotations

import sys
import types
from pathlib import Path

from tests.conftest import load_by_path

ROOT = Path(__file__).resolve().parents[1]


def test_root_init_imports_like_comfyui_does_without_touching_sys_path():
    before = list(sys.path)
    module = load_by_path(ROOT / "__init__.py", "unlearnable_pack")
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict) and isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert sys.path == before
    assert not str(getattr(sys.modules.get("nodes"), "__file__", "")).startswith(str(ROOT))


def test_root_init_as_a_plain_module_exports_empty_mappings():
    namespace = {"__name__": "plain", "__package__": None}
    exec(compile((ROOT / "__init__.py").read_text(), "__init__.py", "exec"), namespace)
    assert namespace["NODE_CLASS_MAPPINGS"] == {}


def test_install_never_touches_torch_and_uses_launch_under_a1111(tmp_path, monkeypatch):
    install = load_by_path(ROOT / "install.py", "unlearnable_install")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch>=2.0\nnumpy>=1.0  # comment\nsurely-not-installed-package==1.0\ntorchvision\n")
    assert install.read_requirements(requirements) == ["numpy>=1.0", "surely-not-installed-package==1.0"]
    assert install.is_satisfied("numpy>=1.0") and not install.is_satisfied("surely-not-installed-package==1.0")
    assert not install.is_satisfied("numpy<1.0")
    calls, constraints = [], []

    def run_pip(args, desc):
        calls.append(args)
        constraints.append(Path(args.split(" -c ", 1)[1].strip('"')).read_text().splitlines())

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    assert install.main(requirements) == 0
    assert len(calls) == 1 and calls[0].startswith('install "surely-not-installed-package==1.0" -c ')
    # everything the host has is pinned where it is: installing a missing package never upgrades the host's
    from importlib import metadata

    assert f"numpy=={metadata.version('numpy')}" in constraints[0]
    assert f"torch=={metadata.version('torch')}" in constraints[0]


def test_install_floors_are_pyprojects():
    """requirements.txt (ComfyUI-Manager, install.py) and pyproject.toml ask for the same versions."""
    import tomllib

    install = load_by_path(ROOT / "install.py", "unlearnable_install")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(install.read_requirements()) == sorted(r for r in project if install.requirement_name(r) not in install.HOST_OWNED)


def test_requirements_leave_torch_to_the_host():
    import tomllib

    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert not any(line.strip().startswith(("torch", "torchvision")) for line in lines)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch>=2.1" in project["project"]["dependencies"]  # a floor, never a pin
    assert project["project"]["scripts"]["unlearnable"] == "shared_core.cli:main"
    assert "tool" in project and "comfy" in project["tool"]


def test_ci_fails_instead_of_skipping_the_ui_tests():
    script = (ROOT / ".ci" / "run").read_text()
    assert "export UNLEARNABLE_REQUIRE_UI=1 UNLEARNABLE_REQUIRE_BROWSER=1" in script
    assert "missing+=(chromium)" in script and 'apt-get install -y -q "${missing[@]}"' in script
    create = next(line for line in script.splitlines() if "gradio_envs.py create" in line)
    assert "||" not in create, "a failed host gradio environment must fail the build"


def test_install_pins_the_copy_import_sees_when_a_package_is_installed_twice(tmp_path, monkeypatch):
    """A later folder on sys.path (a user site, a .pth-linked environment) with a newer numpy must not
    become the constraint: pip would then upgrade the host's numpy to it."""
    install = load_by_path(ROOT / "install.py", "unlearnable_install")
    from importlib import metadata

    shadowed = tmp_path / "numpy-99.0.dist-info"
    shadowed.mkdir()
    (shadowed / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 99.0\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    assert [d.version for d in metadata.distributions(name="numpy")][-1] == "99.0"
    pins = [line for line in install.installed_constraints() if line.lower().startswith("numpy==")]
    assert pins == [f"numpy=={metadata.version('numpy')}"]


def test_the_torchvision_fallback_notice_is_dropped_and_other_transformers_messages_kept():
    import logging

    import shared_core  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers.utils.import_utils")

    def passes(message: str) -> bool:
        return bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None)))

    assert not passes("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
    assert passes("Could not import module 'CLIPTextModel'")


def test_install_bounds_diffusers_and_peft_on_automatic1111s_transformers(tmp_path, monkeypatch):
    """A1111 v1.10.1 pins transformers 4.30.2: the newest diffusers and peft declare they fit it but fail to import
    beside it, so install.py must ask pip for the releases that do (diffusers<0.32, peft<0.14), and only there."""
    install = load_by_path(ROOT / "install.py", "unlearnable_install")
    from importlib import metadata

    real_version = metadata.version
    host = {"transformers": "4.30.2"}
    monkeypatch.setattr(install.metadata, "version", lambda name: host.get(name) or real_version(name))
    assert install.host_limits() == ["diffusers<0.32", "peft<0.14"]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-installed-package==1.0\n")
    constraints = []
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=lambda args, desc: constraints.extend(
        Path(args.split(" -c ", 1)[1].strip('"')).read_text().splitlines())))
    install.main(requirements)
    assert {"diffusers<0.32", "peft<0.14"} <= set(constraints)
    for newer in ("4.36.0", "4.46.3", "5.25.0"):  # Forge's and current transformers: no bound
        host["transformers"] = newer
        assert install.host_limits() == []
