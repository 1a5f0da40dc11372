"""``python -m search``: the project's entry point.

``demo`` runs the whole loop on the embedded defaults (synthetic set, feature stores, a search,
fusion, a submission file; see ``search/demo.py``); ``prepare``, ``run``, ``resume``, ``fuse`` and
``predict`` are its steps on your data; the ``bench-*`` commands measure it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from pathlib import Path

# The command line's quiet defaults, set here rather than on import of the package: a process that
# only loads a logged model (which carries this package) keeps its own environment and logging.
# MLflow draws a progress bar for every artifact it moves (a trial's model, a fusion's members): on a
# search's console that is a line per trial of noise around the tables. Our own bars say what runs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a tracking server MLflow prints "View run ... at: URL" and "View experiment at: URL" to stdout
# whenever a run ends: two lines per trial between the search's own. The search prints where to look.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's INFO lines (it validates a model's input example, it registered a model) between the
# command's own tables, which say what was logged and registered: warnings and errors stay.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# MLflow retries an unanswered request 7 times with doubling waits (minutes); the search's own
# RetryingClient (search.tracking) retries and keeps writes instead, so MLflow's own retries are few.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
# Tune warns when a callback or its result processing takes over 0.5 s ("may be a performance
# bottleneck"): our MLflow callback writes a SQLite store once per trial-epoch, which on a busy 2-core
# machine takes about that, against epochs of many seconds. Read when ray.tune is first imported.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")

# MLflow logs at INFO that it creates (and migrates) a new SQLite store's tables: on stderr, where a
# user reads errors, at the start of every first search. The store's path is in the summary anyway.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

from asc.cli import MAX_FUSION_BAGS, MAX_FUSION_SIZE, SAMPLE_RATE, ArgumentParser, COUNT, SEED, integer, number
from asc.errors import AscError, run_command, run_main
from search.demo import add_arguments, run_demo

# Each command imports what it runs on (numpy, scipy, pyarrow, Ray, MLflow, torch) when it runs, the
# parser the modules its defaults come from when it is built: `--help` and a benchmark, which skips
# the parser, start without them.


def _demo(args) -> None:
    run_demo(args)


def _prepare(args) -> None:
    from asc.features import FeatureConfig  # late, as the module says
    from asc.store import MANIFEST, current_stores
    from search.prepare import format_report, prepare

    fmax = args.fmax if args.fmax is not None else args.sample_rate / 2
    configs = [FeatureConfig(sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop_length, n_mels=n,
                             fmin=args.fmin, fmax=fmax, power=args.power, drop_last_frame=not args.keep_last_frame,
                             dtype=args.dtype, resample=args.resample, spectrum_correction=args.spectrum_correction,
                             pad_mode=args.pad_mode)
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
    from search.tuner import SearchSettings, run_search  # late, as the module says

    settings = SearchSettings(space=args.space, store=args.store, name=args.name, data=args.data,
                              num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                              cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                              address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage, seed=args.seed,
                              overrides=(args.set or []) + ([f"seeds={args.seeds}"] if args.seeds is not None else []),
                              max_failures=args.max_failures, top=args.top, warm_start=args.warm_start or [],
                              study_dir=args.study_dir)
    result = run_search(settings, command=" ".join(["python -m search"] + [shlex.quote(a) for a in sys.argv[1:]]))
    return 1 if result["failed"] else 0  # trials lost for good: the search is incomplete


def _resume(args) -> None:
    from search.tuner import resume_search  # late, as the module says

    return 1 if resume_search(args.name, storage=args.storage, address=args.address,
                              mlflow_uri=args.mlflow_uri)["failed"] else 0


def _fuse(args) -> None:
    from search.fuse import fuse, format_result  # late, as the module says
    from search.tracking import tracking_uri
    from search.tuner import DEFAULT_STORAGE

    uri = tracking_uri(args.mlflow_uri, Path(DEFAULT_STORAGE))
    result = fuse(args.experiment, uri, by=args.by, size=args.size, method=args.method, register=args.register,
                  full_budget=args.full_budget, bags=args.bags, gap_lambda=args.gap_lambda, seed=args.seed,
                  seed_members=args.seed_members, protocol=args.protocol, alias=args.alias)
    from search.report import ui_command
    from search.tracking import FUSIONS_VIEW

    print(format_result(result))
    print(f"\nfusion run {result.run_id} in {uri}\nmodel: {result.model_uri}"
          + (f"\nregistered: {result.registered} (version {result.version})" if result.registered else ""))
    target = result.registered or result.model_uri
    print(f"predict with: python -m search predict {target} DATA_DIR --out submission.csv --mlflow-uri {uri}")
    print(f"browse the search's fusions: {ui_command(uri, result.experiment_id, FUSIONS_VIEW)}")


def _predict(args) -> None:
    from search.predict import format_prediction, predict  # late, as the module says
    from search.tracking import tracking_uri
    from search.tuner import DEFAULT_STORAGE

    uri = tracking_uri(args.mlflow_uri, Path(DEFAULT_STORAGE))
    result = predict(args.model_uri, args.data_dir, args.out, fmt=args.format, split=args.split, mlflow_uri=uri,
                     device=args.device)
    print(format_prediction(result, args.model_uri))


def build_parser() -> argparse.ArgumentParser:
    from asc.features import PAD_MODES, FeatureConfig  # late, as the module says
    from asc.synth import SynthConfig

    defaults = SynthConfig()
    parser = ArgumentParser(prog="python -m search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the main job on the embedded defaults",
                               description="Run the main job on the embedded defaults. MLflow: --mlflow-uri, else "
                                           "$MLFLOW_TRACKING_URI when it is set, else WORKDIR/runs/mlflow.db.")
    add_arguments(demo, defaults)
    demo.set_defaults(run=_demo)

    prep = commands.add_parser("prepare", help="extract log-Mel features into the shared Arrow store (Ray tasks)")
    prep.add_argument("data_dir", help="a DCASE2019 Task 1B development folder or an unlabeled set")
    prep.add_argument("--store", required=True, help="store root: a local or shared (NFS) folder")
    prep.add_argument("--n-mels", type=COUNT, nargs="+", default=[128],
                      help="Mel-band counts; one STFT per clip serves them all (default 128)")
    paper = FeatureConfig()
    prep.add_argument("--sample-rate", type=SAMPLE_RATE, default=paper.sample_rate, help="Hz (default %(default)s)")
    prep.add_argument("--n-fft", type=COUNT, default=paper.n_fft, help="(default %(default)s)")
    prep.add_argument("--hop-length", type=COUNT, default=paper.hop_length, help="(default %(default)s)")
    prep.add_argument("--fmin", type=number(minimum=0), default=paper.fmin, help="Hz (default %(default)s)")
    prep.add_argument("--fmax", type=number(above=0), default=None, help="Hz (default: half the sample rate)")
    prep.add_argument("--power", type=number(above=0), default=paper.power, help="(default %(default)s: power spectrogram)")
    prep.add_argument("--keep-last-frame", action="store_true", help="keep the STFT's last frame (the paper drops it)")
    prep.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    prep.add_argument("--pad-mode", choices=PAD_MODES, default=paper.pad_mode,
                      help="STFT edge padding: zeros (librosa 0.10+) or reflect (the paper's librosa) (default %(default)s)")
    prep.add_argument("--spectrum-correction", action="store_true",
                      help="per-device spectrum correction from the training split's parallel pairs")
    prep.add_argument("--resample", action="store_true", help="resample clips at another rate instead of refusing them")
    prep.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    prep.add_argument("--num-cpus", type=COUNT, default=None, help="CPUs of the local Ray instance (default: all)")
    prep.add_argument("--shard-size", type=COUNT, default=32, help="clips per Ray task (default %(default)s)")
    prep.set_defaults(run=_prepare)

    run = commands.add_parser("run", help="run a search (Ray Tune + Optuna + ASHA, every trial in MLflow)")
    run.add_argument("space", help="a search space YAML file (see spaces/README.md)")
    run.add_argument("--store", required=True, help="feature store root (made by `prepare`, or with --data)")
    run.add_argument("--data", default=None, help="dataset folder: prepare the stores the space needs first")
    run.add_argument("--name", default=None, help="search name: MLflow experiment and STORAGE/NAME (default: the space's)")
    run.add_argument("--num-samples", type=COUNT, default=None, help="trials (default: the space's num_samples)")
    run.add_argument("--max-concurrent", type=COUNT, default=None, help="trials at once (default: the space's)")
    run.add_argument("--cpus-per-trial", type=number(minimum=0), default=1.0, help="(default %(default)s)")
    run.add_argument("--gpus-per-trial", type=number(minimum=0), default=0.0,
                     help="fraction of a GPU per trial, e.g. 0.25 packs four trials on a GPU (default %(default)s)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: a private local Ray instance)")
    run.add_argument("--mlflow-uri", default=None,
                     help="tracking URI, e.g. http://HEAD:5000 (order: --mlflow-uri, $MLFLOW_TRACKING_URI, "
                          "sqlite:///STORAGE/mlflow.db)")
    run.add_argument("--storage", default=None,
                     help="Tune's experiment state and checkpoints; shared (NFS) on a cluster (default: ./runs)")
    run.add_argument("--seed", type=SEED, default=None, help="sampler seed (default: the space's)")
    run.add_argument("--study-dir", default=None,
                     help="where the Optuna study (SQLite) lives, in STUDY_DIR/NAME; on a cluster a folder on the "
                          "head's own disk, not the NFS --storage (default: STORAGE/NAME, or ~/asc-studies/NAME when "
                          "STORAGE is on a network file system)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a space key, e.g. --set epochs=3 --set scheduler.grace_period=1 (repeatable)")
    run.add_argument("--seeds", type=COUNT, default=None,
                     help="models per trial, trained in lockstep with successive seeds; trials are ranked, pruned "
                          "and learned from on the mean over them (default: the space's seeds, else 1)")
    run.add_argument("--warm-start", nargs="+", metavar="EXPERIMENT", default=None,
                     help="start from the finished trials of earlier searches (their MLflow experiments, on the same "
                          "tracking URI): Optuna learns from them and none is trained again; they must share this "
                          "search's objective, protocol, seeds and stores")
    run.add_argument("--max-failures", type=integer(-1), default=3,
                     help="retries of a trial whose worker or node died, in a row without a new epoch (a trial that "
                          "goes on from a later checkpoint has them again); -1 retries forever (default %(default)s)")
    run.add_argument("--top", type=COUNT, default=10, help="rows of the best-trials table (default %(default)s)")
    run.set_defaults(run=_run)

    resume = commands.add_parser("resume", help="continue a search whose driver died, and send what MLflow missed",
                                 description="Continue a search whose driver died, and send what MLflow missed. "
                                             "MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI, else the tracking "
                                             "URI the search ran with (kept in its folder). Either of the first two "
                                             "must reach the same store (its runs there), e.g. a tracking server on "
                                             "a new head: a --mlflow-uri that does not is refused, a "
                                             "$MLFLOW_TRACKING_URI that does not is passed over, saying so.")
    resume.add_argument("name", help="the search's name (--name of `run`)")
    resume.add_argument("--mlflow-uri", default=None,
                        help="the store the search ran with, at the address it has now (default: as above)")
    resume.add_argument("--storage", default=None, help="the --storage it ran with (default: ./runs)")
    resume.add_argument("--address", default=None, help="Ray cluster address (default: the one it ran with)")
    resume.set_defaults(run=_resume)

    fuse = commands.add_parser("fuse", help="choose an ensemble of a search's trials by Metric B, log and register it")
    fuse.add_argument("--experiment", required=True, help="the search's name (its MLflow experiment)")
    fuse.add_argument("--mlflow-uri", default=None,
                      help="tracking URI (order: --mlflow-uri, $MLFLOW_TRACKING_URI, sqlite:///runs/mlflow.db)")
    fuse.add_argument("--by", default="metric_b", help="objective to maximise on the selection clips (default %(default)s)")
    fuse.add_argument("--method", default="bootstrap", choices=("bootstrap", "gated", "greedy", "top", "per-enhancement"),
                      help="bootstrap: greedy forward selection on each of 40 bootstrap resamples of the selection "
                           "clips (within each device), the resamples' ensembles pooled, so that a member weighs "
                           "what the clips' evidence for it weighs; gated: bagged greedy selection, taken only when "
                           "it beats the best single trial on selection clips held back from choosing it, else the "
                           "best single trial; greedy: forward selection with replacement (Caruana 2004); the top K; "
                           "or the best trial of each enhancement (the paper's A5 + A6 + A7) (default %(default)s)")
    fuse.add_argument("--size", type=integer(1, MAX_FUSION_SIZE), default=None,
                      help="bootstrap, gated, greedy: most picks, with replacement (default 10); top: members "
                           "(default 3); at most %d" % MAX_FUSION_SIZE)
    fuse.add_argument("--bags", type=integer(0, MAX_FUSION_BAGS), default=0,
                      help="bootstrap: resamples of the selection clips (0: 40); greedy: bagged repeats on random "
                           "halves of the candidates (default 0); gated: the same (0: 20); at most 1000")
    fuse.add_argument("--full-budget", action="store_true", help="candidates: only trials that trained every epoch")
    fuse.add_argument("--seed-members", action="store_true",
                      help="searches with seeds: every seed's model is a candidate (default: each trial's seed average)")
    fuse.add_argument("--gap-lambda", type=number(minimum=0), default=None, help="--by gap_penalized: weight of |device gap|")
    fuse.add_argument("--protocol", default="validation", choices=("validation", "paper"),
                      help="the clips the search's trials chose on, which the fusion chooses on too: held-out "
                           "training locations, or the evaluation split (protocol paper); a search of the other "
                           "protocol is refused (default %(default)s)")
    fuse.add_argument("--register", default=None, metavar="NAME", help="register the fused model under NAME")
    fuse.add_argument("--alias", default=None, metavar="ALIAS",
                      help="with --register: give the new version this alias (e.g. champion); predict "
                           "models:/NAME@ALIAS then uses whichever version holds it")
    fuse.add_argument("--seed", type=SEED, default=0, help="bagging seed (default %(default)s)")
    fuse.set_defaults(run=_fuse)

    pred = commands.add_parser("predict", help="a submission file from a trial's or a fusion's model, from audio")
    pred.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/ID, runs:/RUN_ID/model or a model folder")
    pred.add_argument("data_dir", help="a labelled development folder or an unlabelled set (audio/0.wav ...)")
    pred.add_argument("--out", required=True, help="submission file (overwritten whole)")
    pred.add_argument("--format", default="kaggle", choices=("kaggle", "dcase"),
                      help="kaggle: Id,Scene_label with that header; dcase: filename<TAB>scene_label, no header "
                           "(default %(default)s)")
    pred.add_argument("--split", default=None, choices=("evaluate", "train", "all"),
                      help="labelled sets: which clips (default evaluate)")
    pred.add_argument("--mlflow-uri", default=None,
                      help="tracking URI for models:/ and runs:/ (order: --mlflow-uri, $MLFLOW_TRACKING_URI, "
                           "sqlite:///runs/mlflow.db)")
    pred.add_argument("--device", default=None, metavar="DEVICE",
                      help="the recording device of clips whose file names do not say it (audio/0.wav ...); a "
                           "spectrum-corrected model needs it, and refuses such clips without it")
    pred.set_defaults(run=_predict)
    for name, (_, what) in BENCHMARKS.items():  # after the user's commands; each owns its options
        commands.add_parser(name, help=f"benchmark: {what}", add_help=False)
    return parser


# name -> (module, what it measures); the module is imported only when its command runs
BENCHMARKS = {"bench-features": ("search.bench.features", "feature extraction and the store"),
              "bench-train": ("search.bench.train", "training throughput per model and precision"),
              "bench-search": ("search.bench.search", "what the search machinery costs beside plain training"),
              "bench-devices": ("search.bench.devices", "enhancements on seen and unseen devices, over seeds"),
              "bench-chaos": ("search.bench.chaos", "a search while its trial workers are killed at random"),
              "bench-replay": ("search.bench.replay", "search strategies on recorded learning curves"),
              "bench-fusion": ("search.bench.fusion", "fusion methods across many small searches")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in BENCHMARKS:  # benchmarks own their options
        return run_main(lambda: importlib.import_module(BENCHMARKS[argv[0]][0]).main(argv[1:]))
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
