"""``python -m asc``: look at a dataset, write a synthetic one (thin wrappers over the library)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asc.cli import COUNT, PROCESSES, SAMPLE_RATE, SEED, ArgumentParser, add_synth_arguments
from asc.dataset import read_dataset
from asc.describe import format_summary, summarize
from asc.errors import AscError, run_command, writable_file, writable_folder
from asc.synth import SynthConfig, write_dataset
from asc.systems import format_comparison, get_system, system_config


def _describe(args) -> None:
    summary = summarize(read_dataset(args.data_dir, fold=args.fold), check_audio=not args.no_audio)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


def _synth(args) -> None:
    config = SynthConfig(
        segments_per_scene=args.segments_per_scene,
        parallel_per_scene=args.parallel_per_scene,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
    )
    start = time.perf_counter()
    dataset = write_dataset(args.out, config, workers=args.workers, progress=True)
    seconds = time.perf_counter() - start
    print(f"wrote {len(dataset)} clips to {args.out} in {seconds:.1f} s ({len(dataset) / seconds:.0f} clips/s)")


def resolve_store(path: str, n_mels: int | None = None, spectrum_correction: bool | None = None) -> str:
    """A store folder, or the one store under a store root (of ``n_mels`` bands when there are several;
    spectrum-corrected or not when ``spectrum_correction`` says)."""
    from asc.store import MANIFEST, current_stores  # late: pyarrow; --help, describe and synth start without it

    root = Path(path)
    if (root / MANIFEST).is_file():
        return str(root)
    newest = current_stores(root)
    candidates = [p for p, m in newest if (n_mels is None or m["config"]["n_mels"] == n_mels)
                  and (spectrum_correction is None or m["config"].get("spectrum_correction", False) == spectrum_correction)]
    if len(candidates) == 1:
        return str(candidates[0])
    if not candidates:
        what = "spectrum-corrected feature store" if spectrum_correction else "feature store"
        option = " --spectrum-correction" if spectrum_correction else ""
        raise AscError(f"{root}: no {what} here (run `python -m search prepare DATA_DIR --store {root}{option}`)")
    raise AscError(f"{root}: {len(candidates)} stores ({', '.join(p.name for p in candidates)}); "
                   "name one folder" + ("" if n_mels is not None else " or pass --n-mels"))


def _system_config(args, system_id: str, checkpoint_dir: str | None):
    system = get_system(system_id)
    return system, system_config(
        system_id, resolve_store(args.store, args.n_mels, system.spectrum_correction), args.model, args.weights, args.allow_download,
        epochs=args.epochs, protocol=args.protocol, seed=args.seed, device=args.device, bf16=args.bf16,
        channels_last=args.channels_last, num_workers=args.workers, checkpoint_dir=checkpoint_dir)


def _describe_system(system_id, system, config) -> str:
    return (f"{system_id.upper()}: {config.model.name}, {system.normalization}, "
            f"{system.enhancement.label(system.spectrum_correction)}"
            + (f", mixup alpha {system.mixup_alpha}" if system.mixup_alpha else "")
            + f"; {config.epochs} epochs, best by {config.selection}, {config.protocol} protocol")


def _train(args) -> None:
    from asc.train import train, write_json  # late: torch; --help, describe and synth start without it

    if args.json_out:  # before training: a finished run must not be lost to a path that cannot be written
        writable_file(args.json_out, "--json-out")
    system, config = _system_config(args, args.system, args.checkpoint_dir)
    if args.model == "cnn" and system.pretrained:
        print(f"note: {args.system.upper()} is pretrained in the paper; the small CNN has no ImageNet weights")
    print(_describe_system(args.system, system, config))
    result = train(config, log=print)
    result["system"] = args.system.upper()
    best = result["test"]
    print(f"best epoch {result['best_epoch']}: A {best['acc_a']:.3f}  B&C {best['acc_bc']:.3f}  "
          f"gap {best['device_gap']:+.3f}  Metric A {best['metric_a']:.3f}  Metric B {best['metric_b']:.3f}"
          f"  ({result['seconds']:.0f} s)")
    if args.json_out:
        write_json(result, args.json_out)
        print(f"result written to {args.json_out}")


def _compare(args) -> None:
    """Several systems, one after the other, and their device table beside the paper's."""
    from asc.train import check_config, train, train_seeds, write_json  # late: torch, as in _train

    if args.json_out:
        writable_file(args.json_out, "--json-out")
    if args.checkpoint_root:
        writable_folder(args.checkpoint_root, "--checkpoint-root")
    # Every system and its store before the first is trained: a typo in the last must not cost the rest.
    systems = [(system_id, *_system_config(args, system_id, str(Path(args.checkpoint_root) / system_id.upper())
                                           if args.checkpoint_root else None)) for system_id in args.systems]
    for _, _, config in systems:
        check_config(config)
    rows = []
    for system_id, system, config in systems:
        print(_describe_system(system_id, system, config), flush=True)
        if args.seeds > 1:  # in lockstep, checkpoints in CKPT/seed<seed>
            result = train_seeds(config, [config.seed + k for k in range(args.seeds)],
                                 log=(print if args.verbose else None))
            result["seconds"] = sum(r["seconds"] for r in result["results"])
            result["best_epoch"] = [r["best_epoch"] for r in result["results"]]
        else:
            result = train(config, log=(print if args.verbose else None))
        result["system"] = system_id.upper()
        rows.append((system_id.upper(), system, result))
        best = result["test"]
        print(f"  best epoch {result['best_epoch']}: A {best['acc_a']:.3f} B&C {best['acc_bc']:.3f} "
              f"gap {best['device_gap']:+.3f} ({result['seconds']:.0f} s)", flush=True)
    print(format_comparison(rows))
    if args.json_out:
        write_json({"systems": {sid: result for sid, _, result in rows}, "table": format_comparison(rows)}, args.json_out)


def _training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `compare`."""
    parser.add_argument("--store", required=True, help="a feature store folder, or a store root holding one")
    parser.add_argument("--model", choices=("msxception", "cnn"), default="msxception")
    parser.add_argument("--epochs", type=COUNT, default=80, help="(paper: %(default)s)")
    parser.add_argument("--weights", default=None, help="ImageNet Xception weights file (default: pretrainedmodels' cache)")
    parser.add_argument("--allow-download", action="store_true", help="let pretrainedmodels download missing weights")
    parser.add_argument("--n-mels", type=COUNT, default=None, help="pick the store with this many bands under a root")
    parser.add_argument("--protocol", choices=("paper", "validation"), default="paper",
                        help="paper: select the epoch on evaluate; validation: on held-out training locations")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU)")
    parser.add_argument("--workers", type=PROCESSES, default=0, help="DataLoader worker processes")
    parser.add_argument("--json-out", default=None, help="write the result (best epoch, every metric) as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m asc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser("describe", help="counts per split, device and scene; audio formats")
    describe.add_argument("data_dir", help="a DCASE2019 Task 1B development folder or an unlabeled set")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.add_argument("--fold", type=COUNT, default=1, help="evaluation_setup fold number (default 1)")
    describe.add_argument("--no-audio", action="store_true", help="skip reading every file's header")
    describe.set_defaults(run=_describe)

    defaults = SynthConfig()
    synth = commands.add_parser("synth", help="write a synthetic multi-device dataset in the DCASE layout")
    synth.add_argument("out", help="folder to create (must not exist or be empty)")
    add_synth_arguments(synth, defaults)
    synth.add_argument("--sample-rate", type=SAMPLE_RATE, default=defaults.sample_rate, help="Hz (default %(default)s)")
    synth.add_argument("--workers", type=PROCESSES, default=None, help="processes (default or 0: one per core)")
    synth.set_defaults(run=_synth)

    tr = commands.add_parser("train", help="train one of the paper's systems (A1-A7, B1-B7) or SC, FMS, DIR, DIRFMS "
                             "without Ray")
    tr.add_argument("--system", required=True,
                    help="A1-A7 (best epoch by Metric A), B1-B7 (Metric B), or on A2: SC (spectrum correction), "
                         "FMS (Freq-MixStyle), DIR (device impulse responses), DIRFMS (both), by Metric A")
    tr.add_argument("--checkpoint-dir", default=None, help="checkpoint every epoch here; rerun to resume")
    _training_options(tr)
    tr.set_defaults(run=_train)

    cmp_ = commands.add_parser("compare", help="train several systems and print their device table beside the paper's")
    cmp_.add_argument("--systems", nargs="+", default=["A2", "A3", "A5", "A6"])
    cmp_.add_argument("--checkpoint-root", default=None, help="checkpoint each system under ROOT/SYSTEM (resumable)")
    cmp_.add_argument("--verbose", action="store_true", help="print every epoch")
    cmp_.add_argument("--seeds", type=COUNT, default=1,
                      help="train each system with this many seeds (--seed, --seed + 1, ...) in lockstep and print "
                           "mean +- standard error (default %(default)s)")
    _training_options(cmp_)
    cmp_.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
