"""The tab inside a real AUTOMATIC1111 / Forge on CPU (runs only when A1111_ROOT / FORGE_ROOT point to checkouts).

    A1111_ROOT=~/stable-diffusion-webui A1111_PYTHON=~/a1111-venv/bin/python python -m pytest -q tests/a1111 -s
    FORGE_ROOT=~/stable-diffusion-webui-forge FORGE_PYTHON=~/forge-venv/bin/python python -m pytest -q tests/a1111 -s

*_PYTHON (default: this interpreter) must have the web UI's requirements and this extension's
requirements.txt installed, and the checkout its repositories/ (nothing is cloned or downloaded).
See real_webui.py for what is started and how.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import load_by_path

HERE = Path(__file__).resolve().parent
HOSTS = {"a1111": ("A1111_ROOT", "A1111_PYTHON"), "forge": ("FORGE_ROOT", "FORGE_PYTHON")}


#: Forge's own flag holds the UNet in fp16 as GPU users run it, also on a CPU (A1111 cannot: real_webui.HALF_UNET)
RUNS = [("a1111", ()), ("forge", ()), ("forge", ("--unet-in-fp16",))]


@pytest.mark.parametrize(("kind", "extra_flags"), RUNS, ids=["a1111", "forge", "forge-fp16-unet"])
def test_tab_loads_and_protects_inside_the_real_webui(kind, extra_flags, tmp_path):
    root_var, python_var = HOSTS[kind]
    root = os.environ.get(root_var)
    if not root:
        pytest.skip(f"set {root_var} to a checkout (and {python_var} to its interpreter)")
    assert (Path(root) / "launch.py").is_file(), f"{root_var}={root} is not a web UI checkout"
    real = load_by_path(HERE / "real_webui.py", "unlearnable_tests_real_webui")
    report = real.run_checks(kind, Path(root), os.environ.get(python_var, sys.executable), tmp_path / "data", tmp_path / f"{kind}-tab.png", extra_flags)
    print(json.dumps({k: v for k, v in report.items() if k != "log_tail"}, indent=1))
    assert not report["host_packages_changed"], f"install.py changed the web UI's packages: {report['host_packages_changed']}"
    assert not report["log_errors"], report["log_errors"]
    half = extra_flags == real.HALF_UNET.get(kind)
    if kind == "forge" and half:  # the flag reached the loaded UNet (its weights are stored in fp16)
        assert report["unet_dtypes"] and all("'storage_dtype': torch.float16" in line for line in report["unet_dtypes"]), report["unet_dtypes"]
    assert {"unlearnable_protect_run", "unlearnable_mark_run", "unlearnable_verify_run", "unlearnable_lora_run"} <= set(report["tab_elements"])
    assert {f"setting_unlearnable_{k}" for k in ("method", "budget", "steps", "outdir")} <= set(report["settings_elements"])
    assert report["model_choice"].startswith(f"Loaded checkpoint ({real.CHECKPOINT.removesuffix('.safetensors')}")
    protect = report["protect"]
    assert "error" not in protect, protect.get("webui_traceback") or protect.get("error")
    assert "/protect" in protect["named_endpoints"]  # started with --api
    assert protect["table"]["data"][0][1] == "protected" if isinstance(protect["table"], dict) else protect["table"][0][1] == "protected"
    assert protect["size_kept"] and 0 < protect["linf"] <= 8
    assert "Demo model" not in protect["status"] and "1 protected" in protect["status"]
    assert (tmp_path / f"{kind}-tab.png").stat().st_size > 20_000
    assert report["steps_change"]["differ_fraction"] > 0.5, report["steps_change"]  # 8 PGD steps give another image than 1
    assert report["surrogate"]["host"] == kind and report["surrogate"]["denoiser_dtype"] == ("float16" if half else "float32"), report["surrogate"]
