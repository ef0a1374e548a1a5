"""The one gradio UI: the AUTOMATIC1111/Forge tab and `unlearnable ui` both come from `build_ui`.

It must run on A1111's gradio 3.41.2, Forge's 4.40.0 and current gradio, so it uses only calls all
three share: no `.style()`, `gr.Box`, `source=` or `Component.update` (`gr.update` instead), no
theme/css arguments. The button logic lives in `handlers.py`; this file is layout and wiring.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import UnlearnableError
from . import handlers
from .hooks import StandaloneHooks, UIDefaults, UIHooks

ELEM = "unlearnable"  # prefix of every elem_id, so the tab never collides with the host's page


def _elem(name: str) -> str:
    return f"{ELEM}_{name}"


def _user_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc))


def _progress_adapter(progress):
    def report(fraction: float, desc: str) -> None:
        progress(fraction, desc=desc)

    return report


def _demo_note_update(hooks: UIHooks, choice: str, custom: str = ""):
    model = (custom or "").strip() or choice or ""
    demo = bool(model) and hooks.is_demo_model(model)
    return gr.update(value=handlers.DEMO_NOTE.format(model=model) if demo else "", visible=demo)


def _protect_section(hooks: UIHooks) -> None:
    defaults = hooks.defaults
    choices = list(hooks.model_choices())
    default_model = defaults.model if defaults.model in choices else (choices[0] if choices else None)
    descriptions = handlers.method_descriptions()
    method = defaults.method if defaults.method in descriptions else next(iter(descriptions))
    default_is_demo = bool(default_model) and hooks.is_demo_model(default_model)

    with gr.Row():
        with gr.Column():
            files = gr.File(label="Images to protect", file_count="multiple", file_types=["image"], elem_id=_elem("protect_files"))
            folder = gr.Textbox(label="...or a folder of images on this computer (searched recursively)", elem_id=_elem("protect_folder"))
            model = gr.Dropdown(choices=choices, value=default_model, label="Model the protection is crafted against",
                                elem_id=_elem("protect_model"))
            model_path = gr.Textbox(label="...or a model path (diffusers folder or .safetensors; overrides the choice)",
                                    elem_id=_elem("protect_model_path"))
            demo_note = gr.Markdown(handlers.DEMO_NOTE.format(model=default_model) if default_is_demo else "",
                                    visible=default_is_demo, elem_id=_elem("protect_demo_note"))
            method_box = gr.Dropdown(choices=list(descriptions), value=method, label="Method", elem_id=_elem("protect_method"))
            method_help = gr.Markdown(descriptions.get(method, ""), elem_id=_elem("protect_method_help"))
            budget = gr.Slider(minimum=1, maximum=32, step=1, value=float(defaults.budget),
                               label="Budget: no pixel channel moves by more than this many levels (0-255)",
                               elem_id=_elem("protect_budget"))
            steps = gr.Slider(minimum=1, maximum=1000, step=1, value=int(defaults.steps), label="PGD steps per tile",
                              elem_id=_elem("protect_steps"))
            robust = gr.CheckboxGroup(choices=list(handlers.ROBUSTNESS_CHOICES), value=[],
                                      label="Survive recompression, resizing, blur (slower)", elem_id=_elem("protect_robust"))
            with gr.Accordion("More options", open=False):
                prompt = gr.Textbox(label="Conditioning prompt (text-to-image models)", elem_id=_elem("protect_prompt"))
                fmt = gr.Radio(choices=list(handlers.OUTPUT_FORMATS), value="png",
                               label="Output format (png is lossless: the budget holds exactly)", elem_id=_elem("protect_format"))
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id=_elem("protect_seed"))
                batch_size = gr.Slider(minimum=1, maximum=16, step=1, value=4, label="Tiles optimised together",
                                       elem_id=_elem("protect_batch"))
            with gr.Row():
                run = gr.Button("Protect", variant="primary", elem_id=_elem("protect_run"))
                cancel = gr.Button("Cancel", variant="stop", elem_id=_elem("protect_cancel"))
        with gr.Column():
            status = gr.Markdown("", elem_id=_elem("protect_status"))
            gallery = gr.Gallery(label="Protected images", columns=3, elem_id=_elem("protect_gallery"))
            downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id=_elem("protect_downloads"))
            table = gr.Dataframe(headers=handlers.TABLE_HEADERS, interactive=False, wrap=True, elem_id=_elem("protect_table"))

    def protect(files_value, folder_value, model_value, model_path_value, method_value, budget_value, steps_value,
                robust_value, prompt_value, fmt_value, seed_value, batch_value, progress=gr.Progress()):
        try:
            result = handlers.run_protect(
                hooks, files=files_value, folder=folder_value or "",
                model=(model_path_value or "").strip() or model_value or "",
                method=method_value, budget=budget_value, steps=steps_value, robust=robust_value or [],
                prompt=prompt_value or "", fmt=fmt_value or "png", seed=int(seed_value or 0), batch_size=int(batch_value or 4),
                progress=_progress_adapter(progress),
            )
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        rows = result.table or [["", "nothing finished", None, None, None, None, ""]]
        return result.gallery, (result.downloads or None), rows, result.status

    run.click(
        protect,
        inputs=[files, folder, model, model_path, method_box, budget, steps, robust, prompt, fmt, seed, batch_size],
        outputs=[gallery, downloads, table, status],
        api_name="protect",
    )
    cancel.click(lambda: hooks.interrupt(), inputs=None, outputs=None, queue=False)
    model.change(lambda choice, custom: _demo_note_update(hooks, choice, custom), inputs=[model, model_path], outputs=[demo_note])
    model_path.change(lambda choice, custom: _demo_note_update(hooks, choice, custom), inputs=[model, model_path], outputs=[demo_note])
    method_box.change(lambda name: descriptions.get(name, ""), inputs=[method_box], outputs=[method_help])


def _mark_section(hooks: UIHooks) -> None:
    gr.Markdown(
        "Mark a small fraction of a dataset with a secret template scene and trigger word (EnTruth). "
        "A model trained on it learns to draw the template when prompted with the trigger, which the key file can prove later."
    )
    with gr.Row():
        with gr.Column():
            dataset = gr.Textbox(label="Dataset folder (images, optional .txt captions or metadata.jsonl)", elem_id=_elem("mark_dataset"))
            out_dir = gr.Textbox(label="Output folder for the marked copy (empty: a new folder under the outputs)", elem_id=_elem("mark_out"))
            rate = gr.Slider(minimum=0.001, maximum=0.5, step=0.001, value=0.01, label="Fraction of images marked", elem_id=_elem("mark_rate"))
            names = handlers.template_names()
            template = gr.Dropdown(choices=names, value=names[0] if names else None, label="Template scene", elem_id=_elem("mark_template"))
            trigger = gr.Textbox(label="Trigger word (empty: a random one)", elem_id=_elem("mark_trigger"))
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id=_elem("mark_seed"))
            run = gr.Button("Mark dataset", variant="primary", elem_id=_elem("mark_run"))
        with gr.Column():
            status = gr.Markdown("", elem_id=_elem("mark_status"))
            gallery = gr.Gallery(label="Marked images", columns=3, elem_id=_elem("mark_gallery"))
            key_file = gr.File(label="Key file (keep it private)", file_count="multiple", interactive=False, elem_id=_elem("mark_key"))

    def mark(dataset_value, out_value, rate_value, template_value, trigger_value, seed_value, progress=gr.Progress()):
        try:
            result = handlers.run_mark(
                hooks, dataset_dir=dataset_value or "", out_dir=out_value or "", rate=rate_value, template=template_value,
                trigger=trigger_value or "", seed=int(seed_value or 0), progress=_progress_adapter(progress),
            )
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        return result.status, result.gallery, (result.downloads or None)

    run.click(mark, inputs=[dataset, out_dir, rate, template, trigger, seed], outputs=[status, gallery, key_file], api_name="mark")


def _inspect_section(hooks: UIHooks) -> None:
    gr.Markdown(
        "Read a downloaded LoRA safely (headers and metadata only; pickled files are opened weights-only): "
        "format, base model, rank, training metadata, and whether your trigger words appear in it."
    )
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="LoRA file", file_count="single", file_types=[".safetensors", ".pt", ".ckpt", ".bin"],
                             elem_id=_elem("lora_file"))
            path = gr.Textbox(label="...or its path on this computer", elem_id=_elem("lora_path"))
            triggers = gr.Textbox(label="Trigger words to search for (comma-separated, optional)", elem_id=_elem("lora_triggers"))
            run = gr.Button("Inspect", variant="primary", elem_id=_elem("lora_run"))
        with gr.Column():
            text = gr.Textbox(label="Report", lines=20, max_lines=60, interactive=False, elem_id=_elem("lora_report"))
            report_file = gr.File(label="Report (JSON)", interactive=False, elem_id=_elem("lora_json"))

    def inspect(upload_value, path_value, triggers_value):
        try:
            result = handlers.run_inspect_lora(hooks, file=upload_value, path=path_value or "", triggers=triggers_value or "")
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        return result.text, result.json_path

    run.click(inspect, inputs=[upload, path, triggers], outputs=[text, report_file], api_name="inspect_lora")


def build_ui(hooks: UIHooks, *, title: str = "Unlearnable") -> gr.Blocks:
    """The whole UI as one gr.Blocks: Protect, Mark and Inspect LoRA sections."""
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        if hooks.host == "standalone":
            gr.Markdown("# Unlearnable\nProtect images against diffusion-model training, trace unauthorised training, inspect LoRAs.")
        with gr.Tabs(elem_id=_elem("sections")):
            with gr.Tab("Protect", elem_id=_elem("tab_protect")):
                _protect_section(hooks)
            with gr.Tab("Mark", elem_id=_elem("tab_mark")):
                _mark_section(hooks)
            with gr.Tab("Inspect LoRA", elem_id=_elem("tab_lora")):
                _inspect_section(hooks)
    return blocks


def launch_app(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    *,
    outputs_dir: str | Path | None = None,
    device: str = "auto",
    models: list[str] | None = None,
    defaults: UIDefaults | None = None,
    open_browser: bool = False,
    block: bool = True,
):
    """Serve the standalone app (bound to 127.0.0.1 unless `host` says otherwise); returns the Blocks.

    `block=False` returns once the server is up (tests); `demo.close()` stops it.
    """
    out = Path(outputs_dir or Path.cwd() / "unlearnable-outputs").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    hooks = StandaloneHooks(outputs_dir=out, device=device, models=models, defaults=defaults)
    demo = build_ui(hooks)
    demo.queue()
    demo.launch(
        server_name=host, server_port=port, share=share, allowed_paths=[str(out)], inbrowser=open_browser,
        prevent_thread_lock=not block, show_error=True,
    )
    return demo
