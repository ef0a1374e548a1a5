"""The standalone app in headless Chromium (tests/ui/drive_standalone.py): upload, protect, download.

Needs the system Chromium (/usr/bin/chromium; Debian: apt-get install -y chromium) and
playwright-python; skipped without them unless UNLEARNABLE_REQUIRE_BROWSER=1. Also drives the app
served by A1111's gradio 3.41.2 when that venv exists (tests/ui/gradio_envs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HERE, load_by_path, require_gradio, skip_or_fail

gradio_envs = load_by_path(HERE / "gradio_envs.py", "unlearnable_gradio_envs")


@pytest.mark.parametrize("server", ["current", "3.41.2"])
def test_protect_upload_and_download_in_chromium(tmp_path, server):
    require_gradio()
    drive = load_by_path(HERE / "drive_standalone.py", "unlearnable_drive_standalone")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("playwright is not installed (pip install playwright; no `playwright install` needed)", "UNLEARNABLE_REQUIRE_BROWSER")
    if not Path(drive.CHROMIUM).exists():
        skip_or_fail(f"no Chromium at {drive.CHROMIUM}", "UNLEARNABLE_REQUIRE_BROWSER")
    python = sys.executable if server == "current" else str(gradio_envs.env_python(server))
    if not Path(python).exists():
        skip_or_fail(f"no gradio {server} venv; run `python tests/ui/gradio_envs.py create`")
    if server != "current":
        gradio_envs.link_project(server)
    shot = tmp_path / "standalone.png"
    run = subprocess.run([sys.executable, str(HERE / "drive_standalone.py"), "--python", python, "--screenshot", str(shot)],
                         capture_output=True, text=True, timeout=580)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["downloaded_size"] == report["input_size"] and 0 < report["linf"] <= report["budget"]
    assert report["demo_note_shown"] and shot.stat().st_size > 10_000
