"""`unlearnable bench`: the benchmarks behind the README's figures."""

from __future__ import annotations

import argparse

from ..errors import UnlearnableError


def cmd_bench(args) -> int:
    if args.which == "overhead":
        from ..bench.overhead import main as overhead_main

        return overhead_main(args)
    if args.which == "efficacy":
        from ..bench.efficacy import main as efficacy_main

        return efficacy_main(args)
    if args.which == "bases":
        from ..bench.bases import main as bases_main

        return bases_main(args)
    if args.which == "tracing":
        from ..bench.tracing import main as tracing_main

        return tracing_main(args)
    raise UnlearnableError(f"unknown benchmark {args.which!r}")


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `bench` and its flags."""
    bench = commands.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["overhead", "efficacy", "tracing", "bases"],
                       help="overhead: engine step time versus a bare forward+backward; efficacy: victims trained on protected data; "
                            "tracing: victims trained on marked data, TPR/FPR by marking rate and count; "
                            "bases: build the photo fine-tune setting's base models (resumable; --out, default benchmarks/bases)")  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="efficacy: the ~5-minute smoke plan on digits (without it, the photo settings); tracing: the few-minute smoke plan")
    bench.add_argument("--plan", choices=["headline", "full"], default="full",
                       help="efficacy: full = every method, budget, countermeasure and transfer on the photo settings; "
                            "headline = clean, noise and the default method only (hours on 2 CPU cores instead of a day)")  # fmt: skip
    bench.add_argument("--out", default=None, help="efficacy, tracing: output folder (default bench-WHICH-full or -quick); a rerun resumes")
    bench.add_argument("--bases", default=None, metavar="DIR",
                       help="efficacy: the committed base models of the photo fine-tune setting (default benchmarks/bases; built there first if missing)")
    bench.add_argument("--report", action="store_true", help="efficacy: only rewrite the tables and plots from the runs logged in --out (train nothing)")
    bench.add_argument("--only", default=None, metavar="NAME", help="bases: build only this base (photo-base or photo-transfer)")
    bench.add_argument("--seeds", default=None, help="efficacy: comma-separated seeds instead of the plan's")
    bench.add_argument("--settings", default=None, help="efficacy: comma-separated subset of scratch,finetune")
    bench.add_argument("--jobs", type=int, default=2, help="efficacy, tracing: parallel worker processes (default 2)")
    bench.add_argument("--images", type=int, default=None, help="tracing: dataset size instead of the plan's (a plan of its own)")
    bench.add_argument("--victims", type=int, default=None, help="tracing: victims per marking rate instead of the plan's")
    bench.add_argument("--extra-decoys", type=int, default=None, dest="extra_decoys",
                       help="tracing: more other-owner keys checked on every clean victim, each on its own paired test (the decoy false-positive rate)")
    bench.add_argument("--rates", default=None, help="tracing: run only the victims of these marking rates now, e.g. 0,0.01 (the tables stay the plan's, marked partial)")
    bench.add_argument("--epochs", type=int, default=None, help="tracing: training epochs per victim instead of the plan's")
    bench.add_argument("--detector-fpr", type=float, default=None, metavar="RATE",
                       help="tracing: the matcher's threshold as a share of synthetic negatives above it (the plan's is 0.01)")
    bench.add_argument("--detectors", default=None, metavar="LIST",
                       help="tracing: instead of training, re-score the victims kept in --out with these detector variants "
                            "(comma-separated: matcher, matcher-fpr1, matcher-fpr5, cnn, cnn-fpr5) and compare them on the paired test")  # fmt: skip
    bench.add_argument("--model", default="builtin:tiny")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch-size", type=int, default=2)
    bench.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's native resolution)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--method", default="advdm", help="objective timed (default advdm: same work as the bare step)")
    bench.add_argument("--low-memory", action="store_true")
    bench.add_argument("--json", default=None, metavar="FILE",
                       help="overhead: also write the figures, command, device, torch, dtype and raw timings to FILE")
    bench.set_defaults(func=cmd_bench)
