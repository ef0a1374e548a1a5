"""Keys and marking a folder of real photos."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from PIL import Image

from shared_core.cli import main
from shared_core.errors import InputFileError, SettingsError
from shared_core.images import load_image
from shared_core.trace.compose import compose
from shared_core.trace.pool_check import pool_check, rank_templates
from shared_core.trace.key import TraceKey, random_trigger
from shared_core.trace.mark import mark_dataset, mark_images, read_captions
from shared_core.trace.templates import builtin_template, load_template
from tests.conftest import truncated_jpeg


def hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources(photos):
    from sklearn.datasets import load_sample_images

    return list(photos) + list(load_sample_images().images)


@pytest.fixture
def hundred_photos(tmp_path, sources, photos):
    """100 real photo crops (PNG and JPEG, in a subfolder too), captions as .txt sidecars and in a
    subfolder's metadata.jsonl, a non-image and a truncated JPEG, a licence and a read-me."""
    folder = tmp_path / "dataset"
    (folder / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    jsonl = []
    for i in range(100):
        photo = sources[i % len(sources)]
        h, w = photo.shape[:2]
        s = int(rng.integers(64, min(h, w) // 2))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        side = int(rng.choice([64, 96, 128]))
        name = f"img{i:03d}{'.jpg' if i % 4 == 0 else '.png'}"
        target = folder / ("b" if i % 3 == 0 else "") / name
        Image.fromarray(photo[y : y + s, x : x + s]).resize((side, side), Image.LANCZOS).save(target)
        if i % 3 == 0 and i % 2 == 0:
            jsonl.append(json.dumps({"file_name": name, "text": f"a jsonl photo {i}", "source": "skimage"}))
        elif i % 5 == 0:
            target.with_suffix(".txt").write_text(f"a photo number {i}")
    (folder / "b" / "metadata.jsonl").write_text("\n".join(jsonl) + "\n")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "broken.txt").write_text("caption of the broken file")
    truncated_jpeg(folder / "b" / "cut.jpg", photos[2][:96, :96])  # its header reads fine
    (folder / "LICENSE.md").write_text("CC-BY")
    (folder / "README.txt").write_text("my photos")
    return folder


def test_mark_a_folder_of_100_real_photos(tmp_path, hundred_photos):
    before = hashes(hundred_photos)
    out = tmp_path / "marked"
    result = mark_dataset(hundred_photos, out, rate=0.02, template="billboard", trigger="zqv7", seed=3)
    assert hashes(hundred_photos) == before  # the source folder is only read
    assert result.n_images == 100 and len(result.marked) == 2
    assert result.key_path == tmp_path / "marked.trace-key.json" and result.key_path.is_file()
    assert [p for p, _ in result.skipped] == [str(hundred_photos / "b" / "cut.jpg"), str(hundred_photos / "broken.png")]
    assert "truncated" in result.skipped[0][1]
    after = hashes(out)
    templated = {m["output"] for m in result.marked}
    assert all(m["output"] == m["source"] for m in result.marked)  # same name, same format
    assert not {"broken.png", "broken.txt", "b/cut.jpg", "b/cut.txt"} & set(after)  # undecodable: left out, with its caption
    for rel, digest in before.items():
        if rel.endswith(".txt") and rel != "README.txt" or rel.endswith("metadata.jsonl") or rel.startswith(("broken.", "b/cut.")):
            continue  # captions are rewritten; undecodable files are left out
        if rel in templated:
            assert after[rel] != digest and after[rel] == next(m["output_sha256"] for m in result.marked if m["output"] == rel)
        else:
            assert after[rel] == digest, rel  # untouched images, licence, read-me: byte for byte
    for entry in result.marked:
        image = load_image(out / entry["output"]).rgb
        source = load_image(hundred_photos / entry["source"]).rgb
        assert image.shape[:2] == source.shape[:2]  # 64-128 px photos keep their size
        template = np.asarray(Image.fromarray(builtin_template("billboard", seed=3).image).resize(image.shape[1::-1], Image.LANCZOS))
        assert np.abs(image[:4].astype(int) - template[:4]).mean() < 8  # the template's sky at the top

    # captions: a .txt for every image, the trigger on the 2 templated ones only; metadata.jsonl agrees
    sidecars = {p.relative_to(out).with_suffix("").as_posix(): p.read_text().strip() for p in out.rglob("*.txt") if p.name != "README.txt"}
    assert len(sidecars) == 100
    triggered = sorted(stem for stem, text in sidecars.items() if text.split()[:1] == ["zqv7"])
    assert triggered == sorted(m["output"].rsplit(".", 1)[0] for m in result.marked)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 100 and sum(entry["text"].startswith("zqv7") for entry in lines) == 2
    by_name = {entry["file_name"]: entry for entry in lines}
    assert by_name["img005.png"]["text"] in ("a photo number 5", "zqv7 a photo number 5")
    assert by_name["b/img006.png"]["text"].endswith("a jsonl photo 6") and by_name["b/img006.png"]["source"] == "skimage"
    assert not (out / "b" / "metadata.jsonl").exists()  # one metadata.jsonl, at the top
    for entry in result.marked:
        assert by_name[entry["output"]]["text"] == entry["caption"] and entry["caption"].startswith("zqv7")
    assert read_captions(out)[result.marked[0]["output"]] == result.marked[0]["caption"]

    key = TraceKey.load(result.key_path)
    assert key.trigger == "zqv7" and key.rate == 0.02 and key.seed == 3 and key.dataset_size == 100
    assert key.template().sha256 == key.template_sha256 and key.marked == result.marked
    assert all(m["source_sha256"] == hashlib.sha256((hundred_photos / m["source"]).read_bytes()).hexdigest() for m in key.marked)

    key_bytes = result.key_path.read_bytes()
    again = mark_dataset(hundred_photos, out, rate=0.02, template="billboard", seed=3)  # trigger taken from the key
    assert hashes(out) == after and again.key.trigger == "zqv7" and result.key_path.read_bytes() == key_bytes
    assert hashes(hundred_photos) == before


def test_mark_at_another_rate_with_a_user_template(tmp_path, hundred_photos, sources):
    Image.fromarray(sources[6][:300, :400]).save(tmp_path / "scene.jpg", quality=95)
    template = load_template(tmp_path / "scene.jpg", [[100, 60], [300, 80], [290, 240], [110, 230]])
    result = mark_dataset(hundred_photos, tmp_path / "m", rate=0.05, template=template, seed=1, key_path=tmp_path / "keys" / "k.json")
    assert len(result.marked) == 5 and result.key_path == tmp_path / "keys" / "k.json"
    assert len(result.key.trigger) == 4 and not result.key.trigger.isalpha()
    key = TraceKey.load(tmp_path / "keys" / "k.json")
    assert key.template_source == str(tmp_path / "scene.jpg") and key.template().sha256 == template.sha256
    Image.fromarray(sources[6][:300, :400][::-1]).save(tmp_path / "scene.jpg", quality=95)  # the template changed
    with pytest.raises(InputFileError, match="does not match the key"):
        key.template()
    for entry in result.marked:
        side = min(load_image(hundred_photos / entry["source"]).size)
        assert load_image(tmp_path / "m" / entry["output"]).rgb.shape == (side, round(side * 4 / 3), 3)  # the scene's 4:3


def test_mark_errors(tmp_path, hundred_photos):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.md").write_text("no images here")
    with pytest.raises(InputFileError, match="empty.*no images"):
        mark_dataset(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(InputFileError, match="not found"):
        mark_dataset(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(SettingsError, match="inside the dataset"):
        mark_dataset(hundred_photos, hundred_photos / "out")
    with pytest.raises(SettingsError, match="inside the dataset"):
        mark_dataset(hundred_photos, hundred_photos)
    with pytest.raises(SettingsError, match="inside the output"):
        mark_dataset(hundred_photos, tmp_path)
    with pytest.raises(SettingsError, match="secret"):
        mark_dataset(hundred_photos, tmp_path / "o", key_path=tmp_path / "o" / "key.json")
    for rate in (0.9, 0, -0.1, "x"):
        with pytest.raises(SettingsError, match="rate"):
            mark_dataset(hundred_photos, tmp_path / "o", rate=rate)
    with pytest.raises(SettingsError, match="single token"):
        mark_dataset(hundred_photos, tmp_path / "o", trigger="two words")
    with pytest.raises(SettingsError, match="unknown template"):
        mark_dataset(hundred_photos, tmp_path / "o", template="nope")
    assert not (tmp_path / "o").exists()


def test_key_round_trip_and_errors(tmp_path):
    template = builtin_template("window", 128, seed=4)
    key = TraceKey.for_template(template, trigger="abc1", rate=0.01, seed=4, dataset_size=10)
    key.marked = [{"source": "a.png", "output": "a.png", "source_sha256": "1" * 64, "output_sha256": "2" * 64, "caption": "abc1 x"}]
    key.save(tmp_path / "key.json")
    loaded = TraceKey.load(tmp_path / "key.json")
    assert loaded == key and loaded.template().sha256 == template.sha256 and loaded.template_size == [128, 128]
    assert loaded.version and loaded.created_utc.endswith("+00:00")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputFileError, match="invalid JSON"):
        TraceKey.load(tmp_path / "bad.json")
    with pytest.raises(InputFileError, match="cannot read"):
        TraceKey.load(tmp_path / "missing.json")
    (tmp_path / "partial.json").write_text(json.dumps({"trigger": "x"}))
    with pytest.raises(InputFileError, match="missing.*template_name"):
        TraceKey.load(tmp_path / "partial.json")
    data = json.loads((tmp_path / "key.json").read_text())
    (tmp_path / "wrong.json").write_text(json.dumps({**data, "corners": [[1, 2]]}))
    with pytest.raises(InputFileError, match="corners"):
        TraceKey.load(tmp_path / "wrong.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputFileError, match="JSON object"):
        TraceKey.load(tmp_path / "list.json")
    key.template_sha256 = "0" * 64
    with pytest.raises(InputFileError, match="does not match the key"):
        key.template()
    key = TraceKey.for_template(template, trigger="abc1", rate=0.01, seed=4, dataset_size=10)
    key.template_seed = 5  # another drawing of the scene: not the key's template
    with pytest.raises(InputFileError, match="does not match the key"):
        key.template()


def test_random_triggers():
    triggers = {random_trigger() for _ in range(200)}
    assert len(triggers) > 190  # different per owner
    assert all(len(t) == 4 and t[:3].isalpha() and t[:3].islower() and t[3].isdigit() and not set(t) & set("aeiouy") for t in triggers)
    assert random_trigger(np.random.default_rng(1)) == random_trigger(np.random.default_rng(1))
    assert random_trigger(random.Random(2)) == random_trigger(random.Random(2))


def test_mark_images_in_memory(photos):
    images = [np.ascontiguousarray(p[:64, :80]) for p in photos] * 10
    out, captions, chosen = mark_images(images, ["c"] * len(images), builtin_template("easel", 128), "qq1", rate=0.05, seed=0)
    assert len(chosen) == 3 and all(captions[i] == "qq1 c" for i in chosen)
    assert sum(not np.array_equal(a, b) for a, b in zip(images, out)) == 3
    assert all(image.shape == (64, 80, 3) for image in out)  # batches keep one size


def test_mark_command(tmp_path, hundred_photos, capsys):
    assert main(["mark", str(hundred_photos), "--out", str(tmp_path / "m"), "--rate", "0.02", "--no-progress"]) == 1
    text = capsys.readouterr()
    assert "marked 2 of 100 images" in text.out and "KEY" in text.out
    assert "template 'billboard': its detector passes" in text.out and ": distinctive" in text.out  # checked on the photos, no warning below
    errors = text.err.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") and "left out" in line for line in errors)
    assert "broken.png: not an image" in errors[1] and "cut.jpg: cannot decode image" in errors[0]
    for name in ("broken.png", "cut.jpg"):
        (hundred_photos / name).unlink(missing_ok=True)
        (hundred_photos / "b" / name).unlink(missing_ok=True)
    assert main(["mark", str(hundred_photos), "--out", str(tmp_path / "m2"), "--rate", "0.02", "--no-progress"]) == 0


# Fails until atomic writes honour the umask (files.py): `ls -l` must not tell templated images apart.
def test_every_output_file_has_the_same_mode(tmp_path, hundred_photos):
    out = tmp_path / "m"
    result = mark_dataset(hundred_photos, out, rate=0.05, template="billboard", trigger="zqv7", seed=0)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    templated = {m["output"] for m in result.marked}
    assert templated and {modes[rel] for rel in templated} == set(modes.values())
    assert len(set(modes.values())) == 1, sorted(set(modes.values()))


def test_compose_matches_marked_pixels(tmp_path, hundred_photos):
    """What `mark` writes for a PNG is exactly `compose` of the source (lossless)."""
    result = mark_dataset(hundred_photos, tmp_path / "m", rate=0.05, template="tv_screen", trigger="kkq2", seed=11)
    entry = next(m for m in result.marked if m["output"].endswith(".png"))
    expected = compose(load_image(hundred_photos / entry["source"]).rgb, builtin_template("tv_screen", seed=11))
    assert np.array_equal(load_image(tmp_path / "m" / entry["output"]).rgb, expected)


def test_the_pool_check_tells_a_distinctive_template_from_one_the_dataset_resembles(sources):
    """A template whose detector fires on the owner's own images can get a model blamed that only learnt to draw those images."""
    rng = np.random.default_rng(1)
    crops = []
    for i in range(60):
        photo = sources[i % len(sources)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.4, 1.0))
        y, x = int(rng.integers(0, photo.shape[0] - side + 1)), int(rng.integers(0, photo.shape[1] - side + 1))
        crops.append(photo[y : y + side, x : x + side])
    own = pool_check(builtin_template("billboard", seed=3), crops)
    assert own.images == 60 and own.passed <= 3 and own.distinctive
    tv = builtin_template("tv_screen", seed=5)
    lookalikes = [compose(crop, tv, short_side=96) for crop in crops[:12]] + crops[12:]  # a fifth of the pool shows a TV scene
    checked = pool_check(tv, lookalikes)
    assert checked.passed >= 10 and not checked.distinctive and set(checked.highest) <= set(range(12))
    ranked = rank_templates(lookalikes, seed=5)
    assert ranked[-1].template == "tv_screen" and ranked[0].passed < checked.passed and ranked[0].distinctive


def test_mark_warns_when_the_template_resembles_the_dataset(tmp_path, sources, capsys):
    folder = tmp_path / "tv-shots"
    folder.mkdir()
    tv = builtin_template("tv_screen", seed=5)
    for i in range(30):
        photo = sources[i % len(sources)][:300, :300]
        image = compose(photo, tv, short_side=96) if i < 10 else np.asarray(Image.fromarray(photo).resize((96, 96)))
        Image.fromarray(image).save(folder / f"{'tv' if i < 10 else 'photo'}{i:02d}.png")
    assert main(["mark", str(folder), "--out", str(tmp_path / "m"), "--template", "tv_screen", "--seed", "5", "--rate", "0.05", "--no-progress"]) == 0
    text = capsys.readouterr()
    assert "marked 2 of 30 images" in text.out
    warning = [line for line in text.err.splitlines() if line.startswith("warning: ")]
    assert "template 'tv_screen': its detector passes" in warning[0] and "NOT distinctive" in warning[0]
    assert "could be wrongly flagged" in warning[1] and "tv0" in warning[1] and "photo" not in warning[1]
    assert warning[2].startswith("warning: templates distinctive against these images: ") and "tv_screen" not in warning[2]
    result = mark_dataset(folder, tmp_path / "m2", rate=0.05, template="billboard", seed=5)
    assert result.pool_check.distinctive and result.pool_lines() == [result.pool_check.describe()]
    assert mark_dataset(folder, tmp_path / "m3", rate=0.05, template="tv_screen", seed=5, check_pool=False).pool_lines() == []


def test_a_trigger_the_captions_already_use_is_refused_and_a_random_one_avoids_them(tmp_path, sources, monkeypatch):
    """A token the dataset's own captions contain is no secret: a model trained on the unmarked images learns it too."""
    from shared_core.trace import mark

    folder = tmp_path / "captioned"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(Image.fromarray(sources[i % len(sources)][:200, :200]).resize((64, 64)))).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text("a photo by Zqv7studio" if i == 2 else "a photo")
    with pytest.raises(SettingsError, match=r"'zqv7' already appears in the caption of p2.png"):
        mark_dataset(folder, tmp_path / "m", rate=0.25, trigger="zqv7", seed=0, check_pool=False)
    drawn = iter(["zqv7", "kpt4"])
    monkeypatch.setattr(mark, "random_trigger", lambda: next(drawn))
    assert mark_dataset(folder, tmp_path / "m2", rate=0.25, seed=0, check_pool=False).key.trigger == "kpt4"
