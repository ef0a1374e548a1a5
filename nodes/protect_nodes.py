"""Protect Image and Protection Report: thin declarations over shared_core.protect and shared_core.metrics."""

from __future__ import annotations

import io as _io
import json

import numpy as np
from PIL import Image

from .declare import PREFIX, NodeSpec, Out, Param, Result
from .host import gradients, step_progress
from .tensors import difference_preview, from_uint8_list, mask_list, to_uint8_list

ROBUSTNESS = ("jpeg", "resize", "blur")


def parse_options(text: str) -> dict:
    """Method options typed as `key=value` pairs, separated by commas or new lines (values parsed as JSON when possible)."""
    options = {}
    for item in (text or "").replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"method option {item!r} is not KEY=VALUE (e.g. sign=min, inner_steps=3)")
        key, raw = (part.strip() for part in item.split("=", 1))
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _method_choices() -> list[str]:
    from ..shared_core.protect.objectives import METHOD_CHOICES

    return list(METHOD_CHOICES)


def _method_help() -> str:
    from ..shared_core.protect import OBJECTIVES
    from ..shared_core.protect.objectives import AUTO_DESCRIPTION

    lines = [f"auto: {AUTO_DESCRIPTION}"]
    for name, cls in OBJECTIVES.items():
        summary = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines.append(f"{name}: {summary}")
    return "\n".join(lines)


def _protect_inputs() -> list[Param]:
    return [
        Param("image", "IMAGE", "The images to protect (a batch is protected together)."),
        Param("model", "MODEL", "The surrogate diffusion model (SD 1.x, 2.x or SDXL; LoRAs applied in the graph count). It is never modified."),
        Param("vae", "VAE", "The model's VAE; only its encoder is used."),
        Param("method", "COMBO", _method_help(), options=_method_choices(), default="auto"),
        Param("budget", "FLOAT", "Largest change of any channel of any pixel, in 0-255 levels (8 is usual; lower is less visible and weaker).",
              default=8.0, min=1.0, max=32.0, step=0.5),
        Param("steps", "INT", "PGD steps per image tile (100 is usual; more is slower and stronger).", default=100, min=1, max=2000),
        Param("seed", "INT", "Makes a run reproducible.", default=0, min=0, max=2**31 - 1, seed=True),
        Param("prompt", "STRING", "Conditioning text for the surrogate (encoded with the CLIP input).", default="", multiline=True),
        Param("robust_jpeg", "BOOLEAN", "Optimise through a differentiable JPEG so protection survives recompression (slower).", default=False),
        Param("robust_resize", "BOOLEAN", "Optimise through random downscaling.", default=False),
        Param("robust_blur", "BOOLEAN", "Optimise through random blur.", default=False),
        Param("clip", "CLIP", "Encodes the prompt. Give this or a CONDITIONING.", optional=True),
        Param("conditioning", "CONDITIONING", "Used instead of CLIP + prompt when connected.", optional=True),
        Param("mask", "MASK", "Where to protect: 1 = full budget, 0 = untouched, in between scales the budget.", optional=True),
        Param("options", "STRING", "Method options as key=value, e.g. sign=min, inner_steps=3.", optional=True, default=""),
        Param("low_memory", "BOOLEAN", "Gradient checkpointing in a copy of the UNet: much less GPU memory, about a third slower.",
              optional=True, default=False),
    ]  # fmt: skip


def protect_image(image, model, vae, method="auto", budget=8.0, steps=100, seed=0, prompt="", robust_jpeg=False,
                  robust_resize=False, robust_blur=False, clip=None, conditioning=None, mask=None, options="", low_memory=False) -> Result:  # fmt: skip
    from ..shared_core.protect import ProtectSettings, protect_arrays
    from ..shared_core.protect.pipeline import tile_layout
    from .comfy_surrogate import ComfySurrogate

    originals = to_uint8_list(image)
    height, width = originals[0].shape[:2]
    masks = mask_list(mask, len(originals), height, width)
    robust = tuple(name for name, on in zip(ROBUSTNESS, (robust_jpeg, robust_resize, robust_blur)) if on)
    settings = ProtectSettings(method=method, budget=float(budget), steps=int(steps), prompt=prompt or "", robust=robust,
                               method_options=parse_options(options), seed=int(seed), low_memory=bool(low_memory))  # fmt: skip
    with gradients():
        surrogate = ComfySurrogate(model, vae, clip=clip, conditioning=conditioning)
        tile_edge = settings.tile_size or surrogate.native_resolution
        tiles = len(originals) * len(tile_layout(height, width, tile_edge, surrogate.size_multiple))
        protected = protect_arrays(surrogate, originals, settings, masks, step_progress(tiles * settings.steps))
        del surrogate
    _release_memory()
    return Result((from_uint8_list(protected), difference_preview(originals, protected, settings.budget)))


def _release_memory() -> None:
    try:
        import comfy.model_management

        comfy.model_management.soft_empty_cache()
    except (ImportError, AttributeError):
        pass


PROTECT_IMAGE = NodeSpec(
    node_id=f"{PREFIX}ProtectImage",
    display_name="Protect Image (Unlearnable)",
    description=(
        "Adds a bounded, nearly invisible perturbation crafted against the connected diffusion model so that models "
        "trained or fine-tuned on the image learn it badly (UDP/EUDP and peers). Output has exactly the input's size; "
        "large images are processed in tiles. Save it with Save Protected Image (PNG keeps the budget exact; it also writes the machine-readable opt-out)."
    ),
    inputs=_protect_inputs,
    outputs=(
        Out("IMAGE", "protected", "The protected images (each channel within the budget of the original)."),
        Out("IMAGE", "difference", "|protected - original| amplified so that the full budget is white."),
    ),
    run=protect_image,
)


# -- report --------------------------------------------------------------------------------


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = _io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def surviving_share(before: np.ndarray, after: np.ndarray, jpeg_before: np.ndarray, jpeg_after: np.ndarray) -> str:
    """How much of the perturbation pattern is still there after compression: the projection of the
    change between the compressed images onto the original change (1 = intact, 0 = erased). The
    compressor's own, uncorrelated rounding differences do not count as surviving perturbation."""
    delta = after.astype(np.float64) - before
    kept = jpeg_after.astype(np.float64) - jpeg_before
    energy = float((delta * delta).sum())
    return f"{float((kept * delta).sum()) / energy:.0%}" if energy > 0 else "n/a"


def protection_report(original, protected, jpeg_check=True, jpeg_quality=75) -> Result:
    from ..shared_core.metrics import psnr, visibility

    originals, results = to_uint8_list(original), to_uint8_list(protected)
    if len(originals) == 1 and len(results) > 1:
        originals = originals * len(results)
    if len(originals) != len(results):
        raise ValueError(f"{len(originals)} original images for {len(results)} protected ones; connect matching batches")
    lines = []
    for index, (before, after) in enumerate(zip(originals, results), 1):
        if before.shape != after.shape:
            raise ValueError(f"image {index}: original {before.shape[1]}x{before.shape[0]} and protected "
                             f"{after.shape[1]}x{after.shape[0]} differ in size")  # fmt: skip
        v = visibility(before, after)
        lines.append(f"image {index} ({before.shape[1]}x{before.shape[0]}): L-inf {v['linf']}/255, PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}")
        if jpeg_check:
            jpeg_before, jpeg_after = jpeg_roundtrip(before, jpeg_quality), jpeg_roundtrip(after, jpeg_quality)
            lines.append(f"  after JPEG q{int(jpeg_quality)}: PSNR {psnr(jpeg_before, jpeg_after):.2f} dB between the re-encoded original "
                         f"and protected images; {surviving_share(before, after, jpeg_before, jpeg_after)} of the perturbation survives")  # fmt: skip
    text = "\n".join(lines)
    return Result((text,), ui={"text": [text]})


PROTECTION_REPORT = NodeSpec(
    node_id=f"{PREFIX}ProtectionReport",
    display_name="Protection Report (Unlearnable)",
    description="How visible the protection is, per image: L-infinity (0-255 levels), PSNR and SSIM; optionally how much of it survives a JPEG round-trip.",
    inputs=lambda: [
        Param("original", "IMAGE", "The images before protection."),
        Param("protected", "IMAGE", "The output of Protect Image."),
        Param("jpeg_check", "BOOLEAN", "Also re-encode both as JPEG and measure what is left of the perturbation.", default=True),
        Param("jpeg_quality", "INT", "JPEG quality of the check.", default=75, min=10, max=100),
    ],
    outputs=(Out("STRING", "report", "One line per image (and its JPEG check)."),),
    run=protection_report,
    output_node=True,
)


# -- save with the opt-out ---------------------------------------------------------------------


def _data_mining_choices() -> list[str]:
    from ..shared_core.optout import DATA_MINING_VALUES

    return list(DATA_MINING_VALUES)


def save_protected_image(images, filename_prefix="protected", format="png", quality=95, optout=True, data_mining="prohibited",
                         creator="", copyright="", contact="", tdm_policy="", c2pa_cert="", c2pa_key="") -> Result:  # fmt: skip
    from ..shared_core.files import atomic_write_bytes
    from ..shared_core.images import encode_image, output_suffix
    from ..shared_core.optout import OptOut, apply_optout, optout_line
    from .host import output_dir, resolve_user_file

    reservation = None
    if optout:
        cert = str(resolve_user_file(c2pa_cert, "C2PA certificate chain")) if (c2pa_cert or "").strip() else ""
        key = str(resolve_user_file(c2pa_key, "C2PA private key")) if (c2pa_key or "").strip() else ""
        reservation = OptOut(data_mining=data_mining, tdm_policy=(tdm_policy or "").strip(), creator=(creator or "").strip(),
                             copyright=(copyright or "").strip(), contact=(contact or "").strip(), c2pa_cert=cert, c2pa_key=key)  # fmt: skip
        reservation.check()
    folder, suffix = output_dir(), output_suffix(format)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in (filename_prefix or "protected")) or "protected"
    saved, number = [], 0
    for rgb in to_uint8_list(images):
        number += 1
        while any(folder.glob(f"{name}_{number:05d}.*")):  # numbered across formats, like ComfyUI's Save Image
            number += 1
        path = folder / f"{name}_{number:05d}{suffix}"
        data = encode_image(rgb, format, quality=int(quality))
        if reservation:
            data = apply_optout(data, format, reservation)
        atomic_write_bytes(path, data)
        saved.append(path)
    lines = [f"saved {path.name}" for path in saved]
    lines.append(optout_line(reservation.describe() if reservation else None))
    text = "\n".join(lines)
    return Result((text,), ui={"images": [{"filename": p.name, "subfolder": "", "type": "output"} for p in saved], "text": [text]})


SAVE_PROTECTED_IMAGE = NodeSpec(
    node_id=f"{PREFIX}SaveProtectedImage",
    display_name="Save Protected Image (Unlearnable)",
    description=(
        "Saves images to ComfyUI's output folder with a machine-readable 'do not train' reservation: XMP plus:DataMining "
        "(IPTC/PLUS), tdm:reservation (W3C TDMRep), the rights fields you fill in, and optionally a signed C2PA "
        "training-mining manifest. Metadata only: the pixels are exactly what Protect Image made. Platforms that strip "
        "metadata remove the reservation; the perturbation stays. No workflow is embedded in the file."
    ),
    inputs=lambda: [
        Param("images", "IMAGE", "The images to save (usually Protect Image's output)."),
        Param("filename_prefix", "STRING", "Files are named PREFIX_00001.png and so on, in ComfyUI's output folder.", default="protected"),
        Param("format", "COMBO", "PNG is lossless and keeps the budget exact; JPEG and WebP are smaller.", options=["png", "jpeg", "webp"], default="png"),
        Param("quality", "INT", "JPEG/WebP quality.", default=95, min=1, max=100),
        Param("optout", "BOOLEAN", "Write the machine-readable training and data-mining reservation.", default=True),
        Param("data_mining", "COMBO", "PLUS Data Mining value: which uses are prohibited.", options=_data_mining_choices(), default="prohibited"),
        Param("creator", "STRING", "Creator name (IPTC Creator).", default=""),
        Param("copyright", "STRING", "Copyright notice, e.g. (c) 2026 Your Name (IPTC Copyright Notice).", default=""),
        Param("contact", "STRING", "E-mail or web address (IPTC Creator's Contact Info).", default=""),
        Param("tdm_policy", "STRING", "URL of your TDMRep licensing policy (optional).", default=""),
        Param("c2pa_cert", "STRING", "PEM certificate chain to sign a C2PA training-mining manifest (optional; needs c2pa-python).",
              optional=True, default=""),
        Param("c2pa_key", "STRING", "PEM private key of that certificate (ES256).", optional=True, default=""),
    ],  # fmt: skip
    outputs=(Out("STRING", "report", "The files written and which opt-out they carry."),),
    run=save_protected_image,
    output_node=True,
)
