"""A real AUTOMATIC1111 or Forge web UI on CPU with this extension installed as users install it.

    A1111_ROOT=~/stable-diffusion-webui A1111_PYTHON=~/a1111-venv/bin/python python -m pytest -q tests/a1111 -s
    FORGE_ROOT=~/stable-diffusion-webui-forge FORGE_PYTHON=~/forge-venv/bin/python python -m pytest -q tests/a1111 -s
    python tests/a1111/real_webui.py forge ~/stable-diffusion-webui-forge ~/forge-venv/bin/python   # refreshes docs/a1111/

The checkout is not modified: the web UI runs with `--data-dir` pointing to a temporary folder that
holds extensions/unlearnable (a copy of this repository, as `git clone` into extensions/ gives),
models/Stable-diffusion with the tiny SD 1.5-format checkpoint of tests/comfyui/real_comfyui.py,
and the web UI's config. The extension's install.py is run the way the web UI runs it (its python,
the web UI folder on PYTHONPATH so `import launch` works); the web UI itself starts with
`--skip-prepare-environment` (its requirements and repositories/ are already in place: nothing is
cloned or downloaded). Protect then runs through the web UI's own gradio API with the web UI's own
gradio_client, and headless Chromium takes a screenshot of the tab.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHECKPOINT = "unlearnable-tiny-sd15.safetensors"
#: flags per host: CPU only, no model download, no environment preparation, the HTTP API on
FLAGS = {
    "a1111": ["--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check", "--use-cpu", "all",
              "--no-half", "--no-download-sd-model", "--api"],
    "forge": ["--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check", "--always-cpu",
              "--no-download-sd-model", "--api"],
}
#: the UNet held in fp16 as on GPUs: Forge's `--unet-in-fp16`. A1111 v1.10.1 cannot do so on a CPU: its half-precision path
#: relies on CUDA's autocast (with `--no-half-vae` the checkpoint fails to load, "Torch not compiled with CUDA enabled"; adding
#: `--precision full` loads it, but A1111's own txt2img then fails, "Input type (float) and bias type (c10::Half) should be the
#: same", as ldm's UNet casts its input to float32), so A1111 runs with `--no-half` here
HALF_UNET = {"forge": ("--unet-in-fp16",)}


#: what users leave out when they clone: nothing of it is needed inside the web UI
NOT_INSTALLED = (".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_comfy_helpers():
    sys.path.insert(0, str(ROOT))
    from tests.conftest import load_by_path

    return load_by_path(ROOT / "tests" / "comfyui" / "real_comfyui.py", "unlearnable_tests_real_comfyui")


VERSIONS = ("import json\nfrom importlib import metadata\nseen = {}\n"
            "for d in metadata.distributions():\n    seen.setdefault((d.metadata['Name'] or '').lower(), d.version)\n"
            "print(json.dumps(seen))")  # the version import sees of every distribution (the first on the path)


def host_versions(python: str) -> dict[str, str]:
    return json.loads(subprocess.run([python, "-c", VERSIONS], capture_output=True, text=True, check=True).stdout)


def install_extension(root: Path, python: str, data_dir: Path) -> dict:
    """Copy the repository into <data>/extensions/unlearnable and run its install.py as the web UI does."""
    target = data_dir / "extensions" / "unlearnable"
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(*NOT_INSTALLED), symlinks=True)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = host_versions(python)
    start = time.perf_counter()
    run = subprocess.run([python, str(target / "install.py")], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    seconds = round(time.perf_counter() - start, 1)
    after = host_versions(python)
    changed = {name: f"{before[name]} -> {after.get(name, 'removed')}" for name in before if after.get(name) != before[name]}
    return {"returncode": run.returncode, "output": (run.stdout + run.stderr)[-4000:], "seconds": seconds, "host_packages_changed": changed,
            "added": sorted(f"{name}=={after[name]}" for name in after.keys() - before.keys())}  # fmt: skip


#: the tiny checkpoint's UNet (tests/comfyui/real_comfyui.py): SD 1.5's widths, two levels of one block each. A1111
#: builds the UNet from a config, v1-inference.yaml unless `<checkpoint>.yaml` lies beside it (Forge reads the shapes)
TINY_UNET = {"attention_resolutions": "[ 1 ]", "num_res_blocks": "1", "channel_mult": "[ 1, 1 ]"}


def write_tiny_config(root: Path, target: Path) -> None:
    """`<checkpoint>.yaml`: the web UI's own v1-inference.yaml with the tiny UNet's levels."""
    lines = (Path(root) / "configs" / "v1-inference.yaml").read_text().splitlines()
    section = None
    for index, line in enumerate(lines):
        key = line.strip().split(":", 1)[0]
        section = key if key.endswith("_config") else section  # unet_config, first_stage_config (the VAE), ...
        if section == "unet_config" and key in TINY_UNET:
            lines[index] = f"{line[: len(line) - len(line.lstrip())]}{key}: {TINY_UNET[key]}"
    target.write_text("\n".join(lines) + "\n")


class WebUIServer:
    """`python launch.py` of a web UI checkout in a temporary data folder; stopped on exit."""

    def __init__(self, kind: str, root: Path, python: str, data_dir: Path, extra_flags: tuple[str, ...] = ()):
        self.kind, self.root, self.python, self.data_dir = kind, Path(root), python, Path(data_dir)
        self.extra_flags = tuple(extra_flags)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "webui.log"
        self.started_seconds: float | None = None

    def __enter__(self):
        command = [self.python, "launch.py", *FLAGS[self.kind], *self.extra_flags, "--data-dir", str(self.data_dir), "--port", str(self.port),
                   "--ckpt", str(self.data_dir / "models" / "Stable-diffusion" / CHECKPOINT)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_CPU_THREADS": "2"}
        self._log = open(self.log_path, "w")
        start = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + float(os.environ.get("WEBUI_START_TIMEOUT", 1200))
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_text()[-6000:]}")
            try:
                self.get("/sdapi/v1/options")
            except OSError:
                time.sleep(2)
                continue
            if self.kind == "a1111":  # A1111 loads the checkpoint in a thread after the server answers
                self.wait_for_model(deadline)
            self.started_seconds = round(time.perf_counter() - start, 1)
            return self
        self.__exit__()
        raise TimeoutError(f"{self.kind} did not answer in time:\n{self.log_text()[-6000:]}")

    def wait_for_model(self, deadline: float) -> None:
        while time.time() < deadline:
            log = self.log_text()
            if "Model loaded in" in log:
                return
            if "failed to load" in log:
                self.__exit__()
                raise RuntimeError(f"{self.kind} could not load the checkpoint:\n{log[-6000:]}")
            time.sleep(2)
        self.__exit__()
        raise TimeoutError(f"{self.kind} did not load the checkpoint in time:\n{self.log_text()[-6000:]}")

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict, timeout: float = 600):
        request = urllib.request.Request(self.url + path, json.dumps(data).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


CLIENT_SCRIPT = r"""
import json, sys
from gradio_client import Client
url, image, model, budget, steps = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
try:
    from gradio_client import handle_file
    upload = handle_file(image)
except ImportError:  # gradio_client < 1 (gradio 3): a path is uploaded as it is
    upload = image
client = Client(url, verbose=False)
api = client.view_api(print_info=False, return_format="dict")
# files, folder, model, model path, method (the default), budget, steps, robust, prompt, format, seed, batch, opt-out, creator, copyright, contact
gallery, downloads, table, status = client.predict([upload], "", model, "", "eudp", budget, steps, [], "", "png", 0, 1, True, "", "", "",
                                                   api_name="/protect")
if isinstance(table, str) and table.endswith(".json"):  # gradio_client 0.5 hands a Dataframe over as a JSON file
    table = json.load(open(table))
# gradio_client 0.5 (A1111's) saves a download the server sent gzip-encoded without decoding it
for item in downloads or []:
    path = item["path"] if isinstance(item, dict) else item
    data = open(path, "rb").read()
    if data[:2] == b"\x1f\x8b":
        import gzip
        open(path, "wb").write(gzip.decompress(data))
print(json.dumps({"named_endpoints": sorted(api["named_endpoints"]), "downloads": downloads, "table": table, "status": status}))
"""


def protect_through_api(server: WebUIServer, image: Path, model: str, budget: float = 8.0, steps: int = 2) -> dict:
    """Protect one image with the tab's `protect` endpoint, through the web UI's own gradio_client."""
    start = time.perf_counter()
    run = subprocess.run([server.python, "-c", CLIENT_SCRIPT, server.url + "/", str(image), model, str(budget), str(steps)],
                         capture_output=True, text=True, timeout=1200)
    if run.returncode != 0:
        raise RuntimeError(f"protect through the API failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def steps_change(server: WebUIServer, image: Path, model: str, few: int = 1, many: int = 8) -> dict:
    """Protect the same image with `few` and `many` PGD steps (same seed): the share of 8-bit channels that differ.
    Near 0 would mean the extra steps did nothing (a lost gradient, an optimiser that returned its start)."""
    import numpy as np
    from PIL import Image

    outputs = {}
    for steps in (few, many):
        result = protect_through_api(server, image, model, steps=steps)
        png = next(p for p in download_paths(result["downloads"]) if p.suffix == ".png")
        outputs[steps] = np.asarray(Image.open(png).convert("RGB"))
    return {"method": "eudp", "steps": [few, many], "differ_fraction": round(float(np.mean(outputs[few] != outputs[many])), 4)}


def download_paths(downloads) -> list[Path]:
    return [Path(d["path"] if isinstance(d, dict) else d) for d in downloads or []]


def screenshot(server: WebUIServer, target: Path) -> None:
    """Headless Chromium on the web UI, the Unlearnable tab selected."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests" / "ui"))
    chromium = os.environ.get("UNLEARNABLE_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(server.url + "/", timeout=300_000)
        page.locator("button:has-text('Unlearnable')").first.click(timeout=300_000)  # a tab button (role "tab" in gradio 4)
        page.wait_for_selector("#unlearnable_protect_run", state="visible", timeout=120_000)
        page.wait_for_timeout(1500)
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=False)
        browser.close()


def run_checks(kind: str, root: Path, python: str, work: Path, shot: Path, extra_flags: tuple[str, ...] = ()) -> dict:
    """Install, start, check tab + settings, protect through the API, screenshot; returns what was measured."""
    import numpy as np
    from PIL import Image

    comfy = load_comfy_helpers()
    checkpoint = work / "models" / "Stable-diffusion" / CHECKPOINT
    comfy.write_tiny_checkpoint(checkpoint)
    if kind == "a1111":
        write_tiny_config(root, checkpoint.with_suffix(".yaml"))
    installed = install_extension(root, python, work)
    if installed["returncode"] != 0:
        raise RuntimeError(f"install.py failed:\n{installed['output']}")
    image = work / "input.png"
    Image.fromarray(comfy.photo_crop((64, 64))).save(image)
    report = {"host": kind, "install_py_seconds": installed["seconds"], "install_py_output": installed["output"].strip()[-500:],
              "host_packages_changed": installed["host_packages_changed"], "packages_added": installed["added"]}  # fmt: skip
    report["flags"] = [*FLAGS[kind], *extra_flags]
    # the tab's outputs go to <data dir>/outputs (by default they go beside the web UI's own, in the checkout's outputs/)
    (work / "config.json").write_text(json.dumps({"unlearnable_outdir": str(work / "outputs" / "unlearnable")}))
    with WebUIServer(kind, root, python, work, extra_flags) as server:
        report["start_seconds"] = server.started_seconds
        options = server.get("/sdapi/v1/options")
        report["settings"] = {k: v for k, v in options.items() if k.startswith("unlearnable_")}
        config = server.get("/config")
        ids = {c.get("props", {}).get("elem_id") for c in config.get("components", [])}
        report["tab_elements"] = sorted(i for i in ids if i and i.startswith("unlearnable_"))
        report["settings_elements"] = sorted(i for i in ids if i and i.startswith("setting_unlearnable_"))
        models = [c["props"]["choices"] for c in config["components"] if c.get("props", {}).get("elem_id") == "unlearnable_protect_model"]
        if not models:
            raise RuntimeError(f"{kind}: the Unlearnable tab did not load:\n{server.log_text()[-6000:]}")
        choices = models[0]
        loaded = next(c[0] if isinstance(c, (list, tuple)) else c for c in choices)
        report["model_choice"] = loaded
        screenshot(server, shot)
        report["screenshot"] = str(shot)
        try:
            protect = protect_through_api(server, image, loaded)
        except RuntimeError as exc:  # recorded with the web UI's traceback, so the report says what failed
            report["protect"] = {"error": str(exc)[-2000:], "webui_traceback": server.log_text().rsplit("Traceback", 1)[-1][-4000:]}
        else:
            report["protect"] = {k: protect[k] for k in ("status", "table", "seconds", "named_endpoints")}
            png = next(p for p in download_paths(protect["downloads"]) if p.suffix == ".png")
            original = np.asarray(Image.open(image).convert("RGB")).astype(int)
            protected = np.asarray(Image.open(png).convert("RGB")).astype(int)
            report["protect"]["size_kept"] = protected.shape == original.shape
            report["protect"]["linf"] = int(np.abs(protected - original).max())
            report["steps_change"] = steps_change(server, image, loaded)
            summary = max(work.rglob("protect-summary.json"), key=lambda path: path.stat().st_mtime)
            report["surrogate"] = json.loads(summary.read_text())["model"]  # what the tab optimised on: host, denoiser dtype
        log = server.log_text()
    report["unet_dtypes"] = [line.strip() for line in log.splitlines() if line.startswith("K-Model Created")]  # Forge: storage and computation dtype
    report["log_errors"] = [line for line in log.splitlines() if ("Error" in line or "Traceback" in line) and "unlearnable" in line.lower()]
    report["log_tail"] = log[-3000:]
    return report


def main(argv=None) -> int:
    """python tests/a1111/real_webui.py KIND WEBUI_ROOT WEBUI_PYTHON [WEBUI FLAGS...]: run the checks, refresh docs/a1111/KIND-tab.png."""
    import tempfile

    import shlex

    sys.path.insert(0, str(ROOT))
    from shared_core.bench.artefact import write_artefact

    kind, root, python, *extra_flags = argv or sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix=f"unlearnable-{kind}-") as work:
        report = run_checks(kind, Path(root), python, Path(work), ROOT / "docs" / "a1111" / f"{kind}-tab.png", tuple(extra_flags))
    report = {k: v for k, v in report.items() if k != "log_tail"}
    report["screenshot"] = str(Path(report["screenshot"]).relative_to(ROOT))
    report["protect"].pop("named_endpoints", None)
    report["webui_commit"] = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    report["webui_python_versions"] = {k: v for k, v in host_versions(python).items() if k in ("torch", "gradio", "numpy", "pillow", "diffusers")}
    out = ROOT / "benchmarks" / "hosts" / f"{'-'.join([kind, *(f.strip('-') for f in extra_flags)])}-cpu.json"
    write_artefact(out, shlex.join(["python", "tests/a1111/real_webui.py", kind, "WEBUI_ROOT", "WEBUI_PYTHON", *extra_flags]), "cpu", report)
    print(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
