"""The pack inside a real ComfyUI server on CPU (runs only when COMFYUI_ROOT points to a ComfyUI checkout).

    COMFYUI_ROOT=~/ComfyUI COMFYUI_PYTHON=~/comfy-venv/bin/python python -m pytest -q tests/comfyui/test_real_comfyui.py -s

COMFYUI_PYTHON (default: this interpreter) must have ComfyUI's requirements and this pack's
requirements.txt installed. ComfyUI runs in a temporary --base-directory with the pack linked into
its custom_nodes/; the checkout is not modified. See real_comfyui.py for the tiny SD 1.5 checkpoint.
The PGD-steps test starts ComfyUI once per UNet precision (about 11 minutes each on a busy 2-core CPU).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import HERE, load_by_path

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
pytestmark = pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter)")


real = load_by_path(HERE / "real_comfyui.py", "unlearnable_tests_real_comfyui")


def comfy_server(base: Path, *extra_args: str):
    """ComfyUI from COMFYUI_ROOT in `base`, with the tiny checkpoint in its models/ folder."""
    assert (Path(COMFYUI_ROOT) / "main.py").is_file(), f"COMFYUI_ROOT={COMFYUI_ROOT} is not a ComfyUI checkout"
    real.write_tiny_checkpoint(base / "models" / "checkpoints" / real.CHECKPOINT)
    return real.ComfyServer(Path(COMFYUI_ROOT), os.environ.get("COMFYUI_PYTHON", sys.executable), base, extra_args)


def test_example_workflows_run_in_a_real_comfyui(tmp_path):
    real.write_suspect_lora(tmp_path / "models" / "loras" / real.LORA)
    with comfy_server(tmp_path) as server:
        object_info = server.get("/object_info")
        ours = {name: info for name, info in object_info.items() if name.startswith("Unlearnable")}
        assert sorted(ours) == ["UnlearnableInspectLoRA", "UnlearnableMarkWithTemplate", "UnlearnableMimicryTest", "UnlearnableProtectImage",
                                "UnlearnableProtectionReport", "UnlearnableSaveProtectedImage", "UnlearnableVerifyModel"]  # fmt: skip
        assert ours["UnlearnableProtectImage"]["category"] == "Unlearnable"
        assert "eudp" in json.dumps(ours["UnlearnableProtectImage"]["input"]["required"]["method"])
        templates = server.get("/workflow_templates")
        assert sorted(next(v for k, v in templates.items() if "unlearnable" in k)) == [
            "inspect_a_lora", "mark_images_for_tracing", "mimicry_test", "protect_an_image", "save_protected_image", "verify_a_lora"]

        protect = real.protect_workflow_check(server, steps=4, budget=8.0)
        trace = real.trace_workflows_check(server)
        publish = real.publish_workflow_check(server)
        mimicry = real.mimicry_workflow_check(server)
        log = server.log_text()
    print(json.dumps({**protect, **trace, "publish": publish, "mimicry": mimicry}, indent=1, default=str))
    assert "unet missing" not in log and "unet unexpected" not in log and "Missing VAE keys" not in log
    assert not any("unlearnable" in line and ("Cannot import" in line or "IMPORT FAILED" in line) for line in log.splitlines())
    assert protect["output_size"] == protect["input_size"] and 0 < protect["linf"] <= protect["budget"]
    assert "L-inf" in protect["report"][0] and "after JPEG q75" in protect["report"][0]
    assert trace["caption"] == f"{real.TRIGGER} a photo of my painting" and Path(trace["key_path"]).is_file()
    assert trace["verdict"].startswith("verdict: ") and "base model without the LoRA" in trace["verdict"]
    assert Path(trace["verdict"].rsplit("report: ", 1)[1]).is_file() and trace["verify_previews"] == 4
    assert trace["lora_report_trigger_line"].startswith(f"FOUND '{real.TRIGGER}'")
    assert publish["opted_out"] and publish["xmp"]["creator"] == "A. Painter" and 0 < publish["linf"] <= 8
    assert publish["saved"].startswith("protected_") and "opt-out" in publish["save_report"][0].lower()
    assert "report: " in mimicry["summary"][0] and mimicry["report"][0].endswith("report.html") and Path(mimicry["report"][0]).is_file()
    assert sorted(mimicry["previews"].values()) == [2, 2, 2]  # base, clean LoRA and protected LoRA samples


@pytest.mark.parametrize(("unet_option", "weight_dtype"), [("--fp16-unet", "float16"), ("--fp32-unet", "float32")])
def test_more_pgd_steps_change_the_protected_image(tmp_path, unet_option, weight_dtype):
    """Consumer GPUs hold the UNet in fp16 (--fp16-unet); the perturbation must still move with every PGD step there."""
    with comfy_server(tmp_path, unet_option) as server:
        check = real.steps_change_check(server, few=1, many=12, method="eudp", budget=8.0, seed=3)
        log = server.log_text()
    print(json.dumps({"unet": unet_option, **check}))
    assert f"model weight dtype torch.{weight_dtype}" in log  # the option reached the loaded UNet
    assert all(0 < linf <= check["budget"] for linf in check["linf"])
    assert check["differ_fraction"] > 0.5, f"12 PGD steps changed only {check['differ_fraction']:.1%} of the channels 1 step gave"
