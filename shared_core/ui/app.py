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
from .hooks import StandaloneHooks, UIDefaults, UIHooks, default_keys_dir

ELEM = "unlearnable"  # prefix of every elem_id, so the tab never collides with the host's page


def _elem(name: str) -> str:
    return f"{ELEM}_{name}"


def _api_name(hooks: UIHooks, name: str) -> str | bool:
    """The buttons take server paths: they are named API endpoints only where the user asked for an API."""
    return name if hooks.api_endpoints else False


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
            optout = gr.Checkbox(value=True, label="Write a machine-readable 'do not train' opt-out into the files "
                                 "(XMP/IPTC data-mining prohibition and TDMRep; metadata only, pixels unchanged)",
                                 elem_id=_elem("protect_optout"))  # fmt: skip
            with gr.Row():
                creator = gr.Textbox(label="Creator (optional)", elem_id=_elem("protect_creator"))
                copyright_notice = gr.Textbox(label="Copyright notice (optional)", placeholder="(c) 2026 Your Name",
                                              elem_id=_elem("protect_copyright"))  # fmt: skip
                contact = gr.Textbox(label="Contact e-mail or URL (optional)", elem_id=_elem("protect_contact"))
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
            gallery = gr.Gallery(label="Protected images", columns=3, height=360, object_fit="contain", elem_id=_elem("protect_gallery"))
            downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id=_elem("protect_downloads"))
            table = gr.Dataframe(headers=handlers.TABLE_HEADERS, interactive=False, wrap=True, elem_id=_elem("protect_table"))

    def protect(files_value, folder_value, model_value, model_path_value, method_value, budget_value, steps_value,
                robust_value, prompt_value, fmt_value, seed_value, batch_value, optout_value=True, creator_value="",
                copyright_value="", contact_value="", progress=gr.Progress()):  # noqa: B008  (how gradio injects progress)
        try:
            result = handlers.run_protect(
                hooks, files=files_value, folder=folder_value or "",
                model=(model_path_value or "").strip() or model_value or "",
                method=method_value, budget=budget_value, steps=steps_value, robust=robust_value or [],
                prompt=prompt_value or "", fmt=fmt_value or "png", seed=int(seed_value or 0), batch_size=int(batch_value or 4),
                optout=bool(optout_value), creator=creator_value or "", copyright=copyright_value or "", contact=contact_value or "",
                progress=_progress_adapter(progress),
            )
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        rows = result.table or [["", "nothing finished", None, None, None, None, ""]]
        return result.gallery, (result.downloads or None), rows, result.status

    run.click(
        protect,
        inputs=[files, folder, model, model_path, method_box, budget, steps, robust, prompt, fmt, seed, batch_size, optout, creator,
                copyright_notice, contact],
        outputs=[gallery, downloads, table, status],
        api_name=_api_name(hooks, "protect"),
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
            gallery = gr.Gallery(label="Marked images", columns=3, height=360, object_fit="contain", elem_id=_elem("mark_gallery"))
            key_file = gr.File(label="Key file (keep it private)", file_count="multiple", interactive=False, elem_id=_elem("mark_key"))

    def mark(dataset_value, out_value, rate_value, template_value, trigger_value, seed_value, progress=gr.Progress()):  # noqa: B008  (how gradio injects progress)
        try:
            result = handlers.run_mark(
                hooks, dataset_dir=dataset_value or "", out_dir=out_value or "", rate=rate_value, template=template_value,
                trigger=trigger_value or "", seed=int(seed_value or 0), progress=_progress_adapter(progress),
            )
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        return result.status, result.gallery, (result.downloads or None)

    run.click(mark, inputs=[dataset, out_dir, rate, template, trigger, seed], outputs=[status, gallery, key_file], api_name=_api_name(hooks, "mark"))


def _verify_section(hooks: UIHooks) -> None:
    gr.Markdown(
        "Check a suspect model or LoRA with the keys written by Mark: images are generated with and without each trigger "
        "(same captions and seeds) and searched for the template; each key gets a verdict with a p-value (exact paired test, "
        "Holm-corrected across keys) and the run an HTML report that names keys, never their triggers."
    )
    choices = list(hooks.model_choices())
    with gr.Row():
        with gr.Column():
            key_file = gr.File(label="Key files (from Mark; several owners' keys are tested in one pass)", file_count="multiple",
                               file_types=[".json"], elem_id=_elem("verify_key"))
            key_path = gr.Textbox(label="...or their paths or folders, one per line", lines=2, elem_id=_elem("verify_key_path"))
            model = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                label="Suspect model (or the base model of the suspect LoRA)", elem_id=_elem("verify_model"))
            model_path = gr.Textbox(label="...or a model path (diffusers folder or .safetensors)", elem_id=_elem("verify_model_path"))
            lora_file = gr.File(label="Suspect LoRA (optional; the model without it is the base-model control)", file_count="single",
                                file_types=[".safetensors"], elem_id=_elem("verify_lora"))
            lora_label = "...or its path" if hooks.host == "standalone" else "...or its path or name (in the web UI it must be in the Lora folder)"
            lora_path = gr.Textbox(label=lora_label, elem_id=_elem("verify_lora_path"))
            lora_strength = gr.Slider(minimum=0, maximum=2, step=0.05, value=1.0, label="LoRA strength", elem_id=_elem("verify_lora_strength"))
            n = gr.Slider(minimum=4, maximum=256, step=1, value=64, label="Images per arm (at most; a key stops once settled)", elem_id=_elem("verify_n"))
            with gr.Accordion("More options", open=False):
                captions = gr.Textbox(label="Captions: the dataset folder or a text file, one per line (optional)",
                                      elem_id=_elem("verify_captions"))
                steps = gr.Slider(minimum=1, maximum=150, step=1, value=25, label="Sampling steps", elem_id=_elem("verify_steps"))
                guidance = gr.Slider(minimum=1, maximum=20, step=0.5, value=5.0, label="Guidance scale", elem_id=_elem("verify_guidance"))
                resolution = gr.Number(value=0, precision=0, label="Resolution in pixels (0: the model's)", elem_id=_elem("verify_resolution"))
                detector = gr.Radio(choices=["matcher", "cnn"], value="matcher", label="Template detector", elem_id=_elem("verify_detector"))
                alpha = gr.Number(value=0.01, label="Significance level", elem_id=_elem("verify_alpha"))
                seed = gr.Number(value=0, precision=0, label="First seed", elem_id=_elem("verify_seed"))
            with gr.Row():
                run = gr.Button("Verify", variant="primary", elem_id=_elem("verify_run"))
                cancel = gr.Button("Cancel", variant="stop", elem_id=_elem("verify_cancel"))
        with gr.Column():
            status = gr.Markdown("", elem_id=_elem("verify_status"))
            gallery = gr.Gallery(label="Generated (first of each arm)", columns=4, height=360, object_fit="contain",
                                 elem_id=_elem("verify_gallery"))
            report = gr.File(label="Report", file_count="multiple", interactive=False, elem_id=_elem("verify_report"))

    def run_verify(key_value, key_path_value, model_value, model_path_value, lora_value, lora_path_value, strength_value, n_value,
                   captions_value, steps_value, guidance_value, resolution_value, detector_value, alpha_value, seed_value,
                   progress=gr.Progress()):  # noqa: B008  (how gradio injects progress)
        try:
            result = handlers.run_verify(
                hooks, key_file=key_value, key_path=key_path_value or "", model=(model_path_value or "").strip() or model_value or "",
                lora_file=lora_value, lora_path=lora_path_value or "", lora_strength=strength_value, n=int(n_value),
                steps=int(steps_value), guidance=guidance_value, resolution=int(resolution_value or 0), detector=detector_value,
                captions=captions_value or "", alpha=float(alpha_value or 0.01), seed=int(seed_value or 0),
                progress=_progress_adapter(progress),
            )
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        return result.status, result.gallery, (result.downloads or None)

    run.click(
        run_verify,
        inputs=[key_file, key_path, model, model_path, lora_file, lora_path, lora_strength, n, captions, steps, guidance, resolution,
                detector, alpha, seed],
        outputs=[status, gallery, report],
        api_name=_api_name(hooks, "verify"),
    )
    cancel.click(lambda: hooks.interrupt(), inputs=None, outputs=None, queue=False)


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

    run.click(inspect, inputs=[upload, path, triggers], outputs=[text, report_file], api_name=_api_name(hooks, "inspect_lora"))


def _mimicry_section(hooks: UIHooks) -> None:
    gr.Markdown(
        "Check protection on your own model: one LoRA is trained on your clean images and one on the protected copies, with "
        "identical settings and seeds; both and the base model generate the same prompts and seeds. The report shows how much "
        "less the protected LoRA learned (distance of samples to your images, and loss on your clean images)."
    )
    choices = list(hooks.model_choices())
    methods = ["", *handlers.method_descriptions()]
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(choices=choices, value=choices[0] if choices else None, label="Model the LoRAs are trained on",
                                elem_id=_elem("mimicry_model"))
            model_path = gr.Textbox(label="...or a model path (diffusers folder or .safetensors)", elem_id=_elem("mimicry_model_path"))
            clean = gr.Textbox(label="Folder of your clean images", elem_id=_elem("mimicry_clean"))
            protected = gr.Textbox(label="Folder of their protected copies (same file names)", elem_id=_elem("mimicry_protected"))
            method = gr.Dropdown(choices=methods, value="", label="...or protect the clean folder first with", elem_id=_elem("mimicry_method"))
            prompt = gr.Textbox(value="a picture in the style of sks", label="Caption and prompt", elem_id=_elem("mimicry_prompt"))
            lora_steps = gr.Slider(minimum=1, maximum=5000, step=1, value=500, label="LoRA training steps", elem_id=_elem("mimicry_steps"))
            with gr.Accordion("More options", open=False):
                lr = gr.Number(value=1e-4, label="LoRA learning rate", elem_id=_elem("mimicry_lr"))
                n = gr.Slider(minimum=1, maximum=64, step=1, value=16, label="Samples per arm", elem_id=_elem("mimicry_n"))
                resolution = gr.Number(value=0, precision=0, label="Resolution in pixels (0: the model's)", elem_id=_elem("mimicry_resolution"))
                seeds = gr.Textbox(value="0", label="Seeds (comma-separated; several give the spread)", elem_id=_elem("mimicry_seeds"))
                budget = gr.Slider(minimum=1, maximum=32, step=1, value=8, label="Budget when protecting here", elem_id=_elem("mimicry_budget"))
                protect_steps = gr.Slider(minimum=1, maximum=1000, step=1, value=100, label="PGD steps when protecting here",
                                          elem_id=_elem("mimicry_protect_steps"))
            with gr.Row():
                run = gr.Button("Run mimicry test", variant="primary", elem_id=_elem("mimicry_run"))
                cancel = gr.Button("Cancel", variant="stop", elem_id=_elem("mimicry_cancel"))
        with gr.Column():
            status = gr.Markdown("", elem_id=_elem("mimicry_status"))
            gallery = gr.Gallery(label="Base, clean LoRA, protected LoRA (same seeds)", columns=4, height=360, object_fit="contain",
                                 elem_id=_elem("mimicry_gallery"))
            report = gr.File(label="Report", file_count="multiple", interactive=False, elem_id=_elem("mimicry_report"))

    def run_check(model_value, model_path_value, clean_value, protected_value, method_value, prompt_value, steps_value, lr_value, n_value,
                  resolution_value, seeds_value, budget_value, protect_steps_value, progress=gr.Progress()):  # noqa: B008  (how gradio injects progress)
        try:
            result = handlers.run_check_protection(
                hooks, model=(model_path_value or "").strip() or model_value or "", clean_folder=clean_value or "",
                protected_folder=protected_value or "", method=method_value or "", budget=float(budget_value), protect_steps=int(protect_steps_value),
                prompt=prompt_value or "", lora_steps=int(steps_value), lr=float(lr_value or 1e-4), resolution=int(resolution_value or 0),
                n=int(n_value), seeds=seeds_value or "0", progress=_progress_adapter(progress),
            )  # fmt: skip
        except (UnlearnableError, ValueError, OSError) as exc:
            raise _user_error(exc) from None
        return result.status, result.gallery, (result.downloads or None)

    run.click(
        run_check,
        inputs=[model, model_path, clean, protected, method, prompt, lora_steps, lr, n, resolution, seeds, budget, protect_steps],
        outputs=[status, gallery, report],
        api_name=_api_name(hooks, "check_protection"),
    )
    cancel.click(lambda: hooks.interrupt(), inputs=None, outputs=None, queue=False)


def build_ui(hooks: UIHooks, *, title: str = "Unlearnable") -> gr.Blocks:
    """The whole UI as one gr.Blocks: Protect, Mark, Verify, Mimicry test and Inspect LoRA sections."""
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        if hooks.host == "standalone":
            gr.Markdown("# Unlearnable\nProtect images against diffusion-model training, trace unauthorised training, inspect LoRAs.")
        with gr.Tabs(elem_id=_elem("sections")):
            with gr.Tab("Protect", elem_id=_elem("tab_protect")):
                _protect_section(hooks)
            with gr.Tab("Mark", elem_id=_elem("tab_mark")):
                _mark_section(hooks)
            with gr.Tab("Verify", elem_id=_elem("tab_verify")):
                _verify_section(hooks)
            with gr.Tab("Mimicry test", elem_id=_elem("tab_mimicry")):
                _mimicry_section(hooks)
            with gr.Tab("Inspect LoRA", elem_id=_elem("tab_lora")):
                _inspect_section(hooks)
    return blocks


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'USER:PASS' -> (user, password) for gradio's auth; None when not given."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UnlearnableError("--auth takes USER:PASS (both non-empty)")
    return user, password


def upload_folder() -> Path:
    """Where gradio keeps uploaded files (GRADIO_TEMP_DIR, else <temp>/gradio)."""
    import os
    import tempfile

    from gradio import utils

    if hasattr(utils, "get_upload_folder"):
        return Path(utils.get_upload_folder()).resolve()
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


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
    allow_dirs: list[str | Path] | None = None,
    keys_dir: str | Path | None = None,
    auth: str | None = None,
    api: bool = False,
):
    """Serve the standalone app (bound to 127.0.0.1 unless `host` says otherwise); returns the Blocks.

    Paths typed into the app must lie in the outputs folder, the upload area, the keys folder or an
    `allow_dirs` entry; Mark writes only under the outputs folder. Anything reachable from another
    computer (`host` not loopback, or `share`) needs `auth` ("USER:PASS"). `api` names the buttons as
    API endpoints. `block=False` returns once the server is up (tests); `demo.close()` stops it.
    """
    credentials = parse_auth(auth)
    if (share or host not in LOOPBACK_HOSTS) and credentials is None:
        where = "--share" if share else f"--host {host}"
        raise UnlearnableError(
            f"{where} opens the app (which reads and writes files on this computer) to other computers: "
            "give --auth USER:PASS as well"
        )
    out = Path(outputs_dir or Path.cwd() / "unlearnable-outputs").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    keys = (Path(keys_dir).expanduser() if keys_dir else default_keys_dir()).resolve()
    allowed = (out, upload_folder(), keys, *(Path(d).expanduser().resolve() for d in allow_dirs or ()))
    missing = [str(d) for d in allowed[3:] if not d.is_dir()]
    if missing:
        raise UnlearnableError(f"--allow-dir: no such folder: {', '.join(missing)}")
    hooks = StandaloneHooks(outputs_dir=out, device=device, models=models, defaults=defaults,
                            allowed_dirs=allowed, keys_dir=keys, api_endpoints=api)
    demo = build_ui(hooks)
    demo.queue()
    demo.launch(
        server_name=host, server_port=port, share=share, allowed_paths=[str(out)], inbrowser=open_browser,
        prevent_thread_lock=not block, show_error=True, auth=credentials,
    )
    return demo
