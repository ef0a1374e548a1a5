"""Drive the standalone app in headless Chromium: upload, protect with builtin:tiny, download, check.

    python tests/ui/drive_standalone.py [--python PY] [--screenshot docs/ui/standalone.png] [--steps 2]

The server (`launch_app`, bound to 127.0.0.1 on a free port) runs in a subprocess of `--python`
(default: this interpreter; a gradio 3.41.2/4.40.0 venv from gradio_envs.py shows the hosts'
front-ends). The browser is the system Chromium (/usr/bin/chromium) driven by playwright-python;
`playwright install` is never needed. Prints one JSON line; exit 0 when the downloaded file has
the input's size and stays within the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("UNLEARNABLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
BUDGET = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_image(path: Path) -> np.ndarray:
    """A real photograph crop (scikit-image's astronaut) when available, else a textured gradient."""
    try:
        import skimage

        from shared_core.images import load_image

        rgb = load_image(Path(skimage.__file__).parent / "data" / "astronaut.png").rgb[30:126, 170:290]
    except ImportError:
        rng = np.random.default_rng(0)
        rgb = (np.linspace(0, 200, 120)[None, :, None] * np.ones((96, 1, 3)) + rng.integers(0, 50, (96, 120, 3))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def start_server(python: str, port: int, outputs: Path) -> subprocess.Popen:
    code = f"from shared_core.ui.app import launch_app; launch_app(port={port}, outputs_dir={str(outputs)!r}, device='cpu')"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([python, "-c", code], cwd=outputs.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError("server exited:\n" + server.stdout.read()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise TimeoutError("the app did not start within 240 s")


def drive(url: str, image_path: Path, steps: int, screenshot: Path, work: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(work / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            accept_downloads=True, viewport={"width": 1400, "height": 1000},
        )
        page = context.new_page()
        page.goto(url, wait_until="networkidle")
        page.locator("#unlearnable_protect_files input[type=file]").set_input_files(str(image_path))
        page.locator("#unlearnable_protect_files").get_by_text(image_path.name).first.wait_for(timeout=60_000)
        steps_box = page.locator("#unlearnable_protect_steps input[type=number]")
        steps_box.fill(str(steps))
        steps_box.press("Enter")
        steps_box.blur()
        page.locator("#unlearnable_protect_run").click()
        # one table row per file: the name in one cell, the download link (text: name or size) in another
        link = page.locator("#unlearnable_protect_downloads tr", has_text=image_path.stem).locator("a").first
        link.wait_for(timeout=300_000)
        page.locator("#unlearnable_protect_gallery img").first.wait_for(timeout=60_000)
        with page.expect_download(timeout=60_000) as info:
            link.click()
        download = info.value
        target = work / "downloaded" / download.suggested_filename
        target.parent.mkdir(parents=True, exist_ok=True)
        download.save_as(str(target))
        status = page.locator("#unlearnable_protect_status").first.inner_text()
        table = page.locator("#unlearnable_protect_table").first.inner_text()
        page.wait_for_timeout(500)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        context.close()
    return {"downloaded": str(target), "status": status, "table": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server (its gradio is tested)")
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "ui" / "standalone.png"))
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "inputs" / "astronaut.png"
        original = sample_image(source)
        port = free_port()
        server = start_server(args.python, port, work / "outputs")
        try:
            result = drive(f"http://127.0.0.1:{port}/", source, args.steps, Path(args.screenshot), work)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        got = np.asarray(Image.open(result["downloaded"]).convert("RGB")).astype(int)
        linf = int(np.abs(got - original.astype(int)).max()) if got.shape == original.shape else None
        gradio_version = subprocess.run([args.python, "-c", "import gradio; print(gradio.__version__)"],
                                        capture_output=True, text=True).stdout.strip()
        report = {"gradio": gradio_version, "input_size": list(original.shape), "downloaded_size": list(got.shape),
                  "linf": linf, "budget": BUDGET, "screenshot": args.screenshot, "demo_note_shown": "Demo model" in result["status"]}
        print(json.dumps(report))
        ok = got.shape == original.shape and linf is not None and 0 < linf <= BUDGET and report["demo_note_shown"]
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
