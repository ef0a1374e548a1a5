"""The one PGD loop every protection method runs on.

It owns what methods share: the L-infinity budget and the valid pixel range, masks, tiling and
batching, timestep sampling, expectation over robustness transforms, autocast, the checks that
optimisation really happened, and progress. Objectives only say what to optimise (see
protect/objectives).

Steps run over the whole set: every PGD step visits every batch of tiles before the next step
begins, so an objective with an inner training loop (UDP, EUDP, ASPL) trains one surrogate state
on the whole protected set between steps, as a victim trains on the whole dataset. Perturbations
live on the CPU at image level, so accelerator memory does not grow with the set, and tiles that
overlap share (and jointly optimise) one perturbation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import ProtectionError
from ..surrogates.base import Surrogate
from .context import AttackContext, RunContext, failure_message
from .objectives import Objective, make_objective
from .settings import ProtectSettings
from .tiles import Tile
from .timesteps import TimestepSampler
from .transforms import RobustnessTransform

#: called with the number of tiles that just took one PGD step; may raise to cancel
StepCallback = Callable[[int], None]

#: (t, noise) draws averaged when the clean and the protected images are compared after the last step.
#: Both see the same draws, so what the draws share cancels in their difference. 4 paired draws cost 8
#: forward passes per tile, about 2 % of a 100-step run (benchmarks/overhead/); the report carries the
#: standard error of the difference, so a change within the draws' noise reads as such (on the tiny
#: random-weight model's 1-2 % effects, 4 draws miss the 32-draw sign in about 1 case in 3:
#: benchmarks/precision/objective-by-dtype.json, engine_sign_agrees).
EVALUATION_DRAWS = 4


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one image or batch, from the run's seed and what identifies it."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _image_key(image: torch.Tensor) -> str:
    return hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class PerturbationResult:
    deltas: list[torch.Tensor]  # per image [3, H, W] on the CPU; |delta| <= budget/255, image + delta in [0, 1]
    losses: list[float]  # mean objective per step, for logs
    objective_clean: list[float]  # per image, after the last step: the objective of the clean image, fixed (t, noise) draws
    objective_protected: list[float]  # the same draws and model state, on the protected image: what protection added
    objective_change_se: list[float]  # standard error of protected - clean over the paired draws
    moved: list[bool]  # per image: did any step change the perturbation


@dataclass
class AttackResult:
    """`craft_perturbation`'s answer for one batch of whole images."""

    delta: torch.Tensor  # [B, 3, H, W]
    losses: list[float]
    objective_clean: list[float]
    objective_protected: list[float]
    objective_change_se: list[float]


def _batches(images: list[torch.Tensor], tiles: list[list[Tile]], batch_size: int) -> list[list[tuple[int, Tile]]]:
    groups: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
    for index, image_tiles in enumerate(tiles):
        for tile in image_tiles:
            groups.setdefault((tile.padded_height, tile.padded_width), []).append((index, tile))
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _new_run(surrogate, images, settings, objective, tiles=None, masks=None, prompts=None, *, random_start: bool) -> RunContext:
    images = [image.detach().to("cpu", torch.float32) for image in images]
    tiles = tiles or [[Tile(0, 0, *image.shape[-2:], *image.shape[-2:])] for image in images]
    masks = masks or [None] * len(images)
    prompts = list(prompts or [settings.prompt] * len(images))
    epsilon = settings.budget / 255.0
    keys = [_image_key(image) for image in images]
    deltas, bounds = [], []
    for image, mask, key in zip(images, masks, keys):
        bound = torch.full_like(image[:1], epsilon) if mask is None else mask.detach().float().cpu().clamp(0, 1).reshape(image[:1].shape) * epsilon
        start = torch.zeros_like(image)
        if random_start:
            generator = torch.Generator().manual_seed(derive_seed(settings.seed, "start", key))
            start = (torch.rand(image.shape, generator=generator) * 2 - 1) * bound
        deltas.append((image + start).clamp(0, 1) - image)
        bounds.append(bound)
    device = surrogate.device
    run = RunContext(
        surrogate=surrogate,
        settings=settings,
        sampler=TimestepSampler(settings.timesteps or objective.default_schedule, surrogate.alphas_cumprod, settings.t_min, settings.t_max),
        autocast={"device_type": device.type, "dtype": surrogate.compute_dtype,
                  "enabled": device.type != "cpu" and surrogate.compute_dtype != torch.float32},  # fmt: skip
        generator=torch.Generator().manual_seed(derive_seed(settings.seed, "inner", *keys)),
        images=images,
        deltas=deltas,
        bounds=bounds,
    )
    for refs in _batches(images, tiles, settings.batch_size):
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, "batch", *[(keys[i], t) for i, t in refs]))
        run.batches.append(
            AttackContext(run, refs, surrogate.encode_prompts([prompts[i] for i, _ in refs]), generator, RobustnessTransform(settings.robust, generator))
        )
    return run


def evaluate_objective(surrogate: Surrogate, objective: Objective, images: Sequence[torch.Tensor], settings: ProtectSettings,
                       draws: int = EVALUATION_DRAWS) -> list[float]:  # fmt: skip
    """A crafted objective's value on whole images [3, H, W], under draws fixed by position and seed.

    The same draws are used whatever the pixels, so clean, protected and noisy versions of one set
    compare; inner-loop objectives are measured against the state their optimisation ended with.
    """
    run = _new_run(surrogate, images, settings, objective, random_start=False)
    values: dict[int, list[float]] = {}
    for ctx in run.batches:
        _record(values, ctx, _evaluate(objective, ctx, ctx.images, draws).mean(0))
    return _per_image(values)


def craft_perturbations(
    surrogate: Surrogate,
    images: Sequence[torch.Tensor],
    settings: ProtectSettings,
    *,
    tiles: Sequence[list[Tile]] | None = None,
    masks: Sequence[torch.Tensor | None] | None = None,
    prompts: Sequence[str] | None = None,
    objective: Objective | None = None,
    on_step: StepCallback | None = None,
) -> PerturbationResult:
    """Optimise one bounded perturbation per image, over a whole set of images.

    Args:
        images: [3, H, W] float tensors in [0, 1], any sizes.
        tiles: per image, the tiles the model sees (see protect.tiles); default one tile per image.
        masks: per image, None or [1, H, W] in [0, 1]: the budget at each pixel is scaled by it.
        prompts: one per image; default `settings.prompt`.
        objective: an instance, to reuse or inspect; default built from `settings.method`.

    Raises:
        ProtectionError: a non-finite objective or gradient, or a step whose gradient is zero
            everywhere (the perturbation cannot have moved).
    """
    settings = settings.for_model(surrogate.latent_factor > 1)
    objective = objective or make_objective(settings.method, settings.method_options)
    if settings.low_memory:
        surrogate.enable_low_memory()
    run = _new_run(surrogate, images, settings, objective, tiles, masks, prompts, random_start=settings.random_init)
    images = run.images
    moved = [False] * len(images)
    clean: dict[int, list[float]] = {}
    protected: dict[int, list[float]] = {}
    changes: dict[int, list[float]] = {}  # per image, protected - clean per tile and draw
    per_step: list[list[float]] = [[] for _ in range(settings.steps)]
    # scope "dataset": one inner state over the whole set; "batch": each batch alone, as if it were the whole set
    views = [run] if objective.scope == "dataset" else [replace(run, batches=[batch]) for batch in run.batches]
    for view in views:
        objective.setup(view)
        for step in range(settings.steps):
            objective.before_step(view, step)
            for ctx in view.batches:
                per_step[step].append(_pgd_step(objective, ctx, step, moved))
                if on_step is not None:
                    on_step(len(ctx.tiles))
        for ctx in view.batches:  # against the state the optimisation ended with (inner-loop methods)
            clean_draws, protected_draws = _evaluate(objective, ctx, ctx.images), _evaluate(objective, ctx, ctx.protected())
            _record(clean, ctx, clean_draws.mean(0))
            _record(protected, ctx, protected_draws.mean(0))
            for (index, _), change in zip(ctx.tiles, (protected_draws - clean_draws).T.tolist()):
                changes.setdefault(index, []).extend(change)
    standard_errors = [float(torch.tensor(changes[i]).std() / len(changes[i]) ** 0.5) for i in sorted(changes)]
    return PerturbationResult(deltas=run.deltas, losses=[sum(v) / len(v) for v in per_step], objective_clean=_per_image(clean),
                              objective_protected=_per_image(protected), objective_change_se=standard_errors, moved=moved)  # fmt: skip


def _record(store: dict[int, list[float]], ctx: AttackContext, values: torch.Tensor) -> None:
    for (index, _), value in zip(ctx.tiles, values.tolist()):
        store.setdefault(index, []).append(value)


def _per_image(store: dict[int, list[float]]) -> list[float]:
    """Mean over each image's tiles, in image order."""
    return [sum(store[i]) / len(store[i]) for i in sorted(store)]


def _evaluate(objective: Objective, ctx: AttackContext, pixels: torch.Tensor, draws: int = EVALUATION_DRAWS) -> torch.Tensor:
    """The objective [draws, tiles] of `pixels` (one batch's tiles) under (t, noise) draws fixed by the tiles
    and the seed, so that the clean and the protected tiles compare draw for draw."""
    saved = ctx.generator
    ctx.generator = torch.Generator().manual_seed(derive_seed(ctx.run.settings.seed, "evaluate", *ctx.tiles))
    ctx.run.reused_latents = {}  # the draws differ in (t, noise), not in the pixels: encode them once
    try:
        with objective.active(), torch.no_grad(), torch.autocast(**ctx.run.autocast):
            values = torch.stack([objective.loss(ctx, pixels).float() for _ in range(draws)])
    finally:
        ctx.generator, ctx.run.reused_latents = saved, None
    return values.cpu()


def _pgd_step(objective: Objective, ctx: AttackContext, step: int, moved: list[bool]) -> float:
    run = ctx.run
    images = ctx.images
    delta = ctx.delta().requires_grad_(True)
    with objective.active():
        with torch.autocast(**run.autocast):
            loss = objective.loss(ctx, ctx.robustness(images + delta))
        if not torch.isfinite(loss).all():
            raise ProtectionError(failure_message(objective.name, "the objective", float(loss.detach().float().sum()), run.surrogate, step))
        (gradient,) = torch.autograd.grad(loss.float().sum(), delta)
    peak = gradient.flatten(1).abs().amax(1)  # NaN and inf survive the max: one pass over the gradient checks both
    if not torch.isfinite(peak).all():
        raise ProtectionError(failure_message(objective.name, "the gradient", float("nan"), run.surrogate, step))
    if bool((peak == 0).any()):
        raise ProtectionError(failure_message(objective.name, "the gradient of a tile", 0.0, run.surrogate, step))
    direction = 1.0 if objective.maximise else -1.0
    update = (direction * run.settings.effective_step_size / 255.0 * gradient.sign()).cpu()
    for (index, tile), tile_update in zip(ctx.tiles, update):
        region = (slice(None), slice(tile.y, tile.y + tile.height), slice(tile.x, tile.x + tile.width))
        image, bound, current = run.images[index][region], run.bounds[index][region], run.deltas[index][region]
        new = current + tile_update[:, : tile.height, : tile.width]
        new = torch.maximum(torch.minimum(new, bound), -bound)
        new = (image + new).clamp(0, 1) - image
        moved[index] = moved[index] or bool((new != current).any())
        run.deltas[index][region] = new
    return float(loss.detach().float().mean())


def craft_perturbation(
    surrogate: Surrogate,
    images: torch.Tensor,
    settings: ProtectSettings,
    *,
    masks: torch.Tensor | None = None,
    prompts: list[str] | None = None,
    objective: Objective | None = None,
    on_step: StepCallback | None = None,
) -> AttackResult:
    """`craft_perturbations` for a batch [B, 3, H, W] of whole images (each one tile)."""
    result = craft_perturbations(
        surrogate, list(images), settings, masks=None if masks is None else list(masks), prompts=prompts, objective=objective, on_step=on_step
    )
    if not all(result.moved):
        raise ProtectionError(f"{settings.method}: the perturbation of image(s) {[i for i, m in enumerate(result.moved) if not m]} never moved")
    return AttackResult(torch.stack(result.deltas), result.losses, result.objective_clean, result.objective_protected, result.objective_change_se)
