"""Templates, composition, keys and marking a folder of real photos."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from shared_core.cli import main
from shared_core.errors import InputFileError, SettingsError
from shared_core.trace.compose import compose
from shared_core.trace.key import TraceKey, random_trigger
from shared_core.trace.mark import mark_dataset, mark_images
from shared_core.trace.templates import builtin_template, list_templates, load_template


def hashes(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hundred_photos(tmp_path, photos):
    """100 real photo crops, a few with captions, one unreadable file."""
    folder = tmp_path / "dataset"
    (folder / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(100):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        s = int(rng.integers(64, 200))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        target = folder / ("b" if i % 3 == 0 else "") / f"img{i:03d}{'.jpg' if i % 4 == 0 else '.png'}"
        Image.fromarray(photo[y : y + s, x : x + s]).resize((96, 96)).save(target)
        if i % 5 == 0:
            target.with_suffix(".txt").write_text(f"a photo number {i}")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "LICENSE.md").write_text("CC-BY")
    return folder


def test_templates_are_deterministic_and_distinct():
    shas = {name: builtin_template(name, 128).sha256 for name in list_templates()}
    assert len(set(shas.values())) == len(shas) >= 6
    assert builtin_template("window", 128).sha256 == shas["window"]
    assert builtin_template("window", 128, seed=1).sha256 != shas["window"]


def test_compose_puts_the_foreground_in_the_panel(photos):
    template = builtin_template("billboard", 256)
    foreground = photos[1][:100, :100]
    out = compose(foreground, template)
    assert out.shape == (100, 100, 3)  # keeps the foreground's resolution class
    centre = template.corners.mean(0) * 100 / 256
    y, x = int(centre[1]), int(centre[0])
    assert np.abs(out[y, x].astype(int) - foreground[50, 50].astype(int)).max() < 40
    assert np.abs(out[2, 2].astype(int) - np.asarray(Image.fromarray(template.image).resize((100, 100)))[2, 2]).max() < 20


def test_user_template_corner_validation(tmp_path, photos):
    Image.fromarray(photos[0][:200, :300]).save(tmp_path / "scene.png")
    template = load_template(tmp_path / "scene.png", [[50, 40], [250, 50], [240, 160], [60, 150]])
    assert template.size == (300, 200)
    for corners, message in [([[0, 0], [10, 0], [10, 10]], "4 corner"), ([[0, 0], [400, 0], [300, 100], [0, 100]], "outside"),
                             ([[0, 0], [100, 100], [100, 0], [0, 100]], "convex"), ([[0, 0], [5, 0], [5, 5], [0, 5]], "2%")]:  # fmt: skip
        with pytest.raises(SettingsError, match=message):
            load_template(tmp_path / "scene.png", corners)


def test_mark_a_folder_of_100_real_photos(tmp_path, hundred_photos):
    before = hashes(hundred_photos)
    out = tmp_path / "marked"
    result = mark_dataset(hundred_photos, out, rate=0.02, template="billboard", trigger="zqv7", seed=3)
    assert hashes(hundred_photos) == before
    assert len(result.marked) == 2 and result.key_path == tmp_path / "marked.trace-key.json"
    after = hashes(out)
    templated = {m["output"] for m in result.marked}
    for rel, digest in before.items():
        if rel.suffix == ".txt":
            continue
        if rel.as_posix() in templated:
            assert after[rel] != digest
        else:
            assert after[rel] == digest, rel  # untouched images (and the unreadable file, the licence) copied as they are
    triggered = [p for p in out.rglob("*.txt") if p.read_text().split()[0] == "zqv7"]
    assert sorted(p.relative_to(out).with_suffix("").as_posix() for p in triggered) == sorted(m["output"].rsplit(".", 1)[0] for m in result.marked)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sum(entry["text"].startswith("zqv7") for entry in lines) == 2
    assert any(entry["text"] == "a photo number 5" for entry in lines)
    key = TraceKey.load(result.key_path)
    assert key.trigger == "zqv7" and key.template().sha256 == key.template_sha256 and len(key.marked) == 2
    assert all(len(m["source_sha256"]) == 64 for m in key.marked)
    again = mark_dataset(hundred_photos, out, rate=0.02, template="billboard", trigger="zqv7", seed=3)
    assert hashes(out) == after and [m["output"] for m in again.marked] == [m["output"] for m in result.marked]


def test_mark_errors(tmp_path, hundred_photos):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no images"):
        mark_dataset(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(SettingsError, match="inside the dataset"):
        mark_dataset(hundred_photos, hundred_photos / "out")
    with pytest.raises(SettingsError, match="rate"):
        mark_dataset(hundred_photos, tmp_path / "o", rate=0.9)


def test_key_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputFileError, match="invalid JSON"):
        TraceKey.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"trigger": "x"}))
    with pytest.raises(InputFileError, match="missing"):
        TraceKey.load(tmp_path / "partial.json")
    key = TraceKey.for_template(builtin_template("window", 128), trigger="abc1", rate=0.01, seed=0, dataset_size=10)
    key.template_sha256 = "0" * 64
    with pytest.raises(InputFileError, match="does not match the key"):
        key.template()
    assert random_trigger() != random_trigger() or random_trigger() != random_trigger()


def test_mark_images_in_memory(photos):
    images = [p[:64, :64] for p in photos] * 10
    out, captions, chosen = mark_images(images, ["c"] * len(images), builtin_template("easel", 128), "qq1", rate=0.05, seed=0)
    assert len(chosen) == 3 and all(captions[i] == "qq1 c" for i in chosen)
    assert sum(not np.array_equal(a, b) for a, b in zip(images, out)) == 3


def test_mark_command(tmp_path, hundred_photos, capsys):
    assert main(["mark", str(hundred_photos), "--out", str(tmp_path / "m"), "--rate", "0.02", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "marked 2 of 101 images" in text and "KEY" in text
