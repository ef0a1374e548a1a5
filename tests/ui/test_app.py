"""The standalone app (`unlearnable ui`) with the current gradio: layout, handler, and a real HTTP round trip."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import HERE, ROOT, load_by_path, require_gradio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_source_avoids_calls_missing_from_a_host_gradio():
    import ast

    for path in [*(ROOT / "shared_core" / "ui").glob("*.py"), *(ROOT / "a1111_extension").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr != "Box", f"{path.name}:{node.lineno} uses gr.Box"
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute):
                    assert func.attr != "style", f"{path.name}:{node.lineno} uses .style()"
                    if func.attr == "update":
                        assert isinstance(func.value, ast.Name) and func.value.id == "gr", f"{path.name}:{node.lineno}: use gr.update"
                bad = {k.arg for k in node.keywords} & {"source", "theme", "css"}
                assert not bad, f"{path.name}:{node.lineno} passes {bad}"


def test_gradio_is_imported_lazily():
    import subprocess
    import sys

    code = "import sys, shared_core.ui, shared_core.ui.handlers, shared_core.ui.hooks; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "False"


def test_standalone_protect_handler_in_process(tmp_path, photo_file):
    require_gradio()
    from shared_core.ui import StandaloneHooks, build_ui

    check = load_by_path(HERE / "host_gradio_check.py", "unlearnable_host_gradio_check")
    blocks = build_ui(StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu", api_endpoints=True))
    protect = check.find_fn(blocks, "protect")
    gallery, downloads, rows, status = protect([str(photo_file)], "", "builtin:tiny", "", "advdm", 8, 2, ["blur"], "", "png", 0, 4,
                                               progress=lambda *a, **k: None)
    assert rows[0][1] == "protected" and rows[0][2] <= 8 and "Demo model" in status
    assert downloads[0].endswith(".zip") and len(gallery) == 1


def test_launch_app_serves_protect_over_http(tmp_path, photo_file):
    """Start the real server on 127.0.0.1, upload, protect with builtin:tiny, download the result."""
    require_gradio()
    from gradio_client import Client, handle_file

    from shared_core.optout import inspect_image
    from shared_core.ui import launch_app

    port = free_port()
    demo = launch_app(port=port, outputs_dir=tmp_path / "out", device="cpu", block=False, api=True)
    try:
        assert demo.server_name == "127.0.0.1"
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        gallery, downloads, table, status = client.predict(
            [handle_file(str(photo_file))], "", "builtin:tiny", "", "advdm", 6, 2, [], "", "png", 0, 4, True, "Ann Artist", "", "",
            api_name="/protect",
        )
        files = [d["path"] if isinstance(d, dict) else d for d in downloads]
        png = Path(next(f for f in files if f.endswith(".png")))
        original = np.asarray(Image.open(photo_file).convert("RGB")).astype(int)
        protected = np.asarray(Image.open(png).convert("RGB")).astype(int)
        assert protected.shape == original.shape and 0 < np.abs(protected - original).max() <= 6
        assert png.is_relative_to(tmp_path / "downloads")  # it really came over HTTP
        assert "Demo model" in status and "opt-out written: XMP plus:DataMining=DMI-PROHIBITED" in status
        assert inspect_image(png)["xmp"]["creator"] == "Ann Artist"  # the opt-out came down with the file
    finally:
        demo.close()


def test_remote_app_needs_its_login_and_hides_path_endpoints_without_api(tmp_path):
    """Bound to every interface with --auth: no page without the log-in, and no named /protect without --api."""
    require_gradio()
    import httpx
    from gradio_client import Client

    from shared_core.ui import launch_app

    port = free_port()
    demo = launch_app(host="0.0.0.0", port=port, outputs_dir=tmp_path / "out", device="cpu", block=False, auth="owner:s3cret")
    try:
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url + "config").status_code in (401, 403)
        try:
            Client(url, verbose=False)
        except Exception as exc:  # gradio_client raises its own error types for a refused log-in
            assert "auth" in str(exc).lower() or "login" in str(exc).lower() or "401" in str(exc), exc
        else:
            raise AssertionError("the client connected without the log-in")
        client = Client(url, auth=("owner", "s3cret"), verbose=False)
        assert "/protect" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    finally:
        demo.close()
