"""Protect on a Ray cluster: one actor per GPU (or per few CPU cores) holds the surrogate and protects shards.

The driver (`protect_files`) still plans, reads and writes: shards of images travel to the actors
through Ray's object store and their protected pixels come back, one shard per worker at a time,
so the driver's memory stays flat for any folder size and no shared file system is needed. A
worker that dies (killed, out of memory, node lost) is replaced and its shard retried on another;
a shard whose workers die twice fails its images, by name, and the run goes on. (One shard per
worker, not a queue: a process that dies can take the unsent reply of the shard it just finished
with it, which would charge an innocent shard with a death.)

Ray is optional (`pip install -e ".[ray]"`) and imported only here, when `--ray` is given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import ProtectionError, SettingsError
from .pipeline import Progress, ProtectedImages, protect_images
from .settings import ProtectSettings
from .tiles import tile_layout

#: times one shard is sent out before its images are failed (a worker death each time)
ATTEMPTS = 2


def import_ray():
    try:
        import ray
    except ImportError:
        raise SettingsError('--ray needs Ray: pip install -e ".[ray]" (or pip install "ray>=2.9")') from None
    return ray


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the surrogate itself (models do not travel): `load_surrogate`'s arguments."""

    spec: str
    device: str = "auto"
    config_dir: str | None = None
    dtype: str | None = None
    low_memory: bool = False

    def load(self):
        from ..surrogates import load_surrogate

        surrogate = load_surrogate(self.spec, self.device, config_dir=self.config_dir, dtype=self.dtype)
        if self.low_memory:
            surrogate.enable_low_memory()
        return surrogate


class ProtectWorker:
    """The actor's body: loads the surrogate once, then protects shards (pixels in, pixels out)."""

    def __init__(self, source: ModelSource, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.surrogate = source.load()

    def describe(self) -> dict:
        return self.surrogate.describe()

    def size_multiple(self) -> int:
        return self.surrogate.size_multiple

    def protect(self, images: list[np.ndarray], masks: list[np.ndarray | None], settings: ProtectSettings) -> tuple[ProtectedImages | str, float]:
        """The shard's result, or the engine's error as text (a failed optimisation is not a worker death)."""
        started = time.perf_counter()
        try:
            result = protect_images(self.surrogate, images, settings, masks)
        except ProtectionError as exc:
            return str(exc), time.perf_counter() - started
        return result, time.perf_counter() - started


class RayExecutor:
    """`protect_files`'s executor on Ray.

    Args:
        source: how each worker loads the surrogate.
        address: "auto" (a running cluster this machine belongs to, else a new local one using every
            local GPU and core) or a cluster address (ray://HOST:10001 or HOST:6379).
        workers: actors; default one per GPU of the cluster, or one per `cpus_per_worker` cores.
        gpus_per_worker: GPUs per actor (fractions share a GPU); default 1 where the cluster has GPUs.
        cpus_per_worker: CPU cores per actor (its torch threads); default 1 with GPUs, else all
            cores shared out among `workers`.

    Example:
        >>> protect_files(["photos/"], "out/", None, ProtectSettings(), executor=RayExecutor(ModelSource("sd15/")),
        ...               images_per_call=32)
    """

    def __init__(self, source: ModelSource, address: str = "auto", workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: int | None = None):  # fmt: skip
        self.ray = import_ray()
        self.started_ray = not self.ray.is_initialized()
        if self.started_ray:
            self.ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False)
        resources = self.ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.gpus_per_worker = (1.0 if gpus else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
        if self.gpus_per_worker > gpus:
            raise SettingsError(f"--gpus-per-worker {self.gpus_per_worker:g} but the Ray cluster has {gpus:g} GPU(s)")
        default_workers = int(gpus // self.gpus_per_worker) if self.gpus_per_worker else max(1, cpus // (cpus_per_worker or 1))
        self.workers = workers or default_workers
        self.cpus_per_worker = cpus_per_worker or (1 if self.gpus_per_worker else max(1, cpus // self.workers))
        self.source = source
        self.actor_class = self.ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(ProtectWorker)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self.model, self.size_multiple = self.ray.get([self.actors[0].describe.remote(), self.actors[0].size_multiple.remote()])

    def _new_actor(self):
        return self.actor_class.remote(self.source, self.cpus_per_worker)

    def describe(self) -> dict:
        return self.model

    def tile_count(self, height: int, width: int, settings: ProtectSettings) -> int:
        edge = settings.tile_size or self.model["native_resolution"]
        return len(tile_layout(height, width, edge, self.size_multiple))

    def run(self, chunks: Iterable[list], settings: ProtectSettings, progress: Progress | None) -> Iterator[tuple[list, object, float]]:
        """Shards out to idle actors, one each; results back as they finish (the next shard is out before this one is written)."""
        ray, chunks = self.ray, iter(chunks)
        out: dict = {}  # object ref -> (chunk, actor, attempt)
        retry: deque = deque()

        def send_to_idle_actors() -> None:
            while len(out) < len(self.actors) and (retry or (chunk := next(chunks, None)) is not None):
                chunk, attempt = retry.popleft() if retry else (chunk, 1)
                actor = next(a for a in self.actors if all(a is not busy for _, busy, _ in out.values()))
                out[actor.protect.remote([c.loaded.rgb for c in chunk], [c.mask for c in chunk], settings)] = (chunk, actor, attempt)

        try:
            while True:
                send_to_idle_actors()
                if not out:
                    return
                (done,), _ = ray.wait(list(out), num_returns=1)
                chunk, actor, attempt = out.pop(done)
                try:
                    result, seconds = ray.get(done)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
                    if actor in self.actors:  # the first of its lost shards to come back replaces it
                        self.actors[self.actors.index(actor)] = self._new_actor()
                    if attempt < ATTEMPTS:
                        retry.append((chunk, attempt + 1))
                        continue
                    names = ", ".join(str(c.pending.path) for c in chunk)
                    result, seconds = f"the Ray worker protecting this shard died {ATTEMPTS} times ({type(exc).__name__}); shard: {names}", 0.0
                send_to_idle_actors()  # the worker goes on while the driver writes this shard
                if isinstance(result, str):
                    result = ProtectionError(result)
                if progress is not None:
                    progress(sum(self.tile_count(*c.loaded.rgb.shape[:2], settings) for c in chunk) * settings.steps)
                yield chunk, result, seconds
        finally:
            self.close()

    def close(self) -> None:
        """Stop the actors (and Ray, where this executor started it)."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
