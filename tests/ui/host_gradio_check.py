"""Build the A1111 tab the way A1111 does and run Protect through it, in this interpreter's gradio.

Run by test_a1111_tab.py in-process (current gradio) and, as a script, inside the venvs with
A1111's gradio 3.41.2 and Forge's 4.40.0 (see gradio_envs.py):

    <venv>/bin/python tests/ui/host_gradio_check.py     # prints one JSON line, exit 0 on success
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def find_fn(blocks, api_name: str):
    """The Python function behind the event with this api_name (gradio 3, 4 and 5+ keep it differently)."""
    fns = blocks.fns
    if isinstance(fns, dict):
        candidates = list(fns.values())
    else:
        candidates = list(fns)
        for index, dependency in enumerate(getattr(blocks, "dependencies", [])):
            if isinstance(dependency, dict) and dependency.get("api_name") == api_name:
                return candidates[index].fn
    for block_fn in candidates:
        if getattr(block_fn, "api_name", None) == api_name:
            return block_fn.fn
    raise LookupError(api_name)


def upload_value(gr, path: Path):
    """What a gr.File(file_count='multiple') hands the function for one upload in this gradio."""
    if int(gr.__version__.split(".")[0]) < 4:
        return [tempfile._TemporaryFileWrapper(open(path, "rb"), str(path), delete=False)]  # gradio 3: tempfile objects
    return [str(path)]


def check(webui, work: Path) -> dict:
    """Register like A1111, build settings and tab, render it in an outer Blocks, protect one image."""
    import gradio as gr
    import numpy as np
    from PIL import Image

    before = list(sys.path)
    sys.path.insert(0, str(ROOT))  # A1111 puts the extension folder on sys.path while loading scripts/
    spec = importlib.util.spec_from_file_location("unlearnable_extension_script", ROOT / "scripts" / "unlearnable.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.path[:] = before  # ... and takes it away again

    registered = webui.script_callbacks.registered
    assert len(registered["ui_settings"]) == 1 and len(registered["ui_tabs"]) == 1, registered
    registered["ui_settings"][0]()
    labels = webui.shared.opts.data_labels
    assert {"unlearnable_method", "unlearnable_budget", "unlearnable_steps", "unlearnable_outdir"} <= set(labels)
    assert all(labels[k].section == ("unlearnable", "Unlearnable") for k in labels if k.startswith("unlearnable_"))
    webui.shared.opts.data["unlearnable_outdir"] = str(work / "outputs")
    webui.shared.opts.data["unlearnable_steps"] = 3

    [(blocks, title, elem_id)] = registered["ui_tabs"][0]()
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("Unlearnable", "unlearnable")
    with gr.Blocks(analytics_enabled=False) as page:  # how A1111 places extension tabs
        with gr.Tabs():
            with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()
    config = page.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"unlearnable_protect_run", "unlearnable_protect_cancel", "unlearnable_mark_run", "unlearnable_verify_run",
            "unlearnable_lora_run"} <= ids
    steps_default = next(c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "unlearnable_protect_steps")
    assert steps_default == 3, steps_default  # defaults come from A1111's settings
    model_dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "unlearnable_protect_model")
    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in model_dropdown["props"]["choices"]]
    assert choices[0].startswith("Loaded checkpoint (tiny-ldm"), choices

    rng = np.random.default_rng(0)
    image = (np.linspace(0, 255, 80)[None, :, None] * np.ones((72, 1, 3)) * 0.8 + rng.integers(0, 40, (72, 80, 3))).astype(np.uint8)
    source = work / "inputs" / "gradient.png"
    source.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(source)
    protect = find_fn(blocks, "protect")
    before_weights = {k: v.clone() for k, v in webui.shared.sd_model.state_dict().items()}
    gallery, downloads, rows, status = protect(
        upload_value(gr, source), "", choices[0], "", "advdm", 6, 2, [], "", "png", 0, 4, progress=lambda *a, **k: None
    )
    assert webui.shared.state.log == ["begin unlearnable", "end unlearnable"], webui.shared.state.log
    after_weights = webui.shared.sd_model.state_dict()
    assert all((before_weights[k] == after_weights[k]).all() for k in before_weights)
    png = Path(next(d for d in downloads if d.endswith(".png")))
    out = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert out.shape == image.shape and 0 < np.abs(out - image).max() <= 6, np.abs(out - image).max()
    assert png.is_relative_to(work / "outputs") and rows[0][1] == "protected" and "Demo model" not in status
    return {"gradio": gr.__version__, "components": len(config["components"]), "linf": int(np.abs(out - image).max()),
            "model": choices[0]}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("unlearnable_webui_stubs", HERE / "webui_stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    webui = stubs.install_modules(sys.modules, sd_model=stubs.TinyLDM())
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(check(webui, Path(work))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


