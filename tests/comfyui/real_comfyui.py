"""Run the pack inside a real ComfyUI on CPU: a tiny SD 1.x checkpoint, the server, /object_info, POST /prompt.

    python tests/comfyui/real_comfyui.py --comfyui ~/ComfyUI [--python ~/comfy-venv/bin/python] \
        [--screenshot docs/comfyui/workflow.png]

Everything ComfyUI writes goes to a temporary base directory (--base-directory: models, custom_nodes,
input, output, user), so the checkout is left as it was; the pack is linked into its custom_nodes/.
The checkpoint is a Stable Diffusion 1.x single file in the original (LDM) key layout, written from
diffusers modules with random weights: the VAE and CLIP-L at their real sizes (ComfyUI builds those
with fixed shapes) and a UNet with SD 1.5's widths (320 channels, 768-wide context) but only two
levels, so it loads as SD 1.5 and runs fast on a CPU. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKFLOWS = ROOT / "example_workflows"
CHECKPOINT = "unlearnable-tiny-sd15.safetensors"
CHROMIUM = os.environ.get("UNLEARNABLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip

# -- a tiny SD 1.x checkpoint in the original key layout -------------------------------------------------

CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 49407,
          "pad_token_id": 1}  # fmt: skip


def unet_to_ldm(state: dict, config) -> dict:
    """diffusers UNet2DConditionModel keys -> LDM `model.diffusion_model.*` keys (any depth, SD-style blocks)."""
    per_level = config.layers_per_block
    levels = len(config.block_out_channels)
    has_down_attention = ["CrossAttn" in kind for kind in config.down_block_types]
    has_up_attention = ["CrossAttn" in kind for kind in config.up_block_types]
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."), ("conv_in.", "input_blocks.0.0."),
                ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."), ("mid_block.attentions.0.", "middle_block.1.")]  # fmt: skip
    prefixes += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(levels):
        for j in range(per_level):
            block = i * (per_level + 1) + j + 1
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."))
            if has_down_attention[i]:
                prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i < levels - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per_level + 1)}.0.op."))
        for j in range(per_level + 1):
            block = i * (per_level + 1) + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."))
            if has_up_attention[i]:
                prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i < levels - 1:
            slot = 2 if has_up_attention[i] else 1
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per_level + 1) + per_level}.{slot}."))
    resnet = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."), ("norm2.", "out_layers.0."),
              ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]  # fmt: skip
    out = {}
    for key, value in state.items():
        for hf, ldm in prefixes:
            if key.startswith(hf):
                rest = key[len(hf) :]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for hf_part, ldm_part in resnet:
                        if rest.startswith(hf_part):
                            rest = ldm_part + rest[len(hf_part) :]
                            break
                out[f"model.diffusion_model.{ldm}{rest}"] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
    return out


def vae_to_ldm(state: dict) -> dict:
    """diffusers AutoencoderKL keys -> LDM `first_stage_model.*` keys (SD's four-level VAE)."""
    blocks = [(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
              (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
              (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
              (r"^encoder\.down_blocks\.(\d)\.resnets\.(\d)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
              (r"^encoder\.down_blocks\.(\d)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
              (r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.", lambda m: f"decoder.up.{3 - int(m[1])}.block.{m[2]}."),
              (r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"decoder.up.{3 - int(m[1])}.upsample.")]  # fmt: skip
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state.items():
        new = key
        for pattern, replace in blocks:
            if m := re.match(pattern, key):
                new = replace(m) + key[m.end() :]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in new:
            head, tail = new.split(".mid.attn_1.")
            for hf, ldm in attention.items():
                if tail.startswith(hf):
                    tail = ldm + tail[len(hf) :]
            new = f"{head}.mid.attn_1.{tail}"
            if value.dim() == 2:  # linear -> 1x1 convolution
                value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value
    return out


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320, 320), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=768, attention_head_dim=8)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict())}
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in text.state_dict().items() if not k.endswith("position_ids")})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    return path


# -- the server -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: seconds a loaded 2-core machine may need to import ComfyUI and its nodes
START_TIMEOUT = 900


class ComfyServer:
    """`python main.py --cpu` in its own base directory, with the pack linked into custom_nodes/."""

    def __init__(self, comfyui: Path, python: str, base: Path, extra_args: Sequence[str] = ()):
        self.comfyui, self.python, self.base = Path(comfyui), python, Path(base)
        self.extra_args = list(extra_args)  # more ComfyUI options, e.g. --fp16-unet
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.process = None

    def __enter__(self):
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / "unlearnable"
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        settings = self.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base),
                   "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *self.extra_args]  # fmt: skip
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(OSError):
                self.get("/system_stats")
                return self
            time.sleep(1)
        self.__exit__()  # __exit__ is not called when __enter__ raises: never leave the server running
        raise TimeoutError(f"ComfyUI did not start in {START_TIMEOUT} s:\n{self.log_text()[-3000:]}")

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"POST {path}: {error.code} {error.read().decode(errors='replace')[:3000]}") from None

    def run_prompt(self, prompt: dict, timeout: float = 1800) -> dict:
        """Queue an API-format prompt and wait for its history entry; raises with ComfyUI's error message."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "unlearnable-test"})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"prompt failed: {json.dumps(errors)[:3000]}")
                if status.get("completed", True):
                    return entry["outputs"]
            time.sleep(1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def output_file(self, item: dict) -> Path:
        return self.base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]


# -- UI workflow -> API prompt ----------------------------------------------------------------------------


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt the front-end would queue for a saved (UI-format) workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in ("Note", "MarkdownNote"):  # muted / bypassed / notes
            continue
        if node["type"] not in object_info:  # e.g. this pack failed to import: say so instead of a prompt with holes
            raise RuntimeError(f"node type {node['type']!r} of the workflow is not in the server's /object_info (did the node pack load?)")
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        linked = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in order:
            spec = specs[name]
            if _is_widget(spec) and values:
                value = values.pop(0)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    values.pop(0)  # the "fixed / randomize" widget the front-end adds after a seed
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = linked[name]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def set_widget(workflow: dict, node_type: str, index: int, value) -> None:
    for node in workflow["nodes"]:
        if node["type"] == node_type:
            node["widgets_values"][index] = value


# -- the checks ---------------------------------------------------------------------------------------------


def photo_crop(size=(96, 128)) -> np.ndarray:
    import skimage
    from PIL import Image

    photo = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB"))
    return np.ascontiguousarray(photo[30 : 30 + size[0], 180 : 180 + size[1]])


def protect_photo(server: ComfyServer, photo: np.ndarray, name: str, **node_inputs) -> dict:
    """The protect example workflow with the tiny checkpoint on `photo` (saved as input/`name`), Protect Image
    inputs overridden by `node_inputs`: the saved PNG as an array, its path, the outputs and the seconds."""
    from PIL import Image

    (server.base / "input").mkdir(exist_ok=True)
    Image.fromarray(photo).save(server.base / "input" / name)
    workflow = load_workflow("protect_an_image.json")
    set_widget(workflow, "CheckpointLoaderSimple", 0, CHECKPOINT)
    set_widget(workflow, "LoadImage", 0, name)
    prompt = workflow_to_prompt(workflow, server.get("/object_info"))
    for node in prompt.values():
        if node["class_type"] == "UnlearnableProtectImage":
            node["inputs"].update(node_inputs)
    started = time.time()
    outputs = server.run_prompt(prompt)
    seconds = time.time() - started
    saved = [server.output_file(item) for out in outputs.values() for item in out.get("images", []) if item.get("type") == "output"]
    protected = np.asarray(Image.open(saved[0]).convert("RGB"))
    return {"protected": protected, "saved": saved[0], "outputs": outputs, "seconds": seconds}


def protect_workflow_check(server: ComfyServer, steps: int = 4, budget: float = 8.0) -> dict:
    """The protect example workflow with the tiny checkpoint and a real photo: output size and budget."""
    photo = photo_crop()
    run = protect_photo(server, photo, "astronaut_crop.png", steps=steps, budget=budget)
    protected = run["protected"]
    report = [text for out in run["outputs"].values() for text in out.get("text", [])]
    return {"saved": str(run["saved"]), "input_size": list(photo.shape[:2]), "output_size": list(protected.shape[:2]),
            "linf": int(np.abs(protected.astype(int) - photo.astype(int)).max()), "budget": budget, "steps": steps,
            "seconds": round(run["seconds"], 1), "report": report}  # fmt: skip


def steps_change_check(server: ComfyServer, few: int = 1, many: int = 12, *, method: str = "eudp", budget: float = 8.0,
                       seed: int = 3) -> dict:
    """Protect one photo with `few` and with `many` PGD steps (same seed): the fraction of uint8 channels that
    differ between the two outputs. Near 0 means the extra steps changed nothing (e.g. a gradient lost in fp16)."""
    photo = photo_crop((128, 128))
    runs = {steps: protect_photo(server, photo, "astronaut_128.png", method=method, budget=budget, steps=steps, seed=seed)
            for steps in (few, many)}
    linf = {steps: int(np.abs(run["protected"].astype(int) - photo.astype(int)).max()) for steps, run in runs.items()}
    return {"method": method, "budget": budget, "seed": seed, "steps": [few, many],
            "differ_fraction": float(np.mean(runs[few]["protected"] != runs[many]["protected"])),
            "linf": [linf[few], linf[many]], "seconds": [round(runs[steps]["seconds"], 1) for steps in (few, many)]}  # fmt: skip


TRIGGER = "zqv7"
LORA = "suspect_lora.safetensors"


def write_suspect_lora(path: Path, trigger: str = TRIGGER) -> Path:
    """A kohya LoRA for the tiny checkpoint (one cross-attention projection) whose metadata names `trigger`."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{key}.lora_down.weight": torch.randn(4, 768, generator=generator) * 0.01,
             f"{key}.lora_up.weight": torch.randn(320, 4, generator=generator) * 0.01, f"{key}.alpha": torch.tensor(4.0)}  # fmt: skip
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4.0", "ss_base_model_version": "sd_v1",
                "ss_tag_frequency": json.dumps({f"10_{trigger} style": {trigger: 12, "painting": 5}}), "ss_num_train_images": "120"}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def _texts(outputs: dict, node_id: str) -> list[str]:
    return list(outputs.get(node_id, {}).get("text", []))


def trace_workflows_check(server: ComfyServer) -> dict:
    """Mark a photo, verify the LoRA workflow with the key (n=2 at 64 px), inspect the LoRA for the trigger."""
    from PIL import Image

    Image.fromarray(photo_crop((64, 64))).save(server.base / "input" / "painting.png")
    object_info = server.get("/object_info")
    mark = load_workflow("mark_images_for_tracing.json")
    set_widget(mark, "LoadImage", 0, "painting.png")
    set_widget(mark, "UnlearnableMarkWithTemplate", 1, TRIGGER)
    outputs = server.run_prompt(workflow_to_prompt(mark, object_info))
    key_path = _texts(outputs, "5")[0]
    caption = _texts(outputs, "4")[0]
    marked = [server.output_file(i) for out in outputs.values() for i in out.get("images", []) if i.get("type") == "output"]

    verify = load_workflow("verify_a_lora.json")
    set_widget(verify, "CheckpointLoaderSimple", 0, CHECKPOINT)
    set_widget(verify, "LoraLoader", 0, LORA)
    for index, value in ((0, key_path), (1, 2), (2, 2), (6, 64), (7, 64)):  # key, n, steps, width, height
        set_widget(verify, "UnlearnableVerifyModel", index, value)
    started = time.time()
    outputs = server.run_prompt(workflow_to_prompt(verify, object_info))
    verdict = _texts(outputs, "4")[0]
    previews = sum(len(out.get("images", [])) for out in outputs.values())

    inspect = load_workflow("inspect_a_lora.json")
    set_widget(inspect, "UnlearnableInspectLoRA", 1, TRIGGER)
    report = _texts(server.run_prompt(workflow_to_prompt(inspect, object_info)), "2")[0]
    return {"key_path": key_path, "caption": caption, "marked_size": list(np.asarray(Image.open(marked[0])).shape[:2]),
            "verdict": verdict, "verify_seconds": round(time.time() - started, 1), "verify_previews": previews,
            "lora_report_trigger_line": next((line.strip() for line in report.splitlines() if "FOUND" in line), None)}  # fmt: skip


def publish_workflow_check(server: ComfyServer) -> dict:
    """The save-protected-image workflow (4 PGD steps): the saved file, its opt-out as read back from the file, its pixels' L-inf."""
    from PIL import Image

    from shared_core.optout import inspect_image

    photo = photo_crop((64, 64))
    Image.fromarray(photo).save(server.base / "input" / "to_publish.png")
    workflow = load_workflow("save_protected_image.json")
    set_widget(workflow, "CheckpointLoaderSimple", 0, CHECKPOINT)
    set_widget(workflow, "LoadImage", 0, "to_publish.png")
    set_widget(workflow, "UnlearnableProtectImage", 2, 4)  # steps
    set_widget(workflow, "UnlearnableSaveProtectedImage", 5, "A. Painter")  # creator
    outputs = server.run_prompt(workflow_to_prompt(workflow, server.get("/object_info")))
    saved = [server.output_file(i) for out in outputs.values() for i in out.get("images", []) if i.get("type") == "output"]
    inspection = inspect_image(saved[0])
    protected = np.asarray(Image.open(saved[0]).convert("RGB"))
    return {"saved": saved[0].name, "opted_out": inspection["opted_out"], "xmp": inspection["xmp"], "save_report": _texts(outputs, "9"),
            "linf": int(np.abs(protected.astype(int) - photo.astype(int)).max())}  # fmt: skip


def mimicry_workflow_check(server: ComfyServer) -> dict:
    """The mimicry-test workflow on 4 photo crops with the built-in tiny model (2 PGD steps, 4 LoRA steps, 2 samples of 32 px)."""
    from PIL import Image

    folder = server.base / "input" / "my_images"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(4):
        Image.fromarray(photo_crop((64, 64)) if index == 0 else np.roll(photo_crop((96, 96)), 17 * index, axis=1)[:64, :64]).save(folder / f"{index}.png")
    workflow = load_workflow("mimicry_test.json")
    # model, folder, method, budget, protect_steps, prompt, lora_steps, lr, rank, resolution, n, sample_steps
    for index, value in ((0, "builtin:tiny"), (4, 2), (6, 4), (7, 3e-3), (9, 32), (10, 2), (11, 2)):
        set_widget(workflow, "UnlearnableMimicryTest", index, value)
    started = time.time()
    outputs = server.run_prompt(workflow_to_prompt(workflow, server.get("/object_info")))
    previews = {node: len(out.get("images", [])) for node, out in outputs.items() if out.get("images")}
    return {"summary": _texts(outputs, "2"), "report": _texts(outputs, "6"), "previews": previews, "seconds": round(time.time() - started, 1)}


def screenshot(server: ComfyServer, workflow: dict, target: Path, *, name: str, run: bool = False, size=(1600, 900)) -> None:
    """The ComfyUI page in headless Chromium with `workflow` loaded (and, with `run`, queued and finished)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                                                                viewport={"width": size[0], "height": size[1]})  # fmt: skip
        page = browser.new_page()
        page.goto(server.url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        page.evaluate("async ([w, name]) => { await window.app.loadGraphData(w, true, true, name); }", [workflow, name])
        page.wait_for_timeout(2000)
        if run:
            done = len(server.get("/history"))
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            deadline = time.time() + 600
            while len(server.get("/history")) == done and time.time() < deadline:
                time.sleep(1)
            page.wait_for_timeout(3000)
        page.mouse.click(size[0] - 5, size[1] // 2)  # close menus and tooltips
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT"), required=not os.environ.get("COMFYUI_ROOT"))
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable))
    parser.add_argument("--base", help="base directory (default: a temporary one)")
    parser.add_argument("--screenshot", type=Path, help="PNG of the page with the protect workflow as shipped")
    parser.add_argument("--screenshot-run", type=Path, help="PNG of the page after running the protect workflow on a photo")
    parser.add_argument("--run-steps", type=int, default=10, help="Protect Image steps for --screenshot-run")
    parser.add_argument("--json", type=Path, help="also write the result with provenance here (e.g. benchmarks/hosts/comfyui-cpu.json)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        base = Path(args.base) if args.base else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="comfy-base-")))
        write_tiny_checkpoint(base / "models" / "checkpoints" / CHECKPOINT)
        write_suspect_lora(base / "models" / "loras" / LORA)
        server = stack.enter_context(ComfyServer(Path(args.comfyui), args.python, base))
        nodes = [name for name in server.get("/object_info") if name.startswith("Unlearnable")]
        result = {"nodes": nodes, **protect_workflow_check(server), **trace_workflows_check(server), "publish": publish_workflow_check(server),
                  "mimicry": mimicry_workflow_check(server)}  # fmt: skip
        if args.screenshot:
            screenshot(server, load_workflow("protect_an_image.json"), args.screenshot, name="protect_an_image")
        if args.screenshot_run:
            workflow = load_workflow("protect_an_image.json")
            set_widget(workflow, "CheckpointLoaderSimple", 0, CHECKPOINT)
            set_widget(workflow, "LoadImage", 0, "astronaut_crop.png")
            set_widget(workflow, "UnlearnableProtectImage", 2, args.run_steps)
            screenshot(server, workflow, args.screenshot_run, name="protect_an_image", run=True)
        print(json.dumps(result, default=str))
    if args.json:
        sys.path.insert(0, str(ROOT))
        from shared_core.bench.artefact import write_artefact

        result["comfyui_commit"] = subprocess.run(["git", "-C", args.comfyui, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
        versions = subprocess.run([args.python, "-c", "import json, torch, numpy, PIL, transformers; print(json.dumps({'torch': torch.__version__, "
                                   "'numpy': numpy.__version__, 'pillow': PIL.__version__, 'transformers': transformers.__version__}))"],
                                  capture_output=True, text=True).stdout  # fmt: skip
        result["comfyui_python_versions"] = json.loads(versions or "{}")
        write_artefact(args.json, "python tests/comfyui/real_comfyui.py --comfyui COMFYUI_ROOT --python COMFYUI_PYTHON --json " + str(args.json), "cpu",
                       json.loads(json.dumps(result, default=str)))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
