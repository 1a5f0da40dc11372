"""The paper's directions on the default synthetic set: is there a device gap for a search to close?

    python -m search bench-devices [--seeds 3] [--epochs 15] [--protocol paper|validation]
                                   [--workdir bench-devices] [--json devices.json]

From nothing, in one run: the default synthetic set (``asc synth``'s defaults; the seconds it took to
write are printed), its feature store with and without spectrum correction (``prepare``, Ray tasks),
then the small CNN trained as A2 (no enhancement), A3 (mean subtraction), A6 (mean subtraction +
mixup), SC (A2 on spectrum-corrected features, the DCASE2019 Task 1B winner's enhancement) and the
DCASE 2022-2023 methods on A2: FMS (Freq-MixStyle), DIR (device impulse responses) and DIRFMS (both),
each with every seed, the epoch selected by Metric A on the evaluation split (the paper's Table 2
protocol; ``--protocol validation``: on held-out training locations, which hold no unseen device, the
evaluation split scored once at that epoch). It prints mean +- standard error over the seeds, on all
evaluation clips and on the parallel segments alone (the same recordings on every device), beside
the paper's figures, and then the directions the paper reports with their goals:

- A2 has a clear device gap (at least 10 points);
- mean subtraction cuts the gap on the parallel segments to between a sixth and a half of A2's
  (the paper: 17.7 -> 4.6), not to zero;
- mixup on top (A6) keeps B&C at least as high as A3's (the paper: +5.0);
- spectrum correction raises B&C above A2's;
- mean subtraction costs at most about 10 points on device A (the paper: 8.7);
- FMS, DIR and both raise the accuracy on the devices unseen in training (s1, s2) and narrow the
  spread of the accuracies across devices (Morocutti et al. 2023: unseen +4.3 DIR, +6.4 FMS, +7.4
  both; the spread halved).

``--dir-error`` measures instead how far DIR as training applies it (the response's gain per Mel band
added to the stored features) is from convolving the waveform with the response: for ``--dir-clips``
device-A clips of the set and every shipped response, the log-Mel difference in dB per band, its
mean and its worst.

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

from asc.__main__ import resolve_store
from asc.cli import ArgumentParser, COUNT, SECONDS, SEGMENTS, integer
from asc.dataset import read_development
from asc.errors import AscError
from asc.features import FeatureConfig, load_audio, log_mels
from asc.device_table import MEAN_SE_WIDTH, head_cells, mean_se
from asc.metrics import column_head, device_accuracies, mean_sem
from asc.responses import gains_for, read_responses
from asc.synth import SynthConfig, write_dataset
from asc.systems import PAPER_HEAD, PAPER_KEYS, get_system, paper_cells, prediction_metrics, system_config
from search.bench import add_report_options

# Training (torch), the store (pyarrow), Ray and scipy's filters are imported late, where they are used:
# `--help` starts without them.

SYSTEMS = ("A2", "A3", "A6", "SC", "FMS", "DIR", "DIRFMS")
PARTS = (("all", "all evaluation clips"), ("parallel", "parallel segments only"))
COLUMNS = tuple((k, column_head(k)) for k in PAPER_KEYS + ("acc_unseen", "unseen_gap")) + (("spread", "spread"),)


def spread(metrics: dict) -> float:
    """The standard deviation of the per-device accuracies (every device, seen or not): how unequal
    the devices are (DIR and Freq-MixStyle are published to halve it)."""
    values = [v for v in device_accuracies(metrics).values() if isinstance(v, float) and not math.isnan(v)]
    return float(np.std(values)) if len(values) > 1 else math.nan


def _train_all(store_root: Path, runs: Path, seeds: list[int], epochs: int, systems, protocol: str = "paper") -> dict:
    """{system: [per-seed {"all": metrics, "parallel": metrics, "seconds": s}]}, resuming finished runs.
    ``protocol``: "paper", the epoch chosen on the evaluation split (its unseen devices included);
    "validation", on held-out training locations (seen devices only), the evaluation split scored
    once, at that epoch."""
    from asc.train import train  # late, as noted at the top
    from search.stores import training_devices

    results: dict[str, list[dict]] = {}
    for system_id in systems:
        system = get_system(system_id)
        store = resolve_store(str(store_root), 128, system.spectrum_correction)
        for seed in seeds:
            name = f"{system_id}-seed{seed}" + ("" if protocol == "paper" else f"-{protocol}")
            ckpt = runs / Path(store).name / name
            config = system_config(system_id, store, "cnn", epochs=epochs, seed=seed, checkpoint_dir=str(ckpt),
                                   protocol=protocol)
            start = time.perf_counter()
            result = train(config, evaluate_best=protocol != "paper")
            split = "" if protocol == "paper" else "test_"  # the evaluation split's predictions at the chosen epoch
            with np.load(ckpt / "best_probs.npz") as npz:
                metrics = prediction_metrics(npz[split + "probs"], npz[split + "labels"], npz[split + "devices"],
                                             npz[split + "filenames"], seen=training_devices(store))
            for part in metrics.values():
                part["spread"] = spread(part)
            metrics["seconds"] = time.perf_counter() - start
            metrics["best_epoch"] = result["best_epoch"]
            results.setdefault(system_id, []).append(metrics)
            a = metrics["all"]
            print(f"  {system_id} seed {seed}: best epoch {result['best_epoch']:>2}  A {100 * a['acc_a']:5.1f}  "
                  f"B&C {100 * a['acc_bc']:5.1f}  gap {100 * a['device_gap']:+5.1f}  "
                  f"parallel gap {100 * metrics['parallel']['device_gap']:+5.1f}  ({metrics['seconds']:.0f} s)", flush=True)
    return results


def format_table(results: dict) -> str:
    head = f"{'system':<8}" + head_cells([label for _, label in COLUMNS], MEAN_SE_WIDTH)
    lines = []
    for part, title in PARTS:
        paper_head = "  |  paper" + PAPER_HEAD if part == "all" else ""
        lines += [f"{title}:", head + paper_head, "-" * len(head + paper_head)]
        for system_id, runs in results.items():
            cells = "".join(mean_se(*mean_sem([r[part].get(key, math.nan) for r in runs])) for key, _ in COLUMNS)
            ref = f"  |  {'':<5}{paper_cells(get_system(system_id))}" if part == "all" else ""
            lines.append(f"{system_id:<8}{cells}{ref}")
        lines.append("")
    return "\n".join(lines)


def directions(results: dict) -> list[dict]:
    """The paper's directions, each as figures per seed, its goal and whether the mean meets it."""
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
    # The DCASE 2022-2023 methods (Morocutti et al. 2023, a CNN from scratch on TAU 2020 Mobile: unseen
    # devices 61.3 -> 65.6 DIR, 67.7 Freq-MixStyle, 68.7 both; the spread across devices halved)
    published = {"FMS": "+6.4", "DIR": "+4.3", "DIRFMS": "+7.4"}
    for system in ("FMS", "DIR", "DIRFMS"):
        if {"A2", system} <= results.keys() and "acc_unseen" in results["A2"][0]["all"]:
            check(f"{system} - A2 on unseen devices (points)",
                  per_seed(system, "all", "acc_unseen") - per_seed("A2", "all", "acc_unseen"), "> 0",
                  lambda m: m > 0, published[system])
            check(f"{system} / A2 spread across devices", per_seed(system, "all", "spread") /
                  per_seed("A2", "all", "spread"), "< 1", lambda m: m < 1, "0.5")
    return checks


def format_directions(checks: list[dict]) -> str:
    head = f"{'direction':<42}{'mean +- se':>15}  {'per seed':<20}{'goal':>12}{'paper':>7}  met?"
    lines = [head, "-" * len(head)]
    for c in checks:
        digits = 2 if " / A2" in c["direction"] else 1  # a ratio, or points
        per = " ".join(f"{v:.{digits}f}" for v in c["per_seed"])
        se = f" +- {c['sem']:.{digits}f}" if not math.isnan(c["sem"]) else ""
        lines.append(f"{c['direction']:<42}{c['mean']:>7.{digits}f}{se:<8}  {per:<20}{c['goal']:>12}{c['paper']:>7}  "
                     f"{'yes' if c['met'] else 'NO'}")
    return "\n".join(lines)


def dir_error(dataset, clips: int, config) -> dict:
    """The feature-domain DIR's error against convolving the waveform (see the module docstring): dB
    per band, over every frame of ``clips`` device-A clips and every shipped response."""
    from scipy.signal import fftconvolve  # late, as noted at the top

    rng = np.random.default_rng(0)
    a_clips = [c for c in dataset.clips if c.device == "a"]
    chosen = [a_clips[i] for i in rng.choice(len(a_clips), size=min(clips, len(a_clips)), replace=False)]
    responses = read_responses("micirp", config.sample_rate)
    gains = gains_for("micirp", config)
    db = 10 / math.log(10)  # the features are natural logs of power
    per_band = []  # [clip x response, n_mels]: mean |difference| over frames
    frame_means = []
    for clip in chosen:
        y = load_audio(dataset.path(clip), config.sample_rate, config.resample)
        x = log_mels(y, [config])[0]
        for (_, h), g in zip(responses, gains):
            convolved = fftconvolve(y, h)[: len(y)].astype(np.float32)
            diff = db * (log_mels(convolved, [config])[0] - (x + g[:, None]))
            per_band.append(np.abs(diff).mean(axis=1))
            frame_means.append(np.abs(diff.mean(axis=1)))  # the part a per-band offset could still fix
    per_band = np.asarray(per_band)
    # what DIR itself changes, to judge the error by: each response's shaping of the bands around its level
    shaping = np.abs(db * (gains - gains.mean(axis=1, keepdims=True)))
    return {"clips": len(chosen), "responses": len(responses), "mean_db": float(per_band.mean()),
            "shaping_mean_db": float(shaping.mean()), "shaping_p95_db": float(np.percentile(shaping, 95)),
            "worst_band_db": float(per_band.max()), "median_band_db": float(np.median(per_band)),
            "p95_band_db": float(np.percentile(per_band, 95)), "bias_db": float(np.mean(frame_means)),
            "per_band_mean_db": per_band.mean(axis=0).tolist()}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-devices", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=COUNT, default=3, help="seeds 0..K-1 per system (default %(default)s)")
    parser.add_argument("--epochs", type=COUNT, default=15, help="epochs per run (default %(default)s)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), help="(default %(default)s)")
    parser.add_argument("--protocol", choices=("paper", "validation"), default="paper",
                        help="where each run's epoch is chosen: the evaluation split, as the paper's Table 2 "
                             "(its unseen devices included), or held-out training locations, seen devices only, "
                             "as a search chooses (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-devices"),
                        help="set, stores and checkpoints (reused on a rerun; default %(default)s)")
    add_report_options(parser)
    defaults = SynthConfig()
    parser.add_argument("--segments-per-scene", type=SEGMENTS, default=defaults.segments_per_scene,
                        help="a smaller set for a quick look (the claim is on the default, %(default)s)")
    parser.add_argument("--parallel-per-scene", type=integer(0, 100_000), default=defaults.parallel_per_scene, help="(default %(default)s)")
    parser.add_argument("--seconds", type=SECONDS, default=defaults.seconds, help="(default %(default)s)")
    parser.add_argument("--dir-error", action="store_true",
                        help="measure the feature-domain DIR against waveform convolution instead of training")
    parser.add_argument("--dir-clips", type=COUNT, default=20, help="device-A clips for --dir-error (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch  # late, as noted at the top

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
                                progress=True)
        synth_seconds = time.perf_counter() - t
        print(f"synthetic set: {len(dataset)} clips written to {data} in {synth_seconds:.1f} s")
    if args.dir_error:
        t = time.perf_counter()
        err = dir_error(dataset, args.dir_clips, FeatureConfig())
        print(f"DIR in the feature domain against waveform convolution: {err['clips']} device-A clips x "
              f"{err['responses']} responses, the paper's features (128 Mel bands, n_fft 4096, hop 1024)\n"
              f"  |difference| per band, averaged over frames: mean {err['mean_db']:.2f} dB, median "
              f"{err['median_band_db']:.2f}, 95th percentile {err['p95_band_db']:.2f}, worst {err['worst_band_db']:.2f} dB; "
              f"of it a constant per band (the mean difference): {err['bias_db']:.2f} dB; {time.perf_counter() - t:.0f} s\n"
              f"  what DIR changes, |gain - the response's mean gain| per band: mean {err['shaping_mean_db']:.2f} dB, "
              f"95th percentile {err['shaping_p95_db']:.2f} dB")
        if args.json:
            args.json.write_text(json.dumps({"dir_error": err}, indent=1))
        return 0
    print(format_report(prepare(data, store, [FeatureConfig(), FeatureConfig(spectrum_correction=True)])))
    seeds = list(range(args.seeds))
    where = "the evaluation split" if args.protocol == "paper" else "held-out training locations (seen devices)"
    print(f"\nsmall CNN, {args.epochs} epochs, best epoch by Metric A on {where}, seeds {seeds}, "
          f"{torch.get_num_threads()} torch threads on {platform.processor() or platform.machine()}")
    results = _train_all(store, args.workdir / "runs", seeds, args.epochs, args.systems, args.protocol)
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
                                             "epochs": args.epochs, "protocol": args.protocol, "minutes": total / 60,
                                             "synth_seconds": synth_seconds}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
