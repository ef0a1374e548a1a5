"""A1111/Forge specifics: the hooks the shared UI gets, the settings page, the tab callback.

Everything from `modules.*` (and Forge's `backend`) is imported inside functions, so this file
imports outside the web UI too (tests stub the few modules it uses).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from shared_core.ui.hooks import DEFAULT_BUDGET, DEFAULT_METHOD, DEFAULT_STEPS, UIDefaults, UIHooks

T = TypeVar("T")

TAB_TITLE, TAB_ID = "Unlearnable", "unlearnable"
SECTION = ("unlearnable", "Unlearnable")
LOADED_PREFIX = "Loaded checkpoint"
DEFAULT_OUTDIR = str(Path("outputs") / "unlearnable")

#: option key -> (default, label); components are chosen in `on_ui_settings`
OPTIONS = {
    "unlearnable_method": (DEFAULT_METHOD, "Default protection method"),
    "unlearnable_budget": (DEFAULT_BUDGET, "Default budget (L-infinity, 0-255 levels)"),
    "unlearnable_steps": (DEFAULT_STEPS, "Default PGD steps per tile"),
    "unlearnable_outdir": (DEFAULT_OUTDIR, "Output folder (relative to the web UI folder; one outside it must also be in --gradio-allowed-path)"),
}


def option(key: str):
    from modules import shared

    return getattr(shared.opts, key, OPTIONS[key][0])


def is_forge(sd_model=None) -> bool:
    try:
        import backend.memory_management  # noqa: F401  (Forge only)
    except ImportError:
        return False
    return sd_model is None or getattr(sd_model, "forge_objects", None) is not None


def _forge_prepare(sd_model) -> Callable[[], None]:
    def prepare() -> None:
        from backend import memory_management

        objects = sd_model.forge_objects
        memory_management.load_models_gpu([objects.unet, objects.vae.patcher, objects.clip.patcher])

    return prepare


def selected_sd_model():
    """The checkpoint selected in the web UI, loaded if it is not yet.

    A1111's `shared.sd_model` loads it on first access; Forge loads it only when a generation asks
    (`forge_model_reload`), so before the first image its `shared.sd_model` is None.
    """
    from modules import shared

    if is_forge():
        from modules import sd_models

        sd_model, _ = sd_models.forge_model_reload()
        return sd_model
    return shared.sd_model


def api_enabled() -> bool:
    """Whether the web UI was started with --api: only then are the tab's buttons named API endpoints."""
    from modules import shared

    return bool(getattr(getattr(shared, "cmd_opts", None), "api", False))


def loaded_checkpoint_title() -> str:
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None) if getattr(shared, "sd_model", None) is not None else None
    return getattr(info, "title", None) or getattr(shared.opts, "sd_model_checkpoint", None) or "none"


class WebUIHooks(UIHooks):
    """Hooks for the tab: the loaded checkpoint as surrogate, A1111's queue lock and interrupt state."""

    def __init__(self):
        self._cache: tuple[tuple, object] | None = None
        super().__init__(
            get_surrogate=self._get_surrogate,
            model_choices=self._model_choices,
            run_exclusive=self._run_exclusive,
            is_interrupted=self._is_interrupted,
            interrupt=self._interrupt,
            outputs_dir=lambda: option("unlearnable_outdir") or DEFAULT_OUTDIR,
            defaults=UIDefaults(
                method=str(option("unlearnable_method")),
                budget=float(option("unlearnable_budget")),
                steps=int(option("unlearnable_steps")),
            ),
            host="forge" if is_forge() else "a1111",
            make_generators=self._make_generators,
            api_endpoints=api_enabled(),
        )

    def _model_choices(self) -> list[str]:
        from shared_core.surrogates import BUILTIN_MODELS

        return [f"{LOADED_PREFIX} ({loaded_checkpoint_title()})", *BUILTIN_MODELS]

    def _get_surrogate(self, choice: str):

        if choice.startswith(LOADED_PREFIX):
            from .surrogate import WebUISurrogate

            sd_model = selected_sd_model()
            forge = getattr(sd_model, "forge_objects", None)
            key = (id(sd_model), id(getattr(forge, "unet", None)))
            if self._cache is None or self._cache[0] != key:
                self._cache = None
                prepare = _forge_prepare(sd_model) if forge is not None else None
                self._cache = (key, WebUISurrogate(sd_model, name=loaded_checkpoint_title(), prepare=prepare))
            return self._cache[1]
        from modules import devices

        from shared_core.surrogates import load_surrogate

        return load_surrogate(choice, devices.device)

    def _make_generators(self, choice: str, options: dict):
        """Verify on the loaded checkpoint through the web UI's own txt2img (LoRA via its <lora:NAME:w> syntax)."""
        if not choice.startswith(LOADED_PREFIX):
            return None  # a path or builtin: the core's diffusers pipeline, as standalone
        lora_tag = ""
        if options.get("lora"):
            name = lora_network_name(options["lora"])
            lora_tag = f" <lora:{name}:{options.get('lora_strength', 1.0):g}>"
        size = options.get("resolution") or 0
        generate = webui_generator(options["steps"], options["guidance"], size, lora_tag, self._is_interrupted)
        control = webui_generator(options["steps"], options["guidance"], size, "", self._is_interrupted) if lora_tag else None
        return generate, control, {"model": loaded_checkpoint_title(), "host": self.host}

    def _run_exclusive(self, fn: Callable[[], T]) -> T:
        import torch
        from modules import call_queue, shared

        with call_queue.queue_lock:
            shared.state.begin(job="unlearnable")
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    return fn()
            finally:
                shared.state.end()

    @staticmethod
    def _is_interrupted() -> bool:
        from modules import shared

        return bool(shared.state.interrupted)

    @staticmethod
    def _interrupt() -> None:
        from modules import shared

        shared.state.interrupt()


def lora_network_name(lora: str) -> str:
    """The name the web UI knows a LoRA by; refuses unknown ones (they would be skipped silently: a false negative)."""
    import sys

    from shared_core.errors import SettingsError

    name = Path(lora).stem if ("/" in lora or "\\" in lora or lora.endswith(".safetensors")) else lora
    networks = sys.modules.get("networks")  # the built-in Lora extension (A1111 and Forge)
    if networks is not None and hasattr(networks, "list_available_networks"):
        if not getattr(networks, "available_network_aliases", None):
            networks.list_available_networks()
        known = set(getattr(networks, "available_network_aliases", {})) | set(getattr(networks, "available_networks", {}))
        if name in known:
            return name
    raise SettingsError(
        f"LoRA {name!r} is not in the web UI's Lora list: put the file in models/Lora (and refresh the Lora tab), "
        "or verify it with a model path instead of the loaded checkpoint"
    )


def webui_generator(steps: int, guidance: float, size: int, prompt_suffix: str, interrupted: Callable[[], bool]):
    """A verify `Generate` over the web UI's txt2img with the loaded checkpoint (no files saved)."""

    def generate(prompts: list[str], seeds: list[int]):
        import numpy as np
        from modules import processing, shared

        from shared_core.ui.handlers import Cancelled

        kwargs = {"width": size, "height": size} if size else {}
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=[prompt + prompt_suffix for prompt in prompts], negative_prompt="",
            seed=list(seeds), batch_size=len(prompts), n_iter=1, steps=steps, cfg_scale=guidance,
            do_not_save_samples=True, do_not_save_grid=True, **kwargs,
        )
        try:
            processed = processing.process_images(p)
        finally:
            close = getattr(p, "close", None)
            if close:
                close()
        images = [np.asarray(image.convert("RGB")) for image in processed.images[: len(prompts)]]
        if interrupted() or len(images) < len(prompts):
            raise Cancelled("interrupted")
        return images

    return generate


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    from shared_core.protect.objectives import METHOD_CHOICES

    components = {
        "unlearnable_method": (gr.Dropdown, {"choices": list(METHOD_CHOICES)}),
        "unlearnable_budget": (gr.Slider, {"minimum": 1, "maximum": 32, "step": 1}),
        "unlearnable_steps": (gr.Slider, {"minimum": 1, "maximum": 1000, "step": 1}),
        "unlearnable_outdir": (None, None),
    }
    for key, (default, label) in OPTIONS.items():
        component, args = components[key]
        info = shared.OptionInfo(default, label, component, args, section=SECTION)
        if key != "unlearnable_outdir" and hasattr(info, "needs_reload_ui"):
            info = info.needs_reload_ui()  # defaults are read when the tab is built
        shared.opts.add_option(key, info)


def on_ui_tabs():
    from shared_core.ui.app import build_ui

    return [(build_ui(WebUIHooks()), TAB_TITLE, TAB_ID)]


def register() -> None:
    """Called by scripts/unlearnable.py each time A1111 (re)loads its scripts."""
    from modules import script_callbacks

    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_ui_tabs(on_ui_tabs)
