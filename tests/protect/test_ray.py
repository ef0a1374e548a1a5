"""`protect --ray` on a real local Ray cluster (2 CPUs, loopback): same outputs as one process, nothing lost when a
worker dies, an interrupted driver resumes. Skipped without Ray unless UNLEARNABLE_REQUIRE_RAY=1 (CI sets it)."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from PIL import Image

from shared_core.protect import ProtectSettings, protect_files
from shared_core.surrogates import load_surrogate

if not os.environ.get("UNLEARNABLE_REQUIRE_RAY"):
    pytest.importorskip("ray")
import ray  # noqa: E402

from shared_core.protect.ray_executor import ModelSource, RayExecutor  # noqa: E402

MODEL = "builtin:tiny"
SETTINGS = ProtectSettings(method="advdm", steps=3, budget=8, batch_size=2, seed=4)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def eight_photos(tmp_path, photos):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(8):
        photo = photos[index % len(photos)]
        Image.fromarray(photo[16 * index : 16 * index + 64, 32 : 96 + 8 * (index % 3)]).save(folder / f"p{index}.png")
    return folder


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def one_process(eight_photos, tmp_path):
    """The plain run, one thread as each worker has: the reference outputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = protect_files([eight_photos], tmp_path / "local", load_surrogate(MODEL, "cpu"), SETTINGS, images_per_call=2)
    finally:
        torch.set_num_threads(threads)
    assert {o.status for o in summary.outcomes} == {"protected"}
    return hashes(tmp_path / "local")


def test_two_workers_give_the_outputs_of_one_process(cluster, eight_photos, one_process, tmp_path):
    executor = RayExecutor(ModelSource(MODEL, "cpu"), workers=2, cpus_per_worker=1)
    summary = protect_files([eight_photos], tmp_path / "ray", None, SETTINGS, executor=executor, images_per_call=2)
    assert {o.status for o in summary.outcomes} == {"protected"} and summary.model["name"] == MODEL
    assert hashes(tmp_path / "ray") == one_process


def test_a_killed_worker_loses_nothing(cluster, eight_photos, one_process, tmp_path):
    """ray.kill on a worker mid-run (as the first shard comes back): every input still ends with exactly one output,
    the same bytes as one process, and no temporary file remains."""
    executor = RayExecutor(ModelSource(MODEL, "cpu"), workers=2, cpus_per_worker=1)
    killed = []

    def kill_once(total):
        def advance(_):
            if not killed:
                killed.append(executor.actors[0])
                ray.kill(executor.actors[0])

        return advance

    summary = protect_files([eight_photos], tmp_path / "ray", None, SETTINGS, executor=executor, images_per_call=2, progress_factory=kill_once)
    assert killed and {o.status for o in summary.outcomes} == {"protected"}
    assert hashes(tmp_path / "ray") == one_process
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(f"p{i}.png" for i in range(8))


def test_a_shard_whose_workers_die_twice_fails_by_name_and_the_run_goes_on(cluster, eight_photos, tmp_path):
    """Workers that crash on one shard (the one of p4 and p5, the only one starting with a 72 px wide image) twice:
    those two images fail, naming themselves, and every other image is protected."""
    from shared_core.protect.ray_executor import ProtectWorker

    class CrashingWorker(ProtectWorker):
        def protect(self, images, masks, settings):
            if images[0].shape[1] == 72:
                os._exit(1)  # a process death, as an out-of-memory kill
            return super().protect(images, masks, settings)

    executor = RayExecutor(ModelSource(MODEL, "cpu"), workers=2, cpus_per_worker=1)
    for actor in executor.actors:
        ray.kill(actor)
    executor.actor_class = ray.remote(num_cpus=1, num_gpus=0)(CrashingWorker)
    executor.actors = [executor._new_actor() for _ in range(2)]
    summary = protect_files([eight_photos], tmp_path / "ray", None, SETTINGS, executor=executor, images_per_call=2)
    failed = {os.path.basename(o.source): o.error for o in summary.failed}
    assert set(failed) == {"p4.png", "p5.png"}, failed
    assert all("died 2 times" in error and "p4.png" in error and "p5.png" in error for error in failed.values())
    assert sum(o.status == "protected" for o in summary.outcomes) == 6
    assert not list((tmp_path / "ray").rglob("*.part"))


def test_interrupted_driver_resumes(cluster, eight_photos, one_process, tmp_path):
    class Stop(KeyboardInterrupt):
        pass

    def stop_after_first(total):
        def advance(_):
            raise Stop

        return advance

    executor = RayExecutor(ModelSource(MODEL, "cpu"), workers=2, cpus_per_worker=1)
    with pytest.raises(Stop):
        protect_files([eight_photos], tmp_path / "ray", None, SETTINGS, executor=executor, images_per_call=2, progress_factory=stop_after_first)
    assert not executor.actors  # stopped with the driver
    assert not list((tmp_path / "ray").rglob("*.part"))
    executor = RayExecutor(ModelSource(MODEL, "cpu"), workers=2, cpus_per_worker=1)
    summary = protect_files([eight_photos], tmp_path / "ray", None, SETTINGS, executor=executor, images_per_call=2)
    assert {o.status for o in summary.outcomes} == {"protected"}
    assert hashes(tmp_path / "ray") == one_process


def test_the_command_line_protects_a_folder_on_two_workers(cluster, eight_photos, one_process, tmp_path, capsys):
    from shared_core.cli import main

    out = tmp_path / "cli"
    args = ["protect", str(eight_photos), "--out", str(out), "--model", MODEL, "--device", "cpu", "--method", "advdm", "--steps", "3",
            "--batch-size", "2", "--seed", "4", "--ray", "auto", "--workers", "2", "--cpus-per-worker", "1", "--shard-size", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "Ray: 2 worker(s)" in capsys.readouterr().err
    assert {k: v for k, v in hashes(out).items() if k.endswith(".png")} == one_process


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch):
    import sys

    from shared_core.errors import SettingsError
    from shared_core.protect.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SettingsError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()
