"""The AUTOMATIC1111/Forge tab: registration, settings, the loaded checkpoint, the queue lock.

In-process with the current gradio, and in side venvs with A1111's gradio 3.41.2 and Forge's
4.40.0 (created by `python tests/ui/gradio_envs.py create`; skipped when absent, failed when
UNLEARNABLE_REQUIRE_UI=1).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import HERE, ROOT, load_by_path, require_gradio, skip_or_fail

gradio_envs = load_by_path(HERE / "gradio_envs.py", "unlearnable_gradio_envs")


def test_scripts_file_imports_only_the_extension_package():
    import ast

    tree = ast.parse((ROOT / "scripts" / "unlearnable.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"a1111_extension"}
    for path in (ROOT / "a1111_extension").rglob("*.py"):  # host modules only inside functions (import works outside A1111)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("modules", "backend", "launch", "gradio") for n in names), (path, names)


def test_tab_settings_and_protect_with_current_gradio(webui, stubs, tmp_path):
    require_gradio()
    check = load_by_path(HERE / "host_gradio_check.py", "unlearnable_host_gradio_check")
    webui.shared.sd_model = stubs.TinyLDM()
    result = check.check(webui, tmp_path)
    assert result["linf"] <= 6 and result["model"].startswith("Loaded checkpoint")


def test_tab_buttons_are_api_endpoints_only_when_the_webui_has_api(webui):
    require_gradio()
    from a1111_extension.host import WebUIHooks
    from shared_core.ui.app import build_ui

    def named() -> set[str]:
        return set(build_ui(WebUIHooks()).get_api_info()["named_endpoints"])

    assert "/protect" in named()
    webui.shared.cmd_opts.api = False
    assert not {"/protect", "/mark", "/verify", "/check_protection", "/inspect_lora"} & named()


def test_cancel_uses_the_hosts_interrupt(webui, stubs, tmp_path, photo_file):
    from a1111_extension.host import WebUIHooks
    from shared_core.ui import handlers

    webui.shared.sd_model = stubs.TinyLDM()
    webui.shared.opts.data["unlearnable_outdir"] = str(tmp_path / "out")
    hooks = WebUIHooks()
    assert hooks.host == "a1111" and hooks.resolve_outputs_dir() == tmp_path / "out"
    result = handlers.run_protect(hooks, files=[str(photo_file)], model=hooks.model_choices()[0], method="advdm",
                                  budget=4, steps=5, progress=lambda fraction, desc: webui.shared.state.interrupt())
    assert result.cancelled and result.table == []
    assert webui.shared.state.log == ["begin unlearnable", "end unlearnable"]


def test_builtin_choice_loads_through_the_core(webui, tmp_path, photo_file):
    from a1111_extension.host import WebUIHooks
    from shared_core.ui import handlers

    webui.shared.opts.data["unlearnable_outdir"] = str(tmp_path / "out")
    hooks = WebUIHooks()
    assert "builtin:tiny" in hooks.model_choices()
    result = handlers.run_protect(hooks, files=[str(photo_file)], model="builtin:tiny", method="advdm", budget=4, steps=1)
    assert result.table[0][1] == "protected" and "Demo model" in result.status


@pytest.mark.parametrize("version", list(gradio_envs.HOST_PINS))
def test_tab_builds_and_protects_under_the_hosts_gradio(version):
    python = gradio_envs.env_python(version)
    if not python.exists():
        skip_or_fail(f"no gradio {version} venv at {python}; run `python tests/ui/gradio_envs.py create`")
    gradio_envs.link_project(version)
    run = subprocess.run([str(python), str(HERE / "host_gradio_check.py")], capture_output=True, text=True, timeout=500, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["gradio"] == version and result["linf"] <= 6


def test_verify_on_the_loaded_checkpoint_uses_the_web_uis_txt2img(webui, stubs, monkeypatch):
    import types

    from PIL import Image

    from a1111_extension.host import WebUIHooks
    from shared_core.errors import SettingsError

    calls = []
    processing = types.ModuleType("modules.processing")

    class Txt2Img:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def close(self):
            calls.append("closed")

    def process_images(p):
        calls.append(p.kwargs)
        return types.SimpleNamespace(images=[Image.new("RGB", (64, 64), (seed % 255, 0, 0)) for seed in p.kwargs["seed"]])

    processing.StableDiffusionProcessingTxt2Img, processing.process_images = Txt2Img, process_images
    monkeypatch.setitem(__import__("sys").modules, "modules.processing", processing)
    networks = types.ModuleType("networks")
    networks.available_network_aliases = {"suspect_style": object()}
    networks.list_available_networks = lambda: None
    monkeypatch.setitem(__import__("sys").modules, "networks", networks)
    webui.shared.sd_model = stubs.TinyLDM()
    hooks = WebUIHooks()
    loaded = hooks.model_choices()[0]
    generate, control, info = hooks.make_generators(
        loaded, {"lora": "/somewhere/suspect_style.safetensors", "lora_strength": 0.8, "steps": 3, "guidance": 4.0, "resolution": 64})
    images = generate(["zqv7 a photo", "zqv7 a cat"], [5, 6])
    assert [im.shape for im in images] == [(64, 64, 3)] * 2 and images[1][0, 0, 0] == 6
    first = calls[0]
    assert first["prompt"] == ["zqv7 a photo <lora:suspect_style:0.8>", "zqv7 a cat <lora:suspect_style:0.8>"]
    assert first["seed"] == [5, 6] and first["steps"] == 3 and first["cfg_scale"] == 4.0 and first["do_not_save_samples"]
    control(["a photo"], [5])
    assert calls[-2]["prompt"] == ["a photo"] and calls[-1] == "closed" and info["model"].startswith("tiny-ldm")
    assert hooks.make_generators("builtin:tiny", {}) is None  # the core's diffusers path
    with pytest.raises(SettingsError, match="not in the web UI's Lora list"):
        hooks.make_generators(loaded, {"lora": "unknown_lora", "steps": 1, "guidance": 1.0})
    webui.shared.state.interrupt()
    with pytest.raises(Exception, match="interrupted"):
        generate(["x"], [1])


def test_forge_loads_the_selected_checkpoint_on_demand(webui, stubs, monkeypatch):
    """Forge's shared.sd_model is None until a generation runs; the tab asks forge_model_reload for it."""
    import types

    from a1111_extension import host

    model = stubs.TinyLDM()
    backend = types.ModuleType("backend")
    backend.memory_management = types.ModuleType("backend.memory_management")
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.forge_model_reload = lambda: (model, True)
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.memory_management", backend.memory_management)
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    webui.shared.sd_model = None
    assert host.is_forge() and host.selected_sd_model() is model
