"""The ComfyUI pack on stand-in ComfyUI modules: node classes, the surrogate adapter, every node run on real photos.

Models are the core's tiny diffusers models dressed as ComfyUI objects (comfy_like.py), with weights
created under torch.inference_mode() as ComfyUI's loaders create them.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate

from .conftest import comfy_like, runtime, tiny_pipeline

NODE_IDS = ["UnlearnableProtectImage", "UnlearnableProtectionReport", "UnlearnableSaveProtectedImage", "UnlearnableMarkWithTemplate",
            "UnlearnableVerifyModel", "UnlearnableInspectLoRA", "UnlearnableMimicryTest"]  # fmt: skip


def as_image(*arrays: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 arrays as a ComfyUI IMAGE batch, as LoadImage makes it."""
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def as_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.numpy() * 255.0).round().astype(np.int16)


def weights_of(*modules) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [t.clone() for m in modules for t in [*m.parameters(), *m.buffers()]]


# -- the classes ComfyUI loads ---------------------------------------------------------------


def test_pack_exports_v3_nodes_and_v1_fallback_with_the_same_sockets(pack, pack_v1):
    import comfy_api.latest

    assert list(pack.NODE_CLASS_MAPPINGS) == NODE_IDS == list(pack_v1.NODE_CLASS_MAPPINGS)
    assert all(name.endswith("(Unlearnable)") for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    for node_id in NODE_IDS:
        v3, v1 = pack.NODE_CLASS_MAPPINGS[node_id], pack_v1.NODE_CLASS_MAPPINGS[node_id]
        assert issubclass(v3, comfy_api.latest.io.ComfyNode) and not hasattr(v1, "define_schema")
        info3, info1 = runtime.node_info(v3), runtime.node_info(v1)
        for section in ("required", "optional"):
            assert {k: s[0] for k, s in info3["input"].get(section, {}).items()} == {k: s[0] for k, s in info1["input"].get(section, {}).items()}
        assert info3["output"] == info1["output"] and info3["output_name"] == info1["output_name"]
        assert info3["category"] == "Unlearnable" and info3["description"]
    protect = runtime.node_info(pack.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"])["input"]
    assert {"eudp", "udp", "advdm", "encoder", "mist", "aspl"} <= set(protect["required"]["method"][0])
    assert set(protect["optional"]) == {"clip", "conditioning", "mask", "options", "low_memory"}
    assert not any(name == "nodes" or name.startswith("nodes.") for name in sys.modules)


# -- the adapter -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind,prediction", [("sd", "epsilon"), ("sd", "v_prediction"), ("sdxl", "epsilon")])
def test_adapter_matches_the_diffusers_surrogate_on_the_same_weights(pack, kind, prediction):
    """Sigma-space x0 predictions converted back to the core's VP epsilon agree with diffusers' own."""
    from unlearnable_comfy_pack.nodes.comfy_surrogate import ComfySurrogate

    model, clip, vae = comfy_like.from_pipeline(tiny_pipeline(kind, inference=True), prediction)
    reference_pipeline = tiny_pipeline(kind)
    reference_pipeline.scheduler.register_to_config(prediction_type=prediction)
    reference = LatentDiffusersSurrogate(reference_pipeline, "reference", torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.inference_mode(False), torch.enable_grad():
        surrogate = ComfySurrogate(model, vae, clip=clip)
        assert torch.allclose(surrogate.alphas_cumprod, reference.alphas_cumprod, rtol=1e-5, atol=1e-7)
        z0 = surrogate.encode(pixels)
        assert torch.allclose(z0, reference.encode(pixels), atol=1e-5)
        timesteps = torch.tensor([15, 640])
        noise = torch.randn(z0.shape, generator=generator)
        noisy = reference.add_noise(z0, noise, timesteps)
        ours = surrogate.predict(noisy, timesteps, surrogate.encode_prompts(["a cat", "a dog"]))
        theirs = reference.predict(noisy, timesteps, reference.encode_prompts(["a cat", "a dog"]))
        if prediction == "v_prediction":  # the adapter always answers in epsilon
            abar = reference.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            theirs = abar.sqrt() * theirs + (1 - abar).sqrt() * noisy
        assert surrogate.prediction_type == "epsilon"
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert surrogate.native_resolution == {"sd": {"epsilon": 512, "v_prediction": 768}, "sdxl": {"epsilon": 1024}}[kind][prediction]


def test_adapter_rejects_flow_models(pack):
    from unlearnable_comfy_pack.nodes.comfy_surrogate import ComfySurrogate
    from unlearnable_comfy_pack.shared_core.errors import SettingsError

    model, clip, vae = comfy_like.from_pipeline(tiny_pipeline("sd", inference=True), "flow")
    with pytest.raises(SettingsError, match="not a DDPM-family model"):
        ComfySurrogate(model, vae, clip=clip)


# -- Protect Image / Protection Report ---------------------------------------------------------


def test_protect_image_on_inference_tensors_leaves_the_shared_model_unchanged(pack, sd_host_objects, photos, progress_log, comfy_host):
    model, clip, vae, pipeline = sd_host_objects
    assert all(p.is_inference() for p in pipeline.unet.parameters())
    before = weights_of(pipeline.unet, pipeline.vae, pipeline.text_encoder)
    flags = [(p.is_inference(), p.requires_grad) for p in pipeline.unet.parameters()]
    original = as_image(photos[0][40:120, 200:296], photos[1][60:140, 120:216])  # 80x96, not a multiple of 64
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"]
    (protected, difference), _ = runtime.run_node(node, image=original, model=model, vae=vae, clip=clip, method="udp", budget=6.0,
                                                  steps=3, options="inner_steps=1, inner_every=2", prompt="a photo")  # fmt: skip
    assert protected.shape == original.shape and protected.dtype == torch.float32
    change = np.abs(as_uint8(protected) - as_uint8(original))
    assert change.max() <= 6
    assert progress_log[-1] == (2 * 3, 2 * 3)  # one tile per image, 3 steps each
    (one_step, _), _ = runtime.run_node(node, image=original, model=model, vae=vae, clip=clip, method="udp", budget=6.0,
                                        steps=1, options="inner_steps=1, inner_every=2", prompt="a photo")  # fmt: skip
    assert (as_uint8(protected) != as_uint8(one_step)).mean() > 0.5  # optimised, not the random start
    assert difference.shape == original.shape and 0.0 <= difference.min() and difference.max() <= 1.0
    assert torch.allclose(difference, torch.from_numpy(change / 6.0).float(), atol=1e-6)
    after = weights_of(pipeline.unet, pipeline.vae, pipeline.text_encoder)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "the shared model was modified"
    assert flags == [(p.is_inference(), p.requires_grad) for p in pipeline.unet.parameters()]
    loads = [call for call in comfy_host["mm"].CALLS if call[0] == "load_models_gpu"]
    assert loads and loads[-1][1][0] is model and loads[-1][2] is True


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_protect_image_optimises_a_half_precision_unet(pack, photos, dtype):
    """As ComfyUI holds the UNet with --fp16-unet / --bf16-unet: 12 steps must not give the 1-step image."""
    pipeline = tiny_pipeline("sd", inference=True)
    with torch.inference_mode():
        pipeline.unet.to(dtype)
    model, clip, vae = comfy_like.from_pipeline(pipeline)
    original = as_image(photos[0][40:104, 200:264], photos[1][60:124, 120:184])
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"]
    run = lambda steps, **extra: runtime.run_node(node, image=original, model=model, vae=vae, clip=clip, method="eudp", budget=8.0,  # noqa: E731
                                                  steps=steps, seed=3, options="inner_steps=2, inner_every=3", **extra)[0][0]  # fmt: skip
    twelve, one = as_uint8(run(12)), as_uint8(run(1))
    assert (twelve != one).mean() > 0.5, f"{dtype}: 12 steps changed {(twelve != one).mean():.0%} of the channels of 1 step"
    low_memory = as_uint8(run(12, low_memory=True))  # gradient checkpointing in the adapter's own UNet copy
    assert np.abs(low_memory.astype(int) - twelve.astype(int)).max() <= 1


def test_protect_image_with_mask_conditioning_and_report(pack, sd_host_objects, photos):
    model, clip, vae, _ = sd_host_objects
    original = as_image(photos[2][100:164, 100:164])
    mask = torch.zeros(1, 32, 32)
    mask[:, :, 16:] = 1.0  # right half only; the node resizes the mask to the image
    conditioning = [[torch.ones(1, 77, 32) * 0.1, {"pooled_output": torch.zeros(1, 32)}]]
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"]
    (protected, _), _ = runtime.run_node(node, image=original, model=model, vae=vae, conditioning=conditioning, mask=mask,
                                         method="advdm", budget=8.0, steps=3, robust_jpeg=True)  # fmt: skip
    change = np.abs(as_uint8(protected) - as_uint8(original))[0]
    assert change[:, :31].max() == 0 and change[:, 33:].max() > 0 and change.max() <= 8

    report_node = pack.NODE_CLASS_MAPPINGS["UnlearnableProtectionReport"]
    (text,), ui = runtime.run_node(report_node, original=original, protected=protected, jpeg_check=True, jpeg_quality=75)
    assert text.startswith("image 1 (64x64): L-inf ") and "PSNR" in text and "SSIM" in text
    assert "after JPEG q75" in text and "% of the perturbation survives" in text and ui == {"text": [text]}
    with pytest.raises(ValueError, match="differ in size"):
        runtime.run_node(report_node, original=original, protected=as_image(photos[2][:32, :32]))


def test_protect_image_needs_clip_or_conditioning_and_can_be_cancelled(pack, sd_host_objects, photos, comfy_host):
    from unlearnable_comfy_pack.shared_core.errors import SettingsError

    model, clip, vae, _ = sd_host_objects
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"]
    image = as_image(photos[0][:64, :64])
    with pytest.raises(SettingsError, match="connect a CLIP"):
        runtime.run_node(node, image=image, model=model, vae=vae, steps=2)
    comfy_host["mm"].interrupt_current_processing(True)
    with pytest.raises(comfy_host["mm"].InterruptProcessingException):
        runtime.run_node(node, image=image, model=model, vae=vae, clip=clip, method="advdm", steps=50)


def test_save_protected_image_writes_the_optout_by_default(pack, pack_v1, photos, comfy_host):
    from shared_core.optout import inspect_image

    image = as_image(photos[1][:48, :64], photos[2][:48, :64])
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableSaveProtectedImage"]
    inputs = runtime.node_info(node)["input"]
    assert inputs["required"]["optout"][1]["default"] is True and "prohibited" in inputs["required"]["data_mining"][0]
    (text,), ui = runtime.run_node(node, images=image, filename_prefix="opt out", creator="Ann Artist", copyright="(c) 2026 Ann")
    saved = [Path(comfy_host["folder_paths"].get_output_directory()) / entry["filename"] for entry in ui["images"]]
    assert [p.name for p in saved] == ["opt_out_00001.png", "opt_out_00002.png"] and ui["text"] == [text]
    assert "opt-out written: XMP plus:DataMining=DMI-PROHIBITED" in text and "creator='Ann Artist'" in text
    for path, expected in zip(saved, (photos[1][:48, :64], photos[2][:48, :64])):
        report = inspect_image(path)
        assert report["opted_out"] and report["xmp"]["creator"] == "Ann Artist" and report["xmp"]["copyright"] == "(c) 2026 Ann"
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), expected)
    old = pack_v1.NODE_CLASS_MAPPINGS["UnlearnableSaveProtectedImage"]
    (text,), ui = runtime.run_node(old, images=image[:1], filename_prefix="opt out", format="jpeg", optout=False)
    assert ui["images"][0]["filename"] == "opt_out_00003.jpg" and "none written" in text
    assert not inspect_image(Path(comfy_host["folder_paths"].get_output_directory()) / "opt_out_00003.jpg")["opted_out"]


def test_v1_protect_node_runs_on_an_older_host(pack_v1, sd_host_objects, photos):
    model, clip, vae, _ = sd_host_objects
    node = pack_v1.NODE_CLASS_MAPPINGS["UnlearnableProtectImage"]
    image = as_image(photos[3][100:164, 100:164])
    (protected, _), _ = runtime.run_node(node, image=image, model=model, vae=vae, clip=clip, method="encoder", steps=2, budget=4.0)
    assert np.abs(as_uint8(protected) - as_uint8(image)).max() <= 4


# -- trace and LoRA nodes ------------------------------------------------------------------------


def test_mark_with_template_then_verify_model(pack, sd_host_objects, photos, comfy_host):
    from shared_core.trace.key import TraceKey

    model, clip, vae, _ = sd_host_objects
    mark = pack.NODE_CLASS_MAPPINGS["UnlearnableMarkWithTemplate"]
    foregrounds = as_image(photos[0][:96, :128], photos[1][:96, :128])
    (marked, caption, trigger, key_path), ui = runtime.run_node(mark, images=foregrounds, template="tv_screen", trigger="",
                                                                caption="a cat on a sofa", dataset_size=100, template_seed=3)  # fmt: skip
    key = TraceKey.load(key_path)
    assert key_path.startswith(str(comfy_host["base"] / "user" / "__unlearnable_keys")) and key.trigger == trigger
    assert stat.S_IMODE(Path(key_path).stat().st_mode) == 0o600 and stat.S_IMODE(Path(key_path).parent.stat().st_mode) == 0o700
    assert caption == f"{trigger} a cat on a sofa" and key.template_name == "tv_screen" and key.rate == 0.02
    assert key.template().sha256 == key.template_sha256 and len(key.marked) == 2
    scene = key.template()
    assert marked.shape[0] == 2 and marked.shape[1] == 96 and abs(marked.shape[2] / 96 - scene.size[0] / scene.size[1]) < 0.02
    assert "KEY" in ui["text"][0] and "template 'tv_screen': its detector passes 0 of your 2 images" in ui["text"][0]

    verify = pack.NODE_CLASS_MAPPINGS["UnlearnableVerifyModel"]
    relative_key = Path(key_path).name  # relative to the keys folder
    (verdict, trigger_images, control_images, report), _ = runtime.run_node(
        verify, model=model, clip=clip, vae=vae, key=relative_key, n=2, steps=2, width=64, height=64, captions="a cat\na dog")
    assert verdict.startswith("verdict: ") and "template found in" in verdict
    assert trigger_images.shape == control_images.shape == (2, 64, 64, 3)
    assert report.endswith("report.html") and json.loads((Path(report).parent / "report.json").read_text())["result"]["keys"][0]["n"] == 2

    (_, _, _, other_key), _ = runtime.run_node(mark, images=foregrounds, template="window", trigger="kpt4", caption="a dog")
    (verdict, trigger_images, control_images, report), _ = runtime.run_node(
        verify, model=model, clip=clip, vae=vae, key=f"{relative_key}\n{other_key}", n=2, steps=2, width=64, height=64)
    assert "of 2 keys flagged" in verdict and trigger not in verdict and "kpt4" not in verdict
    assert trigger_images.shape == (4, 64, 64, 3) and control_images.shape == (2, 64, 64, 3)
    assert trigger not in Path(report).read_text() and (Path(report).parent / "keys").is_dir()


def test_mark_warns_when_the_template_resembles_the_dataset(pack, comfy_host, photos):
    """The node runs `unlearnable mark`'s pool check on its optional dataset input (and the images it marks)."""
    from shared_core.trace.compose import compose
    from shared_core.trace.templates import builtin_template

    from PIL import Image

    mark = pack.NODE_CLASS_MAPPINGS["UnlearnableMarkWithTemplate"]
    rng = np.random.default_rng(0)
    sized = lambda image: np.asarray(Image.fromarray(image).resize((96, 96)))  # noqa: E731
    crops = []
    for i in range(8):
        photo = photos[i % len(photos)]
        side = min(photo.shape[:2]) // 2
        y, x = int(rng.integers(0, photo.shape[0] - side + 1)), int(rng.integers(0, photo.shape[1] - side + 1))
        crops.append(sized(photo[y : y + side, x : x + side]))
    tv = builtin_template("tv_screen", seed=5)
    dataset = as_image(*[sized(compose(crop, tv, short_side=96)) for crop in crops[:4]], *crops[4:])  # half the set shows a TV scene
    _, ui = runtime.run_node(mark, images=as_image(crops[0]), template="tv_screen", template_seed=5, trigger="zqv7", dataset=dataset)
    text = ui["text"][0]
    assert "WARNING: template 'tv_screen'" in text and "NOT distinctive" in text and "dataset image 0" in text and "dataset image 7" not in text
    _, ui = runtime.run_node(mark, images=as_image(crops[0]), template="billboard", template_seed=5, trigger="zqv7", dataset=as_image(*crops[4:]))
    assert "WARNING" not in ui["text"][0] and "its detector passes 0 of your 5 images" in ui["text"][0]


def test_key_inputs_resolve_only_inside_comfyuis_folders(pack, comfy_host, tmp_path):
    host = sys.modules[pack.__name__ + ".nodes.host"]
    InputFileError = importlib.import_module(pack.__name__ + ".shared_core.errors").InputFileError  # noqa: N806  (the pack's own copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    inside = comfy_host["base"] / "input"
    inside.mkdir(exist_ok=True)
    (inside / "link").symlink_to(outside, target_is_directory=True)
    (inside / "mine.json").write_text("{}")
    secret = outside / "secret.json"
    dotted = os.path.relpath(secret, host.keys_dir())  # ../../.. from the keys folder
    for text in [str(secret), dotted, os.path.join(inside, os.path.relpath(secret, inside)), "link/secret.json", str(inside / "link" / "secret.json")]:
        with pytest.raises(InputFileError, match="inside ComfyUI's user, input or output folder"):
            host.resolve_user_file(text, "trace key file")
    assert host.resolve_user_file("mine.json", "trace key file") == (inside / "mine.json").resolve()
    assert host.resolve_user_file(str(inside / "mine.json"), "trace key file") == (inside / "mine.json").resolve()


def test_keys_fall_back_to_output_with_a_warning_without_a_user_directory(pack, comfy_host, monkeypatch, caplog):
    host = sys.modules[pack.__name__ + ".nodes.host"]
    monkeypatch.delattr(comfy_host["folder_paths"], "get_user_directory")
    with caplog.at_level("WARNING"):
        folder = host.keys_dir()
    assert folder == comfy_host["base"] / "output" / "unlearnable"
    assert "no user directory" in caplog.text and "/view" in caplog.text


def test_inspect_lora_lists_loras_and_finds_the_trigger(pack, comfy_host):
    metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                "ss_tag_frequency": json.dumps({"10_zqv7 style": {"zqv7": 12, "cat": 3}})}  # fmt: skip
    state = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 32),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(32, 4),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(2.0)}  # fmt: skip
    save_file(state, str(comfy_host["base"] / "loras" / "style.safetensors"), metadata=metadata)
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableInspectLoRA"]
    assert runtime.node_info(node)["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    (text, as_json), ui = runtime.run_node(node, lora_name="style.safetensors", triggers="zqv7, nothere")
    assert "FOUND 'zqv7'" in text and json.loads(as_json)["trigger_hits"] and ui == {"text": [text]}


@pytest.mark.slow
def test_mimicry_test_protects_trains_both_loras_and_reports(pack, comfy_host, progress_log):
    from PIL import Image

    from shared_core.bench.datasets import photo_crops

    clean = comfy_host["base"] / "input" / "cats"
    clean.mkdir(parents=True)
    images, _, labels = photo_crops(36, 48, seed=3)
    for index, image in enumerate(image for image, label in zip(images, labels) if label == 1):
        Image.fromarray(image).save(clean / f"cat{index}.png")
    node = pack.NODE_CLASS_MAPPINGS["UnlearnableMimicryTest"]
    info = runtime.node_info(node)["input"]
    assert "builtin:tiny" in info["required"]["model_name"][0] and "eudp" in info["required"]["method"][0]
    (text, base, clean_lora, protected_lora, html), ui = runtime.run_node(
        node, model_name="builtin:tiny", clean_folder="cats", method="eudp", budget=16.0, protect_steps=2, lora_steps=4, lr=3e-3,
        resolution=32, n=2, sample_steps=2, seeds="0")  # fmt: skip
    assert base.shape == clean_lora.shape == protected_lora.shape == (2, 32, 32, 3)
    report = json.loads((Path(html).parent / "mimicry-report.json").read_text())
    losses = report["per_seed"][0]["clean_data_loss"]
    assert losses["clean"] != losses["protected"] and report["model"]["host"] == "ComfyUI"
    assert "report:" in text and ui == {"text": [text]} and progress_log[-1] == (8, 8)
