"""`unlearnable bench efficacy`: does protection stop learning, at what cost (tracing: `bench tracing`).

A victim really trains on the protected (or marked) images and we measure what it learned. Real
Stable Diffusion cannot run on a 2-core CPU, so the papers' settings are reproduced at small scale
with real images and the same diffusers classes (see benchmarks/README.md):

* scratch: a pixel DDPM (`UNet2DModel`) trained from scratch on the owner's digits, protected or
  clean (the UDP paper's DDPM setting);
* finetune: a small latent diffusion model (`StableDiffusionPipeline` classes) pretrained on digits
  0-6 is fine-tuned with peft LoRA, or fully, on the owner's digit 7 (a class it never saw);
* photo settings (the full plan; the digits settings above are the `--quick` smoke plan):
  photo-scratch, a pixel DDPM trained from scratch on 32 px crops of the owner's photograph; and
  photo-finetune (the mimicry case), the committed public base model of `bases.py` (SD-shaped: an
  AutoencoderKL with 8x downsampling and 4 latent channels, a text-conditioned UNet, trained on 12
  other photographs and textures) fine-tuned with a peft LoRA, or fully, on the owner's 32 crops of
  a cat captioned "a photo of sks cat", a concept it never saw. Victims are also scored by their
  denoising loss on held-out *clean* crops of the owner (what they really learned about them), and
  the base model itself is scored the same way, so each victim's *learned share* can be reported:
  (base - protected) / (base - clean) of that loss.

Every number is repeated over `plan.seeds` (protection noise, victim initialisation and data order
all follow the seed) and reported as mean and standard deviation. Runs are appended to runs.jsonl
in the output folder as they finish, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import SettingsError
from ..files import atomic_write_bytes, atomic_write_text
from .plans import BASE, DEFAULT_METHOD, PLANS, Condition, Plan
from .settings import SETTING_CLASSES

SETTINGS = ("finetune", "scratch")  # longest first


# -- the run ---------------------------------------------------------------------------------------------


class RunLog:
    """runs-<setting>.jsonl in the output folder: one line per finished run; finished runs are not repeated."""

    def __init__(self, out: Path, plan: Plan, setting: str):
        self.path = out / f"runs-{setting}.jsonl"
        self.plan = plan
        self.runs = {run["id"]: run for run in read_runs(self.path, plan)}

    def done(self, run_id: str) -> bool:
        return run_id in self.runs

    def add(self, run_id: str, run: dict) -> None:
        run = {"id": run_id, "plan": self.plan.name, **run}
        self.runs[run_id] = run
        with self.path.open("a") as file:  # one write of a whole line: workers of other seeds append to the same log
            file.write(json.dumps(run) + "\n")


def read_runs(path: Path, plan: Plan) -> list[dict]:
    """The plan's logged runs: those logged under its name, or under a name of the same `log_family` where the plan has one."""
    if not path.exists():
        return []
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    family = getattr(plan, "log_family", None) or (lambda name: name)
    return [run for run in runs if family(run.get("plan", "")) == family(plan.name)]


def save_grid(samples: list[np.ndarray], path: Path, columns: int = 10, count: int = 40) -> None:
    """The first `count` samples as one PNG, tiles 1 px apart, small tiles enlarged by a whole factor towards 64 px (lossless)."""
    tiles = samples[:count]
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        y, x = 1 + (i // columns) * (h + 1), 1 + (i % columns) * (w + 1)
        grid[y : y + h, x : x + w] = tile
    scale = max(1, 64 // h)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def read_grid(path: Path, tile: int, count: int, columns: int = 10) -> list[np.ndarray]:
    """The first `count` square tiles of `tile` px back from a grid `save_grid` wrote (exact: the grid is lossless)."""
    scale = max(1, 64 // tile)  # save_grid's enlargement
    grid = np.asarray(Image.open(path).convert("RGB"))[::scale, ::scale]
    rows = (grid.shape[0] - 1) // (tile + 1)
    if (grid.shape[1] - 1) // (tile + 1) != columns or count > rows * columns:
        raise ValueError(f"{path}: not a grid of {count} tiles of {tile} px in {columns} columns ({grid.shape[1]}x{grid.shape[0]} px)")
    spots = [(1 + (i // columns) * (tile + 1), 1 + (i % columns) * (tile + 1)) for i in range(count)]
    return [grid[y : y + tile, x : x + tile].copy() for y, x in spots]


def _visibility(before: list[np.ndarray], after: list[np.ndarray]) -> dict:
    from ..metrics import psnr, ssim

    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(before, after)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(before, after)]))}  # fmt: skip


class CraftedSets:
    """Each protected set crafted once per (condition, seed) and kept in OUT/crafted/ (with its cost), so that
    victims of another mode or a later run train on the very same images without crafting them again."""

    def __init__(self, out: Path, setting_name: str):
        self.folder = out / "crafted" / setting_name

    def get(self, setting, crafted: Condition, seed: int) -> tuple[list[np.ndarray], dict]:
        path = self.folder / f"{crafted.label.replace(' ', '_')}-seed{seed}.npz"
        if path.exists():
            with np.load(path) as stored:
                return list(stored["images"]), json.loads(str(stored["cost"]))
        images, cost = setting.craft(crafted, seed)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=np.stack(images), cost=json.dumps(cost))
        atomic_write_bytes(path, buffer.getvalue())
        return images, cost


class RunClaims:
    """Which of the workers sharing one setting trains which run: the first to create the run's claim file in `folder`
    takes it (an atomic O_EXCL create), so the workers go down the plan's order together and none waits on another's
    seeds. `folder` None: this process runs everything. Claims live for one `run` call; finished runs are in the log."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def take(self, run_id: str) -> bool:
        if self.folder is None:
            return True
        try:
            os.close(os.open(self.folder / (hashlib.sha256(run_id.encode()).hexdigest()[:32] + ".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def _protection_runs(setting_class, log: RunLog, plan: Plan, out: Path, progress, claims: RunClaims) -> None:
    """Every (mode, condition) of the setting in plan order, each over the seeds: the victim trains on the crafted set
    (after its countermeasure). Fine-tune settings first log the untouched base model as `base` rows, per mode and seed.

    The setting (its surrogates and base model) is built only when a run is missing, so rerunning a
    finished folder just rewrites the tables."""
    name, setting = setting_class.__name__, None
    crafted_sets = CraftedSets(out, name)
    order = plan.protection_runs[name]
    if hasattr(setting_class, "base_scores"):
        order = [(mode, BASE) for mode in dict.fromkeys(mode for mode, _ in order)] + order
    base_scores = {}
    for mode, condition in order:
        for seed in plan.seeds:
            run_id = protection_run_id(name, mode, condition, seed)
            if log.done(run_id) or not claims.take(run_id):
                continue
            setting = setting or setting_class(plan)
            started = time.perf_counter()
            if condition == BASE:
                if seed not in base_scores:
                    base_scores[seed] = setting.base_scores(seed)
                scores, samples = base_scores[seed]
                prepared, cost = setting.owner, {}
            else:
                prepared, cost = crafted_sets.get(setting, condition.crafted, seed)
                trained_on = setting.countermeasure(prepared, condition.countermeasure) if condition.countermeasure else prepared
                scores, samples = setting.victim(trained_on, seed, mode)
            if seed == plan.seeds[0]:
                grid = out / "samples" / f"{name}-{mode}-{condition.label.replace(' ', '_')}.png"
                grid.parent.mkdir(parents=True, exist_ok=True)
                save_grid(samples, grid)
            log.add(run_id, {"setting": name, "mode": mode, "condition": asdict(condition), "label": condition.label, "seed": seed,
                             **scores, **cost, **_visibility(setting.owner, prepared), "victim_seconds": time.perf_counter() - started})  # fmt: skip
            progress(run_id, log.runs[run_id])


def planned_run_ids(plan: Plan) -> list[str]:
    """The id of every run the plan asks for, as the run logs name them (fine-tune settings' `base` rows included)."""
    ids = []
    for name, order in plan.protection_runs.items():
        if name in ("FinetuneSetting", "PhotoFinetuneSetting"):
            order = [(mode, BASE) for mode in dict.fromkeys(mode for mode, _ in order)] + order
        ids += [protection_run_id(name, mode, c, seed) for mode, c in order for seed in plan.seeds]
    return ids


def protection_run_id(setting_name: str, mode: str, condition: Condition, seed: int) -> str:
    return f"{setting_name}/{mode}/{condition.label}/seed{seed}"


def run_setting(plan: Plan, out: Path, setting: str, threads: int, progress=None, claims: Path | None = None) -> None:
    """One setting's runs (resuming from its log): all of them, or with `claims` those this worker claims first."""
    torch.set_num_threads(threads)
    log = RunLog(out, plan, setting)
    progress = progress or (lambda run_id, run: None)
    if setting in ("scratch", "finetune"):
        _protection_runs(SETTING_CLASSES[plan.setting_names[setting]], log, plan, out, progress, RunClaims(claims))
    else:
        raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")


def worker_tasks(settings: tuple[str, ...], jobs: int) -> list[str]:
    """The setting of each worker: one each while there are as many settings as workers, else each setting shared by the
    workers it gets, which claim its runs one by one (`RunClaims`; runs are independent, their log lines appended whole)."""
    if len(settings) >= jobs:
        return list(settings)
    return [setting for setting in settings for _ in range(max(1, jobs // len(settings)))]


def run(plan: Plan, out: Path, settings: tuple[str, ...] = SETTINGS, jobs: int = 1, progress=None, command: str = "", train: bool = True) -> dict:
    """Run the plan, writing runs-*.jsonl, results.json, RESULTS.md and plots to `out`.

    With jobs > 1 the settings (or one setting's seeds) run in parallel processes (spawned, the cores
    shared out): these models are so small that Python overhead, not arithmetic, bounds a single process. Stopped
    part-way (Ctrl-C), or with `train=False`, it writes the tables of the runs logged so far, marked
    partial; the same command resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    settings = tuple(sorted(settings, key=SETTINGS.index))  # longest first, so parallel workers finish together
    try:
        if train and jobs > 1 and len(tasks := worker_tasks(settings, jobs)) > 1:
            import multiprocessing

            claims = out / ".claims"
            shutil.rmtree(claims, ignore_errors=True)
            claims.mkdir()
            context = multiprocessing.get_context("spawn")
            try:
                with context.Pool(len(tasks)) as pool:
                    pool.starmap(run_setting, [(plan, out, setting, max(1, cores // len(tasks)), progress, claims) for setting in tasks], chunksize=1)
            finally:
                shutil.rmtree(claims, ignore_errors=True)
        elif train:
            for setting in settings:
                run_setting(plan, out, setting, cores, progress)
    except KeyboardInterrupt:
        write_tables(plan, out, command, jobs)
        raise
    return write_tables(plan, out, command, jobs)


def write_tables(plan: Plan, out: Path, command: str, jobs: int) -> dict:
    """RESULTS.md, results.json, meta.json and the plots from the runs logged so far ("partial" says how many of the plan's)."""
    from .report import write_results

    planned = planned_run_ids(plan)  # runs of conditions since dropped from the plan stay in the logs, not in the tables
    runs = [run for setting in SETTINGS for run in read_runs(out / f"runs-{setting}.jsonl", plan) if run["id"] in set(planned)]
    meta = {"command": command, "plan": asdict(plan), "torch": torch.__version__, "cpu_cores": os.cpu_count() or 1, "jobs": jobs,
            "default_method": DEFAULT_METHOD, "partial": f"{len(runs)} of {len(planned)} planned runs" if len(runs) < len(planned) else None}  # fmt: skip
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))
    return write_results(runs, out, meta)


class PrintProgress:
    """Prints each finished run with its headline numbers (picklable, for worker processes)."""

    def __init__(self):
        self.begun = time.time()

    def __call__(self, run_id: str, run: dict) -> None:
        keys = ("fid", "precision", "recall", "accuracy", "psnr", "seconds_per_image")
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items() if k in keys}
        print(f"[{time.time() - self.begun:7.0f}s] {run_id}: {shown}", flush=True)


def main(args) -> int:
    plan = PLANS["quick" if args.quick else args.plan]
    if args.seeds:
        plan = replace(plan, seeds=tuple(int(s) for s in args.seeds.split(",")))
    out = Path(args.out or f"bench-efficacy-{plan.name}")
    settings = tuple(s.strip() for s in (args.settings or ",".join(SETTINGS)).split(",") if s.strip())
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if args.bases:
        plan = replace(plan, bases_root=args.bases)
    command = "unlearnable bench efficacy" + (" --quick" if args.quick else f" --plan {args.plan}" if args.plan != "full" else "") + (f" --seeds {args.seeds}" if args.seeds else "")
    command += f" --settings {args.settings}" if args.settings else ""
    command += f" --bases {args.bases}" if args.bases else ""
    command += f" --jobs {args.jobs} --out {out}"
    results = run(plan, out, settings, jobs=args.jobs, progress=PrintProgress(), command=command, train=not args.report)
    print(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {len(results['plots'])} plots in {out} ({len(results['runs'])} runs)")
    return 0
