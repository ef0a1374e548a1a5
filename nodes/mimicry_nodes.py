"""Mimicry Test: a thin declaration over shared_core.mimicry (the `unlearnable check-protection` test).

Training a LoRA needs the model as diffusers modules, so this node loads the checkpoint itself (by
name from ComfyUI's checkpoints or diffusers folders) instead of taking the graph's MODEL/CLIP/VAE.
"""

from __future__ import annotations

import time
from pathlib import Path

from .declare import PREFIX, NodeSpec, Out, Param, Result
from .host import count_progress, gradients, output_dir, resolve_user_file
from .tensors import from_uint8_list

NO_METHOD = "none (use protected_folder)"
BUILTIN = "builtin:tiny"


def _model_choices() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return [BUILTIN]
    names = list(folder_paths.get_filename_list("checkpoints"))
    if "diffusers" in getattr(folder_paths, "folder_names_and_paths", {}):
        for base in folder_paths.get_folder_paths("diffusers"):
            names += sorted(f"diffusers/{p.parent.name}" for p in Path(base).glob("*/model_index.json"))
    return names + [BUILTIN]


def _model_spec(name: str) -> str:
    """The path `load_surrogate` takes for a choice of the model list."""
    import folder_paths

    from ..shared_core.errors import InputFileError

    if name == BUILTIN:
        return name
    if name.startswith("diffusers/"):
        for base in folder_paths.get_folder_paths("diffusers"):
            if (Path(base) / name.split("/", 1)[1] / "model_index.json").is_file():
                return str(Path(base) / name.split("/", 1)[1])
    path = folder_paths.get_full_path("checkpoints", name)
    if not path:
        raise InputFileError(name, "not found in ComfyUI's checkpoints or diffusers folders (refresh the node after adding files)")
    return path


def _methods() -> list[str]:
    from ..shared_core.protect.objectives import METHOD_CHOICES

    return [NO_METHOD, *METHOD_CHOICES]


def mimicry_test(model_name, clean_folder, protected_folder="", method=NO_METHOD, budget=8.0, protect_steps=100, prompt="a picture in the style of sks",
                 lora_steps=500, lr=1e-4, lora_rank=8, resolution=0, n=16, sample_steps=25, guidance=5.0, seeds="0", config_folder="") -> Result:  # fmt: skip
    from ..shared_core.mimicry import MimicrySettings

    settings = MimicrySettings(prompt=prompt, lora_steps=int(lora_steps), lora_rank=int(lora_rank), lr=float(lr), resolution=int(resolution) or None,
                               n=int(n), sample_steps=int(sample_steps), guidance=float(guidance),
                               seeds=tuple(int(s) for s in str(seeds).replace(" ", "").split(",") if s))  # fmt: skip
    clean = resolve_user_file(clean_folder, "clean images folder", folders=True)
    with gradients():  # ComfyUI runs nodes under inference mode; protecting and training need autograd
        return _run(settings, clean, model_name, protected_folder, method, float(budget), int(protect_steps), prompt, config_folder)


def _run(settings, clean, model_name, protected_folder, method, budget, protect_steps, prompt, config_folder) -> Result:
    from ..shared_core.errors import SettingsError
    from ..shared_core.mimicry import check_protection, protect_for_check, write_mimicry_report
    from ..shared_core.surrogates import load_surrogate

    spec = _model_spec(model_name)
    surrogate = load_surrogate(spec, config_dir=str(resolve_user_file(config_folder, "config folder", folders=True)) if (config_folder or "").strip() else None)
    folder = output_dir("unlearnable", time.strftime("mimicry_%Y%m%d-%H%M%S"))
    if method != NO_METHOD:
        protected = protect_for_check(surrogate, clean, folder, method=method, budget=budget, steps=protect_steps, prompt=prompt)
    elif (protected_folder or "").strip():
        protected = resolve_user_file(protected_folder, "protected images folder", folders=True)
    else:
        raise SettingsError("give protected_folder, or choose a method to protect clean_folder first")
    bar = count_progress(len(settings.seeds) * 2 * settings.lora_steps)
    trained = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("train"):
            trained[stage] = done
            bar(sum(trained.values()), len(settings.seeds) * 2 * settings.lora_steps)

    model_info = {"host": "ComfyUI", "model": model_name, "demo_only": surrogate.demo_only}
    result, shown = check_protection(surrogate.pipeline, model_info, clean, protected, folder, settings, progress=progress)
    html = write_mimicry_report(result, shown, folder)
    text = f"{result.summary['text']}\nreport: {html}"
    images = [from_uint8_list(shown[arm]) for arm in ("base", "clean", "protected")]
    return Result((text, *images, str(html)), ui={"text": [text]})


MIMICRY_TEST = NodeSpec(
    node_id=f"{PREFIX}MimicryTest",
    display_name="Mimicry Test (Unlearnable)",
    description=(
        "Your own check that protection works on your model: trains one LoRA on your clean images and one on the protected "
        "copies with identical settings and seeds, generates the same prompts and seeds from the base model and both LoRAs, "
        "and writes mimicry-report.html/.json (grids, distance of each arm's samples to your images, clean-data denoising "
        "loss, how much less the protected LoRA learned) to output/unlearnable. Training needs diffusers modules, so the "
        "node loads the checkpoint itself from the checkpoints (or diffusers) folder rather than taking MODEL/CLIP/VAE; a "
        "single-file checkpoint loads offline only with a diffusers config folder of its family (config_folder)."
    ),
    inputs=lambda: [
        Param("model_name", "COMBO", "SD 1.x/2.x/SDXL checkpoint (or diffusers folder); builtin:tiny is an untrained demo.", options=_model_choices()),
        Param("clean_folder", "STRING", "Folder of your original images (absolute, or relative to ComfyUI's input folder)."),
        Param("protected_folder", "STRING", "Folder of their protected copies, same file names (not needed with a method).", optional=True, default=""),
        Param("method", "COMBO", "Protect clean_folder with this method first (into the report folder).", options=_methods(), default=NO_METHOD),
        Param("budget", "FLOAT", "With a method: L-infinity budget in 0-255 levels.", default=8.0, min=1.0, max=64.0, step=0.5),
        Param("protect_steps", "INT", "With a method: PGD steps.", default=100, min=1, max=2000),
        Param("prompt", "STRING", "Caption of every training image and prompt of every sample.", default="a picture in the style of sks"),
        Param("lora_steps", "INT", "Training steps of each LoRA.", default=500, min=1, max=100_000),
        Param("lr", "FLOAT", "LoRA learning rate.", default=1e-4, min=1e-6, max=1e-2, step=1e-5),
        Param("lora_rank", "INT", "LoRA rank.", default=8, min=1, max=256),
        Param("resolution", "INT", "Training and sampling size (0 = the model's).", default=0, min=0, max=2048, step=8),
        Param("n", "INT", "Samples per arm.", default=16, min=1, max=256),
        Param("sample_steps", "INT", "Sampling steps.", default=25, min=1, max=200),
        Param("guidance", "FLOAT", "Classifier-free guidance scale.", default=5.0, min=0.0, max=30.0, step=0.1),
        Param("seeds", "STRING", "Comma-separated seeds; each trains both LoRAs again and the report gives the spread.", default="0"),
        Param("config_folder", "STRING", "Diffusers config folder for a single-file checkpoint (offline loading).", optional=True, default=""),
    ],  # fmt: skip
    outputs=(
        Out("STRING", "summary", "How much less the protected LoRA learned, in words."),
        Out("IMAGE", "base_samples", "Base model samples."),
        Out("IMAGE", "clean_lora_samples", "Samples of the LoRA trained on the clean images (same seeds)."),
        Out("IMAGE", "protected_lora_samples", "Samples of the LoRA trained on the protected images (same seeds)."),
        Out("STRING", "report_path", "The HTML report."),
    ),
    run=mimicry_test,
    output_node=True,
)
