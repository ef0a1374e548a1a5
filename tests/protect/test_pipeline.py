"""Whole images and folders: exact sizes, 8-bit budget, masks, alpha, resume, bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_core.images import load_image, read_provenance
from shared_core.protect import ProtectSettings, protect_arrays, protect_files
from shared_core.protect.pipeline import tile_layout

FAST = dict(method="advdm", steps=2, budget=8)


def tree_hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("height,width,tile", [(64, 64, 64), (37, 53, 64), (300, 90, 64), (129, 200, 64), (1000, 17, 256)])
def test_tiles_cover_every_pixel(height, width, tile):
    covered = np.zeros((height, width), dtype=int)
    for t in tile_layout(height, width, tile, 16):
        assert t.padded_height % 16 == 0 and t.padded_width % 16 == 0
        assert t.padded_height <= max(tile, -(-height // 16) * 16)
        covered[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert covered.min() >= 1


def test_output_keeps_size_and_budget_for_odd_sizes(tiny_surrogate, photos):
    images = [photos[0][:37, :53], photos[1][:150, :70], photos[2][:64, :64]]
    settings = ProtectSettings(**FAST, tile_size=64, batch_size=3)
    outputs = protect_arrays(tiny_surrogate, images, settings)
    for image, output in zip(images, outputs):
        assert output.shape == image.shape and output.dtype == np.uint8
        diff = np.abs(output.astype(int) - image.astype(int))
        assert diff.max() <= 8 and diff.max() >= 4


def test_fractional_budget_is_floored_after_rounding(tiny_surrogate, photos):
    settings = ProtectSettings(method="advdm", steps=3, budget=4.6, tile_size=64)
    (output,) = protect_arrays(tiny_surrogate, [photos[0][:64, :64]], settings)
    assert np.abs(output.astype(int) - photos[0][:64, :64].astype(int)).max() <= 4


def test_folder_with_a_corrupt_file(tmp_path, photo_folder, tiny_surrogate):
    (photo_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    before = tree_hashes(photo_folder)
    out = tmp_path / "out"
    summary = protect_files([photo_folder], out, tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    assert tree_hashes(photo_folder) == before
    failed = [o for o in summary.outcomes if o.status == "failed"]
    assert [o.source for o in failed] == [str(photo_folder / "broken.png")]
    assert "cannot" in failed[0].error or "not an image" in failed[0].error
    protected = [o for o in summary.outcomes if o.status == "protected"]
    assert len(protected) == 4
    for outcome in protected:
        source = load_image(outcome.source).rgb
        output = load_image(outcome.output).rgb
        assert output.shape == source.shape
        assert outcome.linf <= 8 and np.isfinite(outcome.psnr) and 0 < outcome.ssim <= 1
        meta = read_provenance(outcome.output)
        assert meta["method"] == "advdm" and meta["budget"] == 8 and meta["version"]
    assert (out / "sub" / "rocket.png").is_file()
    assert not list(out.rglob("*.part"))


def test_rerun_skips_finished_outputs_and_redoes_changed_settings(tmp_path, photo_folder, tiny_surrogate):
    out = tmp_path / "out"
    settings = ProtectSettings(**FAST, tile_size=64)
    first = protect_files([photo_folder], out, tiny_surrogate, settings)
    assert {o.status for o in first.outcomes} == {"protected"}
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    second = protect_files([photo_folder], out, tiny_surrogate, settings)
    assert {o.status for o in second.outcomes} == {"skipped"}
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    third = protect_files([photo_folder], out, tiny_surrogate, ProtectSettings(**{**FAST, "budget": 4}, tile_size=64))
    assert {o.status for o in third.outcomes} == {"protected"}


def test_alpha_is_kept_and_jpeg_output_is_measured(tmp_path, photos, tiny_surrogate):
    rgba = np.dstack([photos[0][:48, :48], np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    summary = protect_files([tmp_path / "logo.png"], tmp_path / "out", tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    with Image.open(summary.outcomes[0].output) as image:
        assert image.mode == "RGBA"
        assert np.array_equal(np.asarray(image)[..., 3], rgba[..., 3])
    jpeg = protect_files([tmp_path / "logo.png"], tmp_path / "jpg", tiny_surrogate, ProtectSettings(**FAST, tile_size=64), fmt="jpeg", quality=90)
    outcome = jpeg.outcomes[0]
    assert outcome.output.endswith(".jpg") and outcome.psnr > 25
    assert read_provenance(outcome.output)["method"] == "advdm"


def test_mask_file_leaves_black_regions_untouched(tmp_path, photos, tiny_surrogate):
    Image.fromarray(photos[1][:64, :64]).save(tmp_path / "cat.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    summary = protect_files([tmp_path / "cat.png"], tmp_path / "out", tiny_surrogate, ProtectSettings(**FAST, tile_size=64), mask=tmp_path / "mask.png")
    output = load_image(summary.outcomes[0].output).rgb.astype(int)
    diff = np.abs(output - photos[1][:64, :64].astype(int))
    assert diff[:, :32].max() == 0 and diff[:, 32:].max() > 0


def test_output_folder_equal_to_input_is_refused(photo_folder, tiny_surrogate):
    (photo_folder / "sub" / "rocket.jpg").unlink()
    before = tree_hashes(photo_folder)
    summary = protect_files([photo_folder], photo_folder, tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    assert all(o.status == "failed" and "overwrite an input" in o.error for o in summary.outcomes)
    assert tree_hashes(photo_folder) == before


def test_summary_is_json_serialisable(tmp_path, photo_folder, tiny_surrogate):
    summary = protect_files([photo_folder], tmp_path / "o", tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["totals"]["protected"] == 4 and data["totals"]["max_linf"] <= 8
    assert data["model"]["demo_only"] is True


def test_bomb_header_and_truncated_jpeg_fail_alone(tmp_path, photo_folder, photos, tiny_surrogate):
    from tests.conftest import png_with_declared_size, truncated_jpeg

    png_with_declared_size(photo_folder / "bomb.png", 30000, 30000)
    truncated_jpeg(photo_folder / "cut.jpg", photos[1][:96, :96])
    summary = protect_files([photo_folder], tmp_path / "out", tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    failed = {Path(o.source).name: o.error for o in summary.outcomes if o.status == "failed"}
    assert set(failed) == {"bomb.png", "cut.jpg"}
    assert "pixels is more than the 250,000,000 allowed" in failed["bomb.png"]
    assert "truncated" in failed["cut.jpg"]
    assert sum(o.status == "protected" for o in summary.outcomes) == 4


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_greyscale_stays_greyscale_within_budget(tmp_path, photos, tiny_surrogate, mode):
    grey = Image.fromarray(photos[0][100:180, 150:250]).convert(mode)
    grey.save(tmp_path / "grey.png")
    summary = protect_files([tmp_path / "grey.png"], tmp_path / "out", tiny_surrogate, ProtectSettings(**FAST, tile_size=64))
    (outcome,) = summary.outcomes
    with Image.open(outcome.output) as written:
        assert written.mode == mode
        out = np.asarray(written).astype(int)
    diff = np.abs(out - np.asarray(grey).astype(int))
    assert 0 < (diff if mode == "L" else diff[..., 0]).max() <= 8 and outcome.linf <= 8
    if mode == "LA":
        assert np.array_equal(out[..., 1], np.asarray(grey)[..., 1])  # alpha untouched


def test_auto_format_keeps_jpeg_at_a_quality_that_keeps_the_perturbation(tmp_path, photos, tiny_surrogate):
    from shared_core.protect.publish import JPEG_MIN_KEPT, perturbation_kept

    source = tmp_path / "photo.jpg"
    Image.fromarray(photos[0][:128, :128]).save(source, quality=90)
    settings = ProtectSettings(**FAST, tile_size=64)
    auto = protect_files([source], tmp_path / "auto", tiny_surrogate, settings, fmt="auto").outcomes[0]
    assert auto.output.endswith("photo.jpg")
    with Image.open(auto.output) as written:
        assert written.format == "JPEG"
    (note,) = [n for n in auto.notes if n.startswith("JPEG quality")]
    quality, kept = int(note.split()[2]), int(note.split()[4].rstrip("%")) / 100
    assert kept >= JPEG_MIN_KEPT and 95 <= quality <= 100
    # the lossless output is the perturbation as intended: the JPEG keeps the share its note says
    lossless = protect_files([source], tmp_path / "png", tiny_surrogate, settings).outcomes[0]
    original = load_image(source).rgb
    measured = perturbation_kept(original, load_image(lossless.output).rgb, load_image(auto.output).rgb)
    assert abs(measured - kept) < 0.01
    (png_note,) = [n for n in lossless.notes if n.startswith("JPEG input written as PNG")]
    assert "x the input's size" in png_note


def test_resume_keeps_the_metrics_of_finished_images(tmp_path, photo_folder, tiny_surrogate):
    from shared_core.protect.folder import SUMMARY_NAME

    out = tmp_path / "out"
    settings = ProtectSettings(**FAST, tile_size=64)
    first = protect_files([photo_folder], out, tiny_surrogate, settings).to_dict()
    (out / SUMMARY_NAME).write_text(json.dumps(first))
    second = protect_files([photo_folder], out, tiny_surrogate, settings).to_dict()
    assert second["totals"]["skipped"] == 4
    for before, after in zip(first["images"], second["images"]):
        assert after["status"] == "skipped"
        assert {k: after[k] for k in ("linf", "psnr", "ssim", "seconds")} == {k: before[k] for k in ("linf", "psnr", "ssim", "seconds")}
    (out / SUMMARY_NAME).unlink()  # summary lost: the metrics are measured again from the files
    third = protect_files([photo_folder], out, tiny_surrogate, settings).to_dict()
    assert [i["psnr"] for i in third["images"]] == [i["psnr"] for i in first["images"]]


def test_seconds_are_shared_by_tile_count(tmp_path, photos, tiny_surrogate):
    Image.fromarray(photos[0][:64, :64]).save(tmp_path / "a_one_tile.png")
    Image.fromarray(photos[1][:192, :192]).save(tmp_path / "b_nine_tiles.png")
    summary = protect_files([tmp_path], tmp_path / "out", tiny_surrogate, ProtectSettings(**FAST, tile_size=64, batch_size=4))
    small, large = summary.outcomes
    assert large.seconds > 3 * small.seconds
    assert small.seconds + large.seconds <= summary.seconds
    assert "share, by tile count" in summary.to_dict()["totals"]["seconds_per_image_means"]


def test_auto_runs_the_encoder_attack_on_latent_models_and_eudp_on_pixel_models(tmp_path, photo_folder, tiny_surrogate):
    """The default method is chosen per model (protect.settings.AUTO_METHODS); outputs and summary record the one that ran."""
    from shared_core.protect import make_objective
    from shared_core.surrogates import load_surrogate

    assert ProtectSettings().method == "auto"
    image = photo_folder / "photo2.png"
    latent = protect_files([image], tmp_path / "latent", tiny_surrogate, ProtectSettings(steps=2))
    pixel = protect_files([image], tmp_path / "pixel", load_surrogate("builtin:tiny-pixel", "cpu"), ProtectSettings(steps=2))
    for summary, method in ((latent, "encoder"), (pixel, "eudp")):
        assert summary.settings["method"] == method and read_provenance(summary.outcomes[0].output)["method"] == method
    with pytest.raises(ValueError, match="resolve it"):
        make_objective("auto")
