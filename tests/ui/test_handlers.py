"""The button logic of the shared UI, without gradio."""

from __future__ import annotations

import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_core.errors import SettingsError
from shared_core.optout import inspect_image
from shared_core.ui import handlers
from shared_core.ui.hooks import StandaloneHooks


def test_uploaded_paths_accepts_every_gradio_shape():
    assert handlers.uploaded_paths(None) == []
    assert handlers.uploaded_paths("a.png") == [Path("a.png")]  # gradio 4+: str
    assert handlers.uploaded_paths([types.SimpleNamespace(name="/tmp/b.png")]) == [Path("/tmp/b.png")]  # gradio 3 tempfile
    assert handlers.uploaded_paths([{"path": "c.png"}, None]) == [Path("c.png")]


def test_protect_one_upload_keeps_size_stays_in_budget_and_offers_downloads(tmp_path, photo_file):
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    fractions = []
    result = handlers.run_protect(
        hooks, files=[str(photo_file)], model="builtin:tiny", method="advdm", budget=6, steps=2,
        progress=lambda fraction, desc: fractions.append(fraction),
    )
    assert fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    [row] = result.table
    assert row[0] == "astronaut.png" and row[1] == "protected" and row[2] <= 6 and row[3] > 30
    zip_path, png_path, summary_path = map(Path, result.downloads)
    assert zip_path.suffix == ".zip" and png_path.suffix == ".png" and summary_path.name == "protect-summary.json"
    original = np.asarray(Image.open(photo_file).convert("RGB")).astype(int)
    protected = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    assert protected.shape == original.shape
    assert 0 < np.abs(protected - original).max() <= 6
    assert zipfile.ZipFile(zip_path).namelist() == ["astronaut.png"]
    assert json.loads(summary_path.read_text())["totals"]["protected"] == 1
    assert result.gallery == [(str(png_path), "astronaut.png")]
    assert "Demo model" in result.status and result.out_dir.parent == tmp_path / "out" / "protect"
    # the opt-out is on by default in the web tab, with the rights fields given
    assert "opt-out written: XMP plus:DataMining=DMI-PROHIBITED" in result.status
    assert inspect_image(png_path)["opted_out"]
    plain = handlers.run_protect(hooks, files=[str(photo_file)], model="builtin:tiny", method="advdm", budget=6, steps=2,
                                 optout=False)
    assert "opt-out: none written" in plain.status and not inspect_image(plain.downloads[1])["opted_out"]
    assert np.array_equal(np.asarray(Image.open(plain.downloads[1])), np.asarray(Image.open(png_path)))
    named = handlers.run_protect(hooks, files=[str(photo_file)], model="builtin:tiny", method="advdm", budget=6, steps=2,
                                 creator="Ann Artist", copyright="(c) 2026 Ann", contact="ann@example.org")
    assert inspect_image(named.downloads[1])["xmp"] == {**inspect_image(png_path)["xmp"], "creator": "Ann Artist",
                                                        "copyright": "(c) 2026 Ann", "contact": "ann@example.org"}  # fmt: skip


def test_cancel_stops_at_the_next_step_and_keeps_finished_images(tmp_path, photo_file):
    second = photo_file.with_name("second.png")
    Image.open(photo_file).transpose(Image.FLIP_LEFT_RIGHT).save(second)
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")

    def progress(fraction, desc):
        if fraction >= 0.5:  # the first image (2 of 4 tile-steps) is done
            hooks.interrupt()

    result = handlers.run_protect(hooks, files=[str(photo_file), str(second)], model="builtin:tiny", method="advdm",
                                  budget=4, steps=2, batch_size=1, progress=progress)
    assert result.cancelled and "Cancelled" in result.status
    assert [name for name, *_ in result.table] == ["astronaut.png"]
    assert not hooks.is_interrupted()  # cleared for the next run


def test_bad_requests_fail_before_loading_a_model(tmp_path, photo_file):
    hooks = StandaloneHooks(outputs_dir=tmp_path, device="cpu")
    hooks.get_surrogate = lambda choice: pytest.fail("no model should load")
    with pytest.raises(SettingsError, match="upload images"):
        handlers.run_protect(hooks, model="builtin:tiny", method="eudp", budget=8, steps=1)
    with pytest.raises(ValueError, match="unknown method"):
        handlers.run_protect(hooks, files=[str(photo_file)], model="builtin:tiny", method="nope", budget=8, steps=1)
    with pytest.raises(SettingsError, match="folder not found"):
        handlers.run_protect(hooks, folder=str(tmp_path / "missing"), model="builtin:tiny", method="eudp", budget=8, steps=1)
    with pytest.raises(ValueError, match="budget"):
        handlers.run_protect(hooks, files=[str(photo_file)], model="builtin:tiny", method="eudp", budget=0, steps=1)


def test_inspect_lora_reports_format_and_trigger(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {}
    for block in range(2):
        prefix = f"lora_unet_down_blocks_0_attentions_{block}_transformer_blocks_0_attn2_to_k"
        state[f"{prefix}.lora_down.weight"] = torch.randn(4, 768)
        state[f"{prefix}.lora_up.weight"] = torch.randn(320, 4)
        state[f"{prefix}.alpha"] = torch.tensor(2.0)
    lora = tmp_path / "style.safetensors"
    save_file(state, str(lora), metadata={"ss_tag_frequency": json.dumps({"10_zqv7 style": {"zqv7": 12, "portrait": 3}})})
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    result = handlers.run_inspect_lora(hooks, file=str(lora), triggers="zqv7, absent")
    assert "FOUND 'zqv7'" in result.text
    assert result.report["ranks"] == [4]
    assert json.loads(Path(result.json_path).read_text())["path"] == str(lora)
    with pytest.raises(SettingsError):
        handlers.run_inspect_lora(hooks)


def test_mark_writes_the_marked_copy_and_a_private_key(tmp_path, photo_file):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    photo = Image.open(photo_file)
    for index in range(4):
        photo.rotate(90 * index).save(dataset / f"img{index}.png")
        (dataset / f"img{index}.txt").write_text(f"a photo number {index}")
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    result = handlers.run_mark(hooks, dataset_dir=str(dataset), rate=0.25, template=handlers.template_names()[0],
                               trigger="zqv7")
    assert "Marked 1 of 4" in result.status and "`zqv7`" in result.status and "private" in result.status
    assert "its detector passes" in result.status  # the template checked against the dataset's own images
    [key] = result.downloads
    assert json.loads(Path(key).read_text())["trigger"] == "zqv7"
    assert len(result.gallery) == 1 and Path(result.gallery[0][0]).is_file()


@pytest.fixture
def quick_detector(monkeypatch):
    """The template matcher calibrated on 20 synthetic images instead of 200 (seconds, not tens)."""
    from shared_core.trace import detect

    monkeypatch.setattr(detect, "build_detector", lambda key, kind="matcher": detect.TemplateMatcher.from_key(key, n_synthetic=20))


def test_verify_generates_both_arms_and_writes_the_report(tmp_path, photo_file, quick_detector):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for index in range(4):
        Image.open(photo_file).rotate(90 * index).save(dataset / f"img{index}.png")
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    key = handlers.run_mark(hooks, dataset_dir=str(dataset), rate=0.25, trigger="zqv7").downloads[0]
    fractions = []
    view = handlers.run_verify(hooks, key_path=key, model="builtin:tiny", n=4, steps=1, resolution=64,
                               progress=lambda fraction, desc: fractions.append(fraction))
    assert view.result["keys"][0]["n"] == 4 and view.result["keys"][0]["trigger_prompts"][0].startswith("zqv7 ")
    assert view.status.startswith("**NO EVIDENCE**") or view.status.startswith("**INFRINGEMENT EVIDENCE**")
    assert [Path(p).name for p in view.downloads] == ["report.html", "report.json"]
    assert len(view.gallery) == 8 and fractions[-1] == 1.0
    other = handlers.run_mark(hooks, dataset_dir=str(dataset), rate=0.25, trigger="kpt4", template="window").downloads[0]
    view = handlers.run_verify(hooks, key_path=f"{key}\n{other}", model="builtin:tiny", n=4, steps=1, resolution=64)
    assert view.status.startswith("**") and "keys flagged" in view.status
    names = [k["key_name"] for k in view.result["keys"]]
    assert len(set(names)) == 2 and all(name.startswith("dataset") for name in names)  # both keys are named after their dataset
    assert "zqv7" not in json.dumps(view.result) + view.status + Path(view.downloads[0]).read_text()
    assert "zqv7" in (Path(view.downloads[0]).parent / "keys" / view.result["keys"][0]["key_name"] / "report.html").read_text()
    with pytest.raises(SettingsError, match="LoRA file not found"):
        handlers.run_verify(hooks, key_path=key, model="builtin:tiny", lora_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(SettingsError, match="key file"):
        handlers.run_verify(hooks, model="builtin:tiny")


def test_mark_into_a_folder_outside_the_outputs_shows_copies_from_the_outputs(tmp_path, photo_file):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for index in range(2):
        Image.open(photo_file).rotate(90 * index).save(dataset / f"img{index}.png")
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    result = handlers.run_mark(hooks, dataset_dir=str(dataset), out_dir=str(tmp_path / "elsewhere" / "marked"), rate=0.5)
    assert (tmp_path / "elsewhere" / "marked" / "img0.png").is_file()
    assert all(Path(p).is_relative_to(tmp_path / "out") and Path(p).is_file() for p, _ in result.gallery)
    # the key stays in the keys folder; the download is a private copy, never under the served outputs
    [key] = hooks.resolve_keys_dir().glob("marked-*.trace-key.json")
    download = Path(result.downloads[0])
    assert download.read_bytes() == key.read_bytes() and not download.is_relative_to(tmp_path / "out")


@pytest.mark.slow
def test_mimicry_test_protects_trains_and_reports(tmp_path, photo_file):
    clean = tmp_path / "out" / "clean"  # inside the app's outputs folder: typed paths are confined to allowed folders
    clean.mkdir(parents=True)
    for index in range(4):
        Image.open(photo_file).rotate(90 * index).crop((0, 0, 64, 64)).save(clean / f"img{index}.png")
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu")
    fractions = []
    view = handlers.run_check_protection(hooks, model="builtin:tiny", clean_folder=str(clean), method="advdm", budget=16, protect_steps=2,
                                         lora_steps=3, lr=3e-3, resolution=32, n=2, progress=lambda fraction, desc: fractions.append(desc))  # fmt: skip
    assert [Path(p).name for p in view.downloads] == ["mimicry-report.html", "mimicry-report.json"]
    losses = view.result["per_seed"][0]["clean_data_loss"]
    assert losses["clean"] != losses["protected"] and len(view.gallery) == 6
    assert "Demo model" in view.status and any(desc.startswith("train protected LoRA") for desc in fractions)
    with pytest.raises(SettingsError, match="protected copies"):
        handlers.run_check_protection(hooks, model="builtin:tiny", clean_folder=str(clean))
