"""Our implementations against the authors' own code, side by side: seconds per image and protection.

In one run, on the same model, images, budget, PGD step count and one CPU thread each, it runs the
authors' scripts from local checkouts whose paths you give (Anti-DreamBooth's ASPL, mist-v2), then
ours: the same method, and the shipped default (`--method auto`). Each runs as its own process,
twice: for R rounds of 6 PGD steps and for 2R; the difference of the two wall times is what R rounds
of protection cost without the process's start (imports, model loading), which on a tiny model
would otherwise dominate. Protection is read from the R-round files: the rise of the public model's
denoising loss on the protected images over the clean ones, under 64 fixed (t, noise) draws, and
each file's L-infinity distance from its original.

The authors' code is copied to --work and patched only to run: CPU instead of CUDA, float32 instead
of bf16, its dataset-logging and colour-printing imports dropped, and a small stand-in for the four
torchvision transforms it uses to load images (the images are given at the model's resolution, so
they only convert and normalise). A patch that no longer matches the checkout is an error naming the
file. Nothing from the checkouts is kept. Writes a JSON with the command, versions, the commits of
the checkouts, every setting and raw timing.

    python benchmarks/peers.py --anti-dreambooth ~/src/Anti-DreamBooth --mist ~/src/mist-v2 --out benchmarks/peers/cpu.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared_core.bench.artefact import write_artefact  # noqa: E402
from shared_core.images import load_image, rgb_to_tensor  # noqa: E402
from shared_core.protect import ProtectSettings, evaluate_objective, make_objective  # noqa: E402
from shared_core.surrogates import load_surrogate  # noqa: E402

#: (file, text, replacement): what makes each peer run on a CPU in float32; each must match the checkout
PATCHES = {
    "anti-dreambooth": [
        ("attacks/aspl.py", "import datasets\n", ""),
        ("attacks/aspl.py", "datasets.utils.logging.set_verbosity_warning()", "pass"),
        ("attacks/aspl.py", "datasets.utils.logging.set_verbosity_error()", "pass"),
        ("attacks/aspl.py", "weight_dtype = torch.bfloat16", "weight_dtype = torch.float32"),
        ("attacks/aspl.py", 'device = torch.device("cuda")', 'device = torch.device("cpu")'),
        ("attacks/aspl.py", ").cuda()", ")"),
        ("attacks/aspl.py", "from torchvision import transforms", "import torchvision_transforms_shim as transforms"),
    ],
    "mist": [
        ("attacks/mist.py", "from colorama import Fore, Style, init,Back\n", ""),
        ("attacks/mist.py", "init(autoreset=True)\n", ""),
        ("attacks/mist.py", "import pynvml\n", ""),
        ("attacks/mist.py", "import datasets\n", ""),
        ("attacks/mist.py", "datasets.utils.logging.set_verbosity_warning()", "pass"),
        ("attacks/mist.py", "datasets.utils.logging.set_verbosity_error()", "pass"),
        ("attacks/mist.py", "Back.BLUE + Fore.GREEN + ", ""),
        ("attacks/mist.py", ").cuda()", ")"),
        ("attacks/mist.py", "vae.encoder.gradient_checkpointing = True", "vae.enable_gradient_checkpointing()"),
        ("attacks/mist.py", "from torchvision import transforms", "import torchvision_transforms_shim as transforms"),
        ("lora_diffusion/__init__.py", "from .dataset import *\n", ""),
        ("lora_diffusion/__init__.py", "from .preprocess_files import *\n", ""),
        ("lora_diffusion/__init__.py", "from .lora_manager import *\n", ""),
    ],
}

#: the torchvision transforms the peers load images with, in plain torch (torchvision is not a dependency)
TRANSFORMS_SHIM = '''
import numpy as np, torch
import torch.nn.functional as F
class InterpolationMode:
    BILINEAR = "bilinear"
class Compose:
    def __init__(self, transforms): self.transforms = transforms
    def __call__(self, x):
        for t in self.transforms: x = t(x)
        return x
def _size(size): return (size, size) if isinstance(size, int) else tuple(size)
class Resize:
    def __init__(self, size, interpolation=None): self.size = size
    def __call__(self, image):
        from PIL import Image
        w, h = image.size
        if isinstance(self.size, int):
            short = min(w, h); size = (round(w * self.size / short), round(h * self.size / short))
        else:
            size = (self.size[1], self.size[0])
        return image if (w, h) == size else image.resize(size, Image.BILINEAR)
class CenterCrop:
    def __init__(self, size): self.size = _size(size)
    def __call__(self, image):
        w, h = image.size; th, tw = self.size
        left, top = int(round((w - tw) / 2)), int(round((h - th) / 2))
        return image.crop((left, top, left + tw, top + th))
RandomCrop = CenterCrop
class ToTensor:
    def __call__(self, image): return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
class Normalize:
    def __init__(self, mean, std): self.mean, self.std = mean[0], std[0]
    def __call__(self, x): return (x - self.mean) / self.std
'''


def prepare_peer(name: str, checkout: Path, work: Path) -> Path:
    """A patched copy of a peer's checkout under `work`, and its commit (for the record)."""
    copy = work / name
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "data", "assets", "*.ipynb"))
    if name == "mist":  # mist reads its default target pattern from data/
        shutil.copytree(checkout / "data", copy / "data", dirs_exist_ok=True)
    for relative, text, replacement in PATCHES[name]:
        path = copy / relative
        source = path.read_text()
        if text not in source:
            raise SystemExit(f"{checkout / relative}: expected {text.strip()!r}; this checkout differs from the one this benchmark patches")
        path.write_text(source.replace(text, replacement))
    (work / "shim").mkdir(exist_ok=True)
    (work / "shim" / "torchvision_transforms_shim.py").write_text(TRANSFORMS_SHIM)
    return copy


def commit_of(checkout: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def photo_crops(size: int, count: int, offset: int) -> list[np.ndarray]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [load_image(data / name).rgb for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    crops = []
    for k in range(offset, offset + count):
        photo = photos[k % len(photos)]
        y, x = (40 + 37 * (k // len(photos))) % (photo.shape[0] - size), (60 + 53 * (k // len(photos))) % (photo.shape[1] - size)
        crops.append(photo[y : y + size, x : x + size])
    return crops


def write_folder(folder: Path, crops: list[np.ndarray]) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"image{i:02d}.png" for i in range(len(crops))]
    for path, crop in zip(paths, crops):
        Image.fromarray(crop).save(path)
    return paths


def timed(command: list[str], cwd: Path, env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}); its output: {log}\n" + log.read_text()[-3000:])
    return seconds


def outputs_by_name(folder: Path, names: list[str]) -> list[Path]:
    """Each original's newest protected file anywhere under `folder` (peers name them N_noise_<name>)."""
    found = []
    for name in names:
        stem = Path(name).stem
        matches = [p for p in folder.rglob(f"*{stem}*.png") if "noise" in p.name or p.parent != folder] or list(folder.rglob(f"{stem}.png"))
        if not matches:
            raise SystemExit(f"no protected file for {name} under {folder}")
        found.append(max(matches, key=lambda p: p.stat().st_mtime))
    return found


def protection(surrogate, clean: list[np.ndarray], files: list[Path]) -> dict:
    settings = ProtectSettings(method="advdm", seed=11, batch_size=len(clean))
    objective = make_objective("advdm")
    protected = [load_image(path).rgb for path in files]
    linf = max(int(np.abs(p.astype(int) - c.astype(int)).max()) for p, c in zip(protected, clean))
    before = np.array(evaluate_objective(surrogate, objective, [rgb_to_tensor(c) for c in clean], settings, draws=64))
    after = np.array(evaluate_objective(surrogate, objective, [rgb_to_tensor(p) for p in protected], settings, draws=64))
    return {"linf": linf, "loss_clean": before.tolist(), "loss_protected": after.tolist(), "loss_rise": float(np.mean(after / before - 1))}


@dataclass
class Tool:
    """One implementation under test: how to run it for a number of rounds into a folder."""

    who: str
    method: str
    cwd: Path
    env: dict
    command: Callable[[int, Path], list[str]]
    settings: dict
    commit: str | None = None


def measure(tool: Tool, rounds: int, work: Path, surrogate, clean: list[np.ndarray], names: list[str]) -> dict:
    """Runs `tool` at `rounds` and at twice as many: the difference is what the rounds' work costs without the
    process's start (imports, model loading), which the tiny model would otherwise let dominate."""
    seconds = {}
    for count in (rounds, 2 * rounds):
        out = work / f"out-{tool.who.split()[0].lower()}-{tool.method}-{count}"
        seconds[count] = timed(tool.command(count, out), tool.cwd, tool.env, out.with_suffix(".log"))
    found = outputs_by_name(work / f"out-{tool.who.split()[0].lower()}-{tool.method}-{rounds}", names)
    return {"who": tool.who, "method": tool.method, "commit": tool.commit, "settings": tool.settings,
            "seconds_whole_process": seconds[rounds], "seconds_whole_process_twice_the_rounds": seconds[2 * rounds],
            "seconds_work": seconds[2 * rounds] - seconds[rounds], **protection(surrogate, clean, found)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anti-dreambooth", type=Path, help="a checkout of VinAIResearch/Anti-DreamBooth")
    parser.add_argument("--mist", type=Path, help="a checkout of psyker-team/mist-v2")
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "bases" / "photo-base"), help="a diffusers folder (default: the committed photo base)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--budget", type=float, default=8.0, help="L-infinity budget in 0-255 units, for everyone")
    parser.add_argument("--rounds", type=int, default=10, help="ASPL rounds of 6 PGD steps and 3 training steps; every method runs 6 PGD steps per round")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not (args.anti_dreambooth or args.mist):
        parser.error("give at least one checkout: --anti-dreambooth and/or --mist")
    work = args.work or Path(tempfile.mkdtemp(prefix="unlearnable-peers-"))
    surrogate = load_surrogate(args.model, "cpu")
    size = surrogate.native_resolution
    clean = photo_crops(size, args.images, 0)
    instance, classes = work / "instance", work / "class"
    names = [p.name for p in write_folder(instance, clean)]
    write_folder(classes, photo_crops(size, args.images, 4 * args.images))  # other places of the same photos
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    alpha, eps = 0.005, 2 * args.budget / 255  # Anti-DreamBooth's step (0.64/255) and the budget, in the peers' [-1, 1] units
    common = ["--pretrained_model_name_or_path", args.model, "--instance_prompt", "a photo of sks person", "--class_data_dir", str(classes),
              "--num_class_images", str(args.images), "--class_prompt", "a photo of person", "--with_prior_preservation",
              "--resolution", str(size), "--mixed_precision", "no", "--seed", "0"]  # fmt: skip
    tools = []
    if args.anti_dreambooth:
        repo = prepare_peer("anti-dreambooth", args.anti_dreambooth, work)
        tools.append(Tool("Anti-DreamBooth (authors' code)", "aspl", repo, {**env, "PYTHONPATH": f"{work / 'shim'}:{repo}"}, lambda rounds, out: [
            sys.executable, "attacks/aspl.py", *common, "--instance_data_dir_for_train", str(instance), "--instance_data_dir_for_adversarial",
            str(instance), "--output_dir", str(out), "--center_crop", "--train_text_encoder", "--train_batch_size", "1",
            "--max_train_steps", str(rounds), "--max_f_train_steps", "3", "--max_adv_train_steps", "6", "--checkpointing_iterations", str(rounds),
            "--learning_rate", "5e-7", "--pgd_alpha", str(alpha), "--pgd_eps", str(eps)],
            {"pgd_per_round": 6, "train_steps": 3, "pgd_alpha": alpha, "pgd_eps": eps, "trains": "UNet and text encoder, full weights, lr 5e-7, prior preservation"},
            commit_of(args.anti_dreambooth)))  # fmt: skip
    if args.mist:
        repo = prepare_peer("mist", args.mist, work)
        tools.append(Tool("mist-v2 (authors' code)", "mist", repo, {**env, "PYTHONPATH": f"{work / 'shim'}:{repo}"}, lambda rounds, out: [
            sys.executable, "attacks/mist.py", "-p", args.model, "--instance_data_dir", str(instance), "--class_data_dir", str(classes),
            "--num_class_images", str(args.images), "--output_dir", str(out), "--instance_prompt", "a photo of sks person",
            "--class_prompt", "a photo of person", "--mixed_precision", "no", "--resolution", str(size), "--max_train_steps", str(rounds // 5 or 1),
            "--max_f_train_steps", "10", "--max_adv_train_steps", str(6 * rounds // (rounds // 5 or 1)), "--pgd_alpha", str(alpha),
            "--pgd_eps", str(eps), "--prior_loss_weight", "0.1", "--lora_rank", "4", "--learning_rate", "1e-4", "--mode", "lunet", "--seed", "0"],
            {"epochs": "rounds / 5", "pgd_per_epoch": 30, "train_steps_per_epoch": 10, "pgd_alpha": alpha, "pgd_eps": eps, "mode": "lunet",
             "trains": "LoRA rank 4, lr 1e-4"}, commit_of(args.mist)))  # fmt: skip
    ours = [("aspl", ["--set", "pgd_per_round=6", "--set", "train_steps=3"])] if args.anti_dreambooth else []
    ours += [("mist", [])] if args.mist else []
    for method, options in [*ours, ("auto", [])]:
        tools.append(Tool("unlearnable", method, ROOT, env, lambda rounds, out, method=method, options=options: [
            sys.executable, "-m", "shared_core", "protect", str(instance), "--out", str(out), "--model", args.model, "--device", "cpu",
            "--method", method, "--budget", f"{args.budget:g}", "--steps", str(6 * rounds), "--step-size", f"{alpha * 127.5:g}",
            "--batch-size", str(args.images), "--no-progress", *options], {"pgd_steps_per_round": 6, "options": options}))  # fmt: skip
    runs = []
    for tool in tools:
        run = measure(tool, args.rounds, work, surrogate, clean, names)
        run["seconds_per_image"] = run["seconds_work"] / args.images
        runs.append(run)
        print(f"{run['who']:32s} {run['method']:6s} {run['seconds_per_image']:8.2f} s/image (without start-up)  "
              f"loss rise {run['loss_rise']:+.2%}  Linf {run['linf']}", flush=True)
    fastest = min((r for r in runs if r["who"] != "unlearnable"), key=lambda r: r["seconds_work"])
    default = next(r for r in runs if r["method"] == "auto")
    ratio = fastest["seconds_work"] / default["seconds_work"]
    print(f"time_ratio_fastest_peer_over_default={ratio:.2f} ({fastest['who']} {fastest['method']})")
    write_artefact(args.out, shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]]), "cpu", {
        "model": args.model, "resolution": size, "images": args.images, "budget": args.budget, "rounds": args.rounds,
        "pgd_steps": 6 * args.rounds, "threads": 1, "runs": runs, "fastest_peer": f"{fastest['who']} {fastest['method']}",
        "time_ratio_fastest_peer_over_default": ratio,
    })  # fmt: skip
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
