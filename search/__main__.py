"""``python -m search``: the project's main entry point.

``demo`` runs the main job on the embedded defaults. Today that is the part that exists: generate the
synthetic multi-device dataset (once), describe it, extract its features into the store, and train
two of the paper's systems (no enhancement, and mean subtraction + mixup) with the small CNN to show
the device gap; it grows with the project into a search and fusion.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from asc.errors import run_command, run_main

DEFAULT_WORKDIR = Path("asc-demo")  # everything the demo writes lives here (git-ignored)


def _demo(args) -> None:
    from asc.dataset import read_development
    from asc.describe import format_summary, summarize
    from asc.features import FeatureConfig
    from tqdm import tqdm

    from asc.store import find_store
    from asc.synth import SynthConfig, write_dataset
    from asc.systems import format_comparison, get_system, system_config
    from asc.train import train
    from search.prepare import format_report, prepare

    data, store = args.workdir / "data", args.workdir / "store"
    config = SynthConfig(segments_per_scene=args.segments_per_scene, parallel_per_scene=args.parallel_per_scene,
                         seconds=args.seconds, seed=args.seed)
    start = time.perf_counter()
    if (data / "meta.csv").exists():
        print(f"[1/3] synthetic dataset: {data} exists, reusing it (delete it to regenerate)")
        dataset = read_development(data)
    else:
        print(f"[1/3] synthetic dataset: writing {data}")
        dataset = write_dataset(data, config, progress=sys.stderr.isatty())
    print(f"      {len(dataset)} clips in {time.perf_counter() - start:.1f} s\n")
    print(format_summary(summarize(dataset)))

    print(f"\n[2/3] feature store: log-Mel with the paper's settings into {store} (Ray tasks)")
    report = prepare(data, store, [FeatureConfig(n_mels=n) for n in args.n_mels])
    print(format_report(report))

    trained_on = find_store(store, FeatureConfig(n_mels=args.n_mels[0]), dataset)
    runs = args.workdir / "runs" / trained_on.path.name  # new audio, new store, new runs
    print(f"\n[3/3] the paper's systems {', '.join(args.systems)} with the small CNN, {args.epochs} epochs each "
          f"(checkpoints in {runs}: a rerun resumes)")
    rows = []
    for system_id in args.systems:
        train_config = system_config(system_id, str(trained_on.path), "cnn", epochs=args.epochs,
                                     checkpoint_dir=str(runs / system_id.upper()))
        bar = tqdm(total=args.epochs, desc=system_id.upper(), unit="epoch", file=sys.stderr)
        result = train(train_config, report=lambda epoch, metrics, ckpt: bar.update(epoch - bar.n))  # resumed: jumps
        bar.close()
        rows.append((system_id.upper(), get_system(system_id), result))
    print(format_comparison(rows))


def _prepare(args) -> None:
    from asc.features import FeatureConfig
    from asc.errors import AscError
    from asc.store import MANIFEST, current_stores
    from search.prepare import format_report, prepare

    fmax = args.fmax if args.fmax is not None else args.sample_rate / 2
    configs = [FeatureConfig(sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop_length, n_mels=n,
                             fmin=args.fmin, fmax=fmax, power=args.power, drop_last_frame=not args.keep_last_frame,
                             dtype=args.dtype, resample=args.resample, spectrum_correction=args.spectrum_correction)
               for n in args.n_mels]
    report = prepare(args.data_dir, args.store, configs, address=args.address, num_cpus=args.num_cpus,
                     shard_size=args.shard_size)
    print(format_report(report))
    try:
        current = {path for path, _ in current_stores(args.store)}
    except AscError as exc:  # another store's problem: this prepare succeeded
        print(f"note: could not look for superseded stores: {exc}")
        return
    for old in sorted(p for p in Path(args.store).glob("logmel*") if (p / MANIFEST).is_file() and p not in current):
        print(f"superseded by a store of the same configuration on the current audio: {old} "
              "(delete it once no search reads it)")


def _run(args) -> None:
    import shlex

    from search.tuner import SearchSettings, run_search

    settings = SearchSettings(space=args.space, store=args.store, name=args.name, data=args.data,
                              num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                              cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                              address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage, seed=args.seed,
                              overrides=args.set or [], max_failures=args.max_failures, top=args.top)
    run_search(settings, command=" ".join(["python -m search"] + [shlex.quote(a) for a in sys.argv[1:]]))


def _resume(args) -> None:
    from search.tuner import resume_search

    resume_search(args.name, storage=args.storage, address=args.address)


def build_parser() -> argparse.ArgumentParser:
    from asc.features import FeatureConfig
    from asc.synth import SynthConfig

    defaults = SynthConfig()
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in BENCHMARKS.items():
        commands.add_parser(name, help=f"benchmark (see python -m search {name} --help)", add_help=False)
    demo = commands.add_parser("demo", help="run the main job on the embedded defaults")
    demo.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="(default %(default)s)")
    demo.add_argument("--segments-per-scene", type=int, default=defaults.segments_per_scene)
    demo.add_argument("--parallel-per-scene", type=int, default=defaults.parallel_per_scene)
    demo.add_argument("--seconds", type=float, default=defaults.seconds)
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--n-mels", type=int, nargs="+", default=[128], help="Mel-band counts to prepare")
    demo.add_argument("--systems", nargs="+", default=["A2", "A6"], help="paper systems to train (default %(default)s)")
    demo.add_argument("--epochs", type=int, default=8, help="epochs per system (default %(default)s)")
    demo.set_defaults(run=_demo)

    prep = commands.add_parser("prepare", help="extract log-Mel features into the shared Arrow store (Ray tasks)")
    prep.add_argument("data_dir", help="a DCASE2019 Task 1B development folder or an unlabeled set")
    prep.add_argument("--store", required=True, help="store root: a local or shared (NFS) folder")
    prep.add_argument("--n-mels", type=int, nargs="+", default=[128],
                      help="Mel-band counts; one STFT per clip serves them all (default 128)")
    paper = FeatureConfig()
    prep.add_argument("--sample-rate", type=int, default=paper.sample_rate, help="Hz (default %(default)s)")
    prep.add_argument("--n-fft", type=int, default=paper.n_fft, help="(default %(default)s)")
    prep.add_argument("--hop-length", type=int, default=paper.hop_length, help="(default %(default)s)")
    prep.add_argument("--fmin", type=float, default=paper.fmin, help="Hz (default %(default)s)")
    prep.add_argument("--fmax", type=float, default=None, help="Hz (default: half the sample rate)")
    prep.add_argument("--power", type=float, default=paper.power, help="(default %(default)s: power spectrogram)")
    prep.add_argument("--keep-last-frame", action="store_true", help="keep the STFT's last frame (the paper drops it)")
    prep.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    prep.add_argument("--spectrum-correction", action="store_true",
                      help="per-device spectrum correction from the training split's parallel pairs")
    prep.add_argument("--resample", action="store_true", help="resample clips at another rate instead of refusing them")
    prep.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    prep.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    prep.add_argument("--shard-size", type=int, default=32, help="clips per Ray task (default %(default)s)")
    prep.set_defaults(run=_prepare)

    run = commands.add_parser("run", help="run a search (Ray Tune + Optuna + ASHA, every trial in MLflow)")
    run.add_argument("space", help="a search space YAML file (see spaces/README.md)")
    run.add_argument("--store", required=True, help="feature store root (made by `prepare`, or with --data)")
    run.add_argument("--data", default=None, help="dataset folder: prepare the stores the space needs first")
    run.add_argument("--name", default=None, help="search name: MLflow experiment and STORAGE/NAME (default: the space's)")
    run.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's num_samples)")
    run.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: the space's)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="(default %(default)s)")
    run.add_argument("--gpus-per-trial", type=float, default=0.0,
                     help="fraction of a GPU per trial, e.g. 0.25 packs four trials on a GPU (default %(default)s)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: a private local Ray instance)")
    run.add_argument("--mlflow-uri", default=None,
                     help="tracking URI, e.g. http://HEAD:5000 (default: sqlite:///STORAGE/mlflow.db)")
    run.add_argument("--storage", default=None,
                     help="Tune's experiment state and checkpoints; shared (NFS) on a cluster (default: ./runs)")
    run.add_argument("--seed", type=int, default=None, help="sampler seed (default: the space's)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a space key, e.g. --set epochs=3 --set scheduler.grace_period=1 (repeatable)")
    run.add_argument("--max-failures", type=int, default=3, help="retries of a trial whose worker died (default %(default)s)")
    run.add_argument("--top", type=int, default=10, help="rows of the best-trials table (default %(default)s)")
    run.set_defaults(run=_run)

    resume = commands.add_parser("resume", help="continue a search whose driver died")
    resume.add_argument("name", help="the search's name (--name of `run`)")
    resume.add_argument("--storage", default=None, help="the --storage it ran with (default: ./runs)")
    resume.add_argument("--address", default=None, help="Ray cluster address (default: the one it ran with)")
    resume.set_defaults(run=_resume)
    return parser


BENCHMARKS = {"bench-features": "search.bench", "bench-train": "search.bench_train", "bench-search": "search.bench_search",
              "bench-devices": "search.bench_devices"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in BENCHMARKS:  # benchmarks own their options
        import importlib

        return run_main(lambda: importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]))
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
