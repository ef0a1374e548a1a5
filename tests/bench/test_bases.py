"""Base models of the photo fine-tune setting: built resumably, committed with hashes, loaded only when intact."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shared_core.bench.bases import MANIFEST, PHOTO_BASE, PHOTO_TRANSFER, BaseRecipe, build_base, load_base
from shared_core.errors import SettingsError
from shared_core.surrogates.tiny import TinyLatentConfig

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "bases"
TINY = BaseRecipe("tiny-base", TinyLatentConfig(resolution=32, vae_channels=(8, 16), unet_channels=(16, 32), text_width=16, seed=3), size=32,
                  autoencoder_images=24, autoencoder_steps=4, base_images=24, base_steps=4, batch_size=8)  # fmt: skip


class Stop(Exception):
    pass


def _weights(pipeline) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": value for part in ("vae", "unet", "text_encoder") for name, value in getattr(pipeline, part).state_dict().items()}


def test_a_stopped_build_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    straight = load_base(TINY, build_base(TINY, tmp_path / "straight").parent)

    def stop_in_the_base_stage(stage, done, total):
        if stage == "base" and done == 2:
            raise Stop

    with pytest.raises(Stop):
        build_base(TINY, tmp_path / "resumed", checkpoint_every_s=0, progress=stop_in_the_base_stage)
    work = tmp_path / "resumed" / ".tiny-base.partial"
    assert (work / "autoencoder.pt").exists() and (work / "base.pt").exists() and not (tmp_path / "resumed" / "tiny-base").exists()
    assert torch.load(work / "base.pt", weights_only=True)["step"] == 2

    stages = []
    folder = build_base(TINY, tmp_path / "resumed", progress=lambda stage, done, total: stages.append((stage, done)))
    assert stages == [("base", 3), ("base", 4)]  # the autoencoder was finished: not trained again; the base went on from step 2
    assert not work.exists() and not list(folder.parent.glob(".tiny-base.*"))
    resumed = load_base(TINY, folder.parent)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.vae.config.scaling_factor == straight.vae.config.scaling_factor != 4.0  # set from the trained latents' spread
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["recipe"] == TINY.to_dict() and manifest["steps"] == {"autoencoder": 4, "base": 4}
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"] and manifest["torch"] == torch.__version__


def test_a_changed_file_or_recipe_is_refused(tmp_path):
    folder = build_base(TINY, tmp_path)
    with pytest.raises(SettingsError, match="another recipe"):
        load_base(replace(TINY, base_steps=5), tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(SettingsError, match="sha256"):
        load_base(TINY, tmp_path)
    with pytest.raises(SettingsError, match="bench bases"):
        load_base(TINY, tmp_path / "nowhere")


@pytest.mark.parametrize("recipe", [PHOTO_BASE, PHOTO_TRANSFER], ids=lambda recipe: recipe.name)
def test_the_committed_bases_load_with_their_hashes_checked(recipe):
    pipeline = load_base(recipe, COMMITTED)
    assert pipeline.vae.config.block_out_channels == list(recipe.config.vae_channels)
    assert pipeline.unet.config.block_out_channels == list(recipe.config.unet_channels)
    sizes = [p.stat().st_size for p in (COMMITTED / recipe.name).rglob("*.safetensors")]
    assert sum(sizes) < 100 * 2**20


@pytest.mark.acceptance
@pytest.mark.skipif(not (COMMITTED.parent / "results-photo" / "results.json").exists(), reason="no committed photo results yet")
def test_a_rerun_of_one_committed_victim_reproduces_its_logged_heldout_loss():
    """The committed base, the owner's crops and the LoRA victim's training are deterministic: the clean seed-0 LoRA
    victim, trained again here, explains the held-out crops exactly as the committed run logged."""
    from shared_core.bench.plans import FULL
    from shared_core.bench.settings import PhotoFinetuneSetting

    logged = json.loads((COMMITTED.parent / "results-photo" / "results.json").read_text())
    run = next(r for r in logged["runs"] if r["id"] == "PhotoFinetuneSetting/lora/clean/seed0")
    setting = PhotoFinetuneSetting(replace(FULL, bases_root=str(COMMITTED)))
    pipeline, _ = setting.train_victim(setting.owner, 0, "lora")
    assert setting.heldout_loss(pipeline) == pytest.approx(run["heldout_loss"], rel=1e-3)
    base = next(r for r in logged["runs"] if r["id"] == "PhotoFinetuneSetting/lora/base/seed0")
    assert setting.heldout_loss(setting.base()) == pytest.approx(base["heldout_loss"], rel=1e-6)
