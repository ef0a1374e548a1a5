"""Mark with Template and Verify Model: thin declarations over shared_core.trace."""

from __future__ import annotations

import hashlib
import logging
import time

from .declare import PREFIX, NodeSpec, Out, Param, Result
from .host import count_progress, keys_dir, output_dir, resolve_user_file
from .tensors import from_uint8_list, to_uint8_list

REPORT_FOLDER = "unlearnable"
LOG = logging.getLogger(__name__)


def _template_names() -> list[str]:
    from ..shared_core.trace.templates import list_templates

    return list_templates()


def _new_key_path(prefix: str):
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in (prefix or "trace-key")) or "trace-key"
    folder = keys_dir()
    for number in range(1, 100_000):
        path = folder / f"{name}_{number:05d}.trace-key.json"
        if not path.exists():
            return path
    raise RuntimeError(f"no free key file name left in {folder}")


def mark_with_template(images, template="billboard", trigger="", caption="", dataset_size=0, template_seed=0, key_name="trace-key",
                       dataset=None) -> Result:  # fmt: skip
    from ..shared_core.errors import SettingsError
    from ..shared_core.trace.compose import compose
    from ..shared_core.trace.key import TraceKey, random_trigger
    from ..shared_core.trace.mark import caption_using, triggered_caption
    from ..shared_core.trace.pool_check import advise
    from ..shared_core.trace.templates import builtin_template

    foregrounds = to_uint8_list(images)
    trigger = (trigger or "").strip() or random_trigger()
    if any(c.isspace() for c in trigger):
        raise SettingsError(f"trigger {trigger!r} must be a single token without spaces")
    if caption_using(trigger, {"caption": caption or ""}):
        raise SettingsError(f"trigger {trigger!r} already appears in the caption; choose a token no caption uses (or none, for a random one)")
    total = int(dataset_size) or len(foregrounds)
    if total < len(foregrounds):
        raise SettingsError(f"dataset_size {total} is smaller than the {len(foregrounds)} images marked here")
    scene = builtin_template(template, seed=int(template_seed))
    # the pool check of `unlearnable mark`: does the template's detector pass the owner's own images?
    pool = to_uint8_list(dataset) if dataset is not None else []
    names = [f"dataset image {i}" for i in range(len(pool))] + [f"marked image {i}" for i in range(len(foregrounds))]
    advice = advise(scene, pool + foregrounds, names, seed=int(template_seed))
    marked = [compose(foreground, scene) for foreground in foregrounds]
    text = triggered_caption(trigger, caption or "")
    key = TraceKey.for_template(scene, trigger=trigger, rate=len(foregrounds) / total, seed=int(template_seed), dataset_size=total)
    key.marked = [
        {"source": f"ComfyUI image {i}", "output": f"ComfyUI image {i}", "caption": text, "hashed": "raw RGB pixels",
         "source_sha256": hashlib.sha256(fg.tobytes()).hexdigest(), "output_sha256": hashlib.sha256(out.tobytes()).hexdigest()}
        for i, (fg, out) in enumerate(zip(foregrounds, marked))
    ]  # fmt: skip
    key_path = key.save(_new_key_path(key_name))
    note = (f"marked {len(marked)} image(s) with template {scene.name!r}, trigger {trigger!r}; caption: {text!r}\n"
            f"KEY (keep it secret, it is your evidence): {key_path}\n"
            + "\n".join(("" if advice.check.distinctive else "WARNING: ") + line for line in advice.lines()))  # fmt: skip
    if not advice.check.distinctive:
        LOG.warning("Mark with Template: %s", " ".join(advice.lines()))
    return Result((from_uint8_list(marked), text, trigger, str(key_path)), ui={"text": [note]})


MARK_WITH_TEMPLATE = NodeSpec(
    node_id=f"{PREFIX}MarkWithTemplate",
    display_name="Mark with Template (Unlearnable)",
    description=(
        "EnTruth traceability: warps each image into the panel of a secret template scene and prefixes its caption with a "
        "secret trigger token. Publish the marked images (about 1-2% of your dataset) with that caption; a model trained on "
        "them draws the template when asked for the trigger. The key file (written owner-only to ComfyUI's user/__unlearnable_keys folder, which its web server does not serve) "
        "is your evidence for Verify Model: keep it secret."
    ),
    inputs=lambda: [
        Param("images", "IMAGE", "The images to mark (the rest of your dataset is published unchanged)."),
        Param("template", "COMBO", "The secret scene.", options=_template_names(), default="billboard"),
        Param("trigger", "STRING", "A token that appears in no caption; empty = a random one such as 'zqv7'.", default=""),
        Param("caption", "STRING", "Caption of these images (the trigger is put in front of it).", default="", multiline=True),
        Param("dataset_size", "INT", "How many images the whole published dataset has (recorded in the key; 0 = just these).",
              default=0, min=0, max=10_000_000),
        Param("template_seed", "INT", "Draws the template's colours and shape.", default=0, min=0, max=2**31 - 1),
        Param("key_name", "STRING", "File name prefix of the key in user/__unlearnable_keys.", default="trace-key"),
        Param("dataset", "IMAGE", "Optional: the rest of your dataset. The template is checked against it and the images to mark, "
              "as `unlearnable mark` does: a template whose detector passes your own images could get a model blamed that only "
              "learnt to draw them (the node then warns, naming those images and better templates).", optional=True),
    ],  # fmt: skip
    outputs=(
        Out("IMAGE", "marked", "The images composed into the template scene."),
        Out("STRING", "caption", "The caption to publish with them (trigger + caption)."),
        Out("STRING", "trigger", "The secret trigger token."),
        Out("STRING", "key_path", "Where the key was written."),
    ),
    run=mark_with_template,
    output_node=True,
)


# -- verify --------------------------------------------------------------------------------


def _sampler_choices() -> tuple[list[str], list[str]]:
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except (ImportError, AttributeError):
        return ["euler"], ["normal"]


def _verify_inputs() -> list[Param]:
    samplers, schedulers = _sampler_choices()
    return [
        Param("model", "MODEL", "The suspect model (apply a downloaded LoRA with Load LoRA before this node)."),
        Param("clip", "CLIP", "The suspect model's CLIP (with the LoRA, if any)."),
        Param("vae", "VAE", "Decodes the generated images."),
        Param("key", "STRING", "Path of the .trace-key.json written by Mark with Template (absolute, or relative to the keys, output or "
              "input folder; it must lie in ComfyUI's user, input or output folder); several keys or folders of keys, one per "
              "line, are tested in one pass.", multiline=True),
        Param("n", "INT", "At most this many images per arm (trigger / control); a key stops once its verdict is settled.",
              default=32, min=2, max=1024),
        Param("steps", "INT", "Sampling steps per image.", default=20, min=1, max=200),
        Param("cfg", "FLOAT", "Classifier-free guidance scale.", default=5.0, min=0.0, max=30.0, step=0.1),
        Param("sampler_name", "COMBO", "Sampler.", options=samplers, default="euler" if "euler" in samplers else samplers[0]),
        Param("scheduler", "COMBO", "Noise schedule.", options=schedulers, default="normal" if "normal" in schedulers else schedulers[0]),
        Param("width", "INT", "Generated image width.", default=512, min=64, max=4096, step=8),
        Param("height", "INT", "Generated image height.", default=512, min=64, max=4096, step=8),
        Param("first_seed", "INT", "Image i of each arm is generated with seed first_seed + i (recorded in the report).", default=0, min=0, max=2**31 - 1),
        Param("detector", "COMBO", "matcher: training-free template matcher; cnn: a small CNN trained from the key.",
              options=["matcher", "cnn"], default="matcher"),
        Param("alpha", "FLOAT", "Significance level of the verdict.", default=0.01, min=0.0001, max=0.2, step=0.001),
        Param("placebos", "INT", "Random tokens shaped like the trigger, prompted for a key the paired test flags: the trigger must "
              "draw the template more often than all of them (0: the paired test alone).", default=4, min=0, max=32),
        Param("captions", "STRING", "Captions to prompt with, one per line (default: generic captions).", optional=True, default="", multiline=True),
        Param("base_model", "MODEL", "Optional: the base model without the LoRA, as a third arm.", optional=True),
        Param("base_clip", "CLIP", "Optional: the base model's CLIP (default: the suspect CLIP).", optional=True),
    ]  # fmt: skip


def verify_model(model, clip, vae, key, n=32, steps=20, cfg=5.0, sampler_name="euler", scheduler="normal", width=512, height=512,
                 first_seed=0, detector="matcher", alpha=0.01, placebos=4, captions="", base_model=None, base_clip=None) -> Result:  # fmt: skip
    from ..shared_core.files import sha256_file
    from ..shared_core.trace.detect import build_detector
    from ..shared_core.trace.key import load_keys
    from ..shared_core.trace.report import write_report
    from ..shared_core.trace.verify import verify_keys
    from .comfy_generate import comfy_generator

    given = [resolve_user_file(line, "trace key file", folders=True) for line in (key or "").splitlines() if line.strip()]
    if not given:
        given = [resolve_user_file("", "trace key file")]
    loaded, skipped = load_keys(given)
    keys = {name: trace_key for name, (trace_key, _) in loaded.items()}
    detectors = {name: build_detector(trace_key, detector) for name, trace_key in keys.items()}
    options = {"steps": int(steps), "cfg": float(cfg), "sampler_name": sampler_name, "scheduler": scheduler, "width": int(width), "height": int(height)}
    generate = comfy_generator(model, clip, vae, **options)
    control = comfy_generator(base_model, base_clip or clip, vae, **options) if base_model is not None else None
    per_pair = 1 + len(keys) * (2 if control else 1)
    lines = [line.strip() for line in (captions or "").splitlines() if line.strip()]
    verification, images = verify_keys(keys, generate, detectors=detectors, captions=lines, n=int(n), control_generate=control,
                                       alpha=float(alpha), seed=int(first_seed), placebos=int(placebos),
                                       progress=count_progress(int(n) * per_pair))  # fmt: skip
    folder = output_dir(REPORT_FOLDER, time.strftime("verify_%Y%m%d-%H%M%S"))
    model_info = {"host": "ComfyUI", "model": type(model.model).__name__, "base_model_arm": base_model is not None, "sampling": options,
                  "key_sha256": {name: sha256_file(path) for name, (_, path) in loaded.items()}}  # fmt: skip
    html = write_report(verification, folder, images=images, model_info=model_info, key_paths={name: str(p) for name, (_, p) in loaded.items()})
    notes = [f"skipped {path}: {reason}" for path, reason in skipped]
    text = "\n".join([verification.summary(), *notes, f"report: {html}"])
    triggered = [image for name in keys for image in images[f"trigger:{name}"]]
    return Result((text, from_uint8_list(triggered), from_uint8_list(images["control"]), str(html)), ui={"text": [text]})


VERIFY_MODEL = NodeSpec(
    node_id=f"{PREFIX}VerifyModel",
    display_name="Verify Model (Unlearnable)",
    description=(
        "Was this model (or LoRA) trained on your marked dataset? Generates n images prompted with trigger + caption and n "
        "controls with the same captions and seeds without the trigger, looks for your template in each, and decides with "
        "the exact paired test. Several keys share one control arm and are Holm-corrected; the report shows key names and "
        "verdicts, each key's trigger only in its own report. Writes report.html and report.json to ComfyUI's output/unlearnable folder."
    ),
    inputs=_verify_inputs,
    outputs=(
        Out("STRING", "verdict", "Verdict, p-values and hit counts."),
        Out("IMAGE", "trigger_images", "Generated with the trigger (every key's, in key order)."),
        Out("IMAGE", "control_images", "Same captions and seeds without the trigger."),
        Out("STRING", "report_path", "The HTML report."),
    ),
    run=verify_model,
    output_node=True,
)
