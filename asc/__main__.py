"""``python -m asc``: look at a dataset, write a synthetic one (thin wrappers over the library)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from asc.errors import AscError


def _describe(args) -> None:
    from asc.dataset import read_dataset
    from asc.describe import format_summary, summarize

    summary = summarize(read_dataset(args.data_dir, fold=args.fold), check_audio=not args.no_audio)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


def _synth(args) -> None:
    from asc.synth import SynthConfig, write_dataset

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


def build_parser() -> argparse.ArgumentParser:
    from asc.synth import SynthConfig

    parser = argparse.ArgumentParser(prog="python -m asc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser("describe", help="counts per split, device and scene; audio formats")
    describe.add_argument("data_dir", help="a DCASE2019 Task 1B development folder or an unlabeled set")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.add_argument("--fold", type=int, default=1, help="evaluation_setup fold number (default 1)")
    describe.add_argument("--no-audio", action="store_true", help="skip reading every file's header")
    describe.set_defaults(run=_describe)

    defaults = SynthConfig()
    synth = commands.add_parser("synth", help="write a synthetic multi-device dataset in the DCASE layout")
    synth.add_argument("out", help="folder to create (must not exist or be empty)")
    synth.add_argument("--segments-per-scene", type=int, default=defaults.segments_per_scene,
                       help="device-A segments per scene (default %(default)s)")
    synth.add_argument("--parallel-per-scene", type=int, default=defaults.parallel_per_scene,
                       help="of those, segments also recorded by every other device (default %(default)s)")
    synth.add_argument("--seconds", type=float, default=defaults.seconds, help="clip length (default %(default)s)")
    synth.add_argument("--sample-rate", type=int, default=defaults.sample_rate, help="Hz (default %(default)s)")
    synth.add_argument("--seed", type=int, default=defaults.seed, help="(default %(default)s)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    synth.set_defaults(run=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except AscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
