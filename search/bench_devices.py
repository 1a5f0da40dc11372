"""The paper's directions on the default synthetic set: is there a device gap for a search to close?

    python -m search bench-devices [--seeds 2] [--epochs 15] [--workdir bench-devices] [--json devices.json]

From nothing, in one run: the default synthetic set (``asc synth``'s defaults; the seconds it took to
write are printed), its feature store with and without spectrum correction (``prepare``, Ray tasks),
then the small CNN trained as A2 (no enhancement), A3 (mean subtraction), A6 (mean subtraction +
mixup) and SC (A2 on spectrum-corrected features, the DCASE2019 Task 1B winner's enhancement), each
with every seed, the epoch selected by Metric A on the evaluation split (the paper's Table 2
protocol). It prints mean +- standard error over the seeds, on all evaluation clips and on the
parallel segments alone (the same recordings on every device), beside the paper's figures, and then
the directions the paper reports with their goals:

- A2 has a clear device gap (at least 10 points);
- mean subtraction cuts the gap on the parallel segments to between a sixth and a half of A2's
  (the paper: 17.7 -> 4.6), not to zero;
- mixup on top (A6) keeps B&C at least as high as A3's (the paper: +5.0);
- spectrum correction raises B&C above A2's;
- mean subtraction costs at most about 10 points on device A (the paper: 8.7).

Differences are taken seed by seed (the same seed trains both systems) and then averaged. Every run
checkpoints under WORKDIR/runs: a rerun resumes, and reuses the set and the stores. ``--json`` writes
every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from asc.cli import ArgumentParser, COUNT, SECONDS, SEGMENTS, integer
from asc.synth import SynthConfig, write_dataset
from search.bench import add_report_options

SYSTEMS = ("A2", "A3", "A6", "SC")
PARTS = (("all", "all evaluation clips"), ("parallel", "parallel segments only"))
COLUMNS = (("acc_a", "A"), ("acc_b", "B"), ("acc_c", "C"), ("acc_bc", "B&C"), ("device_gap", "gap"))


def _train_all(store_root: Path, runs: Path, seeds: list[int], epochs: int, systems) -> dict:
    """{system: [per-seed {"all": metrics, "parallel": metrics, "seconds": s}]}, resuming finished runs."""
    from asc.__main__ import resolve_store
    from asc.systems import get_system, prediction_metrics, system_config
    from asc.train import train

    results: dict[str, list[dict]] = {}
    for system_id in systems:
        system = get_system(system_id)
        store = resolve_store(str(store_root), 128, system.spectrum_correction)
        for seed in seeds:
            ckpt = runs / Path(store).name / f"{system_id}-seed{seed}"
            config = system_config(system_id, store, "cnn", epochs=epochs, seed=seed, checkpoint_dir=str(ckpt))
            start = time.perf_counter()
            result = train(config)
            with np.load(ckpt / "best_probs.npz") as npz:
                metrics = prediction_metrics(npz["probs"], npz["labels"], npz["devices"], npz["filenames"])
            metrics["seconds"] = time.perf_counter() - start
            metrics["best_epoch"] = result["best_epoch"]
            results.setdefault(system_id, []).append(metrics)
            a = metrics["all"]
            print(f"  {system_id} seed {seed}: best epoch {result['best_epoch']:>2}  A {100 * a['acc_a']:5.1f}  "
                  f"B&C {100 * a['acc_bc']:5.1f}  gap {100 * a['device_gap']:+5.1f}  "
                  f"parallel gap {100 * metrics['parallel']['device_gap']:+5.1f}  ({metrics['seconds']:.0f} s)", flush=True)
    return results


def _cell(values) -> str:
    from asc.systems import mean_sem

    mean, sem = mean_sem([100 * v for v in values])
    return f"{mean:5.1f}" + (f" +-{sem:4.1f}" if not math.isnan(sem) else "      ")


def format_table(results: dict) -> str:
    from asc.systems import get_system

    width = 13
    head = f"{'system':<7}" + "".join(f"{label:>{width}}" for _, label in COLUMNS)
    lines = []
    for part, title in PARTS:
        paper_head = "  |  paper" + "".join(f"{label:>6}" for _, label in COLUMNS) if part == "all" else ""
        lines += [f"{title}:", head + paper_head, "-" * len(head + paper_head)]
        for system_id, runs in results.items():
            cells = "".join(f"{_cell([r[part].get(key, math.nan) for r in runs]):>{width}}" for key, _ in COLUMNS)
            paper = get_system(system_id).paper
            ref = "".join(f"{v:>6.1f}" for v in paper) if paper else ""
            lines.append(f"{system_id:<7}{cells}" + (f"  |  {'':<5}{ref}" if part == "all" else ""))
        lines.append("")
    return "\n".join(lines)


def directions(results: dict) -> list[dict]:
    """The paper's directions, each as figures per seed, its goal and whether the mean meets it."""
    from asc.systems import mean_sem

    def per_seed(system: str, part: str, key: str) -> np.ndarray:
        return np.array([100 * r[part][key] for r in results[system]])

    checks = []

    def check(name, values, goal, ok, reference):
        mean, sem = mean_sem(values)
        checks.append({"direction": name, "mean": mean, "sem": sem, "per_seed": [float(v) for v in values],
                       "goal": goal, "met": bool(ok(mean)), "paper": reference})

    if "A2" in results:
        check("A2 device gap, all clips (points)", per_seed("A2", "all", "device_gap"), ">= 10", lambda m: m >= 10, "17.7")
    if {"A2", "A3"} <= results.keys():
        ratio = per_seed("A3", "parallel", "device_gap") / per_seed("A2", "parallel", "device_gap")
        check("A3 / A2 gap on parallel segments", ratio, "1/6 .. 1/2", lambda m: 1 / 6 <= m <= 0.5, "0.26")
        check("A2 - A3 on device A (points)", per_seed("A2", "all", "acc_a") - per_seed("A3", "all", "acc_a"),
              "<= ~10", lambda m: m <= 10.5, "8.7")
    if {"A3", "A6"} <= results.keys():
        check("A6 - A3 on B&C (points)", per_seed("A6", "all", "acc_bc") - per_seed("A3", "all", "acc_bc"),
              ">= 0", lambda m: m >= 0, "+5.0")
    if {"A2", "SC"} <= results.keys():
        check("SC - A2 on B&C (points)", per_seed("SC", "all", "acc_bc") - per_seed("A2", "all", "acc_bc"),
              "> 0", lambda m: m > 0, "-")
    return checks


def format_directions(checks: list[dict]) -> str:
    head = f"{'direction':<38}{'mean +- se':>15}  {'per seed':<20}{'goal':>12}{'paper':>7}  met?"
    lines = [head, "-" * len(head)]
    for c in checks:
        digits = 2 if c["direction"].startswith("A3 / A2") else 1  # a ratio, or points
        per = " ".join(f"{v:.{digits}f}" for v in c["per_seed"])
        se = f" +- {c['sem']:.{digits}f}" if not math.isnan(c["sem"]) else ""
        lines.append(f"{c['direction']:<38}{c['mean']:>7.{digits}f}{se:<8}  {per:<20}{c['goal']:>12}{c['paper']:>7}  "
                     f"{'yes' if c['met'] else 'NO'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-devices", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=COUNT, default=2, help="seeds 0..K-1 per system (default %(default)s)")
    parser.add_argument("--epochs", type=COUNT, default=15, help="epochs per run (default %(default)s)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), help="(default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-devices"),
                        help="set, stores and checkpoints (reused on a rerun; default %(default)s)")
    add_report_options(parser)
    defaults = SynthConfig()
    parser.add_argument("--segments-per-scene", type=SEGMENTS, default=defaults.segments_per_scene,
                        help="a smaller set for a quick look (the claim is on the default, %(default)s)")
    parser.add_argument("--parallel-per-scene", type=integer(0, 100_000), default=defaults.parallel_per_scene, help="(default %(default)s)")
    parser.add_argument("--seconds", type=SECONDS, default=defaults.seconds, help="(default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from asc.dataset import read_development
    from asc.errors import AscError
    from asc.features import FeatureConfig
    from asc.systems import get_system
    from search.prepare import format_report, prepare

    if args.seeds < 1 or args.epochs < 1:
        raise AscError("--seeds and --epochs must be at least 1")
    if args.seeds < 2:
        print("note: with one seed there is no standard error; the claim is a mean over at least two")
    for system_id in args.systems:
        get_system(system_id)
    start = time.perf_counter()
    data, store = args.workdir / "data", args.workdir / "store"
    if (data / "meta.csv").exists():
        dataset = read_development(data)
        print(f"synthetic set: {data} exists ({len(dataset)} clips), reusing it")
        synth_seconds = None
    else:
        t = time.perf_counter()
        dataset = write_dataset(data, SynthConfig(segments_per_scene=args.segments_per_scene,
                                                  parallel_per_scene=args.parallel_per_scene, seconds=args.seconds),
                                progress=sys.stderr.isatty())
        synth_seconds = time.perf_counter() - t
        print(f"synthetic set: {len(dataset)} clips written to {data} in {synth_seconds:.1f} s")
    print(format_report(prepare(data, store, [FeatureConfig(), FeatureConfig(spectrum_correction=True)])))
    seeds = list(range(args.seeds))
    print(f"\nsmall CNN, {args.epochs} epochs, best epoch by Metric A on the evaluation split, seeds {seeds}, "
          f"{torch.get_num_threads()} torch threads on {platform.processor() or platform.machine()}")
    results = _train_all(store, args.workdir / "runs", seeds, args.epochs, args.systems)
    evaluate = [c for c in dataset.clips if c.split == "evaluate"]
    counts = {d: sum(c.device == d for c in evaluate) for d in dataset.devices}
    print(f"\nmean +- standard error over {len(seeds)} seeds, in %; evaluation split "
          + ", ".join(f"{n} {d.upper()}" for d, n in counts.items()) + "\n")
    print(format_table(results))
    checks = directions(results)
    print(format_directions(checks))
    total = time.perf_counter() - start
    print(f"\n{total / 60:.1f} minutes in all" + (f"; the default set written in {synth_seconds:.1f} s" if synth_seconds else ""))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "directions": checks, "seeds": seeds,
                                             "epochs": args.epochs, "minutes": total / 60,
                                             "synth_seconds": synth_seconds}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
